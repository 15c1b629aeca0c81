using BenchmarkDotNet.Attributes;
using Microsoft.Win32.SafeHandles;

namespace BAOverlay.Benchmarks;

/// <summary>
/// Reads of a 256 MiB file through B-CoW (default 64 KiB blocks) in three states: untouched (every block in lower),
/// half-modified (a random half of the blocks written, in random order, and copied up) and fully modified (every block
/// Present, after WaitForCopyUps, also written in random order), against the plain lower file read with <see cref="RandomAccess"/>. Warm page cache. Times are per
/// read: one invocation is the whole file in 1 MiB reads, or 4096 random 4 KiB reads (same offsets for all).
/// </summary>
[Config(typeof(FastConfig))]
public class ReadBenchmarks
{
    private const long Size = 256L * BenchData.MiB;
    private const int SeqReads = (int)(Size / BenchData.MiB);
    private const int RandomReads = 4096;

    private readonly byte[] _big = new byte[BenchData.MiB];
    private readonly byte[] _small = new byte[4 * BenchData.KiB];
    private long[] _offsets = [];
    private SafeFileHandle? _plain, _fullRaw;
    private BCowFile? _untouched, _half, _full;
    private readonly List<string> _paths = new();

    [Params(64 * BenchData.KiB)]
    public int BlockSize { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        string lower = BenchData.Lower(Size);
        _offsets = BenchData.RandomOffsets(Size, RandomReads);
        _plain = File.OpenHandle(lower);
        _untouched = BenchData.CreateUpper(lower, BlockSize, CopyUpMode.Background);
        _paths.Add(_untouched.Name);
        string half = BenchData.MakeModified(lower, BlockSize, 0.5);
        string full = BenchData.MakeModified(lower, BlockSize, 1.0);
        _paths.Add(half);
        _paths.Add(full);
        _half = BCowFile.Open(half, new BCowOpenOptions { ReadOnly = true });
        _full = BCowFile.Open(full, new BCowOpenOptions { ReadOnly = true });
        _fullRaw = File.OpenHandle(full);
        // Warm the page cache for every file.
        foreach (BCowFile file in new[] { _untouched, _half, _full })
        {
            SeqRead(file);
        }
        Plain_Seq1M();
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _plain?.Dispose();
        _fullRaw?.Dispose();
        _untouched?.Dispose();
        _half?.Dispose();
        _full?.Dispose();
        _paths.ForEach(BenchData.Delete);
    }

    private void SeqRead(BCowFile file)
    {
        for (long offset = 0; offset < Size; offset += _big.Length)
        {
            file.ReadAt(_big, offset);
        }
    }

    private async Task SeqReadAsync(BCowFile file)
    {
        for (long offset = 0; offset < Size; offset += _big.Length)
        {
            await file.ReadAtAsync(_big, offset).ConfigureAwait(false);
        }
    }

    private void RandRead(BCowFile file)
    {
        foreach (long offset in _offsets)
        {
            file.ReadAt(_small, offset);
        }
    }

    private async Task RandReadAsync(BCowFile file)
    {
        foreach (long offset in _offsets)
        {
            await file.ReadAtAsync(_small, offset).ConfigureAwait(false);
        }
    }

    // ---- sequential, 1 MiB reads

    [Benchmark(Baseline = true, OperationsPerInvoke = SeqReads), BenchmarkCategory("seq 1M")]
    public void Plain_Seq1M()
    {
        for (long offset = 0; offset < Size; offset += _big.Length)
        {
            RandomAccess.Read(_plain!, _big, offset);
        }
    }

    [Benchmark(OperationsPerInvoke = SeqReads), BenchmarkCategory("seq 1M")]
    public void Untouched_Seq1M() => SeqRead(_untouched!);

    [Benchmark(OperationsPerInvoke = SeqReads), BenchmarkCategory("seq 1M")]
    public void Half_Seq1M() => SeqRead(_half!);

    [Benchmark(OperationsPerInvoke = SeqReads), BenchmarkCategory("seq 1M")]
    public void Full_Seq1M() => SeqRead(_full!);

    /// <summary>
    /// Diagnostic: the fully modified file's upper data (from offset 8 KiB, where the blocks are, in the random order
    /// they were modified) read directly with RandomAccess in 1 MiB reads, no B-CoW code: what reading the upper
    /// file's pages costs at best. Full_Seq1M against it is the engine plus the fragmentation (one read per block,
    /// as logically adjacent blocks are not adjacent in upper).
    /// </summary>
    [Benchmark(OperationsPerInvoke = SeqReads), BenchmarkCategory("seq 1M")]
    public void FullRawUpper_Seq1M()
    {
        for (long offset = 0; offset < Size; offset += _big.Length)
        {
            RandomAccess.Read(_fullRaw!, _big, 8192 + offset);
        }
    }

    // ---- random 4 KiB reads

    [Benchmark(Baseline = true, OperationsPerInvoke = RandomReads), BenchmarkCategory("rand 4K")]
    public void Plain_Rand4K()
    {
        foreach (long offset in _offsets)
        {
            RandomAccess.Read(_plain!, _small, offset);
        }
    }

    [Benchmark(OperationsPerInvoke = RandomReads), BenchmarkCategory("rand 4K")]
    public void Untouched_Rand4K() => RandRead(_untouched!);

    [Benchmark(OperationsPerInvoke = RandomReads), BenchmarkCategory("rand 4K")]
    public void Half_Rand4K() => RandRead(_half!);

    [Benchmark(OperationsPerInvoke = RandomReads), BenchmarkCategory("rand 4K")]
    public void Full_Rand4K() => RandRead(_full!);

    /// <summary>Diagnostic: the same random reads straight from the fully modified file's upper data (see above).</summary>
    [Benchmark(OperationsPerInvoke = RandomReads), BenchmarkCategory("rand 4K")]
    public void FullRawUpper_Rand4K()
    {
        foreach (long offset in _offsets)
        {
            RandomAccess.Read(_fullRaw!, _small, 8192 + offset);
        }
    }

    // ---- the async API: per-call cost of the async path against RandomAccess's own async reads

    [Benchmark(Baseline = true, OperationsPerInvoke = SeqReads), BenchmarkCategory("seq 1M async")]
    public async Task PlainAsync_Seq1M()
    {
        for (long offset = 0; offset < Size; offset += _big.Length)
        {
            await RandomAccess.ReadAsync(_plain!, _big, offset).ConfigureAwait(false);
        }
    }

    [Benchmark(OperationsPerInvoke = SeqReads), BenchmarkCategory("seq 1M async")]
    public Task UntouchedAsync_Seq1M() => SeqReadAsync(_untouched!);

    [Benchmark(Baseline = true, OperationsPerInvoke = RandomReads), BenchmarkCategory("rand 4K async")]
    public async Task PlainAsync_Rand4K()
    {
        foreach (long offset in _offsets)
        {
            await RandomAccess.ReadAsync(_plain!, _small, offset).ConfigureAwait(false);
        }
    }

    [Benchmark(OperationsPerInvoke = RandomReads), BenchmarkCategory("rand 4K async")]
    public Task HalfAsync_Rand4K() => RandReadAsync(_half!);
}
