using BAOverlay.Format;

namespace BAOverlay.Engine;

/// <summary>
/// Hands out upper-file space: data blocks (block size) and map pages (4 KiB). Nothing of it is stored: on open it
/// is rebuilt from the map, everything no entry references being free. Free space always reads as zeros (it is
/// punched before it is handed out again), so a block allocated for a small write needs no zero-filling.
/// </summary>
/// <remarks>
/// Crash order: space freed since the last commit is still referenced by the committed map, so it goes to a pending
/// list and becomes reusable only after the commit that stops referencing it is durable (<see cref="TakePending"/>).
/// </remarks>
internal sealed class SpaceAllocator
{
    private readonly object _lock = new();
    private readonly int _blockSize;
    private readonly Stack<long> _freeBlocks = new();
    private readonly Stack<long> _freePages = new();
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

    public long AllocateBlock()
    {
        lock (_lock)
        {
            if (_freeBlocks.TryPop(out long offset))
            {
                return offset;
            }
            offset = _end;
            _end += _blockSize;
            return offset;
        }
    }

    public long AllocatePage()
    {
        lock (_lock)
        {
            if (_freePages.TryPop(out long offset))
            {
                return offset;
            }
            if (_freeBlocks.TryPop(out offset))
            {
                // Split a free block into pages rather than grow the file.
                for (long p = offset + Layout.PageSize; p < offset + _blockSize; p += Layout.PageSize)
                {
                    _freePages.Push(p);
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
                _freeBlocks.Push(offset);
                offset += _blockSize;
            }
            for (; end - offset >= Layout.PageSize; offset += Layout.PageSize)
            {
                _freePages.Push(offset);
            }
        }
    }
}
