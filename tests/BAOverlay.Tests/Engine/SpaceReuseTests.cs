namespace BAOverlay.Tests.Engine;

/// <summary>
/// The issue: a file kept open and rewritten (through the mount, under O_DIRECT) grew its upper file without bound —
/// a 36.8 MB file left a 2.8 GiB sparse upper file. Every round of truncate-and-rewrite (or discard-and-rewrite)
/// allocated fresh blocks at the end, because freed space became reusable only at a durable commit, and the live
/// blocks then sat at the tail, so reopening could not cut it. Space allocated and freed between two commits is in no
/// header: it is reused at once, free space is handed out lowest first, and the free tail is cut at close.
/// </summary>
public class SpaceReuseTests
{
    private const int FileSize = 4 << 20;
    private const int Rounds = 20;

    private static long Rewrite(string kind, bool flushEachRound, out string path, TempDir dir)
    {
        string lower = dir.File("lower");
        File.WriteAllBytes(lower, new byte[FileSize]);
        path = dir.File("x.bcow");
        byte[] data = new byte[FileSize];
        new Random(1).NextBytes(data);
        long openLength;
        using (BCowFile file = BCowFile.Create(path, new BCowCreateOptions { LowerPath = lower }))
        {
            for (int round = 0; round < Rounds; round++)
            {
                if (kind == "truncate")
                {
                    file.SetLength(0);
                }
                else
                {
                    file.PunchHole(0, FileSize);
                }
                for (int offset = 0; offset < FileSize; offset += 256 << 10)
                {
                    file.WriteAt(data.AsSpan(offset, 256 << 10), offset);
                }
                if (flushEachRound)
                {
                    file.Flush();
                }
            }
            openLength = new FileInfo(path).Length;
        }
        using (BCowFile file = BCowFile.Open(path, new BCowOpenOptions { ReadOnly = true }))
        {
            byte[] back = new byte[FileSize];
            Assert.That(file.ReadAt(back, 0), Is.EqualTo(FileSize));
            Assert.That(back, Is.EqualTo(data), "the last round's content");
        }
        Checks.AssertClean(path);
        return openLength;
    }

    [TestCase("truncate")]
    [TestCase("discard")]
    public void RewritingWithoutFlushesReusesTheSameSpace(string kind)
    {
        using var dir = new TempDir();
        long length = Rewrite(kind, flushEachRound: false, out string path, dir);
        // One copy of the data, the map and the headers; before, 20 copies (80 MiB).
        Assert.That(length, Is.LessThan(FileSize + (1 << 20)), $"upper length while open after {Rounds} rounds");
        Assert.That(new FileInfo(path).Length, Is.LessThan(FileSize + (1 << 20)), "after close");
    }

    [TestCase("truncate")]
    [TestCase("discard")]
    public void RewritingWithAFlushEachRoundStaysWithinTwoCopies(string kind)
    {
        // Shadow paging keeps the durable round until the next is durable: two copies at most, however many rounds.
        using var dir = new TempDir();
        long length = Rewrite(kind, flushEachRound: true, out string path, dir);
        Assert.That(length, Is.LessThan((2 * FileSize) + (1 << 20)), $"upper length while open after {Rounds} rounds");
        using (BCowFile file = BCowFile.Open(path))
        {
        }
        Assert.That(new FileInfo(path).Length, Is.LessThan((2 * FileSize) + (1 << 20)), "after a reopen");
    }

    /// <summary>Free space at the end of the file is given back at close (and the next open keeps it cut).</summary>
    [Test]
    public void ClosingCutsTheFreeTail()
    {
        using var dir = new TempDir();
        string path = dir.File("s.bcow");
        using (BCowFile file = BCowFile.Create(path, new BCowCreateOptions { VirtualSize = 8 << 20 }))
        {
            file.WriteAt(new byte[1 << 20].AsSpan(), 0);
            file.Flush();
            file.WriteAt(Enumerable.Repeat((byte)7, 4 << 20).ToArray(), 4 << 20);
            file.Flush();
            file.SetLength(1 << 20); // frees the 4 MiB at the end of the file, at the next durable commit
        }
        Assert.That(new FileInfo(path).Length, Is.LessThan((1 << 20) + (512 << 10)));
        Checks.AssertClean(path);
        using (BCowFile file = BCowFile.Open(path))
        {
            Assert.That(file.Length, Is.EqualTo(1 << 20));
        }
        Assert.That(new FileInfo(path).Length, Is.LessThan((1 << 20) + (512 << 10)));
        Checks.AssertClean(path);
    }
}
