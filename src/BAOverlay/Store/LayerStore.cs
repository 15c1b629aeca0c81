using System.Collections.Concurrent;
using System.Text;
using Mono.Unix.Native;

namespace BAOverlay.Store;

/// <summary>
/// A read-only layer store on a directory that many hosts may share over a network file system (NFS, CephFS, sshfs):
/// one host publishes layers and images, every host reads them. No lock is ever taken on the share: a writer builds in
/// <c>staging/</c>, makes it durable, writes the manifest last, renames it into <c>layers/</c> and bumps the
/// <c>generation</c> record; readers poll that record and expose only layers whose manifest is complete and checked.
/// Hosts that use layers hold leases; garbage collection never removes a leased layer. The layout and protocol are in
/// docs/layer-store.md.
/// </summary>
/// <remarks>
/// Thread-safe: the view (<see cref="Layers"/>, <see cref="Images"/>) is an immutable snapshot swapped by
/// <see cref="Refresh"/>. Everything read from the share is checked before use: names, digests, sizes, and no
/// symbolic link in the store is ever followed.
/// </remarks>
public sealed partial class LayerStore : IDisposable
{
    private readonly LayerStoreOptions _options;
    private readonly Lock _refreshGate = new();
    private readonly ConcurrentDictionary<string, bool> _contentVerified = new(StringComparer.Ordinal);
    // Layers taken as verified on the strength of this host's record (their index file, OpenIndexes), not hashed by
    // this instance: a later EnsureVerified compares the record with the share again.
    private readonly ConcurrentDictionary<string, LayerIndex> _verifiedByRecord = new(StringComparer.Ordinal);
    private volatile View _view = View.Empty;
    private bool _disposed;

    private LayerStore(string root, LayerStoreOptions options, string hostId)
    {
        Root = root;
        _options = options;
        HostId = hostId;
    }

    /// <summary>The store's directory (full path).</summary>
    public string Root { get; }

    /// <summary>This host's id (<see cref="LayerStoreOptions.HostId"/>).</summary>
    public string HostId { get; }

    /// <summary>The generation number last read (0 before any publication). Informational: two writers bumping at once
    /// may write the same number; <see cref="Refresh"/>'s result says whether the store changed.</summary>
    public long Generation => _view.Generation;

    /// <summary>The complete layers seen by the last refresh, by digest order.</summary>
    public IReadOnlyList<StoreLayer> Layers => _view.LayerList;

    /// <summary>The images seen by the last refresh whose layers are all complete, by digest order.</summary>
    public IReadOnlyList<StoreImage> Images => _view.ImageList;

    /// <summary>What the last refresh found wrong and did not expose, each <c>FILE: problem</c>.</summary>
    public IReadOnlyList<string> Problems => _view.Problems;

    /// <summary>Makes a new store in <paramref name="directory"/> (created if missing; an existing store is left as it
    /// is), and opens it.</summary>
    /// <exception cref="LayerStoreException">The directory cannot be created or written.</exception>
    public static LayerStore Create(string directory, LayerStoreOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(directory);
        options ??= new LayerStoreOptions();
        string root = Path.GetFullPath(directory);
        string hostId = CheckHostId(options);
        Directory.CreateDirectory(root);
        using (StoreDirectory top = StoreDirectory.Open(root))
        {
            foreach (string name in new[] { StoreLayout.Layers, StoreLayout.Images, StoreLayout.Names, StoreLayout.Staging, StoreLayout.Leases, StoreLayout.Trash })
            {
                if (Syscall.mkdir(top.At(name), (FilePermissions)0x1ED) != 0 && Stdlib.GetLastError() != Errno.EEXIST)
                {
                    throw StoreDirectory.Failure(top.Describe(name), "cannot create the directory");
                }
            }
            using StoreDirectory staging = top.OpenChild(StoreLayout.Staging);
            if (!top.TryLstat(StoreLayout.GenerationFile, out _))
            {
                StoreFiles.Replace(staging, hostId, top, StoreLayout.GenerationFile, GenerationText(0));
            }
            if (!top.TryLstat(StoreLayout.StoreFile, out _))
            {
                // Last: a directory with store.json is a complete store.
                StoreFiles.Replace(staging, hostId, top, StoreLayout.StoreFile,
                    Encoding.UTF8.GetBytes($"{{\"schema\": \"{StoreLayout.StoreSchema}\"}}\n"));
            }
        }
        return Open(root, options);
    }

