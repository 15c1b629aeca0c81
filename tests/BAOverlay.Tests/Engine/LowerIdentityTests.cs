using System.Diagnostics;
using BAOverlay.Engine;
using BAOverlay.Format;
using BAOverlay.Storage;

namespace BAOverlay.Tests.Engine;

/// <summary>
/// What identifies a lower file (<c>docs/bcow-format.md</c>, "Lower identity"): its size and a fingerprint of 64
/// chunks sampled over its whole content. Honest copies (cp -a, a tar round trip, a touch) keep a pair usable; a
/// changed content or size is refused, naming the lower file and what differs. Files made before keep the old check.
/// </summary>
public class LowerIdentityTests
{
    private const int LowerSize = 4 << 20;

    private static (string Upper, string Lower, byte[] Merged) MakePair(TempDir dir, int lowerSize = LowerSize)
    {
        string lower = dir.File("lower.img");
        byte[] content = Checks.RandomBytes(new Random(7), lowerSize);
        File.WriteAllBytes(lower, content);
        string upper = dir.File("upper.bcow");
        // A relative lower path (recorded relative to the B-CoW file's folder: "lower.img"), so the pair moves together (tar).
        string relative = Path.GetRelativePath(Environment.CurrentDirectory, lower);
        using (BCowFile file = BCowFile.Create(upper, new BCowCreateOptions { LowerPath = relative, BlockSize = 4096 }))
        {
            file.WriteAt([1, 2, 3], 70000);
        }
        content[70000] = 1;
        content[70001] = 2;
        content[70002] = 3;
        return (upper, lower, content);
    }

    private static byte[] ReadMerged(string upper)
    {
        using BCowFile file = BCowFile.Open(upper, new BCowOpenOptions { ReadOnly = true });
        byte[] all = new byte[file.Length];
        Assert.That(file.ReadAt(all, 0), Is.EqualTo(all.Length));
        return all;
    }

    private static void Run(string program, params string[] args)
    {
        var start = new ProcessStartInfo(program) { RedirectStandardError = true };
        foreach (string arg in args)
        {
            start.ArgumentList.Add(arg);
        }
        using Process process = Process.Start(start)!;
        string error = process.StandardError.ReadToEnd();
        process.WaitForExit();
        Assert.That(process.ExitCode, Is.Zero, $"{program} {string.Join(' ', args)}: {error}");
    }

    private static ulong InodeOf(string path)
    {
        using var storage = new FileStorage(path, FileMode.Open, FileAccess.Read);
        return storage.GetIdentity().Inode;
    }

    [Test]
    public void ALowerReplacedByItsCpACopyKeepsThePairUsable()
    {
        using var dir = new TempDir();
        var (upper, lower, merged) = MakePair(dir);
        ulong before = InodeOf(lower);
        Run("cp", "-a", lower, dir.File("copy.img"));
        File.Move(dir.File("copy.img"), lower, overwrite: true);
        Assert.That(InodeOf(lower), Is.Not.EqualTo(before), "a new inode");

        Assert.That(ReadMerged(upper), Is.EqualTo(merged));
        using (BCowFile file = BCowFile.Open(upper))
        {
            file.WriteAt([9], 0);
        }
        Checks.AssertClean(upper);
    }

    [Test]
    public void APairMovedThroughTarKeepsWorking()
    {
        using var dir = new TempDir();
        var (upper, _, merged) = MakePair(dir);
        string archive = dir.File("pair.tar");
        Run("tar", "-C", dir.Path, "-cf", archive, "upper.bcow", "lower.img");
        string elsewhere = dir.File("elsewhere");
        Directory.CreateDirectory(elsewhere);
        // --touch: the extracted files get new modification times, on top of the new inodes.
        Run("tar", "-C", elsewhere, "--touch", "-xf", archive);

        Assert.That(ReadMerged(Path.Combine(elsewhere, "upper.bcow")), Is.EqualTo(merged));
    }

    [Test]
    public void ATouchedLowerKeepsThePairUsable()
    {
        using var dir = new TempDir();
        var (upper, lower, merged) = MakePair(dir);
        File.SetLastWriteTimeUtc(lower, DateTime.UtcNow.AddDays(1));
        Run("touch", lower);

        Assert.That(ReadMerged(upper), Is.EqualTo(merged));
    }

