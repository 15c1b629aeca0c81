using BAOverlay.FileSystem;
using BAOverlay.Tests.FileSystem;
using Mono.Unix.Native;
using static BAOverlay.Tests.Fuse.FuseMountTests;

namespace BAOverlay.Tests.Fuse;

/// <summary>
/// Every name of a hard-linked object keeps working after any other name is removed or renamed over, for each kind
/// of object that can be linked, made in the upper layer or linked from a lower one (copy-up), and after a remount,
/// until the last name goes. Through a real mount, as the defect was seen (EIO, ENOENT, EBADF, and changes lost).
/// </summary>
[TestFixture]
[Platform("Linux")]
[NonParallelizable]
public sealed class HardLinkMountTests
{
    public enum Kind { Regular, Fifo, Socket, Device }

    private static void Make(string path, Kind kind)
    {
        switch (kind)
        {
            case Kind.Regular:
                File.WriteAllText(path, "hi\n");
                break;
            case Kind.Fifo:
                Assert.That(Syscall.mknod(path, FilePermissions.S_IFIFO | (FilePermissions)0x1A4, 0), Is.Zero, $"mknod fifo: {Stdlib.GetLastError()}");
                break;
            case Kind.Socket:
                Assert.That(Syscall.mknod(path, FilePermissions.S_IFSOCK | (FilePermissions)0x1A4, 0), Is.Zero, $"mknod socket: {Stdlib.GetLastError()}");
                break;
            case Kind.Device:
                Assert.That(Syscall.mknod(path, FilePermissions.S_IFCHR | (FilePermissions)0x1A4, (1 << 8) | 3), Is.Zero, $"mknod device: {Stdlib.GetLastError()}");
                break;
        }
    }

    [Test]
    public void EveryNameKeepsWorkingUntilTheLastGoes([Values] Kind kind, [Values] bool fromLower)
    {
        using var fixture = new OverlayFixture(lowers: 1);
        if (fromLower)
        {
            Make(Path.Combine(fixture.Lowers[0], "a"), kind);
        }
        using (Mounted.Start(fixture, out string mnt))
        {
            string a = Path.Combine(mnt, "a"), b = Path.Combine(mnt, "b"), c = Path.Combine(mnt, "c");
            if (!fromLower)
            {
                Make(a, kind);
            }
            Assert.That(Syscall.link(a, b), Is.Zero, $"ln a b: {Stdlib.GetLastError()}");
            Assert.That(Syscall.unlink(a), Is.Zero, $"rm a: {Stdlib.GetLastError()}");

            Assert.That(Syscall.lstat(b, out Stat st), Is.Zero, $"stat b: {Stdlib.GetLastError()}");
            Assert.That(st.st_nlink, Is.EqualTo(1UL), "one name left");
            if (kind == Kind.Regular)
            {
                File.AppendAllText(b, "more\n");
                Assert.That(File.ReadAllText(b), Is.EqualTo("hi\nmore\n"), "echo more >> b");
                Assert.That(Syscall.truncate(b, 2), Is.Zero, $"truncate b: {Stdlib.GetLastError()}");
                Assert.That(File.ReadAllText(b), Is.EqualTo("hi"));
            }
            Assert.That(Syscall.chmod(b, (FilePermissions)0x180), Is.Zero, $"chmod b: {Stdlib.GetLastError()}");
            Assert.That(Syscall.lchown(b, 1234, 5678), Is.Zero, $"chown b: {Stdlib.GetLastError()}");
            Assert.That(Syscall.lstat(b, out st), Is.Zero);
            Assert.That(((uint)st.st_mode & 0xFFF, st.st_uid, st.st_gid), Is.EqualTo((0x180u, 1234u, 5678u)), "chmod and chown are stored");

            Assert.That(Syscall.link(b, c), Is.Zero, $"ln b c: {Stdlib.GetLastError()}");
            Assert.That(Syscall.unlink(b), Is.Zero, $"rm b: {Stdlib.GetLastError()}");
            Assert.That(Syscall.lstat(c, out st), Is.Zero, $"stat c: {Stdlib.GetLastError()}");
            Assert.That(((uint)st.st_mode & 0xFFF, st.st_uid, st.st_nlink), Is.EqualTo((0x180u, 1234u, 1UL)));
        }
        using (Mounted.Start(fixture, out string mnt))
        {
            string c = Path.Combine(mnt, "c");
            Assert.That(Directory.GetFileSystemEntries(mnt).Select(Path.GetFileName), Is.EqualTo(new[] { "c" }), "only c is left, after a remount");
            Assert.That(Syscall.lstat(c, out Stat st), Is.Zero);
            Assert.That(((uint)st.st_mode & 0xFFF, st.st_uid, st.st_gid), Is.EqualTo((0x180u, 1234u, 5678u)));
            if (kind == Kind.Regular)
            {
                Assert.That(File.ReadAllText(c), Is.EqualTo("hi"));
            }
            Assert.That(Syscall.unlink(c), Is.Zero);
            Assert.That(Syscall.lstat(c, out _), Is.EqualTo(-1), "the last name is gone");
        }
    }

