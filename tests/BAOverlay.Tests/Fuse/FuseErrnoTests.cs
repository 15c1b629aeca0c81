using BAOverlay.FileSystem;
using BAOverlay.Fuse;
using BAOverlay.Tests.FileSystem;
using Mono.Unix.Native;
using static BAOverlay.Tests.Fuse.FuseMountTests;

namespace BAOverlay.Tests.Fuse;

/// <summary>
/// Every failure class reaches an application through the mount as its POSIX error, never as a blanket EIO: EFBIG for
/// a size or write offset past the largest file (the B-CoW engine's own limit, and the upper file system's), ENOSPC
/// when the upper file system is full (writes into a B-CoW file, into a plain file, and a whole-file copy-up), with
/// the write-back cache (errors come back at fsync) and without it. The upper is a small tmpfs or loop-mounted ext4
/// of the test's own; root and /dev/fuse needed (ignored otherwise).
/// </summary>
[TestFixture]
[Platform("Linux")]
[NonParallelizable]
public sealed class FuseErrnoTests
{
    /// <summary>Above the 1 MiB block-copy-up threshold (baoverlayfs's): copied up as a B-CoW file.</summary>
    private const int BigSize = 2 << 20;

    private const long TiB = 1L << 40;

    [Test]
    public void TruncateOrWritePastTheLargestBCowFileIsEfbig([Values] bool writeback)
    {
        using var layers = new SmallUpper(ext4: false);
        using Mounted mounted = layers.Mount(writeback);
        string big = Path.Combine(layers.MountPoint, "big.bin");

        Assert.That(Errno(Syscall.truncate(big, 300 * TiB)), Is.EqualTo(Mono.Unix.Native.Errno.EFBIG), "truncate past 256 TiB");
        Assert.That(WriteAt(big, 300 * TiB, 4096), Is.EqualTo(Mono.Unix.Native.Errno.EFBIG), "a write at 300 TiB");
        Assert.That(Syscall.lgetxattr(Path.Combine(layers.Upper, "big.bin"), "user.baoverlay.bcow", out byte[] _), Is.GreaterThanOrEqualTo(0),
            "the file was copied up as a B-CoW file");
        if (!writeback)
        {
            // With the write-back cache the kernel keeps the size it grew for the failed write (it trusts its own size).
            Assert.That(new FileInfo(big).Length, Is.EqualTo(BigSize), "the size is unchanged");
        }
        Assert.That(mounted.Log, Is.Empty, "a POSIX condition is not logged as an unexpected failure");
    }

    [Test]
    public void TruncateOrWritePastTheUpperFileSystemsLargestFileIsEfbig([Values] bool writeback)
    {
        using var layers = new SmallUpper(ext4: true); // 1 KiB blocks: files end at about 4 TiB
        using Mounted mounted = layers.Mount(writeback);
        string small = Path.Combine(layers.MountPoint, "small.txt");

        Assert.That(Errno(Syscall.truncate(small, 5 * TiB)), Is.EqualTo(Mono.Unix.Native.Errno.EFBIG), "truncate past ext4's largest file");
        Assert.That(WriteAt(small, 5 * TiB, 4096), Is.EqualTo(Mono.Unix.Native.Errno.EFBIG), "a write at 5 TiB");
        Assert.That(Head(small, 5), Is.EqualTo("small"u8.ToArray()), "the content is unchanged");
        Assert.That(mounted.Log, Is.Empty, "a POSIX condition is not logged as an unexpected failure");
    }

    [Test]
    public void WritingIntoAFullUpperIsEnospc([Values] bool bcow, [Values] bool writeback)
    {
        using var layers = new SmallUpper(ext4: false); // an 8 MiB tmpfs
        using Mounted mounted = layers.Mount(writeback);
        string path = Path.Combine(layers.MountPoint, bcow ? "big.bin" : "new.bin");

        Assert.That(WriteAt(path, 0, 16 << 20), Is.EqualTo(Mono.Unix.Native.Errno.ENOSPC), "16 MiB into an 8 MiB upper");
        if (bcow)
        {
            Assert.That(Syscall.lgetxattr(Path.Combine(layers.Upper, "big.bin"), "user.baoverlay.bcow", out byte[] _), Is.GreaterThanOrEqualTo(0),
                "the written file is a B-CoW file");
        }
        Assert.That(mounted.Log, Is.Empty, "ENOSPC is not logged as an unexpected failure");
    }