    /// <summary>A byte changed where the fingerprint samples, the modification time put back: refused, both the
    /// small lower (read whole) and a large one (sampled), naming the lower file and that its content differs. The
    /// pair is opened before the edit, so the process has its fingerprint cached: the edit moves the lower file's
    /// change time, and the cached fingerprint is not used for it.</summary>
    [TestCase(100 << 10, 50_000L)]
    [TestCase(LowerSize, -1L)]
    public void AnInPlaceEditWithTheTimeRestoredIsRefused(int lowerSize, long at)
    {
        using var dir = new TempDir();
        var (upper, lower, merged) = MakePair(dir, lowerSize);
        Assert.That(ReadMerged(upper), Is.EqualTo(merged), "opened before the edit");
        if (at < 0)
        {
            // A chunk in the middle of the sampled ones.
            at = LowerSampling.Chunks(lowerSize).ElementAt(LowerSampling.SampleCount / 2).Offset + 100;
        }
        DateTime mtime = File.GetLastWriteTimeUtc(lower);
        using (var stream = new FileStream(lower, FileMode.Open, FileAccess.ReadWrite))
        {
            stream.Position = at;
            int old = stream.ReadByte();
            stream.Position = at;
            stream.WriteByte((byte)~old);
        }
        File.SetLastWriteTimeUtc(lower, mtime);

        var e = Assert.Throws<BCowFormatException>(() => BCowFile.Open(upper, new BCowOpenOptions { ReadOnly = true }).Dispose());
        Assert.That(e!.Message, Does.StartWith($"{upper}: lower file {lower} changed since").And.Contain("its content differs"));
        Assert.Throws<BCowFormatException>(() => BCowFile.Open(upper).Dispose(), "writable too");
    }

    [Test]
    public void ALowerOfAnotherSizeIsRefused()
    {
        using var dir = new TempDir();
        var (upper, lower, _) = MakePair(dir);
        using (var stream = new FileStream(lower, FileMode.Append))
        {
            stream.WriteByte(0);
        }

        var e = Assert.Throws<BCowFormatException>(() => BCowFile.Open(upper).Dispose());
        Assert.That(e!.Message, Is.EqualTo($"{upper}: lower file {lower} changed since this B-CoW file was made: its size is {LowerSize + 1}, was {LowerSize}; refusing to merge a changed lower file"));
    }

    /// <summary>The samples: 64 chunks of 4 KiB, the first at 0 and the last ending at the end, spread evenly; a file
    /// of at most 256 KiB is read whole.</summary>
    /// <summary>The sample offsets are computed without 128-bit arithmetic; for every size, up to the largest a long
    /// holds, they are the format's floor(i × (size − 4096) / 63), 4 KiB aligned.</summary>
    [Test]
    public void SampleOffsetsAreTheFormatsForEverySize()
    {
        var random = new Random(11);
        var sizes = new List<long> { 0, 1, 4095, 4096, 4097, 256 << 10, (256 << 10) + 1, 1L << 30, long.MaxValue, long.MaxValue / 63, long.MaxValue / 63 + 4097 };
        for (int n = 0; n < 2000; n++)
        {
            sizes.Add(random.NextInt64(0, long.MaxValue));
            sizes.Add(random.NextInt64(0, 1L << 40));
        }
        foreach (long size in sizes)
        {
            int count = LowerSampling.Count(size);
            for (int i = 0; i < count; i++)
            {
                long expected = size <= 64 * 4096 ? i * 4096L
                    : i == 63 ? size - 4096
                    : (long)((Int128)i * (size - 4096) / 63) & ~4095L;
                Assert.That(LowerSampling.Offset(size, i), Is.EqualTo(expected), $"size {size}, chunk {i}");
            }
        }
    }

    [Test]
    public void SamplesCoverTheWholeFile()
    {
        var big = LowerSampling.Chunks(1L << 30).ToList();
        Assert.That(big, Has.Count.EqualTo(64));
        Assert.That(big[0], Is.EqualTo((0L, 4096)));
        Assert.That(big[^1], Is.EqualTo(((1L << 30) - 4096, 4096)));
        Assert.That(big.Zip(big.Skip(1)).All(p => p.First.Offset + 4096 <= p.Second.Offset), Is.True, "in order, not overlapping");
        Assert.That(big.Zip(big.Skip(1)).Max(p => p.Second.Offset - p.First.Offset), Is.LessThanOrEqualTo((1L << 30) / 63 + 4096), "evenly spread");

        var small = LowerSampling.Chunks(256 << 10).ToList();
        Assert.That(small.Sum(c => c.Length), Is.EqualTo(256 << 10), "read whole");
        Assert.That(LowerSampling.Chunks(5000).Sum(c => c.Length), Is.EqualTo(5000));
        Assert.That(LowerSampling.Chunks(0), Is.Empty);
    }

