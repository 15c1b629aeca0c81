namespace BAOverlay.Store;

/// <summary>A published, complete layer of a <see cref="LayerStore"/>: a directory tree, read-only, content-addressed.</summary>
public sealed class StoreLayer
{
    internal StoreLayer(string digest, string directory, LayerManifest manifest)
    {
        Digest = digest;
        Directory = directory;
        PortableDigest = manifest.PortableDigest;
        TarDigest = manifest.TarDigest;
        Entries = manifest.Entries;
        Bytes = manifest.Bytes;
        Host = manifest.Host;
        Created = manifest.Created;
    }

    /// <summary>The layer's id: <c>sha256:HEX</c> of its tree's canonical serialization (docs/layer-store.md).</summary>
    public string Digest { get; }

    /// <summary>The digest without extended attributes and device numbers, which a reader checks on a file system
    /// that does not carry them.</summary>
    public string PortableDigest { get; }

    /// <summary>The sha256 of the uncompressed tar the layer was imported from (its OCI diff id), or null.</summary>
    public string? TarDigest { get; }

    /// <summary>Objects in the tree, its root included.</summary>
    public long Entries { get; }

    /// <summary>Bytes of regular file content.</summary>
    public long Bytes { get; }

    /// <summary>The host that published it.</summary>
    public string Host { get; }

    /// <summary>When it was published (by the publishing host's clock).</summary>
    public DateTimeOffset Created { get; }

    /// <summary>The layer's tree: a directory usable as an overlay lower directory. Never write to it.</summary>
    public string Directory { get; }
}

/// <summary>An image of a <see cref="LayerStore"/>: an ordered list of layers, content-addressed, with the names that
/// refer to it.</summary>
public sealed class StoreImage
{
    internal StoreImage(string digest, IReadOnlyList<string> layers, IReadOnlyList<string> names)
    {
        Digest = digest;
        Layers = layers;
        Names = names;
    }

    /// <summary><c>sha256:HEX</c> of the image record.</summary>
    public string Digest { get; }

    /// <summary>The layers' digests, base first (the order of an OCI manifest; overlay lower directories go the other
    /// way, see <see cref="LayerStore.ResolveLowerDirectories"/>).</summary>
    public IReadOnlyList<string> Layers { get; }

    /// <summary>The names that refer to it, sorted.</summary>
    public IReadOnlyList<string> Names { get; }
}

/// <summary>What one garbage collection did.</summary>
public sealed class StoreCollectionResult
{
    internal StoreCollectionResult()
    {
    }

    /// <summary>Digests of the layers removed.</summary>
    public IReadOnlyList<string> RemovedLayers { get; internal set; } = [];

    /// <summary>Digests of the image records removed (no name referred to them).</summary>
    public IReadOnlyList<string> RemovedImages { get; internal set; } = [];

    /// <summary>Staging and trash entries removed (crashed writers' leftovers), by name.</summary>
    public IReadOnlyList<string> RemovedStaging { get; internal set; } = [];

    /// <summary>Expired leases removed, by id.</summary>
    public IReadOnlyList<string> RemovedLeases { get; internal set; } = [];

    /// <summary>Layers kept only because a live lease holds them.</summary>
    public IReadOnlyList<string> KeptForLeases { get; internal set; } = [];

    /// <summary>What was found wrong and left alone, each <c>FILE: problem</c>.</summary>
    public IReadOnlyList<string> Problems { get; internal set; } = [];
}
