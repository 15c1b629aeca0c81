using BAOverlay.FileSystem;
using BAOverlay.Fuse;
using BAOverlay.Tests.FileSystem;
using Microsoft.Win32.SafeHandles;
using Mono.Unix.Native;
using static BAOverlay.Tests.Fuse.FuseMountTests;

namespace BAOverlay.Tests.Fuse;

/// <summary>
/// FUSE passthrough through a real mount: which files the kernel serves itself (whole upper files), which the daemon
/// serves (lower files, B-CoW files, set-id files, any file when passthrough is refused), that the two views of a
/// file agree whichever side writes, and that an inode's opens never mix the two modes (the kernel would fail the
/// open with EIO). Root only: the kernel lets only CAP_SYS_ADMIN register backing files; CI is root.
/// </summary>
[TestFixture]
[Platform("Linux")]
[NonParallelizable]
public sealed class PassthroughMountTests
{
    [SetUp]
    public void RequirePassthrough()
    {
        if (Syscall.geteuid() != 0)
        {
            Assert.Ignore("FUSE passthrough needs CAP_SYS_ADMIN in the initial user namespace (root); CI is root");
        }
    }

    private static Mounted Mount(OverlayFixture fixture, out string mnt, out CountingHandler counting, FuseMountOptions? options = null)
    {
        CountingHandler? made = null;
        Mounted mounted = Mounted.Start(fixture, out mnt, fs => made = new CountingHandler(new OverlayFuseAdapter(fs)), options);
        counting = made!;
        return mounted;
    }

    [Test]
    public void AWholeUpperFileIsServedByTheKernelAndAgreesWithTheOverlayBothWays()
    {
        using var fixture = new OverlayFixture(lowers: 1);
        using Mounted mounted = Mount(fixture, out string mnt, out CountingHandler counting);
        string path = Path.Combine(mnt, "new.dat");
        File.WriteAllBytes(path, Bytes(1, 256 * 1024));
        Assert.That(mounted.Session.Connection!.Passthrough, Is.True, "this kernel (6.9+, CONFIG_FUSE_PASSTHROUGH) grants passthrough to root");
        Settle(mounted, 0);

        using (SafeFileHandle file = File.OpenHandle(path, FileMode.Open, FileAccess.ReadWrite))
        {
            Assert.That(mounted.Session.PassthroughOpens, Is.EqualTo(1), "the open of a whole upper file passes through");
            int readsBefore = counting.Reads;
            byte[] buffer = new byte[4096];
            Assert.That(RandomAccess.Read(file, buffer, 8192), Is.EqualTo(4096));
            Assert.That(buffer, Is.EqualTo(Bytes(1, 256 * 1024)[8192..12288]));
            RandomAccess.Write(file, Bytes(7, 4096), 300 * 1024); // extends the file, never seen by the daemon
            Assert.That(counting.Reads, Is.EqualTo(readsBefore), "reads through the passthrough open never reach the daemon");
            Assert.That(counting.Writes, Is.Zero, "nor do its writes");

            // The overlay sees the kernel's write: size and bytes.
            ulong ino = mounted.FileSystem.Lookup(OverlayFileSystem.RootIno, "new.dat").Ino;
            Assert.That(mounted.FileSystem.GetAttr(ino).Size, Is.EqualTo(304 * 1024));
            using (OverlayHandle own = mounted.FileSystem.Open(ino, write: true, truncate: false))
            {
                byte[] seen = new byte[4096];
                own.Read(seen, 300 * 1024);
                Assert.That(seen, Is.EqualTo(Bytes(7, 4096)), "the overlay reads what the kernel wrote");
                own.Write(Bytes(9, 4096), 0); // and the kernel reads what the overlay writes
            }
            Assert.That(RandomAccess.Read(file, buffer, 0), Is.EqualTo(4096));
            Assert.That(buffer, Is.EqualTo(Bytes(9, 4096)), "the passthrough open reads the overlay's write");
            Assert.That(new FileInfo(path).Length, Is.EqualTo(304 * 1024), "stat through the mount sees the size the kernel wrote");
            RandomAccess.SetLength(file, 100); // ftruncate: a SETATTR the daemon serves, on the same file
            Assert.That(RandomAccess.Read(file, buffer, 0), Is.EqualTo(100));
        }
        Settle(mounted, 0);
        Assert.That(File.ReadAllBytes(Path.Combine(fixture.Upper!, "new.dat")), Is.EqualTo(Bytes(9, 100)));
        Assert.That(mounted.Log, Is.Empty);
    }

