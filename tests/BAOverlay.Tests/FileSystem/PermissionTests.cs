using BAOverlay.FileSystem;
using Mono.Unix.Native;
using static BAOverlay.Tests.FileSystem.OverlayFixture;

namespace BAOverlay.Tests.FileSystem;

/// <summary>Access checks as the kernel's default_permissions makes them, for a non-root caller and for root.</summary>
public class PermissionTests
{
    private static readonly OverlayCaller User = new(1000, 1000, Umask: Convert.ToUInt32("022", 8));
    private static readonly OverlayCaller Other = new(1001, 1001);

    private static OverlayFixture Layers()
    {
        if (Syscall.geteuid() != 0)
        {
            Assert.Ignore("needs root: the test gives files to other owners with chown");
        }
        var f = new OverlayFixture();
        WriteFile(Path.Combine(f.Lowers[0], "private"), "secret");
        Syscall.chmod(Path.Combine(f.Lowers[0], "private"), (FilePermissions)Mode("600"));
        WriteFile(Path.Combine(f.Lowers[0], "public"), "hello");
        Syscall.chmod(Path.Combine(f.Lowers[0], "public"), (FilePermissions)Mode("644"));
        Directory.CreateDirectory(Path.Combine(f.Lowers[0], "shared"));
        Syscall.chmod(Path.Combine(f.Lowers[0], "shared"), (FilePermissions)Mode("1777"));
        WriteFile(Path.Combine(f.Lowers[0], "shared", "users-file"), "u");
        Syscall.chown(Path.Combine(f.Lowers[0], "shared", "users-file"), 1000, 1000);
        Syscall.chmod(Path.Combine(f.Lowers[0]), (FilePermissions)Mode("755"));
        return f;
    }

    [Test]
    public void ANonRootCallerCannotCreateInARootOwnedDirectoryButCanInAWorldWritableOne()
    {
        using OverlayFixture f = Layers();
        using OverlayFileSystem fs = f.Open();
        var denied = Assert.Throws<OverlayException>(() => fs.Create(OverlayFileSystem.RootIno, "mine", Mode("666"), User));
        Assert.That(denied!.Errno, Is.EqualTo(OverlayErrno.EACCES));
        var (stat, handle) = fs.Create(Resolve(fs, "shared").Ino, "mine", Mode("666"), User);
        handle.Dispose();
        Assert.That(stat.Uid, Is.EqualTo(1000u), "owned by the caller");
        Assert.That(stat.Mode & 0xFFF, Is.EqualTo(Mode("644")), "the caller's umask applies");
    }

    [Test]
    public void ReadingNeedsTheReadBitAndWritingTheWriteBit()
    {
        using OverlayFixture f = Layers();
        using OverlayFileSystem fs = f.Open();
        Assert.That(Assert.Throws<OverlayException>(() => fs.Open(Resolve(fs, "private").Ino, write: false, truncate: false, User))!.Errno, Is.EqualTo(OverlayErrno.EACCES));
        fs.Open(Resolve(fs, "public").Ino, write: false, truncate: false, User).Dispose();
        Assert.That(Assert.Throws<OverlayException>(() => fs.Open(Resolve(fs, "public").Ino, write: true, truncate: false, User))!.Errno, Is.EqualTo(OverlayErrno.EACCES));
        fs.Open(Resolve(fs, "private").Ino, write: true, truncate: false, OverlayCaller.Root).Dispose();
    }

    [Test]
    public void InAStickyDirectoryOnlyTheOwnerMayRemoveAnEntry()
    {
        using OverlayFixture f = Layers();
        using OverlayFileSystem fs = f.Open();
        ulong shared = Resolve(fs, "shared").Ino;
        Assert.That(Assert.Throws<OverlayException>(() => fs.Unlink(shared, "users-file", Other))!.Errno, Is.EqualTo(OverlayErrno.EPERM));
        Assert.That(Assert.Throws<OverlayException>(() => fs.Rename(shared, "users-file", shared, "stolen", caller: Other))!.Errno, Is.EqualTo(OverlayErrno.EPERM));
        fs.Unlink(shared, "users-file", User);
        Assert.That(Exists(fs, "shared/users-file"), Is.False);
    }

    [Test]
    public void OnlyTheOwnerMayChmodAndOnlyRootMayChown()
    {
        using OverlayFixture f = Layers();
        using OverlayFileSystem fs = f.Open();
        ulong ino = Resolve(fs, "shared/users-file").Ino;
        Assert.That(Assert.Throws<OverlayException>(() => fs.SetAttr(ino, new OverlaySetAttr { Mode = Mode("777") }, Other))!.Errno, Is.EqualTo(OverlayErrno.EPERM));
        fs.SetAttr(ino, new OverlaySetAttr { Mode = Mode("600") }, User);
        Assert.That(Assert.Throws<OverlayException>(() => fs.SetAttr(ino, new OverlaySetAttr { Uid = 1001 }, User))!.Errno, Is.EqualTo(OverlayErrno.EPERM));
        fs.SetAttr(ino, new OverlaySetAttr { Uid = 1001 }, OverlayCaller.Root);
        Assert.That(fs.GetAttr(ino).Uid, Is.EqualTo(1001u));
        Assert.That(Assert.Throws<OverlayException>(() => fs.SetAttr(ino, new OverlaySetAttr { MTimeNs = 0 }, User))!.Errno, Is.EqualTo(OverlayErrno.EPERM), "explicit times are the owner's");
    }

    [Test]
    public void TrustedXattrsAreRootsAndUserXattrsFollowTheWriteBit()
    {
        using OverlayFixture f = Layers();
        using OverlayFileSystem fs = f.Open();
        ulong mine = Resolve(fs, "shared/users-file").Ino;
        Assert.That(Assert.Throws<OverlayException>(() => fs.SetXattr(mine, "trusted.x", "1"u8, caller: User))!.Errno, Is.EqualTo(OverlayErrno.EPERM));
        fs.SetXattr(mine, "user.x", "1"u8, caller: User);
        Assert.That(Assert.Throws<OverlayException>(() => fs.SetXattr(Resolve(fs, "public").Ino, "user.x", "1"u8, caller: User))!.Errno, Is.EqualTo(OverlayErrno.EACCES));
    }
}
