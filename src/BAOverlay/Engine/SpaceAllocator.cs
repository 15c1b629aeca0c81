using BAOverlay.Format;

namespace BAOverlay.Engine;

/// <summary>
/// Hands out upper-file space: data blocks (block size) and map pages (4 KiB). Nothing of it is stored: on open it
/// is rebuilt from the map, everything no entry references being free. Free space always reads as zeros (it is
/// punched before it is handed out again), so a block allocated for a small write needs no zero-filling.
/// </summary>
/// <remarks>
/// <para>Crash order: space freed since the last commit is still referenced by the committed map, so it goes to a
/// pending list and becomes reusable only after the commit that stops referencing it is durable
/// (<see cref="TakePending"/>). Free only what no durable header references.</para>
/// <para>One exception keeps a file that is rewritten without flushes (truncate and write again, discard and write
/// again) from growing by its size at every round: a data block allocated since the last commit's map snapshot
/// (<see cref="SealFresh"/>) is referenced by no header at all, durable or not, so when it is freed it can be punched
/// and reused at once (<see cref="TakeFresh"/>).</para>
/// <para>Free space is handed out lowest offset first, so data gathers at the start of the file and the tail empties;
/// <see cref="TrimTail"/> gives the free tail back to the file system.</para>
/// </remarks>
internal sealed class SpaceAllocator
{
    private readonly object _lock = new();
    private readonly int _blockSize;
    private readonly OffsetSet _freeBlocks = new();
    private readonly OffsetSet _freePages = new();
    private readonly HashSet<long> _fresh = new();
    private List<(long Offset, long Length)> _pending = new();
    private long _end;

    public SpaceAllocator(int blockSize, long end)
    {
        _blockSize = blockSize;
        _end = Math.Max(end, Layout.DataStart);
    }

    /// <summary>End of the space in use: the upper file need not be longer.</summary>
    public long End
    {
        get
        {
            lock (_lock)
            {
                return _end;
            }
        }
    }

    /// <summary>Builds the free lists from the sorted, non-overlapping extents in use.</summary>
    public static SpaceAllocator FromUsed(int blockSize, IReadOnlyList<(long Offset, long Length)> used, out List<(long Offset, long Length)> gaps)
    {
        gaps = new List<(long, long)>();
        long position = Layout.DataStart;
        foreach (var (offset, length) in used)
        {
            if (offset > position)
            {
                gaps.Add((position, offset - position));
            }
            position = Math.Max(position, offset + length);
        }
        var allocator = new SpaceAllocator(blockSize, position);
        foreach (var (offset, length) in gaps)
        {
            allocator.AddFree(offset, length);
        }
        return allocator;
    }

    /// <summary>A data block; fresh (see <see cref="TakeFresh"/>) until the next map snapshot.</summary>
    public long AllocateBlock()
    {
        lock (_lock)
        {
            long offset;
            if (_freeBlocks.Count > 0)
            {
                offset = _freeBlocks.Min;
                _freeBlocks.Remove(offset);
            }
            else
            {
                offset = _end;
                _end += _blockSize;
            }
            _fresh.Add(offset);
            return offset;
        }
    }

    /// <summary>
    /// Called by the map snapshot of every commit, under the map's lock: the blocks allocated so far may be referenced
    /// by the header this commit writes, so from now on they are freed only through <see cref="FreeAfterCommit"/>.
    /// </summary>
    public void SealFresh()
    {
        lock (_lock)
        {
            _fresh.Clear();
        }
    }

    /// <summary>
    /// True when the block at <paramref name="offset"/> was allocated after the last snapshot: no header references it,
    /// so the caller, which has just made the map stop referencing it, may punch it and <see cref="AddFree"/> it now.
    /// False: it must wait for a durable commit (<see cref="FreeAfterCommit"/>).
    /// </summary>
    public bool TakeFresh(long offset)
    {
        lock (_lock)
        {
            return _fresh.Remove(offset);
        }
    }

    public long AllocatePage()
    {
        lock (_lock)
        {
            long offset;
            if (_freePages.Count > 0)
            {
                offset = _freePages.Min;
                _freePages.Remove(offset);
                return offset;
            }
            if (_freeBlocks.Count > 0)
            {
                // Split a free block into pages rather than grow the file.
                offset = _freeBlocks.Min;
                _freeBlocks.Remove(offset);
                for (long p = offset + Layout.PageSize; p < offset + _blockSize; p += Layout.PageSize)
                {
                    _freePages.Add(p);
                }
                return offset;
            }
            offset = _end;
            _end += Layout.PageSize;
            return offset;
        }
    }

    /// <summary>Contiguous pages (the root table when it is over 4 KiB): always at the end.</summary>
    public long AllocateRun(long bytes)
    {
        if (bytes <= Layout.PageSize)
        {
            return AllocatePage();
        }
        lock (_lock)
        {
            long offset = _end;
            _end += bytes;
            return offset;
        }
    }

    /// <summary>Space the committed map may still reference: reusable after the next commit.</summary>
    public void FreeAfterCommit(long offset, long length)
    {
        lock (_lock)
        {
            _pending.Add((offset, length));
        }
    }

    /// <summary>Called when a commit starts: what was freed before it becomes free once the commit is durable.</summary>
    public List<(long Offset, long Length)> TakePending()
    {
        lock (_lock)
        {
            var taken = _pending;
            _pending = new List<(long, long)>();
            return taken;
        }
    }

    /// <summary>Returns space that reads as zeros (punched, or never written) to the free lists.</summary>
    public void AddFree(long offset, long length)
    {
        lock (_lock)
        {
            long end = offset + length;
            while (end - offset >= _blockSize)
            {
                _freeBlocks.Add(offset);
                offset += _blockSize;
            }
            for (; end - offset >= Layout.PageSize; offset += Layout.PageSize)
            {
                _freePages.Add(offset);
            }
        }
    }

    /// <summary>
    /// Drops the free space at the end of the allocated area from the free lists and lowers <see cref="End"/> past it;
    /// <paramref name="cut"/> (called under this allocator's lock, so nothing is allocated at the end meanwhile) then
    /// shortens the file. Only free space is cut: it reads as zeros and no header references it.
    /// </summary>
    public void TrimTail(Action<long> cut)
    {
        lock (_lock)
        {
            long before = _end;
            while (true)
            {
                if (_freeBlocks.Count > 0 && _freeBlocks.Max + _blockSize == _end)
                {
                    _end = _freeBlocks.Max;
                    _freeBlocks.Remove(_end);
                }
                else if (_freePages.Count > 0 && _freePages.Max + Layout.PageSize == _end)
                {
                    _end = _freePages.Max;
                    _freePages.Remove(_end);
                }
                else
                {
                    break;
                }
            }
            _end = Math.Max(_end, Layout.DataStart);
            if (_end < before)
            {
                cut(_end);
            }
        }
    }
}
