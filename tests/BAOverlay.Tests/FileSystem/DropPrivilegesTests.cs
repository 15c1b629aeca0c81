using BAOverlay.FileSystem;
using static BAOverlay.Tests.FileSystem.OverlayFixture;

namespace BAOverlay.Tests.FileSystem;

/// <summary>
/// DropPrivileges' memory of files with nothing to clear: the kernel flags every write of a caller without
/// CAP_FSETID, so a file found clean answers from memory until its mode, owner or attributes change.
/// </summary>
[TestFixture]
[Platform("Linux")]
public sealed class DropPrivilegesTests
{
    [Test]
    public void AFileFoundCleanIsRememberedUntilItsModeChanges()
    {
        using var f = new OverlayFixture(lowers: 1);
        WriteFile(Path.Combine(f.Lowers[0], "tool"), "x");
        using OverlayFileSystem fs = f.Open();
        ulong ino = fs.Lookup(OverlayFileSystem.RootIno, "tool").Ino;
        var other = new OverlayCaller(1000, 1000);
        Assert.That(fs.MayHavePrivileges(ino), Is.True, "not known yet");
        Assert.That(fs.DropPrivileges(ino, other), Is.False, "nothing to clear");
        Assert.That(fs.MayHavePrivileges(ino), Is.False, "remembered");

        fs.SetAttr(ino, new OverlaySetAttr { Mode = Mode("4755") }, OverlayCaller.Root);
        Assert.That(fs.MayHavePrivileges(ino), Is.True, "a mode change forgets it");
        Assert.That(fs.DropPrivileges(ino, other), Is.True, "set-user-ID cleared");
        Assert.That(fs.GetAttr(ino).Mode & 0xFFF, Is.EqualTo(Mode("0755")));
        Assert.That(fs.MayHavePrivileges(ino), Is.False);
    }

    /// <summary>
    /// A file made through the overlay is known clean from its creation when made without set-id bits: the chown a
    /// tar extraction makes of each file it creates (the kernel asks for a privilege check at every chown of a file)
    /// and the kernel's capability read before the first write need no I/O. A set-user-ID file made so is not; a
    /// capability set on a new file forgets it. Each is then cleared for another user as before.
    /// </summary>
    [Test]
    public void AFileMadeThroughTheOverlayIsKnownCleanUnlessMadeWithSetIdBits()
    {
        using var f = new OverlayFixture(lowers: 1);
        using OverlayFileSystem fs = f.Open();
        var other = new OverlayCaller(1000, 1000);

        var (plain, h1) = fs.Create(OverlayFileSystem.RootIno, "plain", Mode("644"), OverlayCaller.Root);
        h1.Dispose();
        Assert.That(fs.MayHavePrivileges(plain.Ino), Is.False, "made clean: known at once");
        Assert.That(fs.TryGetXattr(plain.Ino, "security.capability"), Is.Null);

        var (setuid, h2) = fs.Create(OverlayFileSystem.RootIno, "setuid", Mode("4755"), OverlayCaller.Root);
        h2.Dispose();
        Assert.That(fs.MayHavePrivileges(setuid.Ino), Is.True, "made set-user-ID");
        Assert.That(fs.DropPrivileges(setuid.Ino, other), Is.True);
        Assert.That(fs.GetAttr(setuid.Ino).Mode & 0xFFF, Is.EqualTo(Mode("0755")));

        var (capable, h3) = fs.Create(OverlayFileSystem.RootIno, "capable", Mode("755"), OverlayCaller.Root);
        h3.Dispose();
        byte[] capability = [0, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]; // VFS_CAP_REVISION_2, CAP_SYS_ADMIN
        fs.SetXattr(capable.Ino, "security.capability", capability);
        Assert.That(fs.MayHavePrivileges(capable.Ino), Is.True, "a capability set forgets it");
        Assert.That(fs.DropPrivileges(capable.Ino, other), Is.True, "the capability removed");
        Assert.That(fs.TryGetXattr(capable.Ino, "security.capability"), Is.Null);
    }
}
