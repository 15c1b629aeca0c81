using BenchmarkDotNet.Attributes;

namespace BAOverlay.Benchmarks;

/// <summary>
/// The block size choice, on a 256 MiB file: first 4 KiB write latency (fresh upper each iteration, background and
/// synchronous copy-up), 4096 random 4 KiB reads, sequential 1 MiB reads and 1024 random 4 KiB writes of a
/// half-modified file (blocks modified in random order, so the upper is fragmented; for the writes, a fresh copy of
/// the half-modified B-CoW file each iteration). Space: see <c>--space</c>.
/// </summary>
[Config(typeof(SweepConfig))]
public class BlockSizeBenchmarks
{
    private const long Size = 256L * BenchData.MiB;
    private const int Reads = 4096;
    private const int Writes = 1024;

    private readonly byte[] _data = BenchData.RandomBlock(4 * BenchData.KiB);
    private readonly byte[] _buffer = new byte[4 * BenchData.KiB];
    private readonly byte[] _big = new byte[BenchData.MiB];
    private string _lower = "";
    private string? _halfPath;
    private BCowFile? _half;
    private BCowFile? _fresh;
    private long[] _readOffsets = [], _writeOffsets = [];
    private long _firstWriteOffset;

    [Params(4 * BenchData.KiB, 16 * BenchData.KiB, 64 * BenchData.KiB, 256 * BenchData.KiB, BenchData.MiB)]
    public int BlockSize { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        _lower = BenchData.Lower(Size);
        _readOffsets = BenchData.RandomOffsets(Size, Reads);
        _writeOffsets = BenchData.RandomOffsets(Size, Writes, seed: 3);
        _firstWriteOffset = Size / 2 + 12 * BenchData.KiB;
        _halfPath = BenchData.MakeModified(_lower, BlockSize, 0.5);
        _half = BCowFile.Open(_halfPath, new BCowOpenOptions { ReadOnly = true });
        for (long offset = 0; offset < Size; offset += _buffer.Length)
        {
            _half.ReadAt(_buffer, offset); // warm
        }
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _half?.Dispose();
        BenchData.Delete(_halfPath);
    }

    [IterationSetup(Targets = [nameof(FirstWrite_Background)])]
    public void SetupBackground() => _fresh = BenchData.CreateUpper(_lower, BlockSize, CopyUpMode.Background);

    [IterationSetup(Targets = [nameof(FirstWrite_Sync)])]
    public void SetupSync() => _fresh = BenchData.CreateUpper(_lower, BlockSize, CopyUpMode.Synchronous);

    [IterationSetup(Targets = [nameof(Half_Rand4KWrite)])]
    public void SetupHalfCopy()
    {
        string path = BenchData.NewPath("halfcopy");
        File.Copy(_halfPath!, path);
        _fresh = BCowFile.Open(path);
    }

    [IterationCleanup(Targets = [nameof(FirstWrite_Background), nameof(FirstWrite_Sync), nameof(Half_Rand4KWrite)])]
    public void CleanupFresh()
    {
        string path = _fresh!.Name;
        _fresh.Dispose();
        _fresh = null;
        BenchData.Delete(path);
    }

    [Benchmark, BenchmarkCategory("first write")]
    public void FirstWrite_Background() => _fresh!.WriteAt(_data, _firstWriteOffset);

    [Benchmark, BenchmarkCategory("first write sync")]
    public void FirstWrite_Sync() => _fresh!.WriteAt(_data, _firstWriteOffset);

    [Benchmark(OperationsPerInvoke = Reads), BenchmarkCategory("half rand 4K read")]
    public void Half_Rand4KRead()
    {
        foreach (long offset in _readOffsets)
        {
            _half!.ReadAt(_buffer, offset);
        }
    }

    [Benchmark(OperationsPerInvoke = (int)(Size / BenchData.MiB)), BenchmarkCategory("half seq 1M read")]
    public void Half_Seq1MRead()
    {
        for (long offset = 0; offset < Size; offset += _big.Length)
        {
            _half!.ReadAt(_big, offset);
        }
    }

    [Benchmark(OperationsPerInvoke = Writes), BenchmarkCategory("half rand 4K write")]
    public void Half_Rand4KWrite()
    {
        foreach (long offset in _writeOffsets)
        {
            _fresh!.WriteAt(_data, offset);
        }
    }
}