    /// <summary>Opens the store in <paramref name="directory"/> and refreshes the view once.</summary>
    /// <exception cref="LayerStoreException">It is not a store (no <c>store.json</c> of this format), or cannot be read.</exception>
    public static LayerStore Open(string directory, LayerStoreOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(directory);
        options ??= new LayerStoreOptions();
        string root = Path.GetFullPath(directory);
        string hostId = CheckHostId(options);
        using (StoreDirectory top = StoreDirectory.Open(root))
        {
            byte[] marker = StoreFiles.TryRead(top, StoreLayout.StoreFile, StoreLayout.MaxRecordBytes)
                ?? throw new LayerStoreException(root, "not a layer store (no store.json; make one with LayerStore.Create or bcow store init)");
            using System.Text.Json.JsonDocument document = RecordJson.Parse(marker, top.Describe(StoreLayout.StoreFile));
            RecordJson.ExpectSchema(document.RootElement, StoreLayout.StoreSchema, top.Describe(StoreLayout.StoreFile));
        }
        var store = new LayerStore(root, options, hostId);
        store.Refresh(force: true);
        return store;
    }

    private static string CheckHostId(LayerStoreOptions options)
    {
        if (options.RefreshInterval <= TimeSpan.Zero || options.LeaseDuration <= TimeSpan.Zero || options.ClockSkewMargin < TimeSpan.Zero
            || options.GracePeriod < TimeSpan.Zero || options.StagingAge < TimeSpan.Zero || options.MaxLayerBytes <= 0 || options.TimeProvider is null)
        {
            throw new ArgumentException("store options: the refresh interval, lease duration and largest layer must be positive, the margin and ages not negative, and a clock given", nameof(options));
        }
        string id = options.HostId ?? StoreLayout.DefaultHostId();
        if (!StoreLayout.IsHostId(id))
        {
            throw new ArgumentException($"host id '{id}': 1 to 64 of A-Z a-z 0-9 . _ -, not starting with a dot", nameof(options));
        }
        return id;
    }

    /// <summary>The layer <paramref name="digest"/> as the last refresh saw it, or null.</summary>
    public StoreLayer? FindLayer(string digest) => _view.Layers.GetValueOrDefault(digest);

    /// <summary>The image named <paramref name="nameOrDigest"/> (a name, or <c>sha256:HEX</c>) as the last refresh saw
    /// it, or null.</summary>
    public StoreImage? FindImage(string nameOrDigest)
    {
        View view = _view;
        string? digest = StoreLayout.IsDigest(nameOrDigest) ? nameOrDigest : view.Names.GetValueOrDefault(nameOrDigest);
        return digest is null ? null : view.Images.GetValueOrDefault(digest);
    }

    /// <summary>
    /// The lower directories of an image, highest layer first (the order of overlayfs's <c>lowerdir=</c>), each
    /// layer's content verified once by this instance when <see cref="LayerStoreOptions.VerifyContent"/> is on (or
    /// vouched for by this host's record of its verification, <see cref="OpenIndexes"/>).
    /// Refreshes first when the image is not known yet. Take a lease (<see cref="LeaseImage"/>) for as long as the
    /// directories are used, or garbage collection on another host may remove them once the image is deleted.
    /// </summary>
    /// <exception cref="LayerStoreException">No such image, or a layer failed verification.</exception>
    public IReadOnlyList<string> ResolveLowerDirectories(string nameOrDigest)
    {
        StoreImage image = RequireImage(nameOrDigest);
        var directories = new List<string>(image.Layers.Count);
        foreach (string digest in image.Layers.Reverse())
        {
            StoreLayer layer = FindLayer(digest) ?? throw new LayerStoreException(nameOrDigest, $"layer {digest} is not in the store");
            EnsureVerified(layer);
            directories.Add(layer.Directory);
        }
        return directories;
    }

    private StoreImage RequireImage(string nameOrDigest)
    {
        ArgumentNullException.ThrowIfNull(nameOrDigest);
        StoreImage? image = FindImage(nameOrDigest);
        if (image is null)
        {
            Refresh();
            image = FindImage(nameOrDigest);
        }
        return image ?? throw new LayerStoreException(nameOrDigest, $"no such image in the store {Root}");
    }

