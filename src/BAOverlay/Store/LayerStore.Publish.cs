using System.Diagnostics;
using System.Text;
using Mono.Unix.Native;

namespace BAOverlay.Store;

/// <summary>
/// Publishing. The order is the crash-safety argument (docs/layer-store.md, "Publication"):
/// <list type="number">
/// <item>make <c>staging/HOST.PID.RANDOM/</c> (private to this writer; nothing reads staging);</item>
/// <item>fill its <c>tree/</c> (files fsynced as written);</item>
/// <item>fsync every directory of the tree;</item>
/// <item>hash the tree, writing what is hashed as <c>tree.list</c> (its sha256 is the layer's id), fsynced;</item>
/// <item>write <c>manifest.json</c> (digest, sizes, completion record), fsynced;</item>
/// <item>fsync the staging directory and <c>staging/</c>;</item>
/// <item>rename it to <c>layers/sha256-HEX</c> — the one step that makes it visible, atomic;</item>
/// <item>fsync <c>layers/</c>;</item>
/// <item>bump <c>generation</c> (write temporary, fsync, rename, fsync the root).</item>
/// </list>
/// A writer that dies before the rename leaves only staging, which no reader looks at and garbage collection removes
/// by age; after it, a complete layer whose announcement readers may see one refresh late.
/// </summary>
public sealed partial class LayerStore
{
    /// <summary>How often a writer touches its staging directory, so that garbage collection on another host (which
    /// removes staging older than <see cref="LayerStoreOptions.StagingAge"/>) knows it is alive.</summary>
    private static readonly TimeSpan HeartbeatInterval = TimeSpan.FromMinutes(1);

    /// <summary>
    /// Publishes a copy of the directory tree <paramref name="directory"/> as a layer (owners, modes, times, extended
    /// attributes, overlay whiteouts and opaque marks kept; symbolic links copied, never followed). Returns the layer,
    /// already published before when the same tree was. Durable when it returns.
    /// </summary>
    /// <exception cref="LayerStoreException">The tree cannot be read or stored (a socket, a name that is not UTF-8,
    /// owners or devices without root), or the store cannot be written.</exception>
    public StoreLayer PublishDirectory(string directory, CancellationToken cancellation = default)
    {
        ArgumentNullException.ThrowIfNull(directory);
        using StoreDirectory source = StoreDirectory.Open(Path.GetFullPath(directory));
        return Publish((tree, heartbeat) =>
        {
            TreeCopier.Copy(source, tree, heartbeat, cancellation);
            return null;
        }, cancellation);
    }

    /// <summary>
    /// Imports an OCI layer tar (plain or gzip) as a layer: whiteout entries become overlay whiteouts, opaque markers
    /// <c>trusted.overlay.opaque</c> (both need root). Hostile archives (absolute or <c>..</c> paths, paths through
    /// symbolic links, hard links out of the tree, content past <see cref="LayerStoreOptions.MaxLayerBytes"/>) are
    /// refused. The layer records the tar's sha256 (its diff id) as <see cref="StoreLayer.TarDigest"/>.
    /// </summary>
    /// <exception cref="LayerStoreException">The archive is refused or malformed, or the store cannot be written.</exception>
    public StoreLayer ImportTar(Stream tar, CancellationToken cancellation = default)
    {
        ArgumentNullException.ThrowIfNull(tar);
        return Publish((tree, heartbeat) => TarLayerReader.Unpack(tar, tree, _options.MaxLayerBytes, heartbeat, cancellation), cancellation);
    }

    /// <summary>Imports the OCI layer tar file <paramref name="tarFile"/>; see <see cref="ImportTar(Stream, CancellationToken)"/>.</summary>
    /// <exception cref="LayerStoreException">The archive is refused or malformed, or the store cannot be written.</exception>
    public StoreLayer ImportTarFile(string tarFile, CancellationToken cancellation = default)
    {
        ArgumentNullException.ThrowIfNull(tarFile);
        using FileStream stream = new(tarFile, FileMode.Open, FileAccess.Read, FileShare.Read, bufferSize: 0);
        try
        {
            return ImportTar(stream, cancellation);
        }
        catch (LayerStoreException e) when (e.FilePath.StartsWith("layer tar", StringComparison.Ordinal))
        {
            throw new LayerStoreException($"{tarFile}: {e.FilePath}", e.Problem, e);
        }
    }

