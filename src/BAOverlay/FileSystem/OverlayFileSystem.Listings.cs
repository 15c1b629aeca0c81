using Mono.Unix.Native;

namespace BAOverlay.FileSystem;

/// <summary>
/// Directory listings: a directory's merged entries are read from its layers at its first listing and then kept on its
/// node (<see cref="DirectoryListing"/>), so opendir costs no system call per entry. Every operation that changes a
/// name updates the listing of the directory holding it; what cannot be updated exactly drops it.
/// </summary>
public sealed partial class OverlayFileSystem
{
    /// <summary>The listing of <paramref name="directory"/>, read from its layers if not kept. Under the read or
    /// write lock.</summary>
    private DirectoryListing ListingOf(OverlayNode directory)
    {
        DirectoryListing? listing = directory.Listing;
        if (listing is null)
        {
            listing = new DirectoryListing(directory.Ino, directory.Parent?.Ino ?? RootIno, MergedEntries(directory));
            directory.Listing = listing;
        }
        return listing;
    }

    /// <summary>True when the directory shows no entry (whiteouts do not count). A kept listing answers; otherwise the
    /// layers are read without keeping the result, the directory being about to go.</summary>
    private bool IsEmptyDirectory(OverlayNode directory) =>
        directory.Listing is { } listing ? listing.Count == 0 : MergedEntries(directory).Count == 0;

    /// <summary>
    /// Records in the kept listing of <paramref name="directory"/>, if any, that <paramref name="name"/> now resolves
    /// to <paramref name="node"/>, or to nothing when null. Callers pass what <see cref="LookupLocked(OverlayNode, string)"/> returned after
    /// the change (or null after a removal): the lookup and the listing merge the layers by the same rules.
    /// </summary>
    private static void ListingChanged(OverlayNode directory, string name, OverlayNode? node)
    {
        if (directory.Listing is not { } listing)
        {
            return;
        }
        if (node is null)
        {
            listing.Remove(name);
        }
        else
        {
            listing.Set(name, node.Ino, node.Type);
        }
    }

    /// <summary>True when two layer lists name the same directories (a kept listing is valid for one list only).</summary>
    private static bool SameLayers(List<(int Layer, string Path)> a, List<(int Layer, string Path)> b)
    {
        if (a.Count != b.Count)
        {
            return false;
        }
        for (int i = 0; i < a.Count; i++)
        {
            if (a[i].Layer != b[i].Layer || !string.Equals(a[i].Path, b[i].Path, StringComparison.Ordinal))
            {
                return false;
            }
        }
        return true;
    }

    /// <summary>
    /// The directories whose kept listing differs from a fresh read of their layers, or that keep one after their
    /// removal: empty when every kept listing is right. For tests, which call it after each change.
    /// </summary>
    internal IReadOnlyList<string> CheckListings()
    {
        _lock.EnterReadLock();
        try
        {
            var wrong = new List<string>();
            foreach (OverlayNode node in _nodes.Values)
            {
                if (node.Listing is { } listing && (node.Removed || !listing.SameAs(MergedEntries(node))))
                {
                    wrong.Add(Describe(node));
                }
            }
            return wrong;
        }
        finally
        {
            _lock.ExitReadLock();
        }
    }

    /// <summary>The merged, visible entries of a directory: upper names hide lower ones, whiteouts hide what is below them.</summary>
    private List<(string Name, ulong Ino, uint Type)> MergedEntries(OverlayNode directory)
    {
        var seen = new HashSet<string>(StringComparer.Ordinal);
        var result = new List<(string, ulong, uint)>();
        foreach (var (layer, directoryPath) in directory.Layers)
        {
            if (IndexOf(layer) is { } index)
            {
                MergeIndexedEntries(index, layer, directoryPath, seen, result);
                continue;
            }
            string described = _layers.Describe(layer, directoryPath);
            using LayerDir dir = _layers.OpenDirectory(layer, directoryPath);
            IEnumerable<string> names;
            try
            {
                names = Directory.EnumerateFileSystemEntries(dir.Self).Select(Path.GetFileName).ToList()!;
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                _log($"{described}: {e.Message}");
                throw new OverlayException(e is UnauthorizedAccessException ? Errno.EACCES : Errno.EIO, $"{described}: {e.Message}");
            }
            var hiddenHere = new List<string>();
            foreach (string name in names)
            {
                if (name.StartsWith(Whiteouts.Prefix, StringComparison.Ordinal))
                {
                    if (name != Whiteouts.OpaqueMarker)
                    {
                        hiddenHere.Add(name[Whiteouts.Prefix.Length..]);
                    }
                    continue;
                }
                if (seen.Contains(name))
                {
                    continue;
                }
                string path = dir.At(name);
                if (LayerStack.Lstat(dir, name, out Stat st) != 0)
                {
                    continue;
                }
                seen.Add(name);
                if (Whiteouts.IsWhiteoutStat(st))
                {
                    continue;
                }
                result.Add((name, InoOf(layer, st, path, LayerPaths.Child(directoryPath, name)), (uint)st.st_mode & S_IFMT));
            }
            seen.UnionWith(hiddenHere);
        }
        return result;
    }
}