    /// <summary>Verifies the layer's content unless this instance did already, or (<see cref="OpenIndexes"/>) took it
    /// as verified on the strength of this host's record of it, which is then compared with the share once more (one
    /// lstat of the tree root): a layer collected and published again since is hashed, not trusted.</summary>
    private void EnsureVerified(StoreLayer layer)
    {
        if (!_options.VerifyContent)
        {
            return;
        }
        if (_verifiedByRecord.TryGetValue(layer.Digest, out LayerIndex? record))
        {
            if (RecordMismatch(layer, record) is null)
            {
                return;
            }
            _verifiedByRecord.TryRemove(layer.Digest, out _);
        }
        else if (_contentVerified.ContainsKey(layer.Digest))
        {
            return;
        }
        VerifyLayer(layer.Digest);
    }

    /// <summary>
    /// Recomputes the layer's digest from its content and compares it with its id (on a file system without extended
    /// attributes, such as sshfs: the portable digest, with the manifest's), and its entry and byte counts with the
    /// manifest's.
    /// </summary>
    /// <exception cref="LayerStoreException">The layer is missing, its manifest is not valid, or its content does not
    /// match.</exception>
    public void VerifyLayer(string digest, CancellationToken cancellation = default) => VerifyLayer(digest, cancellation, collect: null);

    /// <summary>As the public overload; <paramref name="collect"/> is given every object the walk hashes (to make the
    /// layer's metadata index); returns the manifest and whether the share showed xattrs.</summary>
    private (LayerManifest Manifest, bool XattrsRead) VerifyLayer(string digest, CancellationToken cancellation, Action<TreeObject>? collect)
    {
        if (!StoreLayout.IsDigest(digest))
        {
            throw new LayerStoreException(digest, "not a layer digest (sha256:HEX)");
        }
        using StoreDirectory layers = OpenPart(StoreLayout.Layers);
        string directoryName = StoreLayout.DirectoryName(digest);
        using StoreDirectory layer = layers.TryOpenChild(directoryName) ?? throw new LayerStoreException(layers.Describe(directoryName), "no such layer");
        LayerManifest manifest = ReadManifest(layer, digest);
        using StoreDirectory tree = layer.OpenChild(StoreLayout.Tree);
        TreeSummary summary = TreeDigest.Compute(tree, cancellation, collect, _options.ContentReadHook);
        string expected = summary.XattrsRead ? digest : manifest.PortableDigest;
        string found = summary.XattrsRead ? summary.Digest : summary.PortableDigest;
        if (found != expected)
        {
            throw new LayerStoreException(tree.Described, $"the content does not match the layer's digest: {found}{(summary.XattrsRead ? "" : " (portable: the file system has no extended attributes)")}");
        }
        if (summary.Entries != manifest.Entries || summary.Bytes != manifest.Bytes)
        {
            throw new LayerStoreException(tree.Described, $"{summary.Entries} entries and {summary.Bytes} bytes, the manifest says {manifest.Entries} and {manifest.Bytes}");
        }
        // The tree list, when the layer has one, must be what the id names: a reader that verifies lazily trusts it.
        TreeList.TryRead(layer, manifest);
        _contentVerified[digest] = true;
        return (manifest, summary.XattrsRead);
    }

    /// <summary>
    /// Verifies a layer lazily (<see cref="LayerStoreOptions.VerifyFilesAtFirstRead"/>): reads its tree list, checks it
    /// against the id, and walks the tree's metadata only (names, lstat, link targets, extended attributes where the
    /// share shows them; no file content), with the list's content hashes for the files: the digest of what the walk
    /// saw must be the layer's id (where the share shows no extended attributes, the portable digest, recomputed from
    /// the list). Returns null when the layer has no tree list.
    /// </summary>
    /// <exception cref="LayerStoreException">The list is not the layer's, or the tree's metadata does not match it.</exception>
    private (LayerManifest Manifest, bool XattrsRead)? VerifyMetadata(string digest, List<TreeObject> objects)
    {
        using StoreDirectory layers = OpenPart(StoreLayout.Layers);
        string directoryName = StoreLayout.DirectoryName(digest);
        using StoreDirectory layer = layers.TryOpenChild(directoryName) ?? throw new LayerStoreException(layers.Describe(directoryName), "no such layer");
        LayerManifest manifest = ReadManifest(layer, digest);
        if (TreeList.TryRead(layer, manifest) is not { } list)
        {
            return null;
        }
        using StoreDirectory tree = layer.OpenChild(StoreLayout.Tree);
        TreeSummary summary = TreeDigest.Compute(tree, CancellationToken.None, objects.Add, knownContent: list.ContentHash);
        // The list's portable digest was checked equal to the manifest's when it was parsed.
        string expected = summary.XattrsRead ? digest : manifest.PortableDigest;
        string found = summary.XattrsRead ? summary.Digest : summary.PortableDigest;
        if (found != expected || summary.Entries != manifest.Entries || summary.Bytes != manifest.Bytes)
        {
            throw new LayerStoreException(tree.Described, $"its metadata does not match the layer's tree list: {found}{(summary.XattrsRead ? "" : " (portable)")}, {summary.Entries} entries, {summary.Bytes} bytes");
        }
        if (objects.Find(o => o.Xattrs?.Exists(x => x.Name == FileSystem.LayerPaths.BCowXattr) == true) is { } marked)
        {
            // An overlay reads such a file through the B-CoW engine, not through the cache that checks it.
            throw new LayerStoreException(tree.Describe(marked.Path), "marked as a B-CoW file, which a lazy verification cannot check at its read");
        }
        return (manifest, summary.XattrsRead);
    }

