using System.Buffers;
using System.Collections.Concurrent;
using System.Diagnostics;
using BAOverlay.Storage;

namespace BAOverlay.Cache;

/// <summary>Whether the store behind a <see cref="ZoneCache"/> answers.</summary>
public enum StoreState
{
    /// <summary>Reads that need the store are sent to it.</summary>
    Healthy,

    /// <summary>
    /// A read of the store failed or did not answer in time: reads of cached zones go on; reads that need the store
    /// fail at once with EIO, except one probe read at a time (at most one per
    /// <see cref="ZoneCacheOptions.ProbeInterval"/>), whose success makes the store healthy again.
    /// </summary>
    Unreachable,
}

/// <summary>
/// Answers "may this read go to the store, and how long may it take?": every read of a remote file runs under a
/// deadline, and a store that fails or does not answer is marked unreachable until a probe read succeeds.
/// </summary>
/// <remarks>
/// <para>A read with a deadline runs on one of the guard's reader threads into a buffer of its own; the caller waits for it at most
/// until the deadline, then gets an <see cref="IOException"/> carrying EIO while the read is left to finish on its
/// thread (the caller's buffer is never written after the call returned). At most
/// <see cref="ZoneCacheOptions.MaxRemoteReads"/> reads are in flight, stuck ones included, so a store that hangs for
/// good holds at most that many threads; a caller that finds no free slot before its deadline fails with EIO too.</para>
/// <para>A <see cref="RemoteOpenException"/> (a lazily opened file whose open failed for a reason of its own, or that
/// changed since its lookup) is not a failure of the store: the store answered; the caller gets that exception's errno.</para>
/// <para>Lock order: <see cref="_gate"/> guards the state only; no I/O and no wait under it.</para>
/// </remarks>
internal sealed class RemoteGuard
{
    private const int EIO = 5;

    private readonly TimeSpan _timeout;
    private readonly long _probeIntervalTicks;
    private readonly SemaphoreSlim _slots;
    private readonly int _maxReads;
    private readonly Action<string> _log;
    private readonly Action? _onChange;
    private readonly object _gate = new();
    private readonly BlockingCollection<RemoteRead> _queue = new();
    private int _workersStarted;
    private StoreState _state;
    private DateTimeOffset? _since;
    private string? _lastError;
    private long _lastProbe = long.MinValue;
    private bool _probing;
    private int _stuck;
    private long _failures;

    public RemoteGuard(TimeSpan timeout, TimeSpan probeInterval, int maxReads, Action<string> log, Action? onChange = null)
    {
        _timeout = timeout;
        _probeIntervalTicks = (long)(probeInterval.TotalSeconds * Stopwatch.Frequency);
        _maxReads = maxReads;
        _slots = new SemaphoreSlim(maxReads, maxReads);
        _log = log;
        _onChange = onChange;
    }

    public StoreState State
    {
        get
        {
            lock (_gate)
            {
                return _state;
            }
        }
    }

    /// <summary>State, since when, last error, reads stuck past their deadline, failures counted.</summary>
    public (StoreState State, DateTimeOffset? Since, string? LastError, int Stuck, long Failures) Snapshot()
    {
        lock (_gate)
        {
            return (_state, _since, _lastError, _stuck, _failures);
        }
    }

    /// <summary>Reads <paramref name="destination"/>.Length bytes (fewer only at the end) of <paramref name="remote"/>.</summary>
    /// <exception cref="IOException">EIO: the store is unreachable, did not answer in time, or failed.</exception>
    public int Read(IBlockStorage remote, Span<byte> destination, long offset)
    {
        if (_timeout == Timeout.InfiniteTimeSpan)
        {
            bool probe = Admit(remote.Name, offset);
            try
            {
                int n = remote.ReadAt(destination, offset);
                Succeeded(probe);
                return n;
            }
            catch (RemoteOpenException)
            {
                Succeeded(probe); // the store answered: the error is the file's
                throw;
            }
            catch (IOException e)
            {
                throw Failed(probe, remote.Name, offset, e);
            }
        }
        RemoteRead read = FetchAsync(remote, destination.Length, offset, useAsync: false, CancellationToken.None).GetAwaiter().GetResult();
        return read.CopyTo(destination);
    }

