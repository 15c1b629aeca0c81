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
        // A full fence, not Volatile.Write: a release store may be reordered after the load of _shared below (store
        // buffering, even on x86). The last shared holder could then read _drained as null while this thread read
        // _shared as nonzero - a lost wake-up that hangs the exclusive caller, and everyone queued behind it, forever.
        // ExitShared's Interlocked.Decrement is the matching fence (Dekker).
        Interlocked.Exchange(ref _drained, drained);
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
