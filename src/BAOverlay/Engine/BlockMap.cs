using System.Buffers.Binary;
using BAOverlay.Format;
using BAOverlay.Storage;

namespace BAOverlay.Engine;

/// <summary>
/// The block map in memory, mirroring the on-disk tree: root table → L1 pages → L2 pages of 16-byte entries
/// (<c>docs/bcow-format.md</c>). Lookups are lock-free; updates take the map lock for a few instructions. Changed
/// pages are marked dirty and written out-of-place at the next commit (shadow paging), so the committed tree on disk
/// is never modified in place.
/// </summary>
internal sealed class BlockMap
{
    private readonly object _lock = new();
    private readonly int _blockSizeLog2;
    private readonly List<L2Page> _dirtyPages = new();
    private readonly List<L1Node> _dirtyNodes = new();
    private L1Node?[] _roots;

    public BlockMap(int blockSizeLog2, int rootEntries)
    {
        _blockSizeLog2 = blockSizeLog2;
        _roots = new L1Node?[rootEntries];
    }

    public int BlockSizeLog2 => _blockSizeLog2;

    /// <summary>The committed root table's extent (offset, bytes); 0 before the first commit.</summary>
    public (long Offset, long Length) RootExtent { get; set; }

    public BlockEntry Get(long block)
    {
        L1Node?[] roots = Volatile.Read(ref _roots);
        long r = block >> Layout.BlocksPerL1Shift;
        if (r >= roots.Length)
        {
            return BlockEntry.Lower;
        }
        L1Node? node = Volatile.Read(ref roots[r]);
        L2Page? page = node is null ? null : Volatile.Read(ref node.Children[(block >> Layout.EntriesPerPageShift) & 0xFF]);
        if (page is null)
        {
            return BlockEntry.Lower;
        }
        int i = (int)(block & 0xFF) * 2;
        return new BlockEntry(Volatile.Read(ref page.Words[i]), Volatile.Read(ref page.Words[i + 1]));
    }

    /// <summary>Sets an entry. The caller holds the block's stripe gate, and any data the entry points at is written.</summary>
    public void Set(long block, BlockEntry entry)
    {
        lock (_lock)
        {
            L2Page page = GetOrCreatePageLocked(block);
            int i = (int)(block & 0xFF) * 2;
            Volatile.Write(ref page.Words[i], entry.Descriptor);
            Volatile.Write(ref page.Words[i + 1], entry.Bitmap);
            MarkDirtyLocked(page);
        }
    }

    /// <summary>Makes room for a larger virtual size (never shrinks: see <see cref="Truncate"/>).</summary>
    public void EnsureRoots(int rootEntries)
    {
        lock (_lock)
        {
            if (_roots.Length < rootEntries)
            {
                var grown = new L1Node?[rootEntries];
                Array.Copy(_roots, grown, _roots.Length);
                Volatile.Write(ref _roots, grown);
            }
        }
    }

    /// <summary>Drops L1 nodes beyond <paramref name="rootEntries"/>; returns the committed pages they held.</summary>
    public List<long> Truncate(int rootEntries)
    {
        var freed = new List<long>();
        lock (_lock)
        {
            if (_roots.Length <= rootEntries)
            {
                return freed;
            }
            for (int r = rootEntries; r < _roots.Length; r++)
            {
                if (_roots[r] is { } node)
                {
                    if (node.DiskOffset != 0)
                    {
                        freed.Add(node.DiskOffset);
                    }
                    foreach (L2Page? page in node.Children)
                    {
                        if (page is { DiskOffset: not 0 })
                        {
                            freed.Add(page.DiskOffset);
                        }
                    }
                }
            }
            var cut = new L1Node?[rootEntries];
            Array.Copy(_roots, cut, rootEntries);
            _dirtyPages.RemoveAll(p => p.Parent.RootIndex >= rootEntries);
            _dirtyNodes.RemoveAll(n => n.RootIndex >= rootEntries);
            Volatile.Write(ref _roots, cut);
        }
        return freed;
    }