    [Test]
    public void ANameRenamedOverLeavesTheOtherNamesWorking()
    {
        using var fixture = new OverlayFixture(lowers: 1);
        using Mounted mounted = Mounted.Start(fixture, out string mnt);
        string a = Path.Combine(mnt, "a"), b = Path.Combine(mnt, "b"), other = Path.Combine(mnt, "other");
        File.WriteAllText(a, "linked");
        File.WriteAllText(other, "other");
        Assert.That(Syscall.link(a, b), Is.Zero);
        Assert.That(Syscall.lstat(b, out _), Is.Zero);
        Assert.That(Syscall.rename(other, a), Is.Zero, "mv other a");
        Assert.That(File.ReadAllText(b), Is.EqualTo("linked"));
        File.AppendAllText(b, "+");
        Assert.That(Syscall.chmod(b, (FilePermissions)0x1C0), Is.Zero, $"chmod b: {Stdlib.GetLastError()}");
        Assert.That(Syscall.lstat(b, out Stat st), Is.Zero);
        Assert.That(((uint)st.st_mode & 0xFFF, st.st_nlink), Is.EqualTo((0x1C0u, 1UL)));
        Assert.That(File.ReadAllText(b), Is.EqualTo("linked+"));
        Assert.That(File.ReadAllText(a), Is.EqualTo("other"));
    }

    [Test]
    public void ADescriptorOpenedThroughTheSurvivingNameChangesTheObject()
    {
        using var fixture = new OverlayFixture(lowers: 1);
        using Mounted mounted = Mounted.Start(fixture, out string mnt);
        string a = Path.Combine(mnt, "a"), b = Path.Combine(mnt, "b");
        File.WriteAllText(a, "x");
        Assert.That(Syscall.link(a, b), Is.Zero);
        int fd = Syscall.open(b, OpenFlags.O_RDWR);
        Assert.That(fd, Is.GreaterThanOrEqualTo(0));
        try
        {
            Assert.That(Syscall.unlink(a), Is.Zero);
            Assert.That(Syscall.fchmod(fd, (FilePermissions)0x100), Is.Zero, $"fchmod: {Stdlib.GetLastError()}");
            Assert.That(Syscall.fchown(fd, 4321, 8765), Is.Zero, $"fchown: {Stdlib.GetLastError()}");
            Assert.That(Syscall.ftruncate(fd, 0), Is.Zero, $"ftruncate: {Stdlib.GetLastError()}");
        }
        finally
        {
            Syscall.close(fd);
        }
        Assert.That(Syscall.lstat(b, out Stat st), Is.Zero);
        Assert.That(((uint)st.st_mode & 0xFFF, st.st_uid, st.st_gid, st.st_size), Is.EqualTo((0x100u, 4321u, 8765u, 0L)), "stored, not only remembered");
        Assert.That(Syscall.lstat(Path.Combine(fixture.Upper!, "b"), out st), Is.Zero);
        Assert.That(((uint)st.st_mode & 0xFFF, st.st_uid), Is.EqualTo((0x100u, 4321u)), "in the upper layer");
    }
}
