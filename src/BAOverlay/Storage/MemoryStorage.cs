namespace BAOverlay.Storage;

/// <summary>
/// Sparse in-memory <see cref="IBlockStorage"/> in 4 KiB pages: for tests (the library's and its users', see
/// docs/testing-with-fake-storage.md), tools and fault injection. Thread-safe. Pages never written, or punched whole,
/// are holes and are reported as such by <see cref="GetDataRanges"/>.
/// </summary>
public sealed class MemoryStorage : IBlockStorage
{
    private const int PageSize = 4096;
    private readonly Dictionary<long, byte[]> _pages = new();
    private readonly object _lock = new();
    private long _length;

    /// <summary>Makes empty storage.</summary>
    /// <param name="name">Name used in messages.</param>
    /// <param name="canWrite">False makes writes throw <see cref="NotSupportedException"/>.</param>
    /// <param name="mtimeNs">Reported by <see cref="GetIdentity"/>.</param>
    public MemoryStorage(string name = "memory", bool canWrite = true, long mtimeNs = 0)
    {
        Name = name;
        CanWrite = canWrite;
        MTimeNs = mtimeNs;
    }

    /// <inheritdoc/>
    public string Name { get; }

    /// <inheritdoc/>
    public bool CanWrite { get; }

    /// <summary>The modification time reported by <see cref="GetIdentity"/>; tests change it to simulate an edited lower file.</summary>
    public long MTimeNs { get; set; }

    /// <inheritdoc/>
    public long Length
    {
        get
        {
            lock (_lock)
            {
                return _length;
            }
        }
    }

    /// <summary>Makes storage holding a copy of <paramref name="content"/>.</summary>
    public static MemoryStorage FromBytes(ReadOnlySpan<byte> content, string name = "memory", bool canWrite = true)
    {
        var storage = new MemoryStorage(name, true);
        storage.WriteAt(content, 0);
        return canWrite ? storage : storage.CloneAs(name, false);
    }

    /// <summary>A deep copy with another name and access.</summary>
    public MemoryStorage CloneAs(string name, bool canWrite)
    {
        var copy = new MemoryStorage(name, canWrite, MTimeNs);
        lock (_lock)
        {
            foreach (var (index, page) in _pages)
            {
                copy._pages[index] = (byte[])page.Clone();
            }
            copy._length = _length;
        }
        return copy;
    }

    /// <summary>The whole content as one array.</summary>
    public byte[] ToArray()
    {
        lock (_lock)
        {
            var result = new byte[_length];
            ReadAt(result, 0);
            return result;
        }
    }

    /// <inheritdoc/>
    public int ReadAt(Span<byte> buffer, long offset)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(offset);
        lock (_lock)
        {
            int count = (int)Math.Clamp(_length - offset, 0, buffer.Length);
            int done = 0;
            while (done < count)
            {
                long position = offset + done;
                int inPage = (int)(position % PageSize);
                int n = Math.Min(PageSize - inPage, count - done);
                if (_pages.TryGetValue(position / PageSize, out byte[]? page))
                {
                    page.AsSpan(inPage, n).CopyTo(buffer.Slice(done, n));
                }
                else
                {
                    buffer.Slice(done, n).Clear();
                }
                done += n;
            }
            return count;
        }
    }

    /// <inheritdoc/>
    public ValueTask<int> ReadAtAsync(Memory<byte> buffer, long offset, CancellationToken cancellationToken = default) =>
        ValueTask.FromResult(ReadAt(buffer.Span, offset));

    /// <inheritdoc/>
    public void WriteAt(ReadOnlySpan<byte> data, long offset)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(offset);
        ThrowIfReadOnly();
        lock (_lock)
        {
            int done = 0;
            while (done < data.Length)
            {
                long position = offset + done;
                int inPage = (int)(position % PageSize);
                int n = Math.Min(PageSize - inPage, data.Length - done);
                long index = position / PageSize;
                if (!_pages.TryGetValue(index, out byte[]? page))
                {
                    page = new byte[PageSize];
                    _pages[index] = page;
                }
                data.Slice(done, n).CopyTo(page.AsSpan(inPage));
                done += n;
            }
            _length = Math.Max(_length, offset + data.Length);
        }
    }

    /// <inheritdoc/>
    public ValueTask WriteAtAsync(ReadOnlyMemory<byte> data, long offset, CancellationToken cancellationToken = default)
    {
        WriteAt(data.Span, offset);
        return ValueTask.CompletedTask;
    }

    /// <inheritdoc/>
    public void Flush()
    {
    }

    /// <inheritdoc/>
    public void SetLength(long length)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        ThrowIfReadOnly();
        lock (_lock)
        {
            if (length < _length)
            {
                ZeroLocked(length, _length - length);
            }
            _length = length;
        }
    }

    /// <inheritdoc/>
    public void PunchHole(long offset, long length)
    {
        ThrowIfReadOnly();
        lock (_lock)
        {
            ZeroLocked(offset, Math.Min(length, _length - offset));
        }
    }

    /// <inheritdoc/>
    public (long MTimeNs, ulong Inode) GetIdentity() => (MTimeNs, 0);

    /// <inheritdoc/>
    public IEnumerable<(long Offset, long Length)> GetDataRanges(long start, long end)
    {
        long[] indexes;
        lock (_lock)
        {
            indexes = _pages.Keys.Order().ToArray();
        }
        var ranges = new List<(long Offset, long Length)>();
        foreach (long index in indexes)
        {
            long s = Math.Max(start, index * PageSize);
            long e = Math.Min(end, (index + 1) * PageSize);
            if (s >= e)
            {
                continue;
            }
            if (ranges.Count > 0 && ranges[^1].Offset + ranges[^1].Length == s)
            {
                ranges[^1] = (ranges[^1].Offset, e - ranges[^1].Offset);
            }
            else
            {
                ranges.Add((s, e - s));
            }
        }
        return ranges;
    }

    /// <summary>Nothing to release.</summary>
    public void Dispose()
    {
    }

    private void ZeroLocked(long offset, long length)
    {
        long end = offset + length;
        for (long position = offset; position < end;)
        {
            long index = position / PageSize;
            int inPage = (int)(position % PageSize);
            int n = (int)Math.Min(PageSize - inPage, end - position);
            if (n == PageSize)
            {
                _pages.Remove(index);
            }
            else if (_pages.TryGetValue(index, out byte[]? page))
            {
                page.AsSpan(inPage, n).Clear();
            }
            position += n;
        }
    }

    private void ThrowIfReadOnly()
    {
        if (!CanWrite)
        {
            throw new NotSupportedException($"{Name} is read-only.");
        }
    }
}