    /// <summary>
    /// The metadata indexes of an image's layers (<see cref="LayerIndex"/>), in the order of
    /// <see cref="ResolveLowerDirectories"/> (highest layer first), each read from <paramref name="indexDirectory"/>
    /// (a directory on this host's local disk, <c>sha256-HEX.index</c>) or made there from a verification of the layer.
    /// </summary>
    /// <remarks>
    /// <para>An index file is this host's record that the layer was verified. It is used only when its checksum holds,
    /// the digest recomputed from its objects is the layer's, it was made from the publication the store holds now (the
    /// manifest's host and time), and the layer's tree root on the share shows the modification and change times the
    /// verification walk recorded (one lstat); then the layer counts as verified by this instance without its content
    /// being read (unless <see cref="LayerStoreOptions.ReverifyIndexedLayers"/>), and nothing else of it is read from
    /// the share. Otherwise (missing, damaged, another publication, a changed root) the layer is verified, which makes
    /// the index from the same walk, and the file written. Call it before <see cref="LeaseImage"/> and
    /// <see cref="ResolveLowerDirectories"/>, which then do not hash the layers again. A problem found is passed to
    /// <paramref name="log"/>.</para>
    /// </remarks>
    /// <exception cref="LayerStoreException">No such image, or a layer failed verification.</exception>
    /// <exception cref="IOException">The index directory cannot be written.</exception>
    public IReadOnlyList<LayerIndex> OpenIndexes(string nameOrDigest, string indexDirectory, Action<string>? log = null)
    {
        ArgumentNullException.ThrowIfNull(indexDirectory);
        StoreImage image = RequireImage(nameOrDigest);
        Directory.CreateDirectory(indexDirectory);
        var indexes = new List<LayerIndex>(image.Layers.Count);
        foreach (string digest in image.Layers.Reverse())
        {
            StoreLayer layer = FindLayer(digest) ?? throw new LayerStoreException(nameOrDigest, $"layer {digest} is not in the store");
            string file = Path.Combine(indexDirectory, StoreLayout.DirectoryName(digest) + ".index");
            byte[]? bytes = ReadIndexFile(file);
            LayerIndex? index = null;
            if (bytes is not null)
            {
                index = LayerIndex.TryParse(bytes, digest, layer.PortableDigest, out string? problem);
                if (index is null)
                {
                    log?.Invoke($"{file}: {problem}; made again from the layer");
                }
            }
            bool hash = _options.VerifyContent && _options.ReverifyIndexedLayers && !_contentVerified.ContainsKey(digest);
            bool lazy = _options.VerifyContent && _options.VerifyFilesAtFirstRead && !hash && !_contentVerified.ContainsKey(digest);
            if (index is not null && !hash && RecordMismatch(layer, index) is { } why)
            {
                log?.Invoke($"{file}: {why}; made again from the layer");
                index = null;
            }
            if (index is { ContentVerified: false } && !lazy && _options.VerifyContent && !_contentVerified.ContainsKey(digest))
            {
                // A record of a metadata check only, and this use wants the content verified whole (kernel overlayfs
                // may read the directories): hashed now.
                log?.Invoke($"{file}: records the layer verified file by file at first read only; verified whole now");
                index = null;
            }
            if (index is null || hash)
            {
                var objects = new List<TreeObject>();
                (LayerManifest Manifest, bool XattrsRead)? metadata = null;
                if (lazy)
                {
                    try
                    {
                        metadata = VerifyMetadata(digest, objects);
                    }
                    catch (LayerStoreException e)
                    {
                        log?.Invoke($"{e.Message}; the layer is verified whole instead");
                    }
                    if (metadata is null)
                    {
                        objects.Clear();
                    }
                }
                (LayerManifest manifest, bool xattrsRead) = metadata ?? VerifyLayer(digest, CancellationToken.None, objects.Add);
                LayerIndex fresh = LayerIndex.FromWalk(digest, new LayerPublication(manifest.Host, manifest.Created), xattrsRead, objects, contentVerified: metadata is null);
                byte[] serialized = fresh.Serialize();
                if (bytes is null || !serialized.AsSpan().SequenceEqual(bytes))
                {
                    if (index is not null)
                    {
                        log?.Invoke($"{file}: differs from the layer as it reads now (times: published again?); made again");
                    }
                    WriteIndexFile(file, serialized);
                    bytes = serialized;
                }
                if (metadata is null)
                {
                    _verifiedByRecord.TryRemove(digest, out _);
                }
                else
                {
                    _verifiedByRecord[digest] = fresh;
                }
                index = fresh;
            }
            else if (!_contentVerified.ContainsKey(digest))
            {
                _verifiedByRecord[digest] = index;
            }
            if (!index.ContentVerified)
            {
                index.Lazy = LazyContent.Open(index, bytes, Path.Combine(indexDirectory, StoreLayout.DirectoryName(digest) + ".verified"), log);
            }
            indexes.Add(index);
        }
        return indexes;
    }

