using Mono.Unix.Native;

namespace BAOverlay.Tests.Store;

/// <summary>The sshfs fixture itself: a real network file system on the loopback address, and its server reachable
/// by process id.</summary>
[TestFixture]
public class SshfsStoreTests
{
    [Test]
    public void FilesWrittenInTheExportedDirectoryAreReadThroughTheMount()
    {
        using var exported = new TempDir();
        using SshfsStore share = SshfsStore.Start(exported.Path);
        File.WriteAllText(exported.File("hello"), "over the network");
        Assert.Multiple(() =>
        {
            Assert.That(File.ReadAllText(Path.Combine(share.MountPoint, "hello")), Is.EqualTo("over the network"));
            Assert.That(File.ReadLines("/proc/self/mountinfo").Any(l => l.Contains(" " + share.MountPoint + " ") && l.Contains("fuse.sshfs")), Is.True,
                "the mount is sshfs");
            Assert.That(Syscall.kill(share.SshdProcessId, 0), Is.Zero, "the sshd process id is a live process");
        });
    }
}
