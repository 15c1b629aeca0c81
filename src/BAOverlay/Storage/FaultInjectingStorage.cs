namespace BAOverlay.Storage;

/// <summary>
/// An <see cref="IBlockStorage"/> for tests that fails on schedule (EIO, ENOSPC, torn writes) and models power cuts:
/// it keeps the durable image (as of the last completed <see cref="Flush"/>) apart from the writes since, so a test
/// can take the image a crash would leave behind. FASTER's simulated flaky device is the idea.
/// <para>Public API for the tests of code built on <see cref="BCowFile"/>: does it survive a power cut between its
/// write and its flush, does it report a full disk? docs/testing-with-fake-storage.md has examples. Thread-safe.</para>
/// </summary>
public sealed class FaultInjectingStorage : IBlockStorage
{
    /// <summary>errno values carried in <see cref="Exception.HResult"/> of the injected <see cref="IOException"/>s.</summary>
    public const int EIO = 5;

    /// <inheritdoc cref="EIO"/>
    public const int ENOSPC = 28;

    private readonly MemoryStorage _current;
    private readonly MemoryStorage _durable;
    private readonly List<Op> _unflushed = new();
    private readonly Dictionary<int, StorageFault> _writeFaults = new();
    private readonly Dictionary<int, StorageFault> _flushFaults = new();
    private readonly object _lock = new();
    private int _writeCount;
    private int _flushCount;
    private bool _poweredOff;

    private abstract record Op;
    private sealed record WriteOp(long Offset, byte[] Data) : Op;
    private sealed record SetLengthOp(long Length) : Op;
    private sealed record PunchOp(long Offset, long Length) : Op;

    /// <summary>Starts from <paramref name="initial"/> (copied; taken as durable) or from empty storage.</summary>
    public FaultInjectingStorage(MemoryStorage? initial = null, string name = "fault-injecting memory")
    {
        Name = name;
        _current = initial?.CloneAs(name, true) ?? new MemoryStorage(name);
        _durable = _current.CloneAs(name, true);
    }

    /// <inheritdoc/>
    public string Name { get; }

    /// <inheritdoc/>
    public bool CanWrite => true;

    /// <inheritdoc/>
    public long Length => _current.Length;

    /// <summary>Write operations (writes, set-length and punches) attempted so far, failed ones included.</summary>
    public int WriteCount
    {
        get
        {
            lock (_lock)
            {
                return _writeCount;
            }
        }
    }

    /// <summary>Flushes attempted so far.</summary>
    public int FlushCount
    {
        get
        {
            lock (_lock)
            {
                return _flushCount;
            }
        }
    }

    /// <summary>True once a <see cref="StorageFault.PowerCut"/> has fired.</summary>
    public bool IsPoweredOff
    {
        get
        {
            lock (_lock)
            {
                return _poweredOff;
            }
        }
    }

    /// <summary>Makes the write operation with zero-based index <paramref name="writeIndex"/> fail with <paramref name="fault"/>.</summary>
    public void FailWrite(int writeIndex, StorageFault fault)
    {
        lock (_lock)
        {
            _writeFaults[writeIndex] = fault;
        }
    }

    /// <summary>Makes the flush with zero-based index <paramref name="flushIndex"/> fail with <paramref name="fault"/>.</summary>
    public void FailFlush(int flushIndex, StorageFault fault)
    {
        lock (_lock)
        {
            _flushFaults[flushIndex] = fault;
        }
    }

    /// <summary>Cancels every scheduled fault (a power cut that already fired stays).</summary>
    public void ClearFaults()
    {
        lock (_lock)
        {
            _writeFaults.Clear();
            _flushFaults.Clear();
        }
    }

    /// <summary>
    /// What the storage would hold after losing power now: the durable image, plus — when <paramref name="random"/>
    /// is given — a random subset of the unflushed writes, each 512-byte sector of each write kept or lost on its own
    /// (a disk with a volatile cache may persist any of them in any order).
    /// </summary>
    public MemoryStorage CrashImage(Random? random = null)
    {
        lock (_lock)
        {
            MemoryStorage image = _durable.CloneAs(Name + " (after power cut)", true);
            if (random is not null)
            {
                foreach (Op op in _unflushed)
                {
                    if (op is WriteOp w)
                    {
                        for (int s = 0; s < w.Data.Length; s += 512)
                        {
                            if (random.Next(2) == 0)
                            {
                                image.WriteAt(w.Data.AsSpan(s, Math.Min(512, w.Data.Length - s)), w.Offset + s);
                            }
                        }
                    }
                    else if (random.Next(2) == 0)
                    {
                        Apply(image, op);
                    }
                }
            }
            return image;
        }
    }

