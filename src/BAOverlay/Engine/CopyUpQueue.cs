using System.Threading.Channels;

namespace BAOverlay.Engine;

/// <summary>
/// The bounded background copier: blocks made partial by a write are queued once each and filled from lower by a
/// few workers. When the queue is full a writer waits for room (backpressure), so memory stays bounded however far
/// the copier falls behind; a writer never waits for a fill itself. A writer must not hold a block gate while it
/// enqueues: workers need block gates to finish.
/// </summary>
internal sealed class CopyUpQueue
{
    private readonly Channel<long> _channel;
    private readonly HashSet<long> _queued = new();
    private readonly Func<long, CancellationToken, ValueTask> _fill;
    private readonly CancellationTokenSource _stop = new();
    private readonly Task[] _workers;
    private readonly object _lock = new();
    private int _outstanding;
    private TaskCompletionSource _idle = NewIdle(true);
    private Exception? _firstError;
    private long _failures;

    public CopyUpQueue(int capacity, int workers, Func<long, CancellationToken, ValueTask> fill)
    {
        _channel = Channel.CreateBounded<long>(new BoundedChannelOptions(capacity) { SingleWriter = false, SingleReader = false, FullMode = BoundedChannelFullMode.Wait });
        _fill = fill;
        _workers = new Task[workers];
        for (int i = 0; i < workers; i++)
        {
            _workers[i] = Task.Run(RunAsync);
        }
    }

    /// <summary>Blocks queued or being filled.</summary>
    public int Pending => Volatile.Read(ref _outstanding);

    /// <summary>Fills that failed since the file was opened (the blocks stay partial, which is safe).</summary>
    public long Failures => Interlocked.Read(ref _failures);

    public async ValueTask EnqueueAsync(long block, bool useAsync, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            if (_stop.IsCancellationRequested || !_queued.Add(block))
            {
                return;
            }
            if (_outstanding++ == 0)
            {
                _idle = NewIdle(false);
            }
        }
        if (_channel.Writer.TryWrite(block))
        {
            return;
        }
        try
        {
            if (useAsync)
            {
                await _channel.Writer.WriteAsync(block, cancellationToken).ConfigureAwait(false);
            }
            else
            {
                _channel.Writer.WriteAsync(block, cancellationToken).AsTask().GetAwaiter().GetResult();
            }
        }
        catch (Exception e) when (e is OperationCanceledException or ChannelClosedException)
        {
            Done(block, dequeued: false);
        }
    }

    /// <summary>Completes when nothing is queued or in flight; throws the first fill error since the last call.</summary>
    public async Task WhenIdleAsync(CancellationToken cancellationToken)
    {
        Task idle;
        lock (_lock)
        {
            idle = _idle.Task;
        }
        await idle.WaitAsync(cancellationToken).ConfigureAwait(false);
        Exception? error = Interlocked.Exchange(ref _firstError, null);
        if (error is not null)
        {
            throw new IOException($"a background copy-up failed; the blocks concerned stay partial and read correctly: {error.Message}", error);
        }
    }

    /// <summary>Stops the workers: fills in flight finish, queued ones are dropped (their blocks stay partial).</summary>
    public async Task StopAsync()
    {
        _stop.Cancel();
        _channel.Writer.TryComplete();
        try
        {
            await Task.WhenAll(_workers).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
        }
        lock (_lock)
        {
            _queued.Clear();
            _outstanding = 0;
            _idle.TrySetResult();
        }
    }

    private async Task RunAsync()
    {
        try
        {
            await foreach (long block in _channel.Reader.ReadAllAsync(_stop.Token).ConfigureAwait(false))
            {
                lock (_lock)
                {
                    _queued.Remove(block);
                }
                try
                {
                    await _fill(block, _stop.Token).ConfigureAwait(false);
                }
                catch (OperationCanceledException) when (_stop.IsCancellationRequested)
                {
                }
                catch (Exception e)
                {
                    Interlocked.Increment(ref _failures);
                    Interlocked.CompareExchange(ref _firstError, e, null);
                }
                Done(block, dequeued: true);
            }
        }
        catch (OperationCanceledException)
        {
        }
    }

    private void Done(long block, bool dequeued)
    {
        lock (_lock)
        {
            if (!dequeued)
            {
                _queued.Remove(block);
            }
            if (_outstanding > 0 && --_outstanding == 0)
            {
                _idle.TrySetResult();
            }
        }
    }

    private static TaskCompletionSource NewIdle(bool completed)
    {
        var tcs = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        if (completed)
        {
            tcs.SetResult();
        }
        return tcs;
    }
}
