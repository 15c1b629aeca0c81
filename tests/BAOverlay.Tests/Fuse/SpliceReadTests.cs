using BAOverlay.Fuse;
using BAOverlay.Tests.FileSystem;
using Microsoft.Win32.SafeHandles;
using Mono.Unix.Native;
using static BAOverlay.Tests.Fuse.FuseMountTests;
using static BAOverlay.Tests.Fuse.PassthroughMountTests;

namespace BAOverlay.Tests.Fuse;

/// <summary>
/// Read replies spliced from the file (<see cref="FuseMountOptions.SpliceReads"/>, baoverlayfs <c>-o splice</c>)
/// through a real mount: large reads of plain lower and upper files are moved from the file's pages into /dev/fuse,
/// and must give exactly the bytes the copying path gives — at any offset and size, across the file's end (the short
/// reply, whose header the pipe already holds), while the file is copied up and its open data replaced under the read
/// (the file descriptor is referenced for the splice), and never for a B-CoW file, whose bytes are merged. Passthrough
/// is off (the kernel would otherwise read upper files itself); needs /dev/fuse (CI has it).
/// </summary>
[TestFixture]
[Platform("Linux")]
[NonParallelizable]
public sealed class SpliceReadTests
{
    private const int FileSize = (3 << 20) + 12345; // not a multiple of a page: the last read is short

    private static Mounted Mount(OverlayFixture fixture, out string mnt, bool splice = true) =>
        Mounted.Start(fixture, out mnt, options: new FuseMountOptions { Passthrough = false, SpliceReads = splice });

    private static SafeFileHandle OpenDirect(string path)
    {
        // O_DIRECT: the adapter answers FOPEN_DIRECT_IO, so each read(2) reaches the daemon as one READ of its own
        // offset and size (no page cache, no readahead).
        int fd = Syscall.open(path, OpenFlags.O_RDONLY | OpenFlags.O_DIRECT | OpenFlags.O_CLOEXEC);
        Assert.That(fd, Is.GreaterThanOrEqualTo(0), $"open {path}: {Stdlib.GetLastError()}");
        return new SafeFileHandle(fd, ownsHandle: true);
    }

    [Test]
    public void RandomReadsOfALowerFileGiveItsBytesSplicedOrCopied([Values(true, false)] bool splice)
    {
        int seed = Environment.TickCount;
        TestContext.Progress.WriteLine($"seed {seed}");
        var random = new Random(seed);
        using var fixture = new OverlayFixture(lowers: 1);
        byte[] content = Bytes(seed, FileSize);
        OverlayFixture.WriteFile(Path.Combine(fixture.Lowers[0], "big"), content);
        using Mounted mounted = Mount(fixture, out string mnt, splice);

        using (SafeFileHandle file = OpenDirect(Path.Combine(mnt, "big")))
        {
            byte[] buffer = new byte[1 << 20];
            for (int i = 0; i < 300; i++)
            {
                int size = random.Next(4) switch
                {
                    0 => random.Next(1, 32 * 1024), // under the threshold: copied
                    1 => 128 * 1024,
                    2 => 1 << 20, // the largest READ the kernel sends: copied when the pipe cannot carry it
                    _ => random.Next(32 * 1024, 1 << 20),
                };
                long offset = random.Next(5) == 0 ? FileSize - random.Next(0, size + 4096) : random.NextInt64(0, FileSize);
                offset = Math.Max(0, offset);
                int n = RandomAccess.Read(file, buffer.AsSpan(0, size), offset);
                int expected = (int)Math.Clamp(FileSize - offset, 0, size);
                Assert.That(n, Is.EqualTo(expected), $"read {size} at {offset} (seed {seed})");
                Assert.That(buffer.AsSpan(0, n).SequenceEqual(content.AsSpan((int)offset, n)), Is.True, $"bytes of read {size} at {offset} (seed {seed})");
            }
        }
        Assert.That(File.ReadAllBytes(Path.Combine(mnt, "big")), Is.EqualTo(content), "a buffered read of the whole file (readahead's requests)");
        if (splice)
        {
            Assert.That(mounted.Session.SplicedReads, Is.GreaterThan(0), "large reads were spliced");
        }
        else
        {
            Assert.That(mounted.Session.SplicedReads, Is.Zero, "splice off: every read copied");
        }
        Assert.That(mounted.Log, Is.Empty);
    }

