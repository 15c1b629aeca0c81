using BAOverlay.Cache;
using BAOverlay.Interop;
using BAOverlay.Storage;
using Microsoft.Win32.SafeHandles;
using Mono.Unix.Native;

namespace BAOverlay.FileSystem;

/// <summary>Which lower files read through the hot-zone cache (<see cref="OverlayOptions.LowerCache"/>).</summary>
public sealed partial class OverlayFileSystem
{
    /// <summary>The hot-zone cache lower files are read through (<see cref="OverlayOptions.LowerCache"/>), or null: its
    /// <see cref="ZoneCache.Status"/> tells whether the store behind the lower layers answers.</summary>
    public ZoneCache? LowerCache => _options.LowerCache;

    /// <summary>Whether lower files of <paramref name="layer"/> (an index into the layer stack) read through the cache.</summary>
    private bool CachesLayer(int layer) =>
        _options.LowerCache is not null &&
        (_options.LowerCacheLayers is not { } layers || layers.Contains(layer - (_upper < 0 ? 0 : 1)));

    /// <summary>
    /// The data of the lower regular file at <paramref name="at"/> (<paramref name="relative"/> in
    /// <paramref name="layer"/>), <paramref name="known"/> its lstat if taken (else taken now): when its layer reads through the cache, the file is
    /// opened lazily (<see cref="LazyRemoteFile"/>), at the first read the cache cannot answer, so a file read from
    /// cached zones only is never opened on the store; otherwise it is opened now.
    /// </summary>
    private IBlockStorage OpenLowerData(in LayerPath at, Stat? known, int layer, string relative, string described)
    {
        if (!CachesLayer(layer))
        {
            return OpenLowerFile(at, described);
        }
        Stat st;
        if (known is { } given)
        {
            st = given;
        }
        else if (LayerStack.Lstat(at, out st) != 0)
        {
            throw OverlayException.FromLastError("open", described);
        }
        if ((st.st_mode & FilePermissions.S_IFMT) != FilePermissions.S_IFREG)
        {
            _log($"{described}: not a regular file, refused as file data");
            throw new OverlayException(Errno.EIO, $"{described}: not a regular file");
        }
        long mtimeNs = (st.st_mtime * 1_000_000_000L) + st.st_mtime_nsec;
        // The file is opened again by position when first needed (on one of the cache's reader threads, under the
        // store's deadline): the handle of its directory borrowed now may be gone by then.
        var lazy = new LazyRemoteFile(described, st.st_size, mtimeNs, st.st_ino, () => ReopenLowerFile(layer, relative, described), _options.LowerCache!.CountStoreOpen);
        // A file of a store layer verified lazily is checked whole at its first read from the store (FirstFetchCheck).
        return _options.LowerCache!.Wrap(lazy, described, st.st_size, mtimeNs, ownsRemote: true, st.st_ino, IndexOf(layer)?.ContentCheck(relative));
    }

    /// <summary>Opens the lower file at <paramref name="relative"/> in <paramref name="layer"/> for a
    /// <see cref="LazyRemoteFile"/>: the handle, or an <see cref="OverlayException"/> with the errno.</summary>
    private SafeFileHandle ReopenLowerFile(int layer, string relative, string described)
    {
        // After the overlay is closed its layers' handles are too (a late first read of a file still held open).
        ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed), this);
        Errno errno = _layers.TryLocate(layer, relative, out LayerPath located);
        if (errno != 0)
        {
            throw new OverlayException(errno, $"{described}: {Stdlib.strerror(errno)}");
        }
        using (located)
        {
            return OpenLowerHandle(located, described);
        }
    }

    /// <summary>
    /// The lower file of a B-CoW file (at its creation by a copy-up, and at each open): through the cache as
    /// <see cref="OpenLowerData"/> (opened lazily), so that its reads run under the store's deadline and its cached
    /// zones answer while the store does not, but adding no heat until <see cref="CountHeat"/>: the sampled identity
    /// check the B-CoW engine makes at creation and open reads 64 chunks spread over the file, which are not a reader's
    /// reads.
    /// </summary>
    private IBlockStorage BCowLowerThroughCache(in LayerPath at, in Stat st, int layer, string relative, string described)
    {
        IBlockStorage lower = OpenLowerData(at, st, layer, relative, described);
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