    private StoreLayer Publish(Func<StoreDirectory, Action, string?> fill, CancellationToken cancellation)
    {
        ThrowIfDisposed();
        using StoreDirectory top = StoreDirectory.Open(Root);
        using StoreDirectory staging = top.OpenChild(StoreLayout.Staging);
        using StoreDirectory layers = top.OpenChild(StoreLayout.Layers);
        string name = $"{HostId}.{Environment.ProcessId}.{StoreLayout.RandomSuffix()}";
        if (Syscall.mkdir(staging.At(name), FilePermissions.S_IRWXU) != 0)
        {
            throw StoreDirectory.Failure(staging.Describe(name), "cannot create the staging directory");
        }
        bool published = false;
        try
        {
            Step(PublishStep.StagingCreated);
            LayerManifest manifest;
            using (StoreDirectory building = staging.OpenChild(name))
            {
                if (Syscall.mkdir(building.At(StoreLayout.Tree), FilePermissions.S_IRWXU) != 0)
                {
                    throw StoreDirectory.Failure(building.Describe(StoreLayout.Tree), "cannot create the directory");
                }
                var sinceTouch = Stopwatch.StartNew();
                void Heartbeat()
                {
                    if (sinceTouch.Elapsed >= HeartbeatInterval)
                    {
                        var now = new Timespec { tv_nsec = (1 << 30) - 1 }; // UTIME_NOW
                        Syscall.utimensat(-100, building.Self, [now, now], 0);
                        sinceTouch.Restart();
                    }
                }
                string? tarDigest;
                TreeSummary summary;
                using (StoreDirectory tree = building.OpenChild(StoreLayout.Tree))
                {
                    tarDigest = fill(tree, Heartbeat);
                    Step(PublishStep.TreeWritten);
                    TreeBuilder.SyncTree(tree, cancellation);
                    Step(PublishStep.TreeSynced);
                    summary = WriteTreeList(building, tree, cancellation);
                }
                Step(PublishStep.ListWritten);
                manifest = new LayerManifest(summary.Digest, summary.PortableDigest, tarDigest, summary.Entries, summary.Bytes,
                    HostId, _options.TimeProvider.GetUtcNow(), Complete: true);
                StoreFiles.WriteNew(building, StoreLayout.Manifest, manifest.ToJson());
                Step(PublishStep.ManifestWritten);
                if (Syscall.fchmod(building.Fd, (FilePermissions)0x1ED) != 0)
                {
                    throw StoreDirectory.Failure(building.Described, "cannot set the mode");
                }
                building.Sync();
            }
            staging.Sync();
            Step(PublishStep.StagingSynced);
            string target = StoreLayout.DirectoryName(manifest.Digest);
            try
            {
                StoreFiles.Rename(staging, name, layers, target);
            }
            catch (StoreFiles.RenameException e) when (e.TargetExists)
            {
                // Published before (by this host or another): the same content, by its name. Keep the one in place.
                StoreFiles.RemoveTree(staging, name);
                published = true;
                using StoreDirectory existing = layers.OpenChild(target);
                // Touched, so that the grace period for unreferenced layers starts again: the image that will refer to
                // it is being published now.
                var now = new Timespec { tv_nsec = (1 << 30) - 1 }; // UTIME_NOW
                Syscall.utimensat(-100, existing.Self, [now, now], 0);
                Refresh();
                return new StoreLayer(manifest.Digest, Path.Combine(Root, StoreLayout.Layers, target, StoreLayout.Tree), ReadManifest(existing, manifest.Digest));
            }
            catch (StoreFiles.RenameException e)
            {
                throw e.Error;
            }
            published = true;
            Step(PublishStep.Renamed);
            layers.Sync();
            Step(PublishStep.LayersSynced);
            BumpGeneration(top, staging);
            Step(PublishStep.GenerationBumped);
            _contentVerified[manifest.Digest] = true; // hashed from what was just written
            Refresh();
            return new StoreLayer(manifest.Digest, Path.Combine(Root, StoreLayout.Layers, target, StoreLayout.Tree), manifest);
        }
        catch when (!published)
        {
            try
            {
                StoreFiles.RemoveTree(staging, name);
            }
            catch (IOException)
            {
                // Left for garbage collection, which removes staging by age.
            }
            throw;
        }
    }

    /// <summary>Hashes the tree in staging and writes the hash's input, the tree's canonical serialization, beside it as
    /// <c>tree.list</c>, fsynced: sha256 of that file is the layer's id, so a reader can check it against the id alone and
    /// learn every object's metadata and content hash from it without reading the tree (docs/layer-store.md).</summary>
    private static TreeSummary WriteTreeList(StoreDirectory building, StoreDirectory tree, CancellationToken cancellation)
    {
        using Microsoft.Win32.SafeHandles.SafeFileHandle file = building.CreateFile(StoreLayout.TreeList);
        Syscall.fchmod((int)file.DangerousGetHandle(), FilePermissions.S_IRUSR | FilePermissions.S_IWUSR | FilePermissions.S_IRGRP | FilePermissions.S_IROTH);
        TreeSummary summary;
        try
        {
            using (var stream = new FileStream(file, FileAccess.Write, bufferSize: 1 << 16))
            {
                summary = TreeDigest.Compute(tree, cancellation, serialization: stream);
                stream.Flush(flushToDisk: true);
            }
        }
        catch (IOException e) when (e is not LayerStoreException)
        {
            throw new LayerStoreException(building.Describe(StoreLayout.TreeList), $"cannot write the file: {e.Message}", e);
        }
        return summary;
    }