    /// <summary>Every block that has an L2 page, with its entry, in ascending block order (a snapshot per page).</summary>
    public IEnumerable<(long Block, BlockEntry Entry)> EnumeratePopulated(long fromBlock = 0)
    {
        L1Node?[] roots = Volatile.Read(ref _roots);
        for (int r = (int)(fromBlock >> Layout.BlocksPerL1Shift); r < roots.Length; r++)
        {
            L1Node? node = Volatile.Read(ref roots[r]);
            if (node is null)
            {
                continue;
            }
            for (int c = 0; c < Layout.EntriesPerPage; c++)
            {
                L2Page? page = Volatile.Read(ref node.Children[c]);
                if (page is null)
                {
                    continue;
                }
                long first = ((long)r << Layout.BlocksPerL1Shift) | ((long)c << Layout.EntriesPerPageShift);
                for (int e = 0; e < Layout.EntriesPerPage; e++)
                {
                    if (first + e >= fromBlock)
                    {
                        yield return (first + e, new BlockEntry(Volatile.Read(ref page.Words[e * 2]), Volatile.Read(ref page.Words[(e * 2) + 1])));
                    }
                }
            }
        }
    }

    /// <summary>True when no entry changed since the last commit.</summary>
    public bool IsClean
    {
        get
        {
            lock (_lock)
            {
                return _dirtyPages.Count == 0 && _dirtyNodes.Count == 0;
            }
        }
    }

    /// <summary>
    /// Takes a consistent image of the dirty part of the tree for a commit: assigns new locations to every dirty page
    /// (the old ones are freed after the commit), serializes them, and serializes the root table. Entries changed
    /// after this call stay dirty for the next commit. <paramref name="rootEntriesNow"/> gives the root entries of the
    /// size committed with the image; it is called under the map lock, so it sees every growth that preceded an entry
    /// set before the snapshot. The root table is written whenever its entry count differs from
    /// <paramref name="committedRootEntries"/>.
    /// </summary>
    public CommitImage Snapshot(Func<int> rootEntriesNow, SpaceAllocator allocator, int committedRootEntries)
    {
        var image = new CommitImage();
        lock (_lock)
        {
            // Under the map lock: a block freed after its entry changed is either referenced by this snapshot (then
            // sealed here, so it waits for the commit) or not (then it was fresh, and reusing it at once is safe).
            allocator.SealFresh();
            int rootEntries = rootEntriesNow();
            bool forceRoot = rootEntries != committedRootEntries;
            if (_dirtyPages.Count == 0 && _dirtyNodes.Count == 0 && !forceRoot && RootExtent.Offset != 0)
            {
                return image;
            }
            var keepPages = new List<L2Page>();
            foreach (L2Page page in _dirtyPages)
            {
                if (page.Parent.RootIndex >= rootEntries)
                {
                    keepPages.Add(page); // beyond the committed size; stays dirty
                    continue;
                }
                byte[] bytes = new byte[Layout.PageSize];
                for (int w = 0; w < page.Words.Length; w++)
                {
                    BinaryPrimitives.WriteUInt64LittleEndian(bytes.AsSpan(w * 8), page.Words[w]);
                }
                if (page.DiskOffset != 0)
                {
                    image.Freed.Add((page.DiskOffset, Layout.PageSize));
                }
                page.DiskOffset = allocator.AllocatePage();
                page.Crc = Crc32C.Compute(bytes);
                page.Dirty = false;
                image.Pages.Add((page.DiskOffset, bytes));
                MarkNodeDirtyLocked(page.Parent);
            }
            _dirtyPages.Clear();
            _dirtyPages.AddRange(keepPages);

            var keepNodes = new List<L1Node>();
            foreach (L1Node node in _dirtyNodes)
            {
                if (node.RootIndex >= rootEntries)
                {
                    keepNodes.Add(node);
                    continue;
                }
                byte[] bytes = new byte[Layout.PageSize];
                for (int c = 0; c < node.Children.Length; c++)
                {
                    if (node.Children[c] is { DiskOffset: not 0 } child)
                    {
                        new PointerEntry(child.DiskOffset, child.Crc).Write(bytes.AsSpan(c * Layout.EntrySize));
                    }
                }
                if (node.DiskOffset != 0)
                {
                    image.Freed.Add((node.DiskOffset, Layout.PageSize));
                }
                node.DiskOffset = allocator.AllocatePage();
                node.Crc = Crc32C.Compute(bytes);
                node.Dirty = false;
                image.Pages.Add((node.DiskOffset, bytes));
            }
            _dirtyNodes.Clear();
            _dirtyNodes.AddRange(keepNodes);

            long rootBytes = Layout.RootTableBytes(rootEntries);
            byte[] root = new byte[rootBytes];
            for (int r = 0; r < Math.Min(rootEntries, _roots.Length); r++)
            {
                if (_roots[r] is { DiskOffset: not 0 } node)
                {
                    new PointerEntry(node.DiskOffset, node.Crc).Write(root.AsSpan(r * Layout.EntrySize));
                }
            }
            if (RootExtent.Offset != 0)
            {
                image.Freed.Add(RootExtent);
            }
            long rootOffset = allocator.AllocateRun(rootBytes);
            RootExtent = (rootOffset, rootBytes);
            image.RootOffset = rootOffset;
            image.RootEntries = rootEntries;
            image.RootCrc = Crc32C.Compute(root.AsSpan(0, rootEntries * Layout.EntrySize));
            image.Pages.Add((rootOffset, root));
            image.HasTree = true;
        }
        return image;
    }