    [Test]
    public void AnUpperFileIsSplicedWithWhatWasWrittenAndABCowFileIsNever()
    {
        using var fixture = new OverlayFixture(lowers: 1);
        byte[] lower = Bytes(1, FileSize);
        OverlayFixture.WriteFile(Path.Combine(fixture.Lowers[0], "bcow"), lower);
        using Mounted mounted = Mount(fixture, out string mnt);

        // A whole upper file, made through the mount: a plain file, spliced, with what was written.
        byte[] written = Bytes(2, FileSize);
        File.WriteAllBytes(Path.Combine(mnt, "new"), written);
        long before = mounted.Session.SplicedReads;
        byte[] back = new byte[FileSize];
        using (SafeFileHandle file = OpenDirect(Path.Combine(mnt, "new")))
        {
            ReadInPieces(file, back);
        }
        Assert.That(back, Is.EqualTo(written));
        Assert.That(mounted.Session.SplicedReads, Is.GreaterThan(before), "the upper file's reads were spliced");

        // A lower file written in the middle: a B-CoW file (over the 64 KiB threshold), merged by the daemon.
        byte[] patch = Bytes(3, 8192);
        using (SafeFileHandle file = File.OpenHandle(Path.Combine(mnt, "bcow"), FileMode.Open, FileAccess.ReadWrite))
        {
            RandomAccess.Write(file, patch, 1 << 20);
        }
        patch.CopyTo(lower, 1 << 20);
        before = mounted.Session.SplicedReads;
        using (SafeFileHandle file = OpenDirect(Path.Combine(mnt, "bcow")))
        {
            ReadInPieces(file, back);
        }
        Assert.That(back, Is.EqualTo(lower), "the merged bytes: the lower file's with the write in it");
        Assert.That(mounted.Session.SplicedReads, Is.EqualTo(before), "a B-CoW file's reads are never spliced");
        Assert.That(mounted.Log, Is.Empty);
    }

    /// <summary>Reads the whole file in 256 KiB reads (each one READ request: a size any pipe carries).</summary>
    private static void ReadInPieces(SafeFileHandle file, byte[] into)
    {
        for (int at = 0; at < into.Length; at += 256 * 1024)
        {
            int length = Math.Min(256 * 1024, into.Length - at);
            Assert.That(RandomAccess.Read(file, into.AsSpan(at, length), at), Is.EqualTo(length));
        }
    }

    [Test]
    public void ReadersSplicingWhileTheFileIsCopiedUpNeverSeeOtherBytesNorFail()
    {
        // Readers splice from the lower file while writers copy it up (its open data is replaced, the lower file's
        // descriptor closed once unused) and overwrite blocks: every 4 KiB block a read returns is the lower's or the
        // written one, never anything else, and no read fails.
        int seed = Environment.TickCount;
        TestContext.Progress.WriteLine($"seed {seed}");
        for (int round = 0; round < 4; round++)
        {
            using var fixture = new OverlayFixture(lowers: 1);
            byte[] lower = Bytes(seed + round, FileSize);
            byte[] other = Bytes(seed + round + 1000, FileSize);
            OverlayFixture.WriteFile(Path.Combine(fixture.Lowers[0], "f"), lower);
            using Mounted mounted = Mount(fixture, out string mnt);
            string path = Path.Combine(mnt, "f");
            using var stop = new CancellationTokenSource();
            var failures = new System.Collections.Concurrent.ConcurrentQueue<string>();
            Thread[] readers = [.. Enumerable.Range(0, 2).Select(r => new Thread(() =>
            {
                var random = new Random(seed + round * 10 + r);
                byte[] buffer = new byte[256 * 1024];
                try
                {
                    while (!stop.IsCancellationRequested)
                    {
                        using SafeFileHandle file = OpenDirect(path);
                        for (int i = 0; i < 20; i++)
                        {
                            long offset = random.Next(0, FileSize / 4096) * 4096L;
                            int n = RandomAccess.Read(file, buffer, offset);
                            for (int at = 0; at < n; at += 4096)
                            {
                                int length = Math.Min(4096, n - at);
                                var got = buffer.AsSpan(at, length);
                                long where = offset + at;
                                if (!got.SequenceEqual(lower.AsSpan((int)where, length)) && !got.SequenceEqual(other.AsSpan((int)where, length)))
                                {
                                    failures.Enqueue($"block at {where}: neither the lower's nor the written bytes (seed {seed}, round {round})");
                                }
                            }
                        }
                    }
                }
                catch (Exception e)
                {
                    failures.Enqueue($"reader: {e.Message} (seed {seed}, round {round})");
                }
            })).ToArray()];
            foreach (Thread t in readers)
            {
                t.Start();
            }
            Thread.Sleep(50);
            var writeRandom = new Random(seed - round);
            using (SafeFileHandle file = File.OpenHandle(path, FileMode.Open, FileAccess.ReadWrite))
            {
                for (int i = 0; i < 64; i++)
                {
                    int block = writeRandom.Next(0, FileSize / 4096);
                    RandomAccess.Write(file, other.AsSpan(block * 4096, 4096), block * 4096L);
                }
            }
            Thread.Sleep(50);
            stop.Cancel();
            foreach (Thread t in readers)
            {
                t.Join();
            }
            Assert.That(failures, Is.Empty);
            Assert.That(mounted.Session.SplicedReads, Is.GreaterThan(0), "reads of the lower file were spliced before the copy-up");
            Assert.That(mounted.Log, Is.Empty);
        }
    }
}
