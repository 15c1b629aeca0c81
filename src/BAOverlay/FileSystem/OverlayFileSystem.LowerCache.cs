using BAOverlay.Cache;
using BAOverlay.Storage;

namespace BAOverlay.FileSystem;

/// <summary>Which lower files read through the hot-zone cache (<see cref="OverlayOptions.LowerCache"/>).</summary>
public sealed partial class OverlayFileSystem
{
    /// <summary>The hot-zone cache lower files are read through (<see cref="OverlayOptions.LowerCache"/>), or null: its
    /// <see cref="ZoneCache.Status"/> tells whether the store behind the lower layers answers.</summary>
    public ZoneCache? LowerCache => _options.LowerCache;

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

    /// <summary>
    /// The lower file of a B-CoW file (at its creation by a copy-up, and at each open): through the cache as
    /// <see cref="ThroughLowerCache"/>, so that its reads run under the store's deadline and its cached zones answer
    /// while the store does not, but adding no heat until <see cref="CountHeat"/>: the sampled identity check the B-CoW
    /// engine makes at creation and open reads 64 chunks spread over the file, which are not a reader's reads.
    /// </summary>
    private IBlockStorage BCowLowerThroughCache(FileStorage file, int layer, string relative)
    {
        IBlockStorage lower = ThroughLowerCache(file, layer, relative);
        if (lower is CachedLowerStorage cached)
        {
            cached.CountsHeat = false;
        }
        return lower;
    }

    /// <summary>From now on the reads of <paramref name="lower"/> (made by <see cref="BCowLowerThroughCache"/>) are a
    /// reader's: they count heat.</summary>
    private static void CountHeat(IBlockStorage? lower)
    {
        if (lower is CachedLowerStorage cached)
        {
            cached.CountsHeat = true;
        }
    }
}
