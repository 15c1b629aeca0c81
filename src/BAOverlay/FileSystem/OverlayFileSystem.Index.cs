using System.Runtime.CompilerServices;
using BAOverlay.Store;
using Mono.Unix.Native;

namespace BAOverlay.FileSystem;

/// <summary>
/// Lower layers answered from their metadata index (<see cref="OverlayOptions.LowerIndexes"/>): an immutable store
/// layer's lookups, attributes, listings, link targets and extended attributes come from memory, so a start over a
/// network file system sends it only the reads of data the cache cannot answer. The index holds what the layer's own walk saw, checked
/// against its digest (<see cref="LayerIndex"/>); whatever it cannot answer as the layer would (a directory with a
/// redirect, a file marked as a B-CoW file) goes to the layer as before.
/// </summary>
public sealed partial class OverlayFileSystem
{
    private static readonly string[] RedirectNames = [Redirects.Xattr, "trusted.overlay.redirect", "user.overlay.redirect"];

    /// <summary>How a lookup in an indexed layer went (<see cref="MergeIndexed"/>).</summary>
    private enum IndexedMerge
    {
        /// <summary>Go on with the next layer down.</summary>
        Continue,

        /// <summary>Nothing below counts (whited out, opaque, a non-directory).</summary>
        Stop,

        /// <summary>The index cannot answer as the layer would: ask the layer itself.</summary>
        Live,
    }

    /// <summary>The metadata index of <paramref name="layer"/> (an index into the layer stack), or null.</summary>
    private LayerIndex? IndexOf(int layer)
    {
        if (_options.LowerIndexes is not { } indexes || layer == _upper)
        {
            return null;
        }
        int lower = layer - (_upper < 0 ? 0 : 1);
        return lower >= 0 && lower < indexes.Count ? indexes[lower] : null;
    }

    /// <summary>Checks <see cref="OverlayOptions.LowerIndexes"/> against the lower directories.</summary>
    private static void ValidateIndexes(OverlayOptions options)
    {
        if (options.LowerIndexes is { } indexes && indexes.Count != options.LowerDirectories.Count)
        {
            throw new ArgumentException($"{indexes.Count} lower indexes for {options.LowerDirectories.Count} lower directories", nameof(options));
        }
        for (int i = 0; i < (options.LowerIndexes?.Count ?? 0); i++)
        {
            // A layer verified lazily is verified file by file at the first read through the cache: it must be read so.
            if (options.LowerIndexes![i] is { ContentVerified: false } lazy &&
                (options.LowerCache is null || (options.LowerCacheLayers is { } cached && !cached.Contains(i))))
            {
                throw new ArgumentException($"the index of layer {lazy.Digest} verifies its files at their first read through the cache: that layer must be read through LowerCache", nameof(options));
            }
        }
    }

    /// <summary>
    /// One step of <see cref="MergeLayers"/> in an indexed layer: <paramref name="name"/> in
    /// <paramref name="directoryPath"/>, by the same rules, from the index.
    /// </summary>
    private IndexedMerge MergeIndexed(LayerIndex index, int layer, string directoryPath, string name, List<(int Layer, string Path)> layers, ref Stat top)
    {
        string path = LayerPaths.Child(directoryPath, name);
        int at = index.Find(path);
        if (at < 0)
        {
            return index.Find(LayerPaths.Child(directoryPath, Whiteouts.Prefix + name)) >= 0 ? IndexedMerge.Stop : IndexedMerge.Continue;
        }
        Stat st = index.StatOf(at);
        if (Whiteouts.IsWhiteoutStat(st))
        {
            return IndexedMerge.Stop;
        }
        uint type = (uint)st.st_mode & S_IFMT;
        if (layers.Count > 0 && type != S_IFDIR)
        {
            return IndexedMerge.Stop;
        }
        if (type == S_IFDIR && RedirectNames.Any(x => index.Xattr(at, x) is not null))
        {
            return IndexedMerge.Live;
        }
        if (layers.Count == 0)
        {
            top = st;
        }
        layers.Add((layer, path));
        if (type != S_IFDIR)
        {
            return IndexedMerge.Stop;
        }
        bool opaque = Whiteouts.OpaqueXattrs.Any(x => index.Xattr(at, x) is [(byte)'y']) ||
            index.Find(LayerPaths.Child(path, Whiteouts.OpaqueMarker)) >= 0;
        return opaque ? IndexedMerge.Stop : IndexedMerge.Continue;
    }

