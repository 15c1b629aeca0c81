using System.Diagnostics;
using Microsoft.Win32.SafeHandles;

namespace BAOverlay.Benchmarks;

/// <summary>
/// The read targets, measured so that a noisy shared machine cannot skew the ratios: in each of 61 rounds the plain
/// file and every B-CoW state are read back to back (order rotated per round), and the ratio is taken per round;
/// the medians of those per-round ratios are reported. Same files and reads as <see cref="ReadBenchmarks"/>:
/// 256 MiB, 64 KiB blocks (or the block size given), warm cache, sync API; allocations per read from
/// GC.GetAllocatedBytesForCurrentThread.
/// </summary>
internal static class PairedReads
{
    private const long Size = 256L * BenchData.MiB;
    private const int Rounds = 61;

    public static void Run(int blockSize, bool reread)
    {
        string lower = BenchData.Lower(Size);
        long[] offsets = BenchData.RandomOffsets(Size, 4096);
        using SafeFileHandle plain = File.OpenHandle(lower);
        var paths = new List<string>();
        using BCowFile untouched = BenchData.CreateUpper(lower, blockSize, CopyUpMode.Background);
        paths.Add(untouched.Name);
        paths.Add(BenchData.MakeModified(lower, blockSize, 0.5));
        paths.Add(BenchData.MakeModified(lower, blockSize, 1.0));
        using BCowFile half = BCowFile.Open(paths[1], new BCowOpenOptions { ReadOnly = true });
        using BCowFile full = BCowFile.Open(paths[2], new BCowOpenOptions { ReadOnly = true });
        // Diagnostic baseline: the same bytes as a plain file written the way an upper is (4 KiB writes in random
        // order): its page cache is made of small pieces, unlike the lower file written 1 MiB at a time.
        string smallWrites = BenchData.NewPath("plain4k");
        paths.Add(smallWrites);
        MakeSmallWritesCopy(lower, smallWrites);
        using SafeFileHandle plain4k = File.OpenHandle(smallWrites);
        if (reread)
        {
            // Page cache as after a reboot or eviction: every file read back from disk (by readahead, in large
            // pieces) instead of the pieces the writes left.
            foreach (string path in paths.Append(lower))
            {
                BenchData.Evict(path);
            }
        }
        byte[] big = new byte[BenchData.MiB];
        byte[] small = new byte[4 * BenchData.KiB];

        var readers = new (string Name, Func<long, byte[], int> Read)[]
        {
            ("plain file (RandomAccess)", (o, b) => RandomAccess.Read(plain, b, o)),
            ("B-CoW untouched", (o, b) => untouched.ReadAt(b, o)),
            ("B-CoW half-modified", (o, b) => half.ReadAt(b, o)),
            ("B-CoW fully modified", (o, b) => full.ReadAt(b, o)),
            ("diagnostic: plain file written in random 4 KiB writes", (o, b) => RandomAccess.Read(plain4k, b, o)),
        };
        var patterns = new (string Name, long[] Offsets, byte[] Buffer)[]
        {
            ("sequential 1 MiB reads", Enumerable.Range(0, (int)(Size / BenchData.MiB)).Select(i => (long)i * BenchData.MiB).ToArray(), big),
            ("random 4 KiB reads", offsets, small),
        };

        Console.WriteLine($"Paired reads, {BenchData.Bytes(Size)} file, {BenchData.Bytes(blockSize)} blocks, warm cache {(reread ? "(files evicted after writing, then read back from disk)" : "(as left by the writes)")}, {Rounds} rounds; per read: median time, median of per-round throughput ratio vs the plain file, allocated bytes.");
        foreach (var pattern in patterns)
        {
            foreach (var reader in readers)
            {
                Pass(reader.Read, pattern.Offsets, pattern.Buffer); // warm
            }
            var times = new double[readers.Length, Rounds];
            var allocated = new long[readers.Length];
            for (int round = 0; round < Rounds; round++)
            {
                for (int k = 0; k < readers.Length; k++)
                {
                    int r = (k + round) % readers.Length;
                    long before = GC.GetAllocatedBytesForCurrentThread();
                    times[r, round] = Pass(readers[r].Read, pattern.Offsets, pattern.Buffer) / pattern.Offsets.Length;
                    allocated[r] += GC.GetAllocatedBytesForCurrentThread() - before;
                }
            }
            Console.WriteLine();
            Console.WriteLine($"{pattern.Name}:");
            Console.WriteLine("| reader | median per read | throughput vs plain (median of per-round ratios) | allocated per read |");
            Console.WriteLine("|---|---:|---:|---:|");
            for (int r = 0; r < readers.Length; r++)
            {
                double median = Median(Enumerable.Range(0, Rounds).Select(i => times[r, i]));
                double ratio = Median(Enumerable.Range(0, Rounds).Select(i => times[0, i] / times[r, i]));
                Console.WriteLine($"| {readers[r].Name} | {Format(median)} | {ratio * 100:0} % | {allocated[r] / (double)(Rounds * pattern.Offsets.Length):0.#} B |");
            }
        }
        half.Dispose();
        full.Dispose();
        untouched.Dispose();
        paths.ForEach(BenchData.Delete);
    }

    private static void MakeSmallWritesCopy(string lower, string path)
    {
        using SafeFileHandle source = File.OpenHandle(lower);
        using SafeFileHandle target = File.OpenHandle(path, FileMode.CreateNew, FileAccess.Write);
        RandomAccess.SetLength(target, Size);
        long[] pages = Enumerable.Range(0, (int)(Size / (4 * BenchData.KiB))).Select(i => (long)i * 4 * BenchData.KiB).ToArray();
        new Random(5).Shuffle(pages);
        byte[] page = new byte[4 * BenchData.KiB];
        foreach (long offset in pages)
        {
            RandomAccess.Read(source, page, offset);
            RandomAccess.Write(target, page, offset);
        }
        RandomAccess.FlushToDisk(target);
    }

    private static double Pass(Func<long, byte[], int> read, long[] offsets, byte[] buffer)
    {
        long start = Stopwatch.GetTimestamp();
        foreach (long offset in offsets)
        {
            read(offset, buffer);
        }
        return Stopwatch.GetElapsedTime(start).TotalNanoseconds;
    }

    private static double Median(IEnumerable<double> values)
    {
        double[] sorted = values.Order().ToArray();
        return sorted[sorted.Length / 2];
    }

    private static string Format(double ns) => ns >= 10_000 ? $"{ns / 1000:0.0} µs" : $"{ns:0} ns";
}