    /// <summary>Writes an index file: a temporary file, fsynced, renamed over it.</summary>
    private static void WriteIndexFile(string file, byte[] bytes)
    {
        string temporary = $"{file}.{Environment.ProcessId}.{Guid.NewGuid():N}.tmp";
        using (var stream = new FileStream(temporary, FileMode.CreateNew, FileAccess.Write))
        {
            stream.Write(bytes);
            stream.Flush(flushToDisk: true);
        }
        File.Move(temporary, file, overwrite: true);
    }

    /// <summary>Why <paramref name="index"/> is not a record of the layer as the store shows it now (another publication,
    /// the tree root's times changed, the layer gone), or null. One lstat on the share.</summary>
    private string? RecordMismatch(StoreLayer layer, LayerIndex index)
    {
        using StoreDirectory layers = OpenPart(StoreLayout.Layers);
        using StoreDirectory? directory = layers.TryOpenChild(StoreLayout.DirectoryName(layer.Digest));
        if (directory is null || !directory.TryLstat(StoreLayout.Tree, out Stat root))
        {
            return "the layer's tree is not in the store";
        }
        return index.Mismatch(new LayerPublication(layer.Host, layer.Created), root);
    }

    /// <summary>An index file's bytes, or null when there is none (or it is not a regular file of a sane size).</summary>
    private static byte[]? ReadIndexFile(string file) =>
        StoreFiles.ReadLocalFile(file, 1L << 30, shortIsNull: true);

    /// <summary>Reads and checks a layer's manifest: the schema, the digest being the directory's, the completion
    /// record, and the tree being a directory (not a symbolic link).</summary>
    private static LayerManifest ReadManifest(StoreDirectory layer, string digest)
    {
        string file = layer.Describe(StoreLayout.Manifest);
        byte[] bytes = StoreFiles.TryRead(layer, StoreLayout.Manifest, StoreLayout.MaxRecordBytes)
            ?? throw new LayerStoreException(file, "missing: the layer is not complete");
        LayerManifest manifest = LayerManifest.Parse(bytes, file);
        if (manifest.Digest != digest)
        {
            throw new LayerStoreException(file, $"names layer {manifest.Digest}, not the directory's {digest}");
        }
        if (!manifest.Complete)
        {
            throw new LayerStoreException(file, "no completion record (\"complete\": true): the layer is not complete");
        }
        if (!layer.TryLstat(StoreLayout.Tree, out Stat tree) || (tree.st_mode & FilePermissions.S_IFMT) != FilePermissions.S_IFDIR)
        {
            throw new LayerStoreException(layer.Describe(StoreLayout.Tree), "missing or not a directory");
        }
        return manifest;
    }

    internal StoreDirectory OpenPart(string part)
    {
        using StoreDirectory top = StoreDirectory.Open(Root);
        return top.OpenChild(part);
    }

    internal LayerStoreOptions Options => _options;

    /// <summary>Ends the store's use by this instance (nothing on the share is changed; leases are disposed by their
    /// holders).</summary>
    public void Dispose() => _disposed = true;

    private void ThrowIfDisposed() => ObjectDisposedException.ThrowIf(_disposed, this);

    private static byte[] GenerationText(long generation) =>
        Encoding.ASCII.GetBytes($"{generation} {StoreLayout.RandomSuffix()}\n");
}
