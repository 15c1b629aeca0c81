using System.IO.MemoryMappedFiles;
using BAOverlay.Fuse;
using BAOverlay.Tests.FileSystem;
using Microsoft.Win32.SafeHandles;
using Mono.Unix.Native;
using static BAOverlay.Tests.Fuse.FuseMountTests;
using static BAOverlay.Tests.Fuse.PassthroughMountTests;

namespace BAOverlay.Tests.Fuse;

/// <summary>
/// Passthrough of untouched lower files (<see cref="OverlayFuseAdapter.PassthroughLowerFiles"/>, baoverlayfs
/// <c>-o passthrough=all</c>) through a real mount: the kernel reads (and maps) them from the lower file without the
/// daemon; the lower layer is never written; a change of such a file's bytes while it is so open (an open for writing,
/// O_TRUNC, a truncate) fails with ETXTBSY instead of leaving the reader on bytes the copy-up replaced, and succeeds
/// once the readers are gone; under concurrent readers and writers no reader ever sees bytes older than a write that
/// had completed before it opened, and no open fails with EIO (the kernel's answer to mixed modes on one inode).
/// Root only: the kernel lets only CAP_SYS_ADMIN register backing files; CI is root.
/// </summary>
[TestFixture]
[Platform("Linux")]
[NonParallelizable]
public sealed class LowerPassthroughMountTests
{
    private const int Big = 1 << 20; // over the fixture's 64 KiB threshold: a write copies blocks up (B-CoW)
    private const int Small = 16384; // under it: copied up whole

    [SetUp]
    public void RequirePassthrough()
    {
        if (Syscall.geteuid() != 0)
        {
            Assert.Ignore("FUSE passthrough needs CAP_SYS_ADMIN in the initial user namespace (root); CI is root");
        }
    }

    private static Mounted Mount(OverlayFixture fixture, out string mnt, out CountingHandler counting)
    {
        CountingHandler? made = null;
        Mounted mounted = Mounted.Start(fixture, out mnt,
            fs => made = new CountingHandler(new OverlayFuseAdapter(fs) { PassthroughLowerFiles = true }));
        counting = made!;
        Assert.That(Syscall.stat(mnt, out _), Is.Zero, "the first request waits for INIT");
        Assert.That(mounted.Session.Connection?.Passthrough, Is.True, "this kernel (6.9+, CONFIG_FUSE_PASSTHROUGH) grants passthrough to root");
        return mounted;
    }

    [Test]
    public void UntouchedLowerFilesAreReadAndMappedByTheKernelFromTheLowerFile()
    {
        using var fixture = new OverlayFixture(lowers: 2);
        byte[] big = Bytes(1, Big);
        byte[] small = Bytes(2, Small);
        OverlayFixture.WriteFile(Path.Combine(fixture.Lowers[0], "big"), big);
        OverlayFixture.WriteFile(Path.Combine(fixture.Lowers[1], "small"), small);
        using Mounted mounted = Mount(fixture, out string mnt, out CountingHandler counting);

        using (SafeFileHandle file = File.OpenHandle(Path.Combine(mnt, "big"), FileMode.Open, FileAccess.Read))
        {
            Assert.That(mounted.Session.PassthroughOpens, Is.EqualTo(1), "an untouched lower file passes through");
            byte[] all = new byte[Big];
            Assert.That(RandomAccess.Read(file, all, 0), Is.EqualTo(Big));
            Assert.That(all, Is.EqualTo(big));
            using MemoryMappedFile map = MemoryMappedFile.CreateFromFile(file, null, 0, MemoryMappedFileAccess.Read, HandleInheritability.None, leaveOpen: true);
            using MemoryMappedViewAccessor view = map.CreateViewAccessor(0, Big, MemoryMappedFileAccess.Read);
            byte[] mapped = new byte[4096];
            view.ReadArray(700_000, mapped, 0, mapped.Length);
            Assert.That(mapped, Is.EqualTo(big[700_000..704_096]), "a mapping reads the lower file's pages");
        }
        Assert.That(File.ReadAllBytes(Path.Combine(mnt, "small")), Is.EqualTo(small), "a file of a deeper layer too");
        Assert.That(counting.Reads, Is.Zero, "no read reached the daemon");
        Assert.That(Directory.GetFileSystemEntries(fixture.Upper!), Is.Empty, "reading copies nothing up");
        Settle(mounted, 0);
        Assert.That(mounted.Log, Is.Empty);
    }