    [Test]
    public void LowerFilesAndBCowFilesAreServedByTheDaemon()
    {
        using var fixture = new OverlayFixture(lowers: 1);
        OverlayFixture.WriteFile(Path.Combine(fixture.Lowers[0], "small"), Bytes(2, 8192));
        OverlayFixture.WriteFile(Path.Combine(fixture.Lowers[0], "big"), Bytes(3, 1 << 20));
        using Mounted mounted = Mount(fixture, out string mnt, out CountingHandler counting);
        using (SafeFileHandle lower = File.OpenHandle(Path.Combine(mnt, "small"), FileMode.Open, FileAccess.Read))
        {
            Assert.That(mounted.Session.PassthroughOpens, Is.Zero, "a lower file becomes another file at copy-up: served");
            byte[] b = new byte[8192];
            Assert.That(RandomAccess.Read(lower, b, 0), Is.EqualTo(8192));
            Assert.That(counting.Reads, Is.GreaterThan(0));
        }
        using (SafeFileHandle bcow = File.OpenHandle(Path.Combine(mnt, "big"), FileMode.Open, FileAccess.ReadWrite))
        {
            Assert.That(mounted.Session.PassthroughOpens, Is.Zero, "a B-CoW file merges two files: served");
            RandomAccess.Write(bcow, Bytes(4, 4096), 4096);
        }
        Assert.That(counting.Writes, Is.GreaterThan(0));
        Assert.That(File.ReadAllBytes(Path.Combine(mnt, "big"))[4096..8192], Is.EqualTo(Bytes(4, 4096)));
    }

    [Test]
    public void OpensOfOneInodeFollowTheFirstUntilTheLastIsClosed()
    {
        using var fixture = new OverlayFixture(lowers: 1);
        OverlayFixture.WriteFile(Path.Combine(fixture.Lowers[0], "f"), Bytes(5, 16384)); // under the copy-up threshold: copied whole
        using Mounted mounted = Mount(fixture, out string mnt, out _);
        string path = Path.Combine(mnt, "f");

        // Served first (a lower file): an open for writing copies it up whole, and is served too, since the kernel
        // fails a passthrough open of an inode that has a served one (ETXTBSY, EIO to the caller).
        using (SafeFileHandle reader = File.OpenHandle(path, FileMode.Open, FileAccess.Read))
        {
            using SafeFileHandle writer = File.OpenHandle(path, FileMode.Open, FileAccess.ReadWrite);
            Assert.That(mounted.Session.PassthroughOpens, Is.Zero, "an inode with a served open is not passed through");
            RandomAccess.Write(writer, Bytes(6, 10), 0);
            byte[] seen = new byte[10];
            RandomAccess.Read(reader, seen, 0);
            Assert.That(seen, Is.EqualTo(Bytes(6, 10)), "the reader opened before the copy-up reads the write");
        }
        Settle(mounted, 0);

        // Now a whole upper file, passed through; an O_DIRECT open meanwhile shares the backing file (the kernel
        // refuses anything else), and the plain open reads its direct write.
        using (SafeFileHandle first = File.OpenHandle(path, FileMode.Open, FileAccess.Read))
        {
            Assert.That(mounted.Session.PassthroughOpens, Is.EqualTo(1));
            int second = Syscall.open(path, OpenFlags.O_RDWR | OpenFlags.O_DIRECT);
            Assert.That(second, Is.GreaterThanOrEqualTo(0), $"a second open of a passed-through inode: {Stdlib.GetLastError()}");
            Assert.That(mounted.Session.PassthroughOpens, Is.EqualTo(2));
            unsafe
            {
                byte* aligned = (byte*)System.Runtime.InteropServices.NativeMemory.AlignedAlloc(4096, 4096);
                Bytes(7, 4096).CopyTo(new Span<byte>(aligned, 4096));
                Assert.That(Syscall.pwrite(second, aligned, 4096, 4096), Is.EqualTo(4096), $"direct write: {Stdlib.GetLastError()}");
                System.Runtime.InteropServices.NativeMemory.AlignedFree(aligned);
            }
            Syscall.close(second);
            Settle(mounted, 1);
            byte[] b = new byte[4096];
            RandomAccess.Read(first, b, 4096);
            Assert.That(b, Is.EqualTo(Bytes(7, 4096)));
        }
        Settle(mounted, 0);
        Assert.That(mounted.Log, Is.Empty);
    }