    /// <summary>
    /// Loads and validates the committed tree. Problems go to <paramref name="problem"/>; the caller decides
    /// whether the first one is fatal (open) or all are collected (check). Extents in use are added to
    /// <paramref name="used"/> as (offset, length, what).
    /// </summary>
    public static BlockMap Load(IBlockStorage storage, BCowHeader header, Action<string> problem, List<UsedExtent> used)
    {
        long fileLength = storage.Length;
        int blockSize = header.BlockSize;
        long blockCount = Layout.BlockCount(header.VirtualSize, header.BlockSizeLog2);
        var map = new BlockMap(header.BlockSizeLog2, header.RootTableEntries);
        long rootBytes = Layout.RootTableBytes(header.RootTableEntries);
        map.RootExtent = (header.RootTableOffset, rootBytes);
        // Written so that no sum can overflow: a hostile offset near 2^63 must not wrap around to a small one.
        if (header.RootTableOffset > fileLength - rootBytes)
        {
            problem($"root table at {header.RootTableOffset} (+{rootBytes}) extends beyond the end of the file ({fileLength})");
            return map;
        }
        used.Add(new UsedExtent(header.RootTableOffset, rootBytes, "root table"));
        byte[] root = new byte[rootBytes];
        storage.ReadAt(root, header.RootTableOffset);
        if (Crc32C.Compute(root.AsSpan(0, header.RootTableEntries * Layout.EntrySize)) != header.RootTableCrc)
        {
            problem($"root table checksum mismatch at {header.RootTableOffset}");
            return map;
        }
        byte[] page = new byte[Layout.PageSize];
        for (int r = 0; r < header.RootTableEntries; r++)
        {
            PointerEntry rootEntry = PointerEntry.Read(root.AsSpan(r * Layout.EntrySize), out bool clear);
            string where = $"root entry {r}";
            if (!ValidatePointer(rootEntry, clear, fileLength, where, problem) || rootEntry.Offset == 0)
            {
                continue;
            }
            storage.ReadAt(page, rootEntry.Offset);
            if (Crc32C.Compute(page) != rootEntry.Crc)
            {
                problem($"L1 page at {rootEntry.Offset} ({where}): checksum mismatch");
                continue;
            }
            used.Add(new UsedExtent(rootEntry.Offset, Layout.PageSize, $"L1 page {r}"));
            var node = new L1Node(r) { DiskOffset = rootEntry.Offset, Crc = rootEntry.Crc };
            var children = new PointerEntry[Layout.EntriesPerPage];
            var clears = new bool[Layout.EntriesPerPage];
            for (int c = 0; c < Layout.EntriesPerPage; c++)
            {
                children[c] = PointerEntry.Read(page.AsSpan(c * Layout.EntrySize), out clears[c]);
            }
            for (int c = 0; c < Layout.EntriesPerPage; c++)
            {
                string childWhere = $"L1 page {r} entry {c}";
                if (!ValidatePointer(children[c], clears[c], fileLength, childWhere, problem) || children[c].Offset == 0)
                {
                    continue;
                }
                storage.ReadAt(page, children[c].Offset);
                if (Crc32C.Compute(page) != children[c].Crc)
                {
                    problem($"L2 page at {children[c].Offset} ({childWhere}): checksum mismatch");
                    continue;
                }
                used.Add(new UsedExtent(children[c].Offset, Layout.PageSize, $"L2 page {r}/{c}"));
                var l2 = new L2Page(node, c) { DiskOffset = children[c].Offset, Crc = children[c].Crc };
                long first = ((long)r << Layout.BlocksPerL1Shift) | ((long)c << Layout.EntriesPerPageShift);
                for (int e = 0; e < Layout.EntriesPerPage; e++)
                {
                    BlockEntry entry = BlockEntry.Read(page.AsSpan(e * Layout.EntrySize));
                    long block = first + e;
                    string? bad = entry.Validate();
                    if (bad is null && entry.State != BlockState.Lower && block >= blockCount)
                    {
                        bad = $"block {block} lies beyond the virtual size but is {entry.State}";
                    }
                    if (bad is null && entry.IsAllocated && entry.Offset > fileLength - blockSize)
                    {
                        bad = $"data at {entry.Offset} (+{blockSize}) extends beyond the end of the file ({fileLength})";
                    }
                    if (bad is not null)
                    {
                        problem($"block {block} (L2 page at {children[c].Offset}, entry {e}): {bad}");
                        continue;
                    }
                    if (entry.IsAllocated)
                    {
                        used.Add(new UsedExtent(entry.Offset, blockSize, $"block {block}"));
                    }
                    l2.Words[e * 2] = entry.Descriptor;
                    l2.Words[(e * 2) + 1] = entry.Bitmap;
                }
                node.Children[c] = l2;
            }
            map._roots[r] = node;
        }
        used.Sort((a, b) => a.Offset.CompareTo(b.Offset));
        for (int i = 1; i < used.Count; i++)
        {
            if (used[i].Offset < used[i - 1].Offset + used[i - 1].Length)
            {
                problem($"{used[i].What} at {used[i].Offset} overlaps {used[i - 1].What} at {used[i - 1].Offset}");
            }
        }
        return map;
    }

