namespace BAOverlay.Store;

/// <summary>How a <see cref="LayerStore"/> behaves on this host. Every host of a store may use its own; the times
/// that several hosts must agree on (leases, ages) are read against each host's own clock, with
/// <see cref="ClockSkewMargin"/> between them.</summary>
public sealed class LayerStoreOptions
{
    /// <summary>This host's id in lease records and staging names: 1 to 64 of <c>A-Z a-z 0-9 . _ -</c>. Default: the
    /// host name. Two hosts of one store must not share one.</summary>
    public string? HostId { get; init; }

    /// <summary>How often <see cref="LayerStore.WaitForChangeAsync"/> polls the generation record. Default 2 s: a layer
    /// published on another host is seen within this (plus the share's own attribute caching, see docs/layer-store.md).</summary>
    public TimeSpan RefreshInterval { get; init; } = TimeSpan.FromSeconds(2);

    /// <summary>How long a lease protects its layers without being renewed. Default 5 minutes; a
    /// <see cref="StoreLease"/> renews itself at a third of it while it is held.</summary>
    public TimeSpan LeaseDuration { get; init; } = TimeSpan.FromMinutes(5);

    /// <summary>How far the clocks of two hosts of the store may differ: a lease counts as expired only this long after
    /// its expiry time, and ages are measured with it added. Default 1 minute.</summary>
    public TimeSpan ClockSkewMargin { get; init; } = TimeSpan.FromMinutes(1);

    /// <summary>A layer or image that no image or name refers to is kept this long after it was published, so that a
    /// writer can publish the layers of an image before the image itself. Default 1 hour.</summary>
    public TimeSpan GracePeriod { get; init; } = TimeSpan.FromHours(1);

    /// <summary>Staging entries (a crashed writer's half-made layer or record) and trash older than this are removed by
    /// garbage collection. A writer touches its staging directory at least every minute. Default 1 hour.</summary>
    public TimeSpan StagingAge { get; init; } = TimeSpan.FromHours(1);

    /// <summary>Recompute a layer's digest from its content before its directory is first handed out by this instance
    /// (<see cref="LayerStore.ResolveLowerDirectories"/>, leases). Default true: a layer damaged or changed on the
    /// share is refused, not mounted. Off, only the manifest is checked. A layer whose metadata index
    /// (<see cref="LayerStore.OpenIndexes"/>) records an earlier verification on this host of the same publication,
    /// with the same tree root times, counts as verified without being read again, unless
    /// <see cref="ReverifyIndexedLayers"/>.</summary>
    public bool VerifyContent { get; init; } = true;

    /// <summary>With <see cref="VerifyContent"/>, hash a layer's content at its first use by this instance even when
    /// its metadata index is this host's record of an earlier verification of it (the index is then made again from
    /// that walk). Default false: a host verifies each publication of a layer once, when it first makes its index.
    /// Without an index directory (<see cref="LayerStore.OpenIndexes"/> not called) every instance verifies each layer
    /// at its first use.</summary>
    public bool ReverifyIndexedLayers { get; init; }

    /// <summary>With <see cref="VerifyContent"/>, verify a layer lazily at its first use on this host when the layer has
    /// its tree list (published with one) and <see cref="LayerStore.OpenIndexes"/> is called: its metadata is checked
    /// against the list (one walk of the share without reading any file's content), its index made from that walk, and
    /// each file's content is hashed at its first read from the store by an overlay given the index and a cache
    /// (<c>OverlayOptions.LowerIndexes</c>, <c>OverlayOptions.LowerCache</c>), which refuses with EIO a file that does
    /// not match; the files found right are recorded beside the index, so a later use neither hashes nor fetches them
    /// again. Set it only when the layers are read through such an overlay: the directories
    /// <see cref="LayerStore.ResolveLowerDirectories"/> and leases hand out are then not verified for other readers
    /// (kernel overlayfs). Default false. A layer without a tree list, and <see cref="ReverifyIndexedLayers"/>, are
    /// verified whole as before (docs/layer-store.md, "Lazy verification").</summary>
    public bool VerifyFilesAtFirstRead { get; init; }

    /// <summary>The most bytes of file content a layer tar may unpack to. Default 1 TiB.</summary>
    public long MaxLayerBytes { get; init; } = 1L << 40;

    /// <summary>The clock (tests pass a fake one to age leases and staging).</summary>
    public TimeProvider TimeProvider { get; init; } = TimeProvider.System;

    /// <summary>Called with each regular file of a layer before a verification reads its content (tests count what a
    /// mount reads from the share).</summary>
    internal Action<string>? ContentReadHook { get; init; }

    /// <summary>Called after each step of a publication (tests stop or kill the writer there).</summary>
    internal Action<PublishStep>? PublishStepHook { get; init; }
}

/// <summary>The steps of publishing a layer, in order; see docs/layer-store.md.</summary>
internal enum PublishStep
{
    StagingCreated,
    TreeWritten,
    TreeSynced,
    ListWritten,
    ManifestWritten,
    StagingSynced,
    Renamed,
    LayersSynced,
    GenerationBumped,
}