    /// <inheritdoc/>
    public int ReadAt(Span<byte> buffer, long offset)
    {
        lock (_lock)
        {
            ThrowIfOff();
        }
        return _current.ReadAt(buffer, offset);
    }

    /// <inheritdoc/>
    public ValueTask<int> ReadAtAsync(Memory<byte> buffer, long offset, CancellationToken cancellationToken = default) =>
        ValueTask.FromResult(ReadAt(buffer.Span, offset));

    /// <inheritdoc/>
    public void WriteAt(ReadOnlySpan<byte> data, long offset)
    {
        lock (_lock)
        {
            StorageFault? fault = NextWriteFault();
            if (fault == StorageFault.TornWrite)
            {
                int kept = data.Length / 2 / 512 * 512;
                Record(new WriteOp(offset, data[..kept].ToArray()));
                throw Error(EIO, $"torn write at {offset} (+{data.Length})");
            }
            if (fault is not null)
            {
                throw FaultException(fault.Value, $"write at {offset} (+{data.Length})");
            }
            Record(new WriteOp(offset, data.ToArray()));
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
        lock (_lock)
        {
            ThrowIfOff();
            int index = _flushCount++;
            if (_flushFaults.Remove(index, out StorageFault fault))
            {
                if (fault == StorageFault.PowerCut)
                {
                    _poweredOff = true;
                }
                throw FaultException(fault, "flush");
            }
            foreach (Op op in _unflushed)
            {
                Apply(_durable, op);
            }
            _unflushed.Clear();
        }
    }

    /// <inheritdoc/>
    public void SetLength(long length)
    {
        lock (_lock)
        {
            StorageFault? fault = NextWriteFault();
            if (fault is not null)
            {
                throw FaultException(fault.Value, $"set length {length}");
            }
            Record(new SetLengthOp(length));
        }
    }

    /// <inheritdoc/>
    public void PunchHole(long offset, long length)
    {
        lock (_lock)
        {
            StorageFault? fault = NextWriteFault();
            if (fault is not null)
            {
                throw FaultException(fault.Value, $"punch hole at {offset} (+{length})");
            }
            Record(new PunchOp(offset, length));
        }
    }

    /// <inheritdoc/>
    public (long MTimeNs, ulong Inode) GetIdentity() => (0, 0);

    /// <inheritdoc/>
    public IEnumerable<(long Offset, long Length)> GetDataRanges(long start, long end) => _current.GetDataRanges(start, end);

    /// <summary>Nothing to release.</summary>
    public void Dispose()
    {
    }

    private StorageFault? NextWriteFault()
    {
        ThrowIfOff();
        int index = _writeCount++;
        if (_writeFaults.Remove(index, out StorageFault fault))
        {
            if (fault == StorageFault.PowerCut)
            {
                _poweredOff = true;
            }
            return fault;
        }
        return null;
    }

    private void Record(Op op)
    {
        Apply(_current, op);
        _unflushed.Add(op);
    }

    private static void Apply(MemoryStorage target, Op op)
    {
        switch (op)
        {
            case WriteOp w:
                target.WriteAt(w.Data, w.Offset);
                break;
            case SetLengthOp s:
                target.SetLength(s.Length);
                break;
            case PunchOp p:
                target.PunchHole(p.Offset, p.Length);
                break;
        }
    }

    private void ThrowIfOff()
    {
        if (_poweredOff)
        {
            throw Error(EIO, "power is off");
        }
    }

    private IOException FaultException(StorageFault fault, string what) => fault switch
    {
        StorageFault.NoSpace => Error(ENOSPC, $"no space left on device ({what})"),
        StorageFault.PowerCut => Error(EIO, $"power cut ({what})"),
        _ => Error(EIO, $"input/output error ({what})"),
    };

    private IOException Error(int errno, string message) => new($"{Name}: {message}", errno);
}