    private static bool ValidatePointer(PointerEntry entry, bool reservedClear, long fileLength, string where, Action<string> problem)
    {
        if (!reservedClear)
        {
            problem($"{where}: reserved bytes are not zero");
            return false;
        }
        if (entry.Offset == 0)
        {
            if (entry.Crc != 0)
            {
                problem($"{where}: an empty pointer carries a checksum");
                return false;
            }
            return true;
        }
        if (entry.Offset < Layout.DataStart || (entry.Offset & (Layout.PageSize - 1)) != 0 || entry.Offset > fileLength - Layout.PageSize)
        {
            problem($"{where}: page offset {entry.Offset} is outside the file's data area or not 4 KiB aligned");
            return false;
        }
        return true;
    }

    private L2Page GetOrCreatePageLocked(long block)
    {
        long r = block >> Layout.BlocksPerL1Shift;
        if (r >= _roots.Length)
        {
            throw new InvalidOperationException($"block {block} is beyond the map; the size must grow first");
        }
        L1Node? node = _roots[r];
        if (node is null)
        {
            // A new node is written by the next commit: the snapshot marks the parent of every dirty page dirty.
            node = new L1Node((int)r);
            Volatile.Write(ref _roots[r], node);
        }
        int c = (int)((block >> Layout.EntriesPerPageShift) & 0xFF);
        L2Page? page = node.Children[c];
        if (page is null)
        {
            page = new L2Page(node, c);
            Volatile.Write(ref node.Children[c], page);
        }
        return page;
    }

    private void MarkDirtyLocked(L2Page page)
    {
        if (!page.Dirty)
        {
            page.Dirty = true;
            _dirtyPages.Add(page);
        }
    }

    private void MarkNodeDirtyLocked(L1Node node)
    {
        if (!node.Dirty)
        {
            node.Dirty = true;
            _dirtyNodes.Add(node);
        }
    }

    private sealed class L1Node(int rootIndex)
    {
        public readonly int RootIndex = rootIndex;
        public readonly L2Page?[] Children = new L2Page?[Layout.EntriesPerPage];
        public long DiskOffset;
        public uint Crc;
        public bool Dirty;
    }

    private sealed class L2Page(L1Node parent, int index)
    {
        public readonly L1Node Parent = parent;
        public readonly int Index = index;
        public readonly ulong[] Words = new ulong[Layout.EntriesPerPage * 2];
        public long DiskOffset;
        public uint Crc;
        public bool Dirty;
    }
}

/// <summary>An extent of the upper file that the committed map references.</summary>
internal readonly record struct UsedExtent(long Offset, long Length, string What);

/// <summary>What a commit writes: pages at their new locations, the root table, and the space it frees.</summary>
internal sealed class CommitImage
{
    public List<(long Offset, byte[] Bytes)> Pages { get; } = new();
    public List<(long Offset, long Length)> Freed { get; } = new();
    public bool HasTree { get; set; }
    public long RootOffset { get; set; }
    public int RootEntries { get; set; }
    public uint RootCrc { get; set; }
}
