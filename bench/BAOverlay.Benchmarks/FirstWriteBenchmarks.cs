using BenchmarkDotNet.Attributes;

namespace BAOverlay.Benchmarks;

/// <summary>
/// The first 4 KiB write into a big lower file, each iteration into a fresh upper: B-CoW with background copy-up
/// (the write returns once its own sub-blocks are written), B-CoW with synchronous copy-up (the write copies its whole
/// block first), and the whole-file copy-up of kernel overlayfs / fuse-overlayfs (copy the file, then write). Once
/// the write alone, once the write made durable (B-CoW Flush; fsync of the copy, which overlayfs also does after a
/// copy-up). Creating the B-CoW file (like mounting an overlay) is in the iteration setup, not measured.
/// </summary>
[Config(typeof(CopyConfig))]
public class FirstWriteBenchmarks
{
    private readonly byte[] _data = BenchData.RandomBlock(4 * BenchData.KiB);
    private string _lower = "";
    private long _offset;
    private BCowFile? _file;
    private string? _path;

    [Params(64L * BenchData.MiB, 256L * BenchData.MiB, BenchData.GiB)]
    public long FileSize { get; set; }

    [Params(64 * BenchData.KiB)]
    public int BlockSize { get; set; }

    [GlobalSetup]
    public void GlobalSetup()
    {
        _lower = BenchData.Lower(FileSize);
        _offset = FileSize / 2 + 12 * BenchData.KiB; // 4 KiB-aligned, mid-block
    }

    [IterationSetup(Targets = [nameof(BCowBackground_Write), nameof(BCowBackground_WriteFlush)])]
    public void SetupBackground() => _file = BenchData.CreateUpper(_lower, BlockSize, CopyUpMode.Background);

    [IterationSetup(Targets = [nameof(BCowSync_Write), nameof(BCowSync_WriteFlush)])]
    public void SetupSync() => _file = BenchData.CreateUpper(_lower, BlockSize, CopyUpMode.Synchronous);

    [IterationSetup(Targets = [nameof(WholeFileCopy_Write), nameof(WholeFileCopy_WriteFsync)])]
    public void SetupCopy() => _path = BenchData.NewPath("copy");

    [IterationCleanup]
    public void Cleanup()
    {
        if (_file is not null)
        {
            _path = _file.Name;
            _file.Dispose();
            _file = null;
        }
        BenchData.Delete(_path);
        _path = null;
    }

    [Benchmark(Baseline = true), BenchmarkCategory("write")]
    public void WholeFileCopy_Write()
    {
        File.Copy(_lower, _path!);
        using var handle = File.OpenHandle(_path!, FileMode.Open, FileAccess.ReadWrite);
        RandomAccess.Write(handle, _data, _offset);
    }

    [Benchmark, BenchmarkCategory("write")]
    public void BCowBackground_Write() => _file!.WriteAt(_data, _offset);

    [Benchmark, BenchmarkCategory("write")]
    public void BCowSync_Write() => _file!.WriteAt(_data, _offset);

    [Benchmark(Baseline = true), BenchmarkCategory("write+flush")]
    public void WholeFileCopy_WriteFsync()
    {
        File.Copy(_lower, _path!);
        using var handle = File.OpenHandle(_path!, FileMode.Open, FileAccess.ReadWrite);
        RandomAccess.Write(handle, _data, _offset);
        RandomAccess.FlushToDisk(handle);
    }

    [Benchmark, BenchmarkCategory("write+flush")]
    public void BCowBackground_WriteFlush()
    {
        _file!.WriteAt(_data, _offset);
        _file.Flush();
    }

    [Benchmark, BenchmarkCategory("write+flush")]
    public void BCowSync_WriteFlush()
    {
        _file!.WriteAt(_data, _offset);
        _file.Flush();
    }
}
