using BAOverlay.Benchmarks;
using BenchmarkDotNet.Running;

// Benchmarks of BAOverlay (docs/benchmarks.md has the results and how to read them).
//
//   dotnet run -c Release --project bench/BAOverlay.Benchmarks -- --filter '*'        all BenchmarkDotNet benchmarks
//   dotnet run -c Release --project bench/BAOverlay.Benchmarks -- --filter '*Read*'   one class
//   dotnet run -c Release --project bench/BAOverlay.Benchmarks -- --space             upper space table (no timing)
//   dotnet run -c Release --project bench/BAOverlay.Benchmarks -- --paired [65536]    read ratios, paired per round
//   dotnet run -c Release --project bench/BAOverlay.Benchmarks -- --paired-reread     the same, files re-read from disk
//   dotnet run -c Release --project bench/BAOverlay.Benchmarks -- --cold [1G]         first write, lower file not cached
//   dotnet run -c Release --project bench/BAOverlay.Benchmarks -- --index-memory [50000]  a layer index's memory
//
// Files go to /var/tmp/baoverlay-bench (BAOVERLAY_BENCH_DIR overrides; use a disk, not tmpfs) and are removed at the
// end unless --keep-data is given.
bool keep = args.Contains("--keep-data");
args = args.Where(a => a != "--keep-data").ToArray();
try
{
    if (args.Length > 0 && args[0] == "--space")
    {
        SpaceTable.Run();
    }
    else if (args.Length > 0 && args[0] is "--paired" or "--paired-reread")
    {
        PairedReads.Run(args.Length > 1 ? int.Parse(args[1], System.Globalization.CultureInfo.InvariantCulture) : 64 * BenchData.KiB, reread: args[0] == "--paired-reread");
    }
    else if (args.Length > 0 && args[0] == "--cold")
    {
        ColdFirstWrite.Run(args.Length > 1 ? long.Parse(args[1].TrimEnd('G', 'g'), System.Globalization.CultureInfo.InvariantCulture) * BenchData.GiB : BenchData.GiB);
    }
    else if (args.Length > 0 && args[0] == "--index-memory")
    {
        IndexMemory.Run(args.Length > 1 ? int.Parse(args[1], System.Globalization.CultureInfo.InvariantCulture) : 50_000);
    }
    else
    {
        BenchmarkSwitcher.FromAssembly(typeof(BenchData).Assembly).Run(args);
    }
}
finally
{
    if (!keep)
    {
        BenchData.RemoveAll();
    }
}
