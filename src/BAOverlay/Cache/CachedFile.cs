using System.Security.Cryptography;
using System.Text;

namespace BAOverlay.Cache;

/// <summary>A zone's place in the cache.</summary>
internal enum ZoneState : byte
{
    /// <summary>Read from the store.</summary>
    Remote,

    /// <summary>Being copied into the cache file by one reader; everyone else reads the store meanwhile.</summary>
    Admitting,

    /// <summary>All its blocks are present in the cache file: read from there.</summary>
    Cached,
}

/// <summary>A zone's heat and state. Heat is kept as (value, when) and decayed when read.</summary>
internal sealed class Zone
{
    public double Heat;
    public double Stamp;
    public ZoneState State;
    public int Pins;
}

/// <summary>
/// Answers "what does the cache know about one remote file?": its identity (key, size, modification time), the heat
/// and state of each zone touched, and its cache file once one exists.
/// </summary>
/// <remarks>
/// <para>Locks: <see cref="Gate"/> guards the zone table (heat, state, pins) and is held only for bookkeeping, never
/// across I/O. <see cref="Maintenance"/> serializes what writes the cache file (admission, eviction, commit, create,
/// delete); it is held across local I/O only, never across a read of the store (the zone is fetched before), and never
/// together with another file's.</para>
/// <para>Invariant that makes eviction safe: a reader pins a zone (under <see cref="Gate"/>) only while it is
/// <see cref="ZoneState.Cached"/>, and eviction turns only an unpinned zone back to <see cref="ZoneState.Remote"/>
/// before it releases its blocks; so no read of the cache file ever meets a released block, and
/// <see cref="File"/> is non-null while any zone is pinned.</para>
/// </remarks>
internal sealed class CachedFile
{
    private readonly Dictionary<int, Zone> _zones = new();

    public CachedFile(string key, long size, long mtimeNs, int zoneLog2)
    {
        Key = key;
        Size = size;
        MTimeNs = mtimeNs;
        ZoneLog2 = zoneLog2;
        Id = IdOf(key, size, mtimeNs);
    }

    public string Key { get; }

    public long Size { get; }

    public long MTimeNs { get; }

    public int ZoneLog2 { get; }

    /// <summary>Names the cache file: a hash of key, size and modification time.</summary>
    public string Id { get; }

    public string FileName => Id + ".bcow";

    public object Gate { get; } = new();

    public object Maintenance { get; } = new();

    /// <summary>The open cache file (null: none). Set and cleared under <see cref="Maintenance"/> and <see cref="Gate"/>.</summary>
    public BCowFile? File { get; set; }

    public CacheLowerView? View { get; set; }

    /// <summary>A cache file that failed (local I/O): not read, written or evicted again this run. Under <see cref="Gate"/>.</summary>
    public bool Broken { get; set; }

    /// <summary>Zones in state <see cref="ZoneState.Cached"/>. Under <see cref="Gate"/>.</summary>
    public int CachedZones { get; private set; }

    /// <summary>Bytes charged to the budget for this file's cache file. Under <see cref="Maintenance"/>.</summary>
    public long Charged { get; set; }

    /// <summary>Admissions or releases not yet committed. Under <see cref="Maintenance"/>.</summary>
    public bool Dirty { get; set; }

    public long ZoneStart(int zone) => (long)zone << ZoneLog2;

    public int ZoneLength(int zone) => (int)Math.Min(1L << ZoneLog2, Size - ZoneStart(zone));

    public int ZoneCount => (int)((Size + (1L << ZoneLog2) - 1) >> ZoneLog2);

    public static string IdOf(string key, long size, long mtimeNs)
    {
        byte[] hash = SHA256.HashData(Encoding.UTF8.GetBytes($"{key}\n{size}\n{mtimeNs}"));
        return Convert.ToHexStringLower(hash.AsSpan(0, 16));
    }

    /// <summary>Heat of <paramref name="zone"/> now (0 if never touched). Under <see cref="Gate"/>.</summary>
    public double HeatOf(int zone, double now, double halfLifeSeconds) =>
        _zones.TryGetValue(zone, out Zone? z) ? Decayed(z, now, halfLifeSeconds) : 0;

    public static double Decayed(Zone zone, double now, double halfLifeSeconds) =>
        zone.Heat == 0 ? 0 : zone.Heat * Math.Pow(2, -Math.Max(0, now - zone.Stamp) / halfLifeSeconds);

    /// <summary>The zone's entry, made on first use. Under <see cref="Gate"/>.</summary>
    public Zone Get(int zone)
    {
        if (!_zones.TryGetValue(zone, out Zone? z))
        {
            z = new Zone();
            _zones[zone] = z;
        }
        return z;
    }

    public bool TryGet(int zone, out Zone? z) => _zones.TryGetValue(zone, out z);

    /// <summary>Adds heat (decayed to now first). Under <see cref="Gate"/>.</summary>
    public double AddHeat(int zone, double amount, double now, double halfLifeSeconds)
    {
        Zone z = Get(zone);
        z.Heat = Decayed(z, now, halfLifeSeconds) + amount;
        z.Stamp = now;
        return z.Heat;
    }

    /// <summary>Raises heat to at least <paramref name="heat"/> (an imported or persisted value). Under <see cref="Gate"/>.</summary>
    public void RaiseHeat(int zone, double heat, double now, double halfLifeSeconds)
    {
        Zone z = Get(zone);
        double current = Decayed(z, now, halfLifeSeconds);
        z.Heat = Math.Max(current, heat);
        z.Stamp = now;
    }

    public void SetCached(Zone z)
    {
        if (z.State != ZoneState.Cached)
        {
            CachedZones++;
        }
        z.State = ZoneState.Cached;
    }

    public void SetUncached(Zone z)
    {
        if (z.State == ZoneState.Cached)
        {
            CachedZones--;
        }
        z.State = ZoneState.Remote;
    }

    /// <summary>The zones touched, for heat export and eviction. Under <see cref="Gate"/>.</summary>
    public IEnumerable<KeyValuePair<int, Zone>> Zones => _zones;
}
