using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text;
using BAOverlay.Interop;
using Mono.Unix.Native;

namespace BAOverlay.FileSystem;

/// <summary>
/// Which inode number an object has. xino-style: the layer's tag in the top 16 bits, the real inode below, so objects
/// of different layers never share one. An object copied up keeps the number it had in its lower layer, recorded in
/// an xattr of its upper copy with the path it was copied from (its origin), so numbers survive copy-up, rename and
/// remount. That record is read from disk and so is only a claim: it is honoured only while the origin still holds
/// the object it names (same layer, same inode number) and that object is not itself shown elsewhere in the merged
/// tree. Otherwise, whether the lower object was deleted and its inode reused by another file, or the record was
/// forged, the upper object takes its own number (the upper layer's tag and its own inode), which nothing else can
/// have: two objects never share a number.
/// </summary>
public sealed partial class OverlayFileSystem
{
    private const ulong HashTag = 0xFFFFUL << 48;
    private const ulong InoMask = (1UL << 48) - 1;

    /// <summary>The most bytes of origin path a kept-number record holds after its 8-byte number.</summary>
    private const int MaxOriginBytes = 4096;

    private ulong InoOf(int layer, in Stat st, string path, string relative) => InoOf(layer, st, path, relative, out _);

    /// <param name="layer">The layer the object is in.</param>
    /// <param name="st">Its lstat.</param>
    /// <param name="path">A path that reaches it (under /proc/self/fd).</param>
    /// <param name="relative">Its path in the layer.</param>
    /// <param name="isBCow">For an upper object, whether it is a B-CoW file, learnt from the same listxattr; null when
    /// not known.</param>
    private ulong InoOf(int layer, in Stat st, string path, string relative, out bool? isBCow)
    {
        isBCow = null;
        if (layer == _upper && UpperMarks(path, out isBCow) is { } kept)
        {
            if (KeptIsOwn(kept.Ino, kept.Origin ?? relative, relative, st.st_ino))
            {
                return kept.Ino;
            }
            LogOnce(_layers.Describe(layer, relative),
                $"{_layers.Describe(layer, relative)}: the inode number it kept ({kept.Ino:x}) belongs to no origin of its own; it takes its own number");
        }
        if (layer != _upper && st.st_nlink > 1 && (st.st_mode & FilePermissions.S_IFMT) != FilePermissions.S_IFDIR)
        {
            // Hard links in a lower layer are separate objects here (a write copies up the one name, as with kernel
            // overlayfs), so they need one number per name: a hash of the path in the layer, stable across remounts.
            return LowerLinkIno(layer, relative);
        }
        ulong tag = (ulong)(_upper < 0 ? layer + 1 : layer) + 1;
        if (st.st_ino > InoMask)
        {
            throw new OverlayException(Errno.EOVERFLOW, $"{_layers.Describe(layer, relative)}: inode number {st.st_ino} does not fit in 48 bits");
        }
        return (tag << 48) | st.st_ino;
    }

    private static ulong LowerLinkIno(int layer, string relative)
    {
        ulong hash = 14695981039346656037UL;
        foreach (byte b in Encoding.UTF8.GetBytes($"{layer}:/{relative}"))
        {
            hash = unchecked((hash ^ b) * 1099511628211UL);
        }
        return HashTag | (hash & InoMask);
    }

    /// <summary>
    /// Whether the number an upper object (at <paramref name="relative"/>, upper inode <paramref name="upperIno"/>)
    /// kept from <paramref name="origin"/> is still its own: the origin holds the object the number was made from,
    /// and the merged tree does not show that object anywhere but through this one.
    /// </summary>
    private bool KeptIsOwn(ulong kept, string origin, string relative, ulong upperIno)
    {
        if (Redirects.Checked(origin, _layers.Describe(_upper, relative), _log) is null || !OriginHolds(kept, origin))
        {
            return false;
        }
        if (origin == relative)
        {
            return true; // copied up in place: this object hides its origin
        }
        // Renamed, linked, or a claim copied onto another object: what does the origin's path show now?
        List<(int Layer, string Path)> shown;
        Stat top;
        try
        {
            shown = ShownAt(origin, out top);
        }
        catch (OverlayException)
        {
            return false;
        }
        if (shown.Count == 0)
        {
            return true; // whited out or gone: the origin shows nowhere
        }
        int layer = shown[0].Layer;
        if (layer == _upper)
        {
            // An upper object there: this one under another name (a hard link), or another that must not claim the
            // same number (the one at the origin's path wins).
            if (top.st_ino == upperIno)
            {
                return true;
            }
            using LayerPath other = _layers.Locate(_upper, shown[0].Path);
            return UpperMarks(other.Path, out _) is not { } claim || claim.Ino != kept;
        }
        return LayerIno(layer, shown[0].Path, top) != kept; // a lower object there shows its own number
    }

    /// <summary>Whether the lower object at <paramref name="origin"/> is the one <paramref name="kept"/> was made from.</summary>
    private bool OriginHolds(ulong kept, string origin)
    {
        if ((kept & ~InoMask) == HashTag)
        {
            for (int layer = _upper + 1; layer < _layers.Count; layer++)
            {
                if (LowerLinkIno(layer, origin) == kept && LowerStat(layer, origin, out _))
                {
                    return true;
                }
            }
            return false;
        }
        int tagged = (int)(kept >> 48) - 1; // the layer of a lower number, with an upper layer present
        return tagged > _upper && tagged < _layers.Count && LowerStat(tagged, origin, out Stat st) && st.st_ino == (kept & InoMask);
    }