    [Test]
    public void AChangeWhileTheKernelReadsTheLowerFileFailsWithEtxtbsyAndSucceedsOnceItIsClosed([Values(Big, Small)] int size)
    {
        using var fixture = new OverlayFixture(lowers: 1);
        byte[] original = Bytes(3, size);
        string lowerPath = Path.Combine(fixture.Lowers[0], "f");
        OverlayFixture.WriteFile(lowerPath, original);
        using Mounted mounted = Mount(fixture, out string mnt, out _);
        string path = Path.Combine(mnt, "f");

        using (SafeFileHandle reader = File.OpenHandle(path, FileMode.Open, FileAccess.Read))
        {
            Assert.That(mounted.Session.PassthroughOpens, Is.EqualTo(1));
            Assert.That(Errno(Syscall.open(path, OpenFlags.O_RDWR)), Is.EqualTo(Mono.Unix.Native.Errno.ETXTBSY), "open for writing");
            Assert.That(Errno(Syscall.open(path, OpenFlags.O_WRONLY | OpenFlags.O_APPEND)), Is.EqualTo(Mono.Unix.Native.Errno.ETXTBSY), "open for appending");
            Assert.That(Errno(Syscall.open(path, OpenFlags.O_RDONLY | OpenFlags.O_TRUNC)), Is.EqualTo(Mono.Unix.Native.Errno.ETXTBSY), "O_TRUNC");
            Assert.That(Syscall.truncate(path, 10) == 0 ? 0 : Stdlib.GetLastError(), Is.EqualTo(Mono.Unix.Native.Errno.ETXTBSY), "truncate(2)");

            // Metadata changes copy up without touching the bytes: allowed, and a second reader shares the backing file.
            Assert.That(Syscall.chmod(path, (FilePermissions)Convert.ToUInt32("600", 8)), Is.Zero);
            using (SafeFileHandle second = File.OpenHandle(path, FileMode.Open, FileAccess.Read))
            {
                Assert.That(mounted.Session.PassthroughOpens, Is.EqualTo(2));
                Assert.That(Errno(Syscall.open(path, OpenFlags.O_RDWR)), Is.EqualTo(Mono.Unix.Native.Errno.ETXTBSY), "still refused after the metadata copy-up");
            }
            byte[] seen = new byte[size];
            Assert.That(RandomAccess.Read(reader, seen, 0), Is.EqualTo(size));
            Assert.That(seen, Is.EqualTo(original), "the reader's bytes never changed under it");
        }
        Settle(mounted, 0);

        // Closed: the change goes ahead, and a new reader reads it, whichever way it is then served.
        using (SafeFileHandle writer = File.OpenHandle(path, FileMode.Open, FileAccess.ReadWrite))
        {
            RandomAccess.Write(writer, Bytes(4, 4096), 4096);
        }
        byte[] expected = (byte[])original.Clone();
        Bytes(4, 4096).CopyTo(expected, 4096);
        Assert.That(File.ReadAllBytes(path), Is.EqualTo(expected));
        Assert.That(File.ReadAllBytes(lowerPath), Is.EqualTo(original), "the lower layer is never written");
        Settle(mounted, 0);
        Assert.That(mounted.Log, Is.Empty);
    }

