using BAOverlay.FileSystem;
using Mono.Unix.Native;

namespace BAOverlay.Tests.FileSystem;

/// <summary>
/// <see cref="OverlayFileSystem.TryGetXattr"/>, the path the kernel takes before every write through a mount: absent
/// is null (no exception), small and large values come back whole, the overlay's own names stay hidden, and a value
/// changed between reads is read anew.
/// </summary>
public class XattrReadTests
{
    [Test]
    public void AbsentSmallLargeAndPrivateAttributesReadAsTheyAre()
    {
        using var f = new OverlayFixture(lowers: 1);
        string lowerFile = Path.Combine(f.Lowers[0], "x");
        OverlayFixture.WriteFile(lowerFile, "x");
        byte[] large = Checks.RandomBytes(new Random(4), 2000); // beyond the first stack-buffer read
        Assert.That(Syscall.lsetxattr(lowerFile, "user.large", large), Is.Zero);
        OverlayFixture.SetXattr(lowerFile, "user.small", "s");
        OverlayFixture.SetXattr(lowerFile, "user.overlay.hidden", "h");

        using OverlayFileSystem fs = f.Open();
        ulong ino = fs.Lookup(OverlayFileSystem.RootIno, "x").Ino;
        Assert.That(fs.TryGetXattr(ino, "security.capability"), Is.Null, "absent: null, not an exception");
        Assert.That(fs.TryGetXattr(ino, "user.small"), Is.EqualTo("s"u8.ToArray()));
        Assert.That(fs.TryGetXattr(ino, "user.large"), Is.EqualTo(large), "a value larger than the first read's buffer");
        Assert.That(fs.TryGetXattr(ino, "user.overlay.hidden"), Is.Null, "the overlay's own names read as absent");
        Assert.That(Assert.Throws<OverlayException>(() => fs.GetXattr(ino, "user.missing"))!.Errno, Is.EqualTo(OverlayErrno.ENODATA),
            "GetXattr still throws ENODATA");
        Assert.That(Assert.Throws<OverlayException>(() => fs.GetXattr(ino, "user.missing"))!.Message, Does.Contain("/x"), "naming the object");

        // after a change through the overlay (copy-up of the metadata), the upper copy is read
        byte[] larger = Checks.RandomBytes(new Random(5), 1500); // ext4 keeps all of an inode's xattrs in one 4 KiB block
        fs.SetXattr(ino, "user.large", larger);
        Assert.That(fs.TryGetXattr(ino, "user.large"), Is.EqualTo(larger));
        fs.RemoveXattr(ino, "user.small");
        Assert.That(fs.TryGetXattr(ino, "user.small"), Is.Null);
        Assert.That(Assert.Throws<OverlayException>(() => fs.TryGetXattr(999_999, "user.small"))!.Errno, Is.EqualTo(OverlayErrno.ENOENT).Or.EqualTo(OverlayErrno.ESTALE),
            "an unknown inode is an error, not absent");
    }

    /// <summary>The overlay remembers that a file has no <c>security.capability</c> (asked before every write through a
    /// mount); setting one must be seen at once, and removing it again too.</summary>
    [Test]
    public void TheRememberedAbsenceOfFileCapabilitiesEndsWhenOneIsSet()
    {
        if (Syscall.getuid() != 0)
        {
            Assert.Ignore("setting security.capability needs root (CAP_SETFCAP); CI runs as root");
        }
        using var f = new OverlayFixture(lowers: 1);
        OverlayFixture.WriteFile(Path.Combine(f.Lowers[0], "tool"), "#!/bin/sh\n");
        using OverlayFileSystem fs = f.Open();
        ulong ino = fs.Lookup(OverlayFileSystem.RootIno, "tool").Ino;
        Assert.That(fs.TryGetXattr(ino, "security.capability"), Is.Null);
        Assert.That(fs.TryGetXattr(ino, "security.capability"), Is.Null, "asked again: the remembered answer");

        // struct vfs_cap_data, revision 2: magic_etc, then permitted/inheritable for capabilities 0-31 and 32-63
        byte[] cap = new byte[20];
        BitConverter.TryWriteBytes(cap.AsSpan(0), 0x02000000u);
        BitConverter.TryWriteBytes(cap.AsSpan(4), 1u); // CAP_CHOWN permitted
        fs.SetXattr(ino, "security.capability", cap);
        Assert.That(fs.TryGetXattr(ino, "security.capability"), Is.EqualTo(cap), "seen right after it was set");
        fs.RemoveXattr(ino, "security.capability");
        Assert.That(fs.TryGetXattr(ino, "security.capability"), Is.Null);
        fs.SetXattr(ino, "security.capability", cap);
        Assert.That(fs.TryGetXattr(ino, "security.capability"), Is.EqualTo(cap), "and again after a remembered absence");
    }
}
