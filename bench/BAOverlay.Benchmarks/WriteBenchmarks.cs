using BenchmarkDotNet.Attributes;
using Microsoft.Win32.SafeHandles;

namespace BAOverlay.Benchmarks;

/// <summary>
/// 1024 random 4 KiB writes (per-write times) into a 256 MiB file: the plain file (a writable copy of the lower
/// file, written in place), a fully modified B-CoW file (every block Present: overwrites in place), and a fresh B-CoW
/// upper per iteration (first writes: allocation, plus background or synchronous copy-up of each touched block).
/// </summary>
[Config(typeof(FastConfig))]
public class WriteBenchmarks
{
    private const long Size = 256L * BenchData.MiB;
    private const int Writes = 1024;

    private readonly byte[] _data = BenchData.RandomBlock(4 * BenchData.KiB);
    private string _lower = "";
    private long[] _offsets = [];
    private string? _plainPath, _fullPath;
    private SafeFileHandle? _plain;
    private BCowFile? _full;
    private BCowFile? _fresh;

    [Params(64 * BenchData.KiB)]
    public int BlockSize { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        _lower = BenchData.Lower(Size);
        _offsets = BenchData.RandomOffsets(Size, Writes, seed: 3);
        _plainPath = BenchData.NewPath("plain");
        File.Copy(_lower, _plainPath);
        _plain = File.OpenHandle(_plainPath, FileMode.Open, FileAccess.ReadWrite);
        _fullPath = BenchData.MakeModified(_lower, BlockSize, 1.0);
        _full = BCowFile.Open(_fullPath);
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _plain?.Dispose();
        _full?.Dispose();
        BenchData.Delete(_plainPath);
        BenchData.Delete(_fullPath);
    }

    [IterationSetup(Targets = [nameof(FreshBackground_Rand4KWrite)])]
    public void SetupBackground() => _fresh = BenchData.CreateUpper(_lower, BlockSize, CopyUpMode.Background);

    [IterationSetup(Targets = [nameof(FreshSync_Rand4KWrite)])]
    public void SetupSync() => _fresh = BenchData.CreateUpper(_lower, BlockSize, CopyUpMode.Synchronous);

    [IterationCleanup(Targets = [nameof(FreshBackground_Rand4KWrite), nameof(FreshSync_Rand4KWrite)])]
    public void CleanupFresh()
    {
        string path = _fresh!.Name;
        _fresh.Dispose();
        _fresh = null;
        BenchData.Delete(path);
    }

    [Benchmark(Baseline = true, OperationsPerInvoke = Writes), BenchmarkCategory("rand 4K write")]
    public void Plain_Rand4KWrite()
    {
        foreach (long offset in _offsets)
        {
            RandomAccess.Write(_plain!, _data, offset);
        }
    }

    [Benchmark(OperationsPerInvoke = Writes), BenchmarkCategory("rand 4K write")]
    public void Full_Rand4KWrite()
    {
        foreach (long offset in _offsets)
        {
            _full!.WriteAt(_data, offset);
        }
    }

    [Benchmark(OperationsPerInvoke = Writes), BenchmarkCategory("rand 4K write")]
    public void FreshBackground_Rand4KWrite()
    {
        foreach (long offset in _offsets)
        {
            _fresh!.WriteAt(_data, offset);
        }
    }

    [Benchmark(OperationsPerInvoke = Writes), BenchmarkCategory("rand 4K write")]
    public void FreshSync_Rand4KWrite()
    {
        foreach (long offset in _offsets)
        {
            _fresh!.WriteAt(_data, offset);
        }
    }

    [Benchmark(Baseline = true, OperationsPerInvoke = Writes), BenchmarkCategory("rand 4K write async")]
    public async Task PlainAsync_Rand4KWrite()
    {
        foreach (long offset in _offsets)
        {
            await RandomAccess.WriteAsync(_plain!, _data, offset).ConfigureAwait(false);
        }
    }

    [Benchmark(OperationsPerInvoke = Writes), BenchmarkCategory("rand 4K write async")]
    public async Task FullAsync_Rand4KWrite()
    {
        foreach (long offset in _offsets)
        {
            await _full!.WriteAtAsync(_data, offset).ConfigureAwait(false);
        }
    }
}