    /// <summary>
    /// Publishes an image: its layers (base first, each already in the store) and, when <paramref name="name"/> is
    /// given, a name for it (replacing what the name referred to before). Returns it.
    /// </summary>
    /// <exception cref="LayerStoreException">A layer is not in the store, or the name is not valid.</exception>
    public StoreImage PublishImage(string? name, IReadOnlyList<string> layersBaseFirst)
    {
        ArgumentNullException.ThrowIfNull(layersBaseFirst);
        ThrowIfDisposed();
        if (name is not null && !StoreLayout.IsImageName(name))
        {
            throw new LayerStoreException(name, "not a valid image name (1 to 255 of A-Z a-z 0-9 . _ - : @ / +, starting with a letter or digit)");
        }
        if (layersBaseFirst.Count is 0 or > StoreLayout.MaxImageLayers)
        {
            throw new LayerStoreException(name ?? "image", $"{layersBaseFirst.Count} layers: an image has 1 to {StoreLayout.MaxImageLayers}");
        }
        using StoreDirectory top = StoreDirectory.Open(Root);
        using StoreDirectory staging = top.OpenChild(StoreLayout.Staging);
        using StoreDirectory layers = top.OpenChild(StoreLayout.Layers);
        foreach (string layer in layersBaseFirst)
        {
            if (!StoreLayout.IsDigest(layer) || !IsCompleteLayer(layers, layer))
            {
                throw new LayerStoreException(layer, "not a complete layer of the store");
            }
        }
        byte[] record = new ImageManifest(layersBaseFirst.ToList()).ToJson();
        string digest = StoreLayout.DigestOf(record);
        using (StoreDirectory images = top.OpenChild(StoreLayout.Images))
        {
            StoreFiles.Replace(staging, HostId, images, StoreLayout.ImageFileName(digest), record);
        }
        if (name is not null)
        {
            using StoreDirectory names = top.OpenChild(StoreLayout.Names);
            StoreFiles.Replace(staging, HostId, names, StoreLayout.NameFileName(name), Encoding.ASCII.GetBytes(digest + "\n"));
        }
        BumpGeneration(top, staging);
        Refresh();
        return FindImage(digest) ?? new StoreImage(digest, layersBaseFirst.ToList(), name is null ? [] : [name]);
    }

    /// <summary>Removes the name <paramref name="name"/>. The image record and its layers stay until garbage collection
    /// finds them unreferenced, unleased and past <see cref="LayerStoreOptions.GracePeriod"/>; hosts running the image
    /// keep it through their leases.</summary>
    /// <returns>False when there was no such name.</returns>
    public bool DeleteName(string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        ThrowIfDisposed();
        if (!StoreLayout.IsImageName(name))
        {
            throw new LayerStoreException(name, "not a valid image name");
        }
        using StoreDirectory top = StoreDirectory.Open(Root);
        using StoreDirectory staging = top.OpenChild(StoreLayout.Staging);
        using (StoreDirectory names = top.OpenChild(StoreLayout.Names))
        {
            if (Syscall.unlink(names.At(StoreLayout.NameFileName(name))) != 0)
            {
                if (Stdlib.GetLastError() == Errno.ENOENT)
                {
                    return false;
                }
                throw StoreDirectory.Failure(names.Describe(StoreLayout.NameFileName(name)), "cannot remove the name");
            }
            names.Sync();
        }
        BumpGeneration(top, staging);
        Refresh();
        return true;
    }

    /// <summary>Writes the next generation record: the number one higher, and a random token, so that two writers
    /// bumping from the same number still each change the record readers compare.</summary>
    private void BumpGeneration(StoreDirectory top, StoreDirectory staging)
    {
        long current = 0;
        try
        {
            byte[]? record = StoreFiles.TryRead(top, StoreLayout.GenerationFile, 256);
            int space = record is null ? -1 : Array.IndexOf(record, (byte)' ');
            if (space > 0)
            {
                StoreLayout.TryParseCount(record.AsSpan(0, space), out current);
            }
        }
        catch (LayerStoreException)
        {
            // A damaged record is replaced.
        }
        StoreFiles.Replace(staging, HostId, top, StoreLayout.GenerationFile, GenerationText(current + 1));
    }

    private void Step(PublishStep step) => _options.PublishStepHook?.Invoke(step);
}
