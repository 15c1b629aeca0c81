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
    /// <summary>Null until the first change: until then the snapshot holds the entries, so a listing that never changes
    /// (most of them) costs one array and builds no dictionary, and the first opendir of a large directory costs what
    /// it did before listings were kept.</summary>
    private Dictionary<string, (ulong Ino, uint Type)>? _entries;

    /// <summary>What <see cref="Entries"/> hands out; never null while <see cref="_entries"/> is.</summary>
    private Snapshot? _snapshot;

    /// <summary>A listing of directory <paramref name="self"/> in <paramref name="parent"/> holding
    /// <paramref name="entries"/> ("." and ".." not among them, no name twice).</summary>
    public DirectoryListing(ulong self, ulong parent, IReadOnlyCollection<(string Name, ulong Ino, uint Type)> entries)
    {
        var all = new OverlayDirEntry[entries.Count + 2];
        int i = 2;
        foreach (var (name, ino, type) in entries)
        {
            all[i] = new OverlayDirEntry(name, ino, type, i + 1);
            i++;
        }
        _snapshot = Publish(all, self, parent);
    }

    /// <summary>The number of entries, "." and ".." not counted.</summary>
    public int Count => _entries?.Count ?? (_snapshot!.Entries.Count - 2);

    /// <summary>Adds or replaces an entry.</summary>
    public void Set(string name, ulong ino, uint type)
    {
        Dictionary<string, (ulong Ino, uint Type)> entries = Changeable();
        if (entries.TryGetValue(name, out var old) && old == (ino, type))
        {
            return;
        }
        entries[name] = (ino, type);
        _snapshot = null;
    }

    /// <summary>Removes an entry if present.</summary>
    public void Remove(string name)
    {
        if (Changeable().Remove(name))
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
        if (snapshot is not null && snapshot.Self == self && snapshot.Parent == parent)
        {
            return snapshot.Entries;
        }
        var all = new OverlayDirEntry[Count + 2];
        int i = 2;
        foreach (var (name, ino, type) in Current(snapshot))
        {
            all[i] = new OverlayDirEntry(name, ino, type, i + 1);
            i++;
        }
        snapshot = Publish(all, self, parent);
        Volatile.Write(ref _snapshot, snapshot);
        return snapshot.Entries;
    }

    /// <summary>Whether the listing holds exactly these entries (for checks and tests; changes nothing).</summary>
    public bool SameAs(IEnumerable<(string Name, ulong Ino, uint Type)> entries)
    {
        var expected = new Dictionary<string, (ulong, uint)>(StringComparer.Ordinal);
        foreach (var (name, ino, type) in entries)
        {
            expected[name] = (ino, type);
        }
        int n = 0;
        foreach (var (name, ino, type) in Current(Volatile.Read(ref _snapshot)))
        {
            if (!expected.TryGetValue(name, out var value) || value != (ino, type))
            {
                return false;
            }
            n++;
        }
        return n == expected.Count;
    }

    /// <summary>The entries: the dictionary once changed, else the snapshot's (which is then never null).</summary>
    private IEnumerable<(string Name, ulong Ino, uint Type)> Current(Snapshot? snapshot) =>
        _entries is { } changed
            ? changed.Select(e => (e.Key, e.Value.Ino, e.Value.Type))
            : snapshot!.Entries.Skip(2).Select(e => (e.Name, e.Ino, e.Type));

    /// <summary>The entries as a dictionary, made at the first change (under the overlay's write lock).</summary>
    private Dictionary<string, (ulong Ino, uint Type)> Changeable()
    {
        if (_entries is null)
        {
            IReadOnlyList<OverlayDirEntry> read = _snapshot!.Entries;
            _entries = new Dictionary<string, (ulong, uint)>(read.Count, StringComparer.Ordinal);
            for (int i = 2; i < read.Count; i++)
            {
                _entries[read[i].Name] = (read[i].Ino, read[i].Type);
            }
        }
        return _entries;
    }

    private static Snapshot Publish(OverlayDirEntry[] all, ulong self, ulong parent)
    {
        all[0] = new OverlayDirEntry(".", self, 0x4000, 1);
        all[1] = new OverlayDirEntry("..", parent, 0x4000, 2);
        return new Snapshot(self, parent, Array.AsReadOnly(all));
    }

    private sealed record Snapshot(ulong Self, ulong Parent, IReadOnlyList<OverlayDirEntry> Entries);
}