    /// <inheritdoc cref="Read"/>
    public async ValueTask<int> ReadAsync(IBlockStorage remote, Memory<byte> destination, long offset, CancellationToken cancellationToken)
    {
        if (_timeout == Timeout.InfiniteTimeSpan)
        {
            bool probe = Admit(remote.Name, offset);
            try
            {
                int n = await remote.ReadAtAsync(destination, offset, cancellationToken).ConfigureAwait(false);
                Succeeded(probe);
                return n;
            }
            catch (RemoteOpenException)
            {
                Succeeded(probe); // the store answered: the error is the file's
                throw;
            }
            catch (IOException e)
            {
                throw Failed(probe, remote.Name, offset, e);
            }
        }
        RemoteRead read = await FetchAsync(remote, destination.Length, offset, useAsync: true, cancellationToken).ConfigureAwait(false);
        return read.CopyTo(destination.Span);
    }

    /// <summary>The one path of both: admit, take a slot, start the read on the pool, wait until the deadline.</summary>
    private async ValueTask<RemoteRead> FetchAsync(IBlockStorage remote, int length, long offset, bool useAsync, CancellationToken cancellationToken)
    {
        bool probe = Admit(remote.Name, offset);
        long start = Stopwatch.GetTimestamp();
        bool slot = useAsync
            ? await _slots.WaitAsync(_timeout, cancellationToken).ConfigureAwait(false)
            : _slots.Wait(_timeout, cancellationToken);
        if (!slot)
        {
            Abandoned(probe);
            throw new IOException($"{remote.Name}: cannot read at {offset}: all {_maxReads} reads of the store allowed at once are still waiting for it to answer", EIO);
        }
        var read = new RemoteRead(this, remote, offset, length);
        EnsureWorkers();
        if (!TryQueue(read))
        {
            read.Release();
            _slots.Release();
            Abandoned(probe);
            throw new ObjectDisposedException(nameof(ZoneCache), $"{remote.Name}: the cache is closed");
        }
        TimeSpan left = _timeout - Stopwatch.GetElapsedTime(start);
        bool done;
        try
        {
            if (left <= TimeSpan.Zero)
            {
                done = read.Task.IsCompleted;
            }
            else if (useAsync)
            {
                try
                {
                    await read.Task.WaitAsync(left, cancellationToken).ConfigureAwait(false);
                    done = true;
                }
                catch (TimeoutException)
                {
                    done = false;
                }
            }
            else
            {
                done = read.Task.Wait(left, cancellationToken);
            }
        }
        catch (OperationCanceledException)
        {
            if (read.TryAbandon())
            {
                Abandoned(probe);
                throw;
            }
            done = true;
        }
        if (!done && read.TryAbandon())
        {
            lock (_gate)
            {
                _stuck++;
            }
            throw Failed(probe, remote.Name, offset, new TimeoutException($"no answer within {_timeout.TotalSeconds:0.###} s"));
        }
        // Completed (perhaps just as the deadline passed): the result is the caller's.
        if (read.Error is { } error)
        {
            read.Release();
            if (error is RemoteOpenException open)
            {
                Succeeded(probe); // the store answered: the error is the file's, with its errno
                throw new RemoteOpenException(open.Message, open.HResult, open);
            }
            if (error is IOException io)
            {
                throw Failed(probe, remote.Name, offset, io);
            }
            Abandoned(probe);
            throw new IOException($"{remote.Name}: reading at {offset} failed: {error.Message}", error);
        }
        Succeeded(probe);
        return read;
    }

    /// <summary>
    /// Whether a read may go to the store now. Healthy: yes. Unreachable: one probe at a time, at most one per probe
    /// interval (returns true: the caller's read is the probe); every other read fails at once.
    /// </summary>
    private bool Admit(string name, long offset)
    {
        lock (_gate)
        {
            if (_state == StoreState.Healthy)
            {
                return false;
            }
            long now = Stopwatch.GetTimestamp();
            if (!_probing && (_lastProbe == long.MinValue || now - _lastProbe >= _probeIntervalTicks))
            {
                _probing = true;
                _lastProbe = now;
                return true;
            }
            throw new IOException($"{name}: cannot read at {offset}: the store is unreachable since {_since:u} ({_lastError}); only cached zones can be read until it answers again", EIO);
        }
    }

    private void Succeeded(bool probe)
    {
        string? message = null;
        lock (_gate)
        {
            if (probe)
            {
                _probing = false;
            }
            if (probe && _state == StoreState.Unreachable)
            {
                message = $"the store answers again (unreachable since {_since:u}, {(DateTimeOffset.UtcNow - _since!.Value).TotalSeconds:0.#} s); reads go to it again";
                _state = StoreState.Healthy;
                _since = DateTimeOffset.UtcNow;
            }
        }
        if (message is not null)
        {
            _log(message);
            _onChange?.Invoke();
        }
    }