    [Test]
    public void ASetIdFileIsServedSoAWriteByAnotherUserClearsItsBits()
    {
        using var fixture = new OverlayFixture(lowers: 1);
        using Mounted mounted = Mount(fixture, out string mnt, out _);
        string path = Path.Combine(mnt, "tool");
        File.WriteAllBytes(path, Bytes(8, 4096));
        Assert.That(Syscall.chmod(path, (FilePermissions)Convert.ToUInt32("4755", 8)), Is.Zero);
        Settle(mounted, 0);
        using SafeFileHandle file = File.OpenHandle(path, FileMode.Open, FileAccess.Read);
        Assert.That(mounted.Session.PassthroughOpens, Is.Zero, "a set-user-ID file is served by the daemon");
    }

    [Test]
    public void RefusedPassthroughServesEveryFile()
    {
        using var fixture = new OverlayFixture(lowers: 1);
        using Mounted mounted = Mount(fixture, out string mnt, out CountingHandler counting, new FuseMountOptions { Passthrough = false });
        string path = Path.Combine(mnt, "new.dat");
        File.WriteAllBytes(path, Bytes(1, 65536));
        Assert.That(mounted.Session.Connection!.Passthrough, Is.False, "not asked for");
        using (SafeFileHandle file = File.OpenHandle(path, FileMode.Open, FileAccess.ReadWrite))
        {
            Assert.That(mounted.Session.PassthroughOpens, Is.Zero);
            RandomAccess.Write(file, Bytes(2, 4096), 0);
        }
        Assert.That(counting.Writes, Is.GreaterThan(0), "the daemon served the writes");
        Assert.That(File.ReadAllBytes(path)[..4096], Is.EqualTo(Bytes(2, 4096)));
    }

    [Test]
    public void AHandlerThatNamesNoBackingFileIsServed()
    {
        using var fixture = new OverlayFixture(lowers: 1);
        using Mounted mounted = Mounted.Start(fixture, out string mnt, fs => new OverlayFuseAdapter(fs) { Passthrough = false });
        string path = Path.Combine(mnt, "new.dat");
        File.WriteAllBytes(path, Bytes(1, 65536));
        Assert.That(mounted.Session.Connection!.Passthrough, Is.True, "granted by the kernel");
        using SafeFileHandle file = File.OpenHandle(path, FileMode.Open, FileAccess.Read);
        Assert.That(mounted.Session.PassthroughOpens, Is.Zero);
        byte[] b = new byte[4096];
        Assert.That(RandomAccess.Read(file, b, 0), Is.EqualTo(4096));
    }

    /// <summary>Waits (up to 10 s) for the passthrough opens to number <paramref name="expected"/>: the kernel sends
    /// a RELEASE after close(2) has returned.</summary>
    private static void Settle(Mounted mounted, int expected, int served = 0)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        while ((mounted.Session.PassthroughOpens != expected || mounted.Session.ServedOpens != served) && clock.Elapsed < TimeSpan.FromSeconds(10))
        {
            Thread.Sleep(5);
        }
        Assert.That(mounted.Session.PassthroughOpens, Is.EqualTo(expected), "passthrough opens once released");
        Assert.That(mounted.Session.ServedOpens, Is.EqualTo(served), "served opens once released");
    }

    internal static byte[] Bytes(int seed, int length)
    {
        byte[] b = new byte[length];
        new Random(seed).NextBytes(b);
        return b;
    }

    /// <summary>Counts the reads and writes that reach the daemon.</summary>
    internal sealed class CountingHandler(IFuseLowLevelHandler inner) : DelegatingFuseHandler(inner)
    {
        private int _reads;
        private int _writes;
        private int _capabilityReads;

        public int Reads => Volatile.Read(ref _reads);

        public int Writes => Volatile.Read(ref _writes);

        public int CapabilityReads => Volatile.Read(ref _capabilityReads);

        public override int Read(ulong ino, ulong handle, Span<byte> buffer, long offset)
        {
            Interlocked.Increment(ref _reads);
            return base.Read(ino, handle, buffer, offset);
        }

        public override int Write(ulong ino, ulong handle, ReadOnlySpan<byte> data, long offset)
        {
            Interlocked.Increment(ref _writes);
            return base.Write(ino, handle, data, offset);
        }

        public override byte[]? GetXattr(ulong ino, string name, FuseContext context)
        {
            if (name == "security.capability")
            {
                Interlocked.Increment(ref _capabilityReads);
            }
            return base.GetXattr(ino, name, context);
        }
    }
}
