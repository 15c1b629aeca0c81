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