    /// <summary>The number a lower object shows (its layer's tag and inode, or its path hash when hard-linked).</summary>
    private ulong LayerIno(int layer, string relative, in Stat st) =>
        st.st_nlink > 1 && (st.st_mode & FilePermissions.S_IFMT) != FilePermissions.S_IFDIR
            ? LowerLinkIno(layer, relative)
            : ((ulong)layer + 1 << 48) | (st.st_ino & InoMask);

    private bool LowerStat(int layer, string relative, out Stat st)
    {
        st = default;
        if (IndexOf(layer) is { } index)
        {
            return IndexedLstat(index, relative, out st); // the numbers the lookups of an indexed layer give
        }
        if (_layers.TryLocate(layer, relative, out LayerPath located) != 0)
        {
            return false;
        }
        using (located)
        {
            return LayerStack.Lstat(located, out st) == 0;
        }
    }

    /// <summary>What the merged tree shows at <paramref name="path"/> (from the root), by the lookup's rules, without
    /// making nodes: its layers, or none.</summary>
    private List<(int Layer, string Path)> ShownAt(string path, out Stat top)
    {
        List<(int Layer, string Path)> layers = _root.Layers;
        top = default;
        string[] names = path.Split('/');
        for (int i = 0; i < names.Length; i++)
        {
            layers = MergeLayers(layers, names[i], out top);
            if (layers.Count == 0 || (i < names.Length - 1 && ((uint)top.st_mode & S_IFMT) != S_IFDIR))
            {
                return [];
            }
        }
        return layers;
    }

    private readonly HashSet<string> _loggedOnce = new(StringComparer.Ordinal);

    /// <summary>One log line per object and run: listings ask again and again.</summary>
    private void LogOnce(string key, string line)
    {
        lock (_loggedOnce)
        {
            if (!_loggedOnce.Add(key))
            {
                return;
            }
        }
        _log(line);
    }

    /// <summary>The kept-number record: the number (8 bytes, little-endian), then the origin's path in the layers.</summary>
    private static byte[] KeptInoRecord(ulong ino, string origin)
    {
        byte[] record = new byte[8 + Encoding.UTF8.GetByteCount(origin)];
        BinaryPrimitives.WriteUInt64LittleEndian(record, ino);
        Encoding.UTF8.GetBytes(origin, record.AsSpan(8));
        return record;
    }

    /// <summary>A record as read: a number alone (written before origins were recorded: its origin is then taken to be
    /// where the object is) or with its origin; null when malformed.</summary>
    private static (ulong Ino, string? Origin)? ParseKeptIno(ReadOnlySpan<byte> record) =>
        record.Length < 8 ? null
        : (BinaryPrimitives.ReadUInt64LittleEndian(record), record.Length == 8 ? null : Encoding.UTF8.GetString(record[8..]));

    /// <summary>
    /// The number an upper object claims to have kept across its copy-up (user xattr, or trusted for objects that
    /// cannot carry user xattrs), or null; and whether it is a B-CoW file. One listxattr answers both for the common
    /// object that has neither mark (made in upper), where three getxattr failed before. Should listxattr fail,
    /// getxattr decides.
    /// </summary>
    private static unsafe (ulong Ino, string? Origin)? UpperMarks(string path, out bool? isBCow)
    {
        isBCow = null;
        const int Small = 1024;
        byte* small = stackalloc byte[Small];
        byte[]? large = null;
        nint length = LibC.llistxattr(path, small, Small);
        if (length < 0 && Marshal.GetLastPInvokeError() == LibC.ERANGE)
        {
            large = new byte[64 * 1024]; // XATTR_LIST_MAX
            fixed (byte* p = large)
            {
                length = LibC.llistxattr(path, p, (nuint)large.Length);
            }
        }
        if (length >= 0)
        {
            ReadOnlySpan<byte> list = large is null ? new ReadOnlySpan<byte>(small, (int)length) : large.AsSpan(0, (int)length);
            isBCow = HasXattr(list, BCowXattrName);
            if (!HasXattr(list, InoXattrName) && !HasXattr(list, TrustedInoXattrName))
            {
                return null;
            }
        }
        byte* record = stackalloc byte[8 + MaxOriginBytes];
        foreach (string name in (ReadOnlySpan<string>)[LayerPaths.InoXattr, LayerPaths.TrustedInoXattr])
        {
            nint n = LibC.lgetxattr(path, name, record, 8 + MaxOriginBytes);
            if (n >= 0)
            {
                return ParseKeptIno(new ReadOnlySpan<byte>(record, (int)n));
            }
        }
        return null;
    }

    private static readonly byte[] InoXattrName = Encoding.UTF8.GetBytes(LayerPaths.InoXattr);
    private static readonly byte[] TrustedInoXattrName = Encoding.UTF8.GetBytes(LayerPaths.TrustedInoXattr);
    private static readonly byte[] BCowXattrName = Encoding.UTF8.GetBytes(LayerPaths.BCowXattr);

    /// <summary>Whether a listxattr result (names, each ending in NUL) holds <paramref name="name"/>.</summary>
    private static bool HasXattr(ReadOnlySpan<byte> list, ReadOnlySpan<byte> name)
    {
        while (!list.IsEmpty)
        {
            int end = list.IndexOf((byte)0);
            ReadOnlySpan<byte> entry = end < 0 ? list : list[..end];
            if (entry.SequenceEqual(name))
            {
                return true;
            }
            list = end < 0 ? default : list[(end + 1)..];
        }
        return false;
    }
}
