namespace BAOverlay.Engine;

/// <summary>
/// A small async reader/writer gate. Writes, punches and commit snapshots enter shared; a size change enters
/// exclusive, so no write lands in a block while the size is cut below it and no commit sees half a size change.
/// A waiting exclusive caller stops new shared callers (no writer starvation).
/// </summary>
internal sealed class SharedExclusiveGate
{
    private readonly SemaphoreSlim _turnstile = new(1, 1);
    private int _shared;
    private TaskCompletionSource? _drained;

    public async ValueTask EnterSharedAsync(bool useAsync, CancellationToken cancellationToken = default)
    {
        if (useAsync)
        {
            await _turnstile.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
        else
        {
            _turnstile.Wait(cancellationToken);
        }
        Interlocked.Increment(ref _shared);
        _turnstile.Release();
    }

    public void ExitShared()
    {
        if (Interlocked.Decrement(ref _shared) == 0)
        {
            Volatile.Read(ref _drained)?.TrySetResult();
        }
    }

    public async ValueTask EnterExclusiveAsync(bool useAsync, CancellationToken cancellationToken = default)
    {
        if (useAsync)
        {
            await _turnstile.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
        else
        {
            _turnstile.Wait(cancellationToken);
        }
        var drained = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        Volatile.Write(ref _drained, drained);
        if (Volatile.Read(ref _shared) != 0)
        {
            if (useAsync)
            {
                await drained.Task.ConfigureAwait(false);
            }
            else
            {
                drained.Task.Wait(CancellationToken.None);
            }
        }
        Volatile.Write(ref _drained, null);
    }

    public void ExitExclusive() => _turnstile.Release();
}
