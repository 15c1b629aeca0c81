using Mono.Unix.Native;

namespace BAOverlay.Store;

/// <summary>Leases: who uses which layers, so that garbage collection on any host leaves them alone.</summary>
public sealed partial class LayerStore
{
    /// <summary>Leases every layer of an image (see <see cref="LeaseLayers"/>).</summary>
    /// <exception cref="LayerStoreException">No such image, or a layer is missing or failed verification.</exception>
    public StoreLease LeaseImage(string nameOrDigest, bool renew = true)
    {
        StoreImage image = RequireImage(nameOrDigest);
        return LeaseLayers(image.Layers, renew);
    }

    /// <summary>
    /// Takes a lease on <paramref name="digests"/>: writes the record, then checks that each layer is still complete
    /// in the store (a garbage collection running at the same moment either saw the record and keeps the layers, or
    /// had already moved them away, which this check sees). With <paramref name="renew"/> the lease renews itself while
    /// the object is held; without, it lasts <see cref="LayerStoreOptions.LeaseDuration"/> unless
    /// <see cref="StoreLease.Renew"/> is called (a command-line tool's lease, released by id later).
    /// </summary>
    /// <exception cref="LayerStoreException">A layer is not in the store or failed verification.</exception>
    public StoreLease LeaseLayers(IEnumerable<string> digests, bool renew = true)
    {
        ArgumentNullException.ThrowIfNull(digests);
        ThrowIfDisposed();
        List<string> layers = digests.Distinct(StringComparer.Ordinal).ToList();
        foreach (string digest in layers.Where(d => !StoreLayout.IsDigest(d)))
        {
            throw new LayerStoreException(digest, "not a layer digest (sha256:HEX)");
        }
        string id = $"{HostId}.{StoreLayout.RandomSuffix()}";
        DateTimeOffset expires = WriteLease(id, layers);
        try
        {
            using StoreDirectory layersDirectory = OpenPart(StoreLayout.Layers);
            foreach (string digest in layers)
            {
                if (!IsCompleteLayer(layersDirectory, digest))
                {
                    throw new LayerStoreException(layersDirectory.Describe(StoreLayout.DirectoryName(digest)), "not a complete layer of the store (removed?)");
                }
                if (FindLayer(digest) is null)
                {
                    Refresh(force: true);
                }
                if (FindLayer(digest) is StoreLayer layer)
                {
                    EnsureVerified(layer);
                }
            }
        }
        catch
        {
            ReleaseLease(id);
            throw;
        }
        return new StoreLease(this, id, layers, expires, renew);
    }

    /// <summary>Removes the lease record <paramref name="id"/> (what <see cref="StoreLease.Dispose"/> does; for a lease
    /// taken by another process of this host, such as <c>bcow store lease</c>). False when there was none.</summary>
    public bool ReleaseLease(string id)
    {
        ArgumentNullException.ThrowIfNull(id);
        if (!StoreLayout.IsLeaseId(id))
        {
            throw new LayerStoreException(id, "not a lease id (HOST.HEX16)");
        }
        using StoreDirectory leases = OpenPart(StoreLayout.Leases);
        if (Syscall.unlink(leases.At(id + ".json")) != 0)
        {
            if (Stdlib.GetLastError() == Errno.ENOENT)
            {
                return false;
            }
            throw StoreDirectory.Failure(leases.Describe(id + ".json"), "cannot remove the lease");
        }
        return true;
    }

    /// <summary>Fails when a leased layer is no longer complete in the store (read from the share).</summary>
    internal void CheckLeasedLayers(IReadOnlyList<string> digests)
    {
        using StoreDirectory layers = OpenPart(StoreLayout.Layers);
        foreach (string digest in digests)
        {
            if (!IsCompleteLayer(layers, digest))
            {
                throw new LayerStoreException(layers.Describe(StoreLayout.DirectoryName(digest)), "not a complete layer of the store any more: the lease had expired and the layer was collected");
            }
        }
    }

    internal DateTimeOffset WriteLease(string id, IReadOnlyList<string> layers)
    {
        DateTimeOffset expires = _options.TimeProvider.GetUtcNow() + _options.LeaseDuration;
        var record = new LeaseRecord(id, HostId, Environment.ProcessId, expires, layers);
        using StoreDirectory top = StoreDirectory.Open(Root);
        using StoreDirectory staging = top.OpenChild(StoreLayout.Staging);
        using StoreDirectory leases = top.OpenChild(StoreLayout.Leases);
        StoreFiles.Replace(staging, HostId, leases, id + ".json", record.ToJson());
        return expires;
    }

    /// <summary>The lease records on the share, each with whether it still protects its layers now (expiry plus the
    /// clock skew margin not passed); unreadable records go to <paramref name="problems"/> with their age.</summary>
    internal List<(LeaseRecord Lease, bool Live)> ReadLeases(List<(string File, string Problem, DateTimeOffset Modified)> problems)
    {
        DateTimeOffset now = _options.TimeProvider.GetUtcNow();
        var result = new List<(LeaseRecord, bool)>();
        using StoreDirectory leases = OpenPart(StoreLayout.Leases);
        foreach (string file in leases.Names())
        {
            string id = file.EndsWith(".json", StringComparison.Ordinal) ? file[..^5] : "";
            DateTimeOffset modified = leases.TryLstat(file, out Stat stat) ? DateTimeOffset.FromUnixTimeSeconds(stat.st_mtime) : now;
            if (!StoreLayout.IsLeaseId(id))
            {
                problems.Add((file, "not a lease record's name (HOST.HEX16.json)", modified));
                continue;
            }
            try
            {
                byte[]? bytes = StoreFiles.TryRead(leases, file, StoreLayout.MaxRecordBytes);
                if (bytes is null)
                {
                    continue;
                }
                LeaseRecord lease = LeaseRecord.Parse(bytes, leases.Describe(file), id);
                result.Add((lease, lease.Expires + _options.ClockSkewMargin > now));
            }
            catch (LayerStoreException e)
            {
                problems.Add((file, e.Message, modified));
            }
        }
        return result;
    }
}