    /// <summary>A read that did not reach the store (no slot, cancelled): the state stays, a probe slot is freed.</summary>
    private void Abandoned(bool probe)
    {
        if (probe)
        {
            lock (_gate)
            {
                _probing = false;
            }
        }
    }

    /// <summary>Records a failure of the store (an error or no answer in time) and returns what the caller throws: an
    /// <see cref="IOException"/> with EIO that names the file, the offset and the cause.</summary>
    private IOException Failed(bool probe, string name, long offset, Exception cause)
    {
        string? message = null;
        string error = $"{name} at {offset}: {cause.Message}";
        lock (_gate)
        {
            if (probe)
            {
                _probing = false;
            }
            _failures++;
            _lastError = error;
            if (_state == StoreState.Healthy)
            {
                _state = StoreState.Unreachable;
                _since = DateTimeOffset.UtcNow;
                _lastProbe = Stopwatch.GetTimestamp(); // the read that failed counts as the first probe
                message = $"the store is unreachable ({error}): reads of cached zones go on, the others fail with EIO until it answers";
            }
        }
        if (message is not null)
        {
            _log(message);
            _onChange?.Invoke();
        }
        return new IOException($"{name}: cannot read at {offset} from the store: {cause.Message}", EIO);
    }

    /// <summary>
    /// The threads that read the store: as many as there are slots, so a read that holds a slot always finds one free.
    /// Not the thread pool: callers that block waiting (FUSE threads, tasks) could starve it, and a read queued behind
    /// them would time out with the store answering fine.
    /// </summary>
    private void EnsureWorkers()
    {
        if (Volatile.Read(ref _workersStarted) != 0 || Interlocked.Exchange(ref _workersStarted, 1) != 0)
        {
            return;
        }
        for (int i = 0; i < _maxReads; i++)
        {
            new Thread(() =>
            {
                foreach (RemoteRead read in _queue.GetConsumingEnumerable())
                {
                    read.Execute();
                }
            })
            { IsBackground = true, Name = "store reader" }.Start();
        }
    }

    private bool TryQueue(RemoteRead read)
    {
        try
        {
            return _queue.TryAdd(read);
        }
        catch (InvalidOperationException)
        {
            return false; // stopped: the cache is closed
        }
    }

    /// <summary>Lets the reader threads end (a stuck one once its read returns).</summary>
    public void Stop() => _queue.CompleteAdding();

    private void LateCompletion(RemoteRead read)
    {
        lock (_gate)
        {
            _stuck--;
        }
        _log($"{read.Name}: a read of the store at {read.Offset} that had passed its deadline finished ({(read.Error is null ? "done" : read.Error.Message)})");
    }

    /// <summary>
    /// One read of the store on a reader thread, into its own pooled buffer. Whoever comes second of the waiter giving up
    /// (<see cref="TryAbandon"/>) and the read finishing cleans up: the waiter gets the result, or the finishing read
    /// returns the buffer and releases its slot itself.
    /// </summary>
    internal sealed class RemoteRead(RemoteGuard guard, IBlockStorage remote, long offset, int length)
    {
        private const int Running = 0;
        private const int Done = 1;
        private const int Gone = 2;

        private readonly TaskCompletionSource _completion = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private byte[]? _buffer = ArrayPool<byte>.Shared.Rent(Math.Max(1, length));
        private int _state;
        private int _read;

        public Task Task => _completion.Task;

        public Exception? Error { get; private set; }

        public string Name => remote.Name;

        public long Offset => offset;

        public void Execute()
        {
            try
            {
                _read = remote.ReadAt(_buffer.AsSpan(0, length), offset);
            }
            catch (Exception e)
            {
                Error = e;
            }
            guard._slots.Release();
            if (Interlocked.CompareExchange(ref _state, Done, Running) == Running)
            {
                _completion.SetResult();
                return;
            }
            Release();
            guard.LateCompletion(this);
        }

        /// <summary>The waiter gives up; false when the read finished first (its result is then the waiter's).</summary>
        public bool TryAbandon() => Interlocked.CompareExchange(ref _state, Gone, Running) == Running;

        public int CopyTo(Span<byte> destination)
        {
            int n = Math.Min(_read, destination.Length);
            _buffer.AsSpan(0, n).CopyTo(destination);
            Release();
            return n;
        }

        public void Release()
        {
            if (Interlocked.Exchange(ref _buffer, null) is { } buffer)
            {
                ArrayPool<byte>.Shared.Return(buffer);
            }
        }
    }
}
