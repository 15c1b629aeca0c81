namespace BAOverlay.Engine;

/// <summary>
/// Per-block mutual exclusion, striped: writers, the copier and size changes of one block hold its stripe's gate
/// across that block's I/O only (never another block's), so a slow block never stalls the rest. Readers take no
/// lock: they read the stripe's version before and after their I/O and retry when a writer ran in between
/// (a seqlock); the version is odd while a writer is inside.
/// </summary>
internal sealed class BlockLocks
{
    private const int StripeCount = 4096;
    private readonly Stripe[] _stripes;

    public BlockLocks()
    {
        _stripes = new Stripe[StripeCount];
        for (int i = 0; i < _stripes.Length; i++)
        {
            _stripes[i] = new Stripe();
        }
    }

    public Stripe For(long block) => _stripes[(int)((ulong)block % StripeCount)];

    internal sealed class Stripe
    {
        private readonly SemaphoreSlim _gate = new(1, 1);
        private int _version;

        public int Version => Volatile.Read(ref _version);

        /// <summary>Enters as a writer: excludes other writers and invalidates concurrent lock-free reads.</summary>
        public async ValueTask EnterAsync(bool useAsync, CancellationToken cancellationToken)
        {
            if (useAsync)
            {
                await _gate.WaitAsync(cancellationToken).ConfigureAwait(false);
            }
            else
            {
                _gate.Wait(cancellationToken);
            }
            Interlocked.Increment(ref _version);
        }

        public void Exit()
        {
            Interlocked.Increment(ref _version);
            _gate.Release();
        }
    }
}
