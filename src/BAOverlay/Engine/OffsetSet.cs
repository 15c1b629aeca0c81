namespace BAOverlay.Engine;

/// <summary>
/// A set of file offsets kept sorted in one array, for <see cref="SpaceAllocator"/>'s free lists: add, remove, count,
/// smallest and largest. Written out rather than a <c>SortedSet&lt;long&gt;</c>: a framework generic over a value
/// type is compiled at first use (ReadyToRun cannot hold it), and the first write through a fresh mount paid for 32
/// such methods. Free extents are few next to the blocks in use; an insert or removal moves the larger ones (memmove).
/// </summary>
internal sealed class OffsetSet
{
    private long[] _items = new long[16];
    private int _count;

    /// <summary>How many offsets the set holds.</summary>
    public int Count => _count;

    /// <summary>The smallest offset; the set must not be empty.</summary>
    public long Min => _count > 0 ? _items[0] : throw new InvalidOperationException("the set is empty");

    /// <summary>The largest offset; the set must not be empty.</summary>
    public long Max => _count > 0 ? _items[_count - 1] : throw new InvalidOperationException("the set is empty");

    /// <summary>Adds <paramref name="offset"/>; false when it was there already.</summary>
    public bool Add(long offset)
    {
        int at = Find(offset);
        if (at >= 0)
        {
            return false;
        }
        at = ~at;
        if (_count == _items.Length)
        {
            long[] larger = new long[_items.Length * 2];
            Array.Copy(_items, larger, _count);
            _items = larger;
        }
        Array.Copy(_items, at, _items, at + 1, _count - at);
        _items[at] = offset;
        _count++;
        return true;
    }

    /// <summary>Removes <paramref name="offset"/>; false when it was not there.</summary>
    public bool Remove(long offset)
    {
        int at = Find(offset);
        if (at < 0)
        {
            return false;
        }
        Array.Copy(_items, at + 1, _items, at, _count - at - 1);
        _count--;
        return true;
    }

    /// <summary>The index of <paramref name="offset"/>, or the bitwise complement of where it would go.</summary>
    private int Find(long offset)
    {
        int low = 0;
        int high = _count - 1;
        while (low <= high)
        {
            int middle = low + ((high - low) >> 1);
            long value = _items[middle];
            if (value == offset)
            {
                return middle;
            }
            if (value < offset)
            {
                low = middle + 1;
            }
            else
            {
                high = middle - 1;
            }
        }
        return ~low;
    }
}
