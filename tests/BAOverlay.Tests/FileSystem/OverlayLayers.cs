using BAOverlay.FileSystem;

namespace BAOverlay.Tests.FileSystem;

/// <summary>
/// An upper, a work and three lower folders (highest first), in a temp dir of their own: the layers of the semantic
/// cases (<see cref="OverlayCases"/>), built once per tree that the cases compare (kernel overlayfs, the library, the
/// FUSE mount).
/// </summary>
internal sealed class OverlayLayers : IDisposable
{
    /// <summary>Lower files at least this large are copied up block by block (B-CoW) by the overlay.</summary>
    public const long Threshold = 64 * 1024;

    private readonly TempDir _temp = new();

    public OverlayLayers()
    {
        Upper = Make("upper");
        Work = Make("work");
        Lowers = [Make("lower1"), Make("lower2"), Make("lower3")];
    }

    public string Upper { get; }

    public string Work { get; }

    public string[] Lowers { get; }

    public string U(string relative) => Path.Combine(Upper, relative);

    public string L(int layer, string relative) => Path.Combine(Lowers[layer - 1], relative);

    public OverlayOptions Options(string? work = null) => new()
    {
        LowerDirectories = Lowers,
        UpperDirectory = Upper,
        WorkDirectory = work ?? Work,
        BlockCopyUpThreshold = Threshold,
        BlockSize = 4096,
        Log = line => TestContext.Out.WriteLine(line),
    };

    public OverlayFileSystem OpenOverlay(string? work = null) => OverlayFileSystem.Open(Options(work));

    /// <summary>A fresh folder next to the layers (same file system), e.g. a second work directory or a mount point.</summary>
    public string Make(string name)
    {
        string path = _temp.File(name);
        Directory.CreateDirectory(path);
        return path;
    }

    public void Dispose() => _temp.Dispose();
}
