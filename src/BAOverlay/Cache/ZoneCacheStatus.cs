using System.Globalization;
using System.Text;

namespace BAOverlay.Cache;

/// <summary>A snapshot of a <see cref="ZoneCache"/>: the store's state and the cache's numbers since it was opened.</summary>
public sealed class ZoneCacheStatus
{
    /// <summary>Whether the store answers.</summary>
    public StoreState State { get; internal init; }

    /// <summary>When the store entered <see cref="State"/> (null: healthy since the cache was opened).</summary>
    public DateTimeOffset? Since { get; internal init; }

    /// <summary>The last failure of a read of the store (file, offset, cause), or null.</summary>
    public string? LastError { get; internal init; }

    /// <summary>Reads of the store that passed their deadline and have not finished yet.</summary>
    public int StuckReads { get; internal init; }

    /// <summary>The budget in bytes.</summary>
    public long BudgetBytes { get; internal init; }

    /// <summary>Bytes charged against the budget (cached zones, and the headers and map pages of their files).</summary>
    public long ChargedBytes { get; internal init; }

    /// <summary>Cache files (remote files with at least one cached zone).</summary>
    public int CacheFiles { get; internal init; }

    /// <summary>Zones cached.</summary>
    public long CachedZones { get; internal init; }

    /// <summary>Bytes read by callers that came from the cache.</summary>
    public long HitBytes { get; internal init; }

    /// <summary>Bytes read by callers that came from the store.</summary>
    public long MissBytes { get; internal init; }

    /// <summary>Bytes fetched from the store (caller reads, whole zones admitted, prefetch, identity samples).</summary>
    public long FetchedBytes { get; internal init; }

    /// <summary>Files of the store opened because a read needed the store: a lower file read through the cache is
    /// opened lazily, at its first read that cached zones cannot answer, so a file read from cached zones only is never
    /// opened on the store (an overlay reading from a store with <c>OverlayOptions.LowerCache</c>).</summary>
    public long StoreOpens { get; internal init; }

    /// <summary>Zones admitted.</summary>
    public long Admissions { get; internal init; }

    /// <summary>Zones evicted.</summary>
    public long Evictions { get; internal init; }

    /// <summary>Reads of the store that failed or timed out.</summary>
    public long StoreFailures { get; internal init; }

    /// <summary>One "name: value" line per field, as <c>bcow cache status</c> prints it and the cache's <c>state</c> file holds it.</summary>
    public override string ToString()
    {
        var text = new StringBuilder();
        void Line(string name, object? value) => text.Append(name).Append(": ").Append(Convert.ToString(value, CultureInfo.InvariantCulture)).Append('\n');
        Line("store", State == StoreState.Healthy ? "healthy" : "unreachable");
        Line("since", Since?.ToString("u", CultureInfo.InvariantCulture) ?? "-");
        Line("last-error", LastError ?? "-");
        Line("stuck-reads", StuckReads);
        Line("budget-bytes", BudgetBytes);
        Line("charged-bytes", ChargedBytes);
        Line("cache-files", CacheFiles);
        Line("cached-zones", CachedZones);
        Line("hit-bytes", HitBytes);
        Line("miss-bytes", MissBytes);
        Line("fetched-bytes", FetchedBytes);
        Line("store-opens", StoreOpens);
        Line("admissions", Admissions);
        Line("evictions", Evictions);
        Line("store-failures", StoreFailures);
        return text.ToString();
    }
}
