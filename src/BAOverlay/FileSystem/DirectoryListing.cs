namespace BAOverlay.FileSystem;

/// <summary>
/// The merged entries of one directory, kept on its node between listings so that opendir does not re-read every
/// layer with a system call per entry. Built once from the layers; after that the overlay keeps it up to date itself
/// (every change of a name in the directory goes through the overlay, under its write lock) or drops it when it
/// cannot say what changed.
/// </summary>
/// <remarks>
/// <para>Invariant: while a node holds a listing, the listing equals what a fresh read of the node's layers would
/// give (names, inode numbers, types). The overlay keeps it true: entries are set or removed by the operation that
/// changes the name, and the listing is dropped when the node's layers change, when it is removed, or when a copy-up
/// cannot keep an entry's inode number. A change made to the layers behind the overlay's back is not seen (lower
/// layers must not change, and the upper one changes only through the overlay).</para>
/// <para>Thread safety: <see cref="Set"/> and <see cref="Remove"/> run under the overlay's write lock;
/// <see cref="Entries"/> under its read lock, possibly on several threads at once, which only read the dictionary and
/// race benignly to publish the same snapshot.</para>
/// </remarks>
internal sealed class DirectoryListing
{
    private readonly Dictionary<string, (ulong Ino, uint Type)> _entries;
    private Snapshot? _snapshot;

    /// <summary>A listing of the given entries ("." and ".." not among them).</summary>
    public DirectoryListing(IEnumerable<(string Name, ulong Ino, uint Type)> entries)
    {
        _entries = new Dictionary<string, (ulong, uint)>(StringComparer.Ordinal);
        foreach (var (name, ino, type) in entries)
        {
            _entries[name] = (ino, type);
        }
    }

    /// <summary>The number of entries, "." and ".." not counted.</summary>
    public int Count => _entries.Count;

    /// <summary>An empty listing: a directory just made in upper, with nothing below it.</summary>
    public static DirectoryListing Empty() => new([]);

    /// <summary>Adds or replaces an entry.</summary>
    public void Set(string name, ulong ino, uint type)
    {
        if (_entries.TryGetValue(name, out var old) && old == (ino, type))
        {
            return;
        }
        _entries[name] = (ino, type);
        _snapshot = null;
    }

    /// <summary>Removes an entry if present.</summary>
    public void Remove(string name)
    {
        if (_entries.Remove(name))
        {
            _snapshot = null;
        }
    }

    /// <summary>
    /// The entries with <c>.</c> and <c>..</c> first and offsets by position, as readdir hands them out. The list is
    /// immutable and shared: a later change makes a new one, so a caller holding this one (an open directory handle)
    /// keeps valid offsets.
    /// </summary>
    public IReadOnlyList<OverlayDirEntry> Entries(ulong self, ulong parent)
    {
        Snapshot? snapshot = Volatile.Read(ref _snapshot);
        if (snapshot is null || snapshot.Self != self || snapshot.Parent != parent)
        {
            var entries = new OverlayDirEntry[_entries.Count + 2];
            entries[0] = new OverlayDirEntry(".", self, 0x4000, 1);
            entries[1] = new OverlayDirEntry("..", parent, 0x4000, 2);
            int i = 2;
            foreach (var (name, (ino, type)) in _entries)
            {
                entries[i] = new OverlayDirEntry(name, ino, type, i + 1);
                i++;
            }
            snapshot = new Snapshot(self, parent, Array.AsReadOnly(entries));
            Volatile.Write(ref _snapshot, snapshot);
        }
        return snapshot.Entries;
    }

    /// <summary>Whether the listing holds exactly these entries (for checks and tests).</summary>
    public bool SameAs(IEnumerable<(string Name, ulong Ino, uint Type)> entries)
    {
        int n = 0;
        foreach (var (name, ino, type) in entries)
        {
            if (!_entries.TryGetValue(name, out var mine) || mine != (ino, type))
            {
                return false;
            }
            n++;
        }
        return n == _entries.Count;
    }

    private sealed record Snapshot(ulong Self, ulong Parent, IReadOnlyList<OverlayDirEntry> Entries);
}
