using System.Runtime.InteropServices;
using BAOverlay.Tests.FileSystem;
using Mono.Unix.Native;
using static BAOverlay.Tests.Fuse.FuseMountTests;

namespace BAOverlay.Tests.Fuse;

/// <summary>A file kept open under O_DIRECT and rewritten again and again through the mount keeps its B-CoW upper
/// file near the size of what it holds (it grew without bound: a 36.8 MB file left a 2.8 GiB upper file).</summary>
[TestFixture]
[Platform("Linux")]
[NonParallelizable]
public sealed class DirectWriteMountTests
{
    /// <summary>
    /// Two threads writing one file under O_DIRECT reach the handler together (FOPEN_PARALLEL_DIRECT_WRITES): the
    /// handler holds each write until a second one is inside, which never happens when the kernel serializes them
    /// (the libfuse path, and the option turned off, show that), and both writes land.
    /// </summary>
    [TestCase(true, TestName = "DirectWritesIntoOneFileRunInParallel")]
    [TestCase(false, TestName = "WithoutParallelDirectWritesTheKernelSerializesThem")]
    public unsafe void DirectWritesIntoOneFile(bool parallel)
    {
        using var fixture = new OverlayFixture(lowers: 1);
        const int Size = 4 << 20;
        OverlayFixture.WriteFile(Path.Combine(fixture.Lowers[0], "disk.img"), new byte[Size]);
        WaitingWrites? waiting = null;
        using Mounted mounted = Mounted.Start(fixture, out string mnt,
            fs => waiting = new WaitingWrites(new BAOverlay.Fuse.OverlayFuseAdapter(fs)),
            new BAOverlay.Fuse.FuseMountOptions { ParallelDirectWrites = parallel });
        string path = Path.Combine(mnt, "disk.img");
        bool[] together = new bool[2];
        var writers = new Thread[2];
        for (int w = 0; w < 2; w++)
        {
            int writer = w;
            writers[w] = new Thread(() =>
            {
                int fd = Syscall.open(path, OpenFlags.O_RDWR | OpenFlags.O_DIRECT);
                byte* buffer = (byte*)NativeMemory.AlignedAlloc(64 * 1024, 4096);
                try
                {
                    new Span<byte>(buffer, 64 * 1024).Fill((byte)(writer + 1));
                    Syscall.pwrite(fd, buffer, 64 * 1024, writer * 1024L * 1024);
                }
                finally
                {
                    NativeMemory.AlignedFree(buffer);
                    Syscall.close(fd);
                }
            });
            writers[w].Start();
        }
        foreach (Thread t in writers)
        {
            Assert.That(t.Join(TimeSpan.FromSeconds(30)), Is.True);
        }
        Assert.That(waiting!.SawTwoAtOnce, Is.EqualTo(parallel), parallel ? "both writes were in the handler at once" : "the kernel let one write in at a time");
        byte[] all = File.ReadAllBytes(path);
        Assert.That(all[0..65536].All(b => b == 1) && all[(1 << 20)..((1 << 20) + 65536)].All(b => b == 2), Is.True, "both writes landed");
        Assert.That(mounted.Log, Is.Empty);
    }

    /// <summary>Holds each write (up to 2 s) until another is inside too, and says whether that happened.</summary>
    private sealed class WaitingWrites(BAOverlay.Fuse.IFuseLowLevelHandler inner) : BAOverlay.Fuse.DelegatingFuseHandler(inner)
    {
        private int _inside;

        public bool SawTwoAtOnce { get; private set; }

        public override int Write(ulong ino, ulong handle, ReadOnlySpan<byte> data, long offset)
        {
            if (Interlocked.Increment(ref _inside) >= 2)
            {
                SawTwoAtOnce = true;
            }
            var clock = System.Diagnostics.Stopwatch.StartNew();
            while (!SawTwoAtOnce && clock.ElapsedMilliseconds < 2000)
            {
                Thread.Sleep(5);
            }
            try
            {
                return Inner.Write(ino, handle, data, offset);
            }
            finally
            {
                Interlocked.Decrement(ref _inside);
            }
        }
    }

    [Test]
    public unsafe void RewritingUnderODirectDoesNotGrowTheUpperFile()
    {
        using var fixture = new OverlayFixture(lowers: 1);
        const int Size = 4 << 20;
        OverlayFixture.WriteFile(Path.Combine(fixture.Lowers[0], "disk.img"), new byte[Size]);
        using Mounted mounted = Mounted.Start(fixture, out string mnt);
        int fd = Syscall.open(Path.Combine(mnt, "disk.img"), OpenFlags.O_RDWR | OpenFlags.O_DIRECT);
        Assert.That(fd, Is.GreaterThanOrEqualTo(0), $"open O_DIRECT: {Stdlib.GetLastError()}");
        byte* buffer = (byte*)NativeMemory.AlignedAlloc(64 * 1024, 4096);
        try
        {
            var random = new Random(3);
            for (int round = 0; round < 40; round++)
            {
                new Span<byte>(buffer, 64 * 1024).Fill((byte)round);
                // The whole file, 64 KiB at a time, in a shuffled order: every block rewritten 40 times.
                foreach (int chunk in Enumerable.Range(0, Size / (64 * 1024)).OrderBy(_ => random.Next()))
                {
                    Assert.That(Syscall.pwrite(fd, buffer, 64 * 1024, (long)chunk * 64 * 1024), Is.EqualTo(64 * 1024L));
                }
            }
        }
        finally
        {
            NativeMemory.AlignedFree(buffer);
            Syscall.close(fd);
        }
        Assert.That(Syscall.lstat(Path.Combine(fixture.Upper!, "disk.img"), out Stat st), Is.Zero);
        TestContext.Out.WriteLine($"upper file: {st.st_size} bytes apparent, {st.st_blocks * 512} allocated, for {Size} written");
        Assert.That(st.st_size, Is.LessThan(3L * Size), "the upper file stays within a small multiple of the data (it grew with every round)");
        byte[] read = File.ReadAllBytes(Path.Combine(mnt, "disk.img"));
        Assert.That(read.All(b => b == 39), Is.True, "the last round is what reads back");
    }
}
