using System.Diagnostics;
using System.Runtime.InteropServices;
using BAOverlay.FileSystem;
using BAOverlay.Fuse;
using Mono.Unix.Native;
using static BAOverlay.Tests.Fuse.FuseMountTests;

namespace BAOverlay.Tests.Fuse;

/// <summary>
/// The upper layer's own file system failing under a mount: the upper and work directories live on an ext4 image on
/// a loop device, which the test shuts down (EXT4_IOC_SHUTDOWN, every later I/O fails with EIO, as a dead disk) or
/// remounts read-only (as <c>errors=remount-ro</c> does). The mount must turn read-only (EROFS for changes, reads of
/// lower files still served), say so (log line, <c>user.baoverlay.status</c>), and what was fsynced before must be
/// there when the file system comes back. Needs root (loop devices, mount); CI is root.
/// </summary>
[TestFixture]
[Platform("Linux")]
[NonParallelizable]
public sealed partial class UpperFailureMountTests
{
    private const uint EXT4_IOC_SHUTDOWN = 0x8004587D; // _IOR('X', 125, __u32)
    private const uint EXT4_GOING_FLAGS_NOLOGFLUSH = 2;

    [TestCase(true, TestName = "AnUpperFileSystemThatFailsTurnsTheMountReadOnlyAndKeepsWhatWasSynced")]
    [TestCase(false, TestName = "AnUpperFileSystemRemountedReadOnlyTurnsTheMountReadOnly")]
    public void UpperFails(bool shutdown)
    {
        if (Syscall.geteuid() != 0)
        {
            Assert.Ignore("needs root: an ext4 image on a loop device is mounted and shut down; CI is root");
        }
        using var temp = new TempDir();
        string image = temp.File("upper.img");
        string fs = temp.File("upperfs");
        string lower = temp.File("lower");
        Directory.CreateDirectory(fs);
        Directory.CreateDirectory(lower);
        File.WriteAllBytes(Path.Combine(lower, "lower.txt"), "from the lower layer\n"u8.ToArray());
        using (var f = new FileStream(image, FileMode.CreateNew))
        {
            f.SetLength(64 << 20);
        }
        Exec("mkfs.ext4", "-q", "-F", image);
        Exec("mount", "-o", "loop", image, fs);
        bool mounted = true;
        try
        {
            Directory.CreateDirectory(Path.Combine(fs, "upper"));
            Directory.CreateDirectory(Path.Combine(fs, "work"));
            var log = new List<string>();
            string mnt = temp.File("mnt");
            OverlayFileSystem? overlay = null;
            OverlayFuseAdapter? adapter = null;
            using (Mounted m = Mounted.Start(() => overlay = OverlayFileSystem.Open(new OverlayOptions
            {
                LowerDirectories = [lower],
                UpperDirectory = Path.Combine(fs, "upper"),
                WorkDirectory = Path.Combine(fs, "work"),
                Log = line => { lock (log) { log.Add(line); } },
            }), mnt, o => adapter = new OverlayFuseAdapter(o)))
            {
                using (var kept = new FileStream(Path.Combine(mnt, "kept.txt"), FileMode.CreateNew))
                {
                    kept.Write("synced before the failure\n"u8);
                    kept.Flush(flushToDisk: true);
                }
                Assert.That(Status(mnt), Is.EqualTo("healthy"));

                if (shutdown)
                {
                    Shutdown(fs);
                }
                else
                {
                    Exec("mount", "-o", "remount,ro", fs);
                }
                Assert.That(() => File.WriteAllText(Path.Combine(mnt, "after.txt"), "x"), Throws.InstanceOf<IOException>(),
                    "a change after the failure fails");
                Assert.That(overlay!.UpperFailure, Is.Not.Null, "the overlay turned read-only");
                int rc = Syscall.mkdir(Path.Combine(mnt, "dir"), FilePermissions.ACCESSPERMS);
                Assert.That((rc, Stdlib.GetLastError()), Is.EqualTo((-1, Errno.EROFS)), "later changes fail with EROFS");
                Assert.That(File.ReadAllText(Path.Combine(mnt, "lower.txt")), Is.EqualTo("from the lower layer\n"), "lower files are still read");
                Assert.That(Status(mnt), Does.StartWith("read-only: the upper layer's file system failed"));
                lock (log)
                {
                    Assert.That(log, Has.Some.Contains("the overlay is read-only"), "a log line says so");
                }
            }

            // The file system comes back (the journal replays at mount): what was fsynced is there.
            Exec("umount", fs);
            mounted = false;
            Exec("mount", "-o", "loop", image, fs);
            mounted = true;
            using OverlayFileSystem again = OverlayFileSystem.Open(new OverlayOptions
            {
                LowerDirectories = [lower],
                UpperDirectory = Path.Combine(fs, "upper"),
                WorkDirectory = Path.Combine(fs, "work"),
            });
            Assert.That(again.UpperFailure, Is.Null);
            ulong ino = again.Lookup(OverlayFileSystem.RootIno, "kept.txt").Ino;
            using OverlayHandle h = again.Open(ino, write: false, truncate: false);
            byte[] content = new byte[64];
            int n = h.Read(content, 0);
            Assert.That(System.Text.Encoding.UTF8.GetString(content, 0, n), Is.EqualTo("synced before the failure\n"));
        }
        finally
        {
            if (mounted)
            {
                Process.Start("umount", ["-l", fs])!.WaitForExit();
            }
        }
    }

    private static string Status(string mnt)
    {
        long n = Syscall.getxattr(mnt, OverlayFuseAdapter.StatusXattr, out byte[] value);
        Assert.That(n, Is.GreaterThan(0), $"getxattr {OverlayFuseAdapter.StatusXattr}: {Stdlib.GetLastError()}");
        return System.Text.Encoding.UTF8.GetString(value).TrimEnd('\n');
    }

    private static unsafe void Shutdown(string mountPoint)
    {
        int fd = Syscall.open(mountPoint, OpenFlags.O_RDONLY | OpenFlags.O_DIRECTORY);
        Assert.That(fd, Is.GreaterThanOrEqualTo(0));
        try
        {
            uint flags = EXT4_GOING_FLAGS_NOLOGFLUSH;
            Assert.That(ioctl(fd, EXT4_IOC_SHUTDOWN, &flags), Is.Zero, $"EXT4_IOC_SHUTDOWN: {Marshal.GetLastPInvokeError()}");
        }
        finally
        {
            Syscall.close(fd);
        }
    }

    // int ioctl(int fd, unsigned long request, void *argp);
    [LibraryImport("libc", SetLastError = true)]
    private static unsafe partial int ioctl(int fd, nuint request, void* argp);

    private static void Exec(string program, params string[] args)
    {
        var start = new ProcessStartInfo(program) { RedirectStandardError = true, RedirectStandardOutput = true };
        foreach (string a in args)
        {
            start.ArgumentList.Add(a);
        }
        using Process p = Process.Start(start)!;
        string error = p.StandardError.ReadToEnd() + p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        Assert.That(p.ExitCode, Is.Zero, $"{program} {string.Join(' ', args)}: {error}");
    }
}
