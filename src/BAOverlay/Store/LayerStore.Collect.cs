using Mono.Unix.Native;

namespace BAOverlay.Store;

/// <summary>
/// Garbage collection (docs/layer-store.md, "Garbage collection"). Any host may run it, at any time, concurrently with
/// publications, leases and other collections; it takes no lock. What it removes:
/// <list type="bullet">
/// <item>image records no name refers to, older than the grace period;</item>
/// <item>layers no remaining image refers to and no live lease holds, older than the grace period: each moved to
/// <c>trash/</c> first (one atomic rename), the leases read again, and moved back if one appeared meanwhile;</item>
/// <item>staging and trash entries older than <see cref="LayerStoreOptions.StagingAge"/> (crashed writers and
/// collectors);</item>
/// <item>lease records expired for longer than the clock skew margin.</item>
/// </list>
/// A record it cannot read is reported, never taken as permission: a young unreadable lease or image record keeps every
/// layer; an old one is removed.
/// </summary>
public sealed partial class LayerStore
{
    /// <summary>Runs one garbage collection; see the type's remarks and docs/layer-store.md.</summary>
    /// <exception cref="LayerStoreException">The store's directories cannot be read or written.</exception>
    public StoreCollectionResult CollectGarbage(CancellationToken cancellation = default)
    {
        ThrowIfDisposed();
        DateTimeOffset now = _options.TimeProvider.GetUtcNow();
        TimeSpan margin = _options.ClockSkewMargin;
        bool Older(DateTimeOffset time, TimeSpan age) => time + age + margin < now;
        var problems = new List<string>();
        var removedLeases = new List<string>();
        var removedImages = new List<string>();
        var removedLayers = new List<string>();
        var removedStaging = new List<string>();
        var keptForLeases = new List<string>();
        bool protectAll = false;

        using StoreDirectory top = StoreDirectory.Open(Root);
        using StoreDirectory staging = top.OpenChild(StoreLayout.Staging);
        using StoreDirectory trash = top.OpenChild(StoreLayout.Trash);

        // Leases.
        var leaseProblems = new List<(string File, string Problem, DateTimeOffset Modified)>();
        List<(LeaseRecord Lease, bool Live)> leases = ReadLeases(leaseProblems);
        using (StoreDirectory leaseDirectory = top.OpenChild(StoreLayout.Leases))
        {
            foreach ((LeaseRecord lease, bool live) in leases.Where(l => !l.Live))
            {
                if (ReleaseLease(lease.Id))
                {
                    removedLeases.Add(lease.Id);
                }
            }
            foreach ((string file, string problem, DateTimeOffset modified) in leaseProblems)
            {
                if (Older(modified, _options.StagingAge))
                {
                    StoreFiles.RemoveTree(leaseDirectory, file);
                    problems.Add($"{problem} (removed: older than {_options.StagingAge})");
                }
                else
                {
                    protectAll = true;
                    problems.Add($"{problem} (every layer kept while it may be a live lease)");
                }
            }
        }
        var leased = leases.Where(l => l.Live).SelectMany(l => l.Lease.Layers).ToHashSet(StringComparer.Ordinal);

        // Images and names.
        var nameProblems = new List<string>();
        Dictionary<string, string> names = ScanNames(top, nameProblems);
        problems.AddRange(nameProblems);
        var named = names.Values.ToHashSet(StringComparer.Ordinal);
        var referenced = new HashSet<string>(StringComparer.Ordinal);
        using (StoreDirectory images = top.OpenChild(StoreLayout.Images))
        {
            foreach (string file in images.Names())
            {
                cancellation.ThrowIfCancellationRequested();
                string? digest = StoreLayout.DigestOfImageFileName(file);
                if (digest is null || !images.TryLstat(file, out Stat stat))
                {
                    continue;
                }
                DateTimeOffset modified = DateTimeOffset.FromUnixTimeSeconds(stat.st_mtime);
                ImageManifest? image;
                try
                {
                    image = ReadImage(images, file, digest);
                }
                catch (LayerStoreException e)
                {
                    if (!named.Contains(digest) && Older(modified, _options.GracePeriod))
                    {
                        StoreFiles.RemoveTree(images, file);
                        problems.Add($"{e.Message} (removed)");
                    }
                    else
                    {
                        protectAll = true;
                        problems.Add($"{e.Message} (every layer kept while it may be a used image)");
                    }
                    continue;
                }
                if (image is null)
                {
                    continue;
                }
                if (named.Contains(digest) || !Older(modified, _options.GracePeriod))
                {
                    referenced.UnionWith(image.Layers);
                    continue;
                }
                StoreFiles.RemoveTree(images, file);
                removedImages.Add(digest);
            }
        }

        // Layers.
        using (StoreDirectory layers = top.OpenChild(StoreLayout.Layers))
        {
            foreach (string name in layers.Names())
            {
                cancellation.ThrowIfCancellationRequested();
                string? digest = StoreLayout.DigestOfDirectoryName(name);
                if (digest is null || !layers.TryLstat(name, out Stat stat))
                {
                    continue;
                }
                if (protectAll || referenced.Contains(digest))
                {
                    continue;
                }
                if (leased.Contains(digest))
                {
                    keptForLeases.Add(digest);
                    continue;
                }
                if (!Older(DateTimeOffset.FromUnixTimeSeconds(stat.st_mtime), _options.GracePeriod))
                {
                    continue;
                }
                string trashName = $"{name}.{StoreLayout.RandomSuffix()}";
                try
                {
                    StoreFiles.Rename(layers, name, trash, trashName);
                }
                catch (StoreFiles.RenameException e) when (e.Errno == Errno.ENOENT)
                {
                    continue; // another collector took it
                }
                catch (StoreFiles.RenameException e)
                {
                    throw e.Error;
                }
                // A host may have taken a lease between the first reading of the leases and the move: it checks the
                // layer is in place after writing its lease, so either it saw the layer gone, or its lease is read here.
                var again = new List<(string, string, DateTimeOffset)>();
                bool nowLeased = ReadLeases(again).Any(l => l.Live && l.Lease.Layers.Contains(digest)) || again.Count > leaseProblems.Count;
                if (nowLeased)
                {
                    try
                    {
                        StoreFiles.Rename(trash, trashName, layers, name);
                        keptForLeases.Add(digest);
                        continue;
                    }
                    catch (StoreFiles.RenameException e) when (e.TargetExists)
                    {
                        // Published again meanwhile: the copy in place serves the lease.
                    }
                }
                try
                {
                    StoreFiles.RemoveTree(trash, trashName);
                }
                catch (LayerStoreException e)
                {
                    problems.Add($"{e.Message} (the rest is left in trash for the next collection)");
                }
                removedLayers.Add(digest);
            }
        }

        // Leftovers of crashed writers and collectors. A trash entry's age is its ctime: the rename into trash set it.
        foreach ((StoreDirectory directory, bool useChangeTime) in new[] { (staging, false), (trash, true) })
        {
            foreach (string name in directory.Names())
            {
                if (!directory.TryLstat(name, out Stat stat))
                {
                    continue;
                }
                DateTimeOffset time = DateTimeOffset.FromUnixTimeSeconds(useChangeTime ? stat.st_ctime : stat.st_mtime);
                if (Older(time, _options.StagingAge))
                {
                    try
                    {
                        StoreFiles.RemoveTree(directory, name);
                        removedStaging.Add(name);
                    }
                    catch (LayerStoreException e)
                    {
                        problems.Add(e.Message);
                    }
                }
            }
        }

        if (removedLayers.Count > 0 || removedImages.Count > 0)
        {
            BumpGeneration(top, staging);
            Refresh();
        }
        return new StoreCollectionResult
        {
            RemovedLayers = removedLayers,
            RemovedImages = removedImages,
            RemovedStaging = removedStaging,
            RemovedLeases = removedLeases,
            KeptForLeases = keptForLeases,
            Problems = problems,
        };
    }
}
