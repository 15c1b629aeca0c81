using System.Diagnostics;

namespace BAOverlay.Benchmarks;

/// <summary>
/// The first 4 KiB write with the lower file not in the page cache (evicted with posix_fadvise DONTNEED before each
/// measurement; no root needed): B-CoW background and synchronous copy-up against the whole-file copy-up, which must
/// then read the whole file from disk. Median of 5. (A global drop_caches would also evict the .NET runtime's own
/// code pages and measure a process cold start rather than the file work, and slow down everyone on the machine.)
/// </summary>
internal static class ColdFirstWrite
{
    public static void Run(long size)
    {
        string lower = BenchData.Lower(size);
        byte[] data = BenchData.RandomBlock(4 * BenchData.KiB);
        long offset = size / 2 + 12 * BenchData.KiB;
        var results = new List<(string Name, double Ms)>();
        for (int rep = -1; rep < 5; rep++) // rep -1: JIT warm-up, not recorded
        {
            foreach (CopyUpMode mode in new[] { CopyUpMode.Background, CopyUpMode.Synchronous })
            {
                BCowFile file = BenchData.CreateUpper(lower, 64 * BenchData.KiB, mode);
                BenchData.Evict(lower);
                var clock = Stopwatch.StartNew();
                file.WriteAt(data, offset);
                clock.Stop();
                if (rep >= 0)
                {
                    results.Add(($"B-CoW {mode}", clock.Elapsed.TotalMilliseconds));
                }
                string path = file.Name;
                file.Dispose();
                BenchData.Delete(path);
            }
            string copy = BenchData.NewPath("copy");
            BenchData.Evict(lower);
            var copyClock = Stopwatch.StartNew();
            File.Copy(lower, copy);
            using (var handle = File.OpenHandle(copy, FileMode.Open, FileAccess.ReadWrite))
            {
                RandomAccess.Write(handle, data, offset);
            }
            copyClock.Stop();
            if (rep >= 0)
            {
                results.Add(("whole-file copy", copyClock.Elapsed.TotalMilliseconds));
            }
            BenchData.Delete(copy);
        }
        Console.WriteLine($"First 4 KiB write into a {BenchData.Bytes(size)} lower file (lower file evicted from the page cache, median of 5, ms):");
        Console.WriteLine("| method | median | runs |");
        Console.WriteLine("|---|---:|---|");
        foreach (var group in results.GroupBy(r => r.Name))
        {
            double[] ms = group.Select(r => r.Ms).Order().ToArray();
            Console.WriteLine($"| {group.Key} | {ms[ms.Length / 2]:0.###} | {string.Join(", ", group.Select(r => r.Ms.ToString("0.###", System.Globalization.CultureInfo.InvariantCulture)))} |");
        }
    }
}