    /// <summary>
    /// Readers and writers of the same lower files at once. Every write rewrites a whole file with its next version
    /// (each 4 KiB block stamped with the version); a reader takes the last version completed before its open, and every
    /// block it then reads must carry that version or a later one: a reader left on the lower file after a copy-up
    /// would read version 0. Opens for writing refused with ETXTBSY are retried; any other failure (EIO above all) fails.
    /// </summary>
    [Test]
    public void ConcurrentReadersNeverReadBytesOlderThanTheirOpen()
    {
        int seed = Environment.TickCount;
        TestContext.Out.WriteLine($"seed {seed}");
        const int Files = 3;
        const int Size = 128 * 1024;
        using var fixture = new OverlayFixture(lowers: 1);
        for (int f = 0; f < Files; f++)
        {
            OverlayFixture.WriteFile(Path.Combine(fixture.Lowers[0], $"f{f}"), Version(f, 0, Size));
        }
        using Mounted mounted = Mount(fixture, out string mnt, out _);
        int[] completed = new int[Files];
        int[] started = new int[Files]; // writes begun, per file: a read that overlaps one may see blocks half rewritten
        // Reads opened per file: no file is written before it was opened for reading once, so that some reads surely
        // meet an untouched lower file (passed through) whichever thread the scheduler favours.
        int[] readOpens = new int[Files];
        object[] writerLocks = Enumerable.Range(0, Files).Select(_ => new object()).ToArray();
        int refused = 0, passedThrough = 0, reads = 0, writes = 0;
        var failures = new System.Collections.Concurrent.ConcurrentQueue<string>();
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(4);

        void Worker(int id)
        {
            var random = new Random(seed + id);
            byte[] buffer = new byte[Size];
            while (DateTime.UtcNow < deadline && failures.IsEmpty)
            {
                int f = random.Next(Files);
                string path = Path.Combine(mnt, $"f{f}");
                if (random.Next(3) == 0 && Volatile.Read(ref readOpens[f]) > 0)
                {
                    lock (writerLocks[f])
                    {
                        int fd = Syscall.open(path, OpenFlags.O_RDWR);
                        if (fd < 0)
                        {
                            Errno errno = Stdlib.GetLastError();
                            if (errno == Mono.Unix.Native.Errno.ETXTBSY)
                            {
                                Interlocked.Increment(ref refused);
                                continue;
                            }
                            failures.Enqueue($"open f{f} for writing: {errno}");
                            return;
                        }
                        int next = completed[f] + 1;
                        byte[] content = Version(f, next, Size);
                        Interlocked.Increment(ref started[f]);
                        bool ok = Pwrite(fd, content);
                        Syscall.close(fd);
                        if (!ok)
                        {
                            failures.Enqueue($"write f{f}: {Stdlib.GetLastError()}");
                            return;
                        }
                        Volatile.Write(ref completed[f], next);
                        Interlocked.Increment(ref writes);
                    }
                }
                else
                {
                    int least = Volatile.Read(ref completed[f]);
                    int fd = Syscall.open(path, OpenFlags.O_RDONLY);
                    if (fd < 0)
                    {
                        failures.Enqueue($"open f{f} for reading: {Stdlib.GetLastError()}");
                        return;
                    }
                    if (mounted.Session.PassthroughOpens > 0)
                    {
                        Interlocked.Increment(ref passedThrough);
                    }
                    Interlocked.Increment(ref readOpens[f]);
                    Thread.Sleep(random.Next(3)); // hold it open a little, so that writers meet it
                    int writesBefore = Volatile.Read(ref started[f]);
                    bool overlapped = writesBefore != Volatile.Read(ref completed[f]);
                    bool ok = Pread(fd, buffer);
                    overlapped |= Volatile.Read(ref started[f]) != writesBefore;
                    Syscall.close(fd);
                    if (!ok)
                    {
                        failures.Enqueue($"read f{f}: {Stdlib.GetLastError()}");
                        return;
                    }
                    for (int block = 0; block < Size / 4096; block++)
                    {
                        int version = BitConverter.ToInt32(buffer, block * 4096 + 4);
                        // A block may be caught half rewritten by a write the read overlapped (reads and writes of
                        // a page are not atomic to each other, in any file system): then only its version is checked.
                        if (BitConverter.ToInt32(buffer, block * 4096) != f || version < least
                            || (!overlapped && !buffer.AsSpan(block * 4096, 4096).SequenceEqual(Version(f, version, Size).AsSpan(block * 4096, 4096))))
                        {
                            failures.Enqueue($"f{f} block {block}: version {version} read after version {least} was complete"
                                + (overlapped ? "" : ", no write overlapping the read") + $" (seed {seed})");
                            return;
                        }
                    }
                    Interlocked.Increment(ref reads);
                }
            }
        }

        Thread[] threads = Enumerable.Range(0, 6).Select(i => new Thread(() => Worker(i))).ToArray();
        foreach (Thread t in threads)
        {
            t.Start();
        }
        foreach (Thread t in threads)
        {
            t.Join();
        }
        TestContext.Out.WriteLine($"{reads} reads, {writes} writes, {refused} writes refused (ETXTBSY), {passedThrough} reads opened while passthrough was in use");
        Assert.That(failures, Is.Empty);
        Assert.That(reads, Is.GreaterThan(0));
        Assert.That(writes, Is.GreaterThan(0));
        Assert.That(passedThrough, Is.GreaterThan(0), "some reads were served by the kernel");
        for (int f = 0; f < Files; f++)
        {
            Assert.That(File.ReadAllBytes(Path.Combine(mnt, $"f{f}")), Is.EqualTo(Version(f, completed[f], Size)));
            Assert.That(File.ReadAllBytes(Path.Combine(fixture.Lowers[0], $"f{f}")), Is.EqualTo(Version(f, 0, Size)), "the lower layer is never written");
        }
        Settle(mounted, 0);
        Assert.That(mounted.Log, Is.Empty);
    }

