using System.Diagnostics;

namespace BAOverlay.Benchmarks;

/// <summary>
/// The first 4 KiB write with a cold page cache (sync; echo 3 > /proc/sys/vm/drop_caches before each measurement,
/// so it needs root): B-CoW background and synchronous copy-up against the whole-file copy-up. Median of 3.
/// </summary>
internal static class ColdFirstWrite
{
    public static void Run(long size)
    {
        string lower = BenchData.Lower(size);
        byte[] data = BenchData.RandomBlock(4 * BenchData.KiB);
        long offset = size / 2 + 12 * BenchData.KiB;
        var results = new List<(string Name, double Ms)>();
        for (int rep = 0; rep < 3; rep++)
        {
            foreach (CopyUpMode mode in new[] { CopyUpMode.Background, CopyUpMode.Synchronous })
            {
                BCowFile file = BenchData.CreateUpper(lower, 64 * BenchData.KiB, mode);
                DropCaches();
                var clock = Stopwatch.StartNew();
                file.WriteAt(data, offset);
                clock.Stop();
                results.Add(($"B-CoW {mode}", clock.Elapsed.TotalMilliseconds));
                string path = file.Name;
                file.Dispose();
                BenchData.Delete(path);
            }
            string copy = BenchData.NewPath("copy");
            DropCaches();
            var copyClock = Stopwatch.StartNew();
            File.Copy(lower, copy);
            using (var handle = File.OpenHandle(copy, FileMode.Open, FileAccess.ReadWrite))
            {
                RandomAccess.Write(handle, data, offset);
            }
            copyClock.Stop();
            results.Add(("whole-file copy", copyClock.Elapsed.TotalMilliseconds));
            BenchData.Delete(copy);
        }
        Console.WriteLine($"Cold-cache first 4 KiB write into a {BenchData.Bytes(size)} lower file (median of 3, ms):");
        Console.WriteLine("| method | median | runs |");
        Console.WriteLine("|---|---:|---|");
        foreach (var group in results.GroupBy(r => r.Name))
        {
            double[] ms = group.Select(r => r.Ms).Order().ToArray();
            Console.WriteLine($"| {group.Key} | {ms[ms.Length / 2]:0.###} | {string.Join(", ", group.Select(r => r.Ms.ToString("0.###", System.Globalization.CultureInfo.InvariantCulture)))} |");
        }
    }

    private static void DropCaches()
    {
        BenchData.Run("sync", "");
        File.WriteAllText("/proc/sys/vm/drop_caches", "3");
    }
}