    [Test]
    public void AWholeFileCopyUpIntoAFullUpperIsEnospc()
    {
        using var layers = new SmallUpper(ext4: false);
        using Mounted mounted = layers.Mount(writeback: false);
        Assert.That(WriteAt(Path.Combine(layers.Upper, "filler"), 0, 16 << 20), Is.EqualTo(Mono.Unix.Native.Errno.ENOSPC), "fill the upper behind the mount");
        Assert.That(WriteAt(Path.Combine(layers.MountPoint, "medium.bin"), 0, 1), Is.EqualTo(Mono.Unix.Native.Errno.ENOSPC),
            "copying a 512 KiB lower file up whole");
    }

    private static byte[] Head(string path, int count)
    {
        using var stream = new FileStream(path, FileMode.Open, FileAccess.Read);
        byte[] head = new byte[count];
        stream.ReadExactly(head);
        return head;
    }

    private static Errno Errno(int rc) => rc == 0 ? 0 : Stdlib.GetLastError();

    /// <summary>Opens (creating), writes <paramref name="count"/> bytes at <paramref name="offset"/> in 1 MiB pieces,
    /// fsyncs and closes; the first error of any step (with the write-back cache a write error surfaces at fsync).</summary>
    private static unsafe Errno WriteAt(string path, long offset, int count)
    {
        int fd = Syscall.open(path, OpenFlags.O_WRONLY | OpenFlags.O_CREAT, FilePermissions.DEFFILEMODE);
        if (fd < 0)
        {
            return Stdlib.GetLastError();
        }
        Errno first = 0;
        byte[] chunk = new byte[1 << 20];
        new Random(5).NextBytes(chunk);
        fixed (byte* p = chunk)
        {
            for (int done = 0; done < count && first == 0;)
            {
                long n = Syscall.pwrite(fd, p, (ulong)Math.Min(chunk.Length, count - done), offset + done);
                if (n < 0)
                {
                    first = Stdlib.GetLastError();
                    break;
                }
                done += (int)n;
            }
        }
        if (Syscall.fsync(fd) != 0 && first == 0)
        {
            first = Stdlib.GetLastError();
        }
        if (Syscall.close(fd) != 0 && first == 0)
        {
            first = Stdlib.GetLastError();
        }
        return first;
    }

    /// <summary>A lower with big.bin (B-CoW on copy-up), medium.bin (512 KiB, copied up whole) and small.txt, and an
    /// upper and work directory on a small file system of their own.</summary>
    private sealed class SmallUpper : IDisposable
    {
        private readonly OverlayFixture _fixture = new(lowers: 1, withUpper: false);
        private readonly ScratchFileSystem _scratch;

        public SmallUpper(bool ext4)
        {
            Mounted.RequireFuse();
            string lower = _fixture.Lowers[0];
            OverlayFixture.WriteFile(Path.Combine(lower, "big.bin"), Checks.RandomBytes(new Random(1), BigSize));
            OverlayFixture.WriteFile(Path.Combine(lower, "medium.bin"), Checks.RandomBytes(new Random(2), 512 << 10));
            OverlayFixture.WriteFile(Path.Combine(lower, "small.txt"), "small");
            string scratch = Path.Combine(_fixture.Root, "scratch");
            _scratch = ext4 ? ScratchFileSystem.Ext4(scratch) : ScratchFileSystem.Tmpfs(scratch);
            Upper = Directory.CreateDirectory(Path.Combine(scratch, "upper")).FullName;
            Work = Directory.CreateDirectory(Path.Combine(scratch, "work")).FullName;
            MountPoint = Path.Combine(_fixture.Root, "mnt");
        }

        public string Upper { get; }

        public string Work { get; }

        public string MountPoint { get; }

        /// <summary>Mounted as baoverlayfs mounts it: the default 1 MiB threshold and 64 KiB blocks.</summary>
        public Mounted Mount(bool writeback) => Mounted.Start(
            () => OverlayFileSystem.Open(new OverlayOptions
            {
                LowerDirectories = _fixture.Lowers,
                UpperDirectory = Upper,
                WorkDirectory = Work,
                Log = line => TestContext.Progress.WriteLine("overlay: " + line),
            }),
            MountPoint,
            options: new FuseMountOptions { WritebackCache = writeback });

        public void Dispose()
        {
            _scratch.Dispose();
            _fixture.Dispose();
        }
    }
}