    /// <summary>A file made before (size, mtime, inode, first and last 4 KiB recorded) is checked as it was: a touch
    /// still refuses it, and <c>bcow rebase -u</c> over the same lower records the new identity, after which it passes.</summary>
    [Test]
    public void AFileWithTheOldIdentityIsCheckedAsBeforeAndRebaseUpgradesIt()
    {
        using var dir = new TempDir();
        var (upper, lower, merged) = MakePair(dir);
        using (var storage = new FileStorage(upper, FileMode.Open, FileAccess.ReadWrite))
        using (var lowerStorage = new FileStorage(lower, FileMode.Open, FileAccess.Read))
        {
            LowerIdentity legacy = LowerIdentities.LegacyOf(lowerStorage);
            Assert.That(legacy.Sampled, Is.False);
            byte[] slot = new byte[Layout.HeaderSlotSize];
            for (int i = 0; i < Layout.HeaderSlotCount; i++)
            {
                storage.ReadAt(slot, (long)i * Layout.HeaderSlotSize);
                if (BCowHeader.TryRead(slot, out _) is { } header)
                {
                    Assert.That(header.Lower.Sampled, Is.True, "new files record the sampled identity");
                    Assert.That(header.IncompatibleFeatures & BCowHeader.FeatureSampledLowerIdentity, Is.Not.Zero);
                    (header with { Lower = legacy, IncompatibleFeatures = 0 }).Write(slot);
                    Assert.That(BCowHeader.TryRead(slot, out _)!.IncompatibleFeatures, Is.Zero, "an old file has no feature bit");
                    storage.WriteAt(slot, (long)i * Layout.HeaderSlotSize);
                }
            }
        }
        Assert.That(ReadMerged(upper), Is.EqualTo(merged), "an old file opens");
        Run("touch", lower);
        var e = Assert.Throws<BCowFormatException>(() => BCowFile.Open(upper).Dispose());
        Assert.That(e!.Message, Does.Contain("modification time differs").And.Contain("bcow rebase"));

        var rebased = Tool.Bcow.Run("rebase", "-u", "--lower", lower, upper);
        Assert.That(rebased.ExitCode, Is.Zero, rebased.ToString());
        Assert.That(ReadMerged(upper), Is.EqualTo(merged));
        Run("touch", lower);
        Assert.That(ReadMerged(upper), Is.EqualTo(merged), "upgraded: a touch no longer matters");
    }

    /// <summary>How long the identity takes on a 1 GiB lower, cold and warm (docs/bcow-format.md quotes it).</summary>
    [Test, Explicit("measurement: writes 1 GiB")]
    public void MeasureIdentityCost()
    {
        using var dir = new TempDir();
        string lower = dir.File("big.img");
        Run("dd", "if=/dev/urandom", $"of={lower}", "bs=1M", "count=1024", "status=none");
        Run("sync");
        for (int round = 0; round < 5; round++)
        {
            Run("dd", $"if={lower}", "iflag=nocache", "count=0", "status=none"); // drop this file's pages: cold
            using var storage = new FileStorage(lower, FileMode.Open, FileAccess.Read);
            var cold = Stopwatch.StartNew();
            LowerIdentities.ReadFingerprint(storage, storage.Length);
            cold.Stop();
            var warm = Stopwatch.StartNew();
            LowerIdentities.ReadFingerprint(storage, storage.Length);
            warm.Stop();
            LowerIdentities.IdentityOf(storage);
            var kept = Stopwatch.StartNew();
            LowerIdentities.IdentityOf(storage); // the process's kept fingerprint: one fstat
            kept.Stop();
            TestContext.Out.WriteLine($"1 GiB lower: cold {cold.Elapsed.TotalMilliseconds:0.00} ms, warm {warm.Elapsed.TotalMilliseconds:0.000} ms, kept {kept.Elapsed.TotalMilliseconds:0.000} ms");
        }
    }
}