    /// <summary>File <paramref name="file"/> at <paramref name="version"/>: each 4 KiB block starts with the file and
    /// the version, then bytes drawn from both and the block's index.</summary>
    private static byte[] Version(int file, int version, int size)
    {
        byte[] b = new byte[size];
        for (int block = 0; block < size / 4096; block++)
        {
            Span<byte> span = b.AsSpan(block * 4096, 4096);
            new Random(HashCode.Combine(file, version, block)).NextBytes(span);
            BitConverter.TryWriteBytes(span, file);
            BitConverter.TryWriteBytes(span[4..], version);
        }
        return b;
    }

    private static Errno Errno(int fd)
    {
        if (fd >= 0)
        {
            Syscall.close(fd);
            return 0;
        }
        return Stdlib.GetLastError();
    }

    private static unsafe bool Pwrite(int fd, byte[] data)
    {
        fixed (byte* p = data)
        {
            return Syscall.pwrite(fd, p, (ulong)data.Length, 0) == data.Length;
        }
    }

    private static unsafe bool Pread(int fd, byte[] data)
    {
        fixed (byte* p = data)
        {
            return Syscall.pread(fd, p, (ulong)data.Length, 0) == data.Length;
        }
    }

    /// <summary>Waits (up to 10 s) for every open to be released: the kernel sends a RELEASE after close(2).</summary>
    private static void Settle(Mounted mounted, int expected)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        while ((mounted.Session.PassthroughOpens != expected || mounted.Session.ServedOpens != 0) && clock.Elapsed < TimeSpan.FromSeconds(10))
        {
            Thread.Sleep(5);
        }
        Assert.That(mounted.Session.PassthroughOpens, Is.EqualTo(expected), "passthrough opens once released");
        Assert.That(mounted.Session.ServedOpens, Is.Zero, "served opens once released");
    }
}
