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
}
