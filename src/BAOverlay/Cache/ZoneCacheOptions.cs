namespace BAOverlay.Cache;

/// <summary>How a <see cref="ZoneCache"/> divides, counts, admits, keeps and reads (docs/layer-store.md).</summary>
public sealed class ZoneCacheOptions
{
    /// <summary>The cache directory on fast local media (created if missing). One process at a time uses it.</summary>
    public required string Directory { get; init; }

    /// <summary>
    /// The most bytes the cache may hold: cached zones plus the map pages and headers of their cache files, counted
    /// from above (what is charged is never less than what a cache file allocates once committed). Default 1 GiB.
    /// Changed at run time with <see cref="ZoneCache.BudgetBytes"/>.
    /// </summary>
    public long BudgetBytes { get; init; } = 1L << 30;

    /// <summary>Zone size: the unit of heat, admission and eviction. A power of two from 4 KiB to 64 MiB; default
    /// 256 KiB (what an admission fetches beyond what was read stays small; see docs/layer-store.md).</summary>
    public int ZoneSize { get; init; } = 256 << 10;

    /// <summary>
    /// The heat at which a zone is admitted. Each handle that reads a zone adds 1 to its heat, once; heat halves every
    /// <see cref="HeatHalfLife"/>. Default 1.5: a zone is admitted when a second reader comes within one half-life of
    /// the first, never at its first touch (one scan does not flush the cache).
    /// </summary>
    public double AdmissionHeat { get; init; } = 1.5;

    /// <summary>How fast heat fades: it halves in this time. Default 24 hours.</summary>
    public TimeSpan HeatHalfLife { get; init; } = TimeSpan.FromHours(24);

    /// <summary>
    /// How long a read of the store may take before it fails with EIO (and the store is marked unreachable). Default
    /// 2 s. <see cref="Timeout.InfiniteTimeSpan"/> reads on the caller's thread with no deadline (a store that hangs
    /// then hangs the reader).
    /// </summary>
    public TimeSpan RemoteTimeout { get; init; } = TimeSpan.FromSeconds(2);

    /// <summary>The most reads of the store in flight at once, reads stuck past their deadline included: the bound on
    /// threads a store that hangs for good can hold. Default 16.</summary>
    public int MaxRemoteReads { get; init; } = 16;

    /// <summary>While the store is unreachable, how often a read may go to it as a probe. Default 1 s.</summary>
    public TimeSpan ProbeInterval { get; init; } = TimeSpan.FromSeconds(1);

    /// <summary>How long admissions may stay uncommitted (a crash forgets them, never more). Default 5 s.</summary>
    public TimeSpan CommitInterval { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>
    /// Whether a zone a reader's read made hot enough is copied into the cache on the cache's own thread (true) or on
    /// the reader's, before its read returns (false, the default). Either way the reader is answered from the zone it
    /// fetched whole; in the background, the writes into the cache file, the creation of a cache file (which reads the
    /// remote file's identity samples) and the commit rounds are not the reader's to wait for. At most 256 admissions
    /// wait; past that a reader admits its zone itself. <see cref="ZoneCache.Flush"/> and disposing wait for those
    /// queued.
    /// </summary>
    public bool AdmitInBackground { get; init; }

    /// <summary>Where to write one line per event worth knowing (store unreachable and back, a cache file dropped).
    /// Default: standard error.</summary>
    public Action<string>? Log { get; init; }

    /// <summary>The clock heat is counted by (tests move it).</summary>
    internal Func<DateTimeOffset> Clock { get; init; } = () => DateTimeOffset.UtcNow;

    /// <summary>The files' home instead of <see cref="Directory"/> (tests: memory, fault injection).</summary>
    internal ICacheStore? Store { get; init; }
}