    /// <summary>The attributes of a node whose top object is in an indexed layer, from the index; null when the layer
    /// itself must answer (no index, the root, a file marked as a B-CoW file).</summary>
    private OverlayStat? IndexedStatOf(OverlayNode node)
    {
        if (node.Removed || node.Layers.Count == 0 || IndexOf(node.Layers[0].Layer) is not { } index)
        {
            return null;
        }
        int at = index.Find(node.Layers[0].Path);
        if (at < 0)
        {
            throw new OverlayException(Errno.ENOENT, $"{Describe(node)}: not in its layer's index");
        }
        if (index.Xattr(at, LayerPaths.BCowXattr) is not null)
        {
            return null;
        }
        Stat st = index.StatOf(at);
        OverlayStat stat = MergedLinks(node, ToStat(node.Ino, st, null));
        if (node.Data is not null)
        {
            node.OpenStat = new StrongBox<OverlayStat>(stat);
        }
        return stat;
    }

    /// <summary>The data of a lower regular file of an indexed layer, opened lazily through the cache (or at once
    /// without one), with no call to the layer's directory now; null when the layer itself must answer.</summary>
    private NodeData? IndexedLowerData(OverlayNode node)
    {
        int layer = node.Layers[0].Layer;
        if (IndexOf(layer) is not { } index || !CachesLayer(layer))
        {
            return null;
        }
        string relative = node.Layers[0].Path;
        int at = index.Find(relative);
        if (at < 0 || index.Xattr(at, LayerPaths.BCowXattr) is not null)
        {
            return null;
        }
        Stat st = index.StatOf(at);
        return new NodeData.Plain(OpenLowerData(default, st, layer, relative, _layers.Describe(layer, relative)));
    }

    /// <summary>The lstat of <paramref name="relative"/> in an indexed layer; false when the layer holds nothing there.</summary>
    private static bool IndexedLstat(LayerIndex index, string relative, out Stat st)
    {
        int at = index.Find(relative);
        st = at >= 0 ? index.StatOf(at) : default;
        return at >= 0;
    }

    /// <summary>The attribute a layer's index does not record (a label is the host's policy, not the layer's
    /// content): asked of the layer itself.</summary>
    private const string SelinuxXattr = "security.selinux";

    /// <summary>The extended attributes of a node whose top object is in an indexed layer, as the layer's walk read
    /// them through the share (none where the share showed none); false when the layer itself must answer (no index,
    /// the root's merged node has no layer, the object not in the index).</summary>
    private bool TryIndexedXattrs(OverlayNode node, out IReadOnlyList<(string Name, byte[] Value)> xattrs)
    {
        xattrs = [];
        if (node.Removed || node.Layers.Count == 0 || IndexOf(node.Layers[0].Layer) is not { } index)
        {
            return false;
        }
        int at = index.Find(node.Layers[0].Path);
        if (at < 0)
        {
            return false;
        }
        xattrs = index[at].Xattrs ?? [];
        return true;
    }

    /// <summary>The target of a symbolic link in an indexed layer, or null.</summary>
    private string? IndexedLinkTarget(OverlayNode node)
    {
        if (node.Layers.Count == 0 || IndexOf(node.Layers[0].Layer) is not { } index)
        {
            return null;
        }
        int at = index.Find(node.Layers[0].Path);
        return at >= 0 && index[at].Type == 'l' ? index[at].A : null;
    }

    /// <summary>One layer of <see cref="MergedEntries"/> from its index: the visible entries added to
    /// <paramref name="result"/>, names seen and hidden added to <paramref name="seen"/>.</summary>
    private void MergeIndexedEntries(LayerIndex index, int layer, string directoryPath, HashSet<string> seen, List<(string Name, ulong Ino, uint Type)> result)
    {
        var hiddenHere = new List<string>();
        foreach (int at in index.Children(directoryPath))
        {
            string path = index[at].Path;
            string name = path[(path.LastIndexOf('/') + 1)..];
            if (name.StartsWith(Whiteouts.Prefix, StringComparison.Ordinal))
            {
                if (name != Whiteouts.OpaqueMarker)
                {
                    hiddenHere.Add(name[Whiteouts.Prefix.Length..]);
                }
                continue;
            }
            if (!seen.Add(name))
            {
                continue;
            }
            Stat st = index.StatOf(at);
            if (Whiteouts.IsWhiteoutStat(st))
            {
                continue;
            }
            result.Add((name, InoOf(layer, st, "", path), (uint)st.st_mode & S_IFMT));
        }
        seen.UnionWith(hiddenHere);
    }
}
