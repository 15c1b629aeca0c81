namespace BAOverlay.Store;

/// <summary>
/// A lease on layers of a <see cref="LayerStore"/>: a record on the share (<c>leases/ID.json</c>) that garbage
/// collection on every host honours until it expires. While this object is held it renews the record every third of
/// <see cref="LayerStoreOptions.LeaseDuration"/>; <see cref="Dispose"/> removes the record (releases). A holder that
/// dies stops renewing, and its lease stops protecting <see cref="LayerStoreOptions.LeaseDuration"/> plus
/// <see cref="LayerStoreOptions.ClockSkewMargin"/> after the last renewal.
/// </summary>
public sealed class StoreLease : IDisposable
{
    private readonly LayerStore _store;
    private readonly ITimer? _timer;
    private readonly Lock _gate = new();
    private bool _released;

    internal StoreLease(LayerStore store, string id, IReadOnlyList<string> layers, DateTimeOffset expires, bool renew)
    {
        _store = store;
        Id = id;
        Layers = layers;
        Expires = expires;
        if (renew)
        {
            TimeSpan period = store.Options.LeaseDuration / 3;
            _timer = store.Options.TimeProvider.CreateTimer(_ => RenewQuietly(), null, period, period);
        }
    }

    /// <summary>The lease's id, <c>HOST.HEX16</c> (its record is <c>leases/ID.json</c>).</summary>
    public string Id { get; }

    /// <summary>The digests of the layers it holds.</summary>
    public IReadOnlyList<string> Layers { get; }

    /// <summary>When it expires unless renewed (this host's clock).</summary>
    public DateTimeOffset Expires { get; private set; }

    /// <summary>The last automatic renewal's failure (the share unreachable, say), or null after a success.</summary>
    public Exception? RenewalError { get; private set; }

    /// <summary>Rewrites the record with a new expiry, <see cref="LayerStoreOptions.LeaseDuration"/> from now, then
    /// checks that the layers are still in the store (as when the lease was taken): a lease renewed too late, after
    /// it expired and a collection removed its layers, fails instead of protecting nothing.</summary>
    /// <exception cref="LayerStoreException">The record cannot be written, or a layer is gone (the lease then holds
    /// the layers that remain until it expires or is released).</exception>
    /// <exception cref="ObjectDisposedException">The lease was released.</exception>
    public void Renew()
    {
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_released, this);
            Expires = _store.WriteLease(Id, Layers);
            _store.CheckLeasedLayers(Layers);
            RenewalError = null;
        }
    }

    private void RenewQuietly()
    {
        try
        {
            Renew();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ObjectDisposedException)
        {
            RenewalError = e;
        }
    }

    /// <summary>Releases the lease: removes its record (if the share cannot be reached, the record expires instead).</summary>
    public void Dispose()
    {
        _timer?.Dispose();
        lock (_gate)
        {
            if (_released)
            {
                return;
            }
            _released = true;
            try
            {
                _store.ReleaseLease(Id);
            }
            catch (IOException)
            {
                // It expires on its own.
            }
        }
    }
}
