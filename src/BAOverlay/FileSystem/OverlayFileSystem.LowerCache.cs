using BAOverlay.Storage;

namespace BAOverlay.FileSystem;

/// <summary>Which lower files read through the hot-zone cache (<see cref="OverlayOptions.LowerCache"/>).</summary>
public sealed partial class OverlayFileSystem
{
    /// <summary>
    /// The data of a lower file opened as it is: through the cache when one is configured for its layer, keyed by its
    /// full path (the layer directory, which in a store names the layer, and the path within). Takes
    /// <paramref name="file"/> over: disposing the result disposes it, and a failure here disposes it.
    /// </summary>
    private IBlockStorage ThroughLowerCache(FileStorage file, int layer, string relative)
    {
        if (_options.LowerCache is not { } cache)
        {
            return file;
        }
        int lower = layer - (_upper < 0 ? 0 : 1);
        if (_options.LowerCacheLayers is { } layers && !layers.Contains(lower))
        {
            return file;
        }
        try
        {
            return cache.Wrap(file, _layers.Describe(layer, relative));
        }
        catch
        {
            file.Dispose();
            throw;
        }
    }
}
