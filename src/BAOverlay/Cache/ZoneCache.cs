using System.Collections.Concurrent;
using System.Diagnostics;
using System.Numerics;
using System.Text;
using BAOverlay.Checking;
using BAOverlay.Format;
using BAOverlay.Storage;

namespace BAOverlay.Cache;

/// <summary>
/// A host's hot-zone cache for files of a remote store (docs/layer-store.md). Files read through it
/// (<see cref="Wrap(IBlockStorage, string)"/>) are divided into zones; each zone's heat is counted (once per
/// reader, fading with <see cref="ZoneCacheOptions.HeatHalfLife"/>); a zone hot enough is copied into a local cache
/// file and read from there; under the budget the coldest zones are evicted first. Reads that need the store run under
/// a deadline, and a store that stops answering leaves cached reads working while the others fail promptly with EIO.
/// </summary>
/// <remarks>
/// <para>Storage: one B-CoW file per remote file (<c>files/HASH.bcow</c>), whose lower file is the remote file and
/// whose present blocks are clean copies of it; so a crash at any moment leaves every cache file at a commit whose
/// blocks are right (the B-CoW commit order), <c>bcow check</c> checks them, and eviction is putting blocks back in
/// state lower. The heat is in <c>heat</c>, written at each commit round: a crash forgets recent heat, never
/// correctness.</para>
/// <para>Identity: a remote file is cached under (key, size, modification time): the key names it in the store (a
/// layer digest and path, or the file's path), and a changed size or time is another cache file. Stores hold
/// immutable, content-addressed layers; a same-size change that keeps the modification time is not detected.</para>
/// <para>Thread safety: every member may be called from many threads, except <see cref="Dispose"/>.</para>
/// </remarks>
public sealed partial class ZoneCache : IDisposable
{
    /// <summary>Block size of the cache files: small files waste at most one 4 KiB block.</summary>
    internal const int CacheBlockSize = 4096;

    /// <summary>The longest key (UTF-8 bytes): what a B-CoW header records as its lower file's path.</summary>
    internal const int MaxKeyBytes = 1024;

    internal const string HeatFile = "heat";
    internal const string StateFile = "state";

    private static readonly BCowOpenOptions s_openOptions = new()
    {
        CopyUpMode = CopyUpMode.Synchronous, // a partial last block is filled at once, from the zone being admitted
        SkipLowerCheck = true, // the key, size and time in the name and header are the identity; no read of the store
        ResumeCopyUps = false,
    };

    private readonly ZoneCacheOptions _options;
    private readonly ICacheStore _store;
    private readonly RemoteGuard _guard;
    private readonly Action<string> _log;
    private readonly int _zoneLog2;
    private readonly double _halfLife;
    private readonly ConcurrentDictionary<string, CachedFile> _files = new(StringComparer.Ordinal);
    private readonly object _budgetGate = new();
    private readonly object _flushGate = new();
    private long _budget;
    private long _charged;
    private long _hitBytes;
    private long _missBytes;
    private long _fetched;
    private long _storeOpens;
    private long _admissions;
    private long _evictions;
    private long _lastFlush = Stopwatch.GetTimestamp();
    private int _disposed;

    /// <summary>Opens (or creates) the cache in <see cref="ZoneCacheOptions.Directory"/>: every cache file is opened
    /// (a damaged one, or one a crash left half made, is deleted with a log line), and the heat is read back.</summary>
    /// <exception cref="ArgumentException">Bad options (zone size, budget, heat, times).</exception>
    /// <exception cref="IOException">The directory cannot be used, or another process uses the cache.</exception>
    public ZoneCache(ZoneCacheOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        if (options.ZoneSize < CacheBlockSize || options.ZoneSize > 64 << 20 || !BitOperations.IsPow2(options.ZoneSize))
        {
            throw new ArgumentException($"zone size {options.ZoneSize} must be a power of two from 4 KiB to 64 MiB", nameof(options));
        }
        if (options.BudgetBytes < 0 || !(options.AdmissionHeat > 0) || options.HeatHalfLife <= TimeSpan.Zero ||
            options.MaxRemoteReads < 1 || options.ProbeInterval < TimeSpan.Zero || options.CommitInterval < TimeSpan.Zero ||
            (options.RemoteTimeout <= TimeSpan.Zero && options.RemoteTimeout != Timeout.InfiniteTimeSpan))
        {
            throw new ArgumentException("budget, admission heat, half-life, remote reads, probe and commit intervals and the remote timeout must be positive", nameof(options));
        }
        _options = options;
        _log = options.Log ?? (line => Console.Error.WriteLine($"baoverlay cache: {line}"));
        _zoneLog2 = BitOperations.Log2((uint)options.ZoneSize);
        _halfLife = options.HeatHalfLife.TotalSeconds;
        _budget = options.BudgetBytes;
        _guard = new RemoteGuard(options.RemoteTimeout, options.ProbeInterval, options.MaxRemoteReads, _log, WriteState);
        _store = options.Store ?? new DirectoryCacheStore(options.Directory);
        try
        {
            LoadHeat();
            LoadFiles();
            EnforceBudget();
            WriteState();
        }
        catch
        {
            CloseFiles(commit: false);
            _store.Dispose();
            throw;
        }
    }

    /// <summary>The budget in bytes. Lowering it evicts the coldest zones at once.</summary>
    public long BudgetBytes
    {
        get => Volatile.Read(ref _budget);
        set
        {
            ArgumentOutOfRangeException.ThrowIfNegative(value);
            Volatile.Write(ref _budget, value);
            EnforceBudget();
        }
    }

    /// <summary>The zone size in bytes.</summary>
    public int ZoneSize => 1 << _zoneLog2;

    /// <summary>The store's state and the cache's numbers now.</summary>
    public ZoneCacheStatus Status
    {
        get
        {
            var (state, since, lastError, stuck, failures) = _guard.Snapshot();
            int files = 0;
            long zones = 0;
            foreach (CachedFile file in _files.Values)
            {
                lock (file.Gate)
                {
                    if (file.File is not null)
                    {
                        files++;
                    }
                    zones += file.CachedZones;
                }
            }
            return new ZoneCacheStatus
            {
                State = state,
                Since = since,
                LastError = lastError,
                StuckReads = stuck,
                BudgetBytes = BudgetBytes,
                ChargedBytes = Interlocked.Read(ref _charged),
                CacheFiles = files,
                CachedZones = zones,
                HitBytes = Interlocked.Read(ref _hitBytes),
                MissBytes = Interlocked.Read(ref _missBytes),
                FetchedBytes = Interlocked.Read(ref _fetched),
                StoreOpens = Interlocked.Read(ref _storeOpens),
                Admissions = Interlocked.Read(ref _admissions),
                Evictions = Interlocked.Read(ref _evictions),
                StoreFailures = failures,
            };
        }
    }

    /// <summary>
    /// Reads <paramref name="remote"/> through the cache from now on: the returned storage is read-only, and reads
    /// its zones from the cache or (under the deadline) from <paramref name="remote"/>. Its size and modification time
    /// are taken now (one fstat of the remote file).
    /// </summary>
    /// <param name="remote">The file in the store.</param>
    /// <param name="key">What names the file in the store, the same on every host (a layer digest and path, or the
    /// file's path in the store): with its size and modification time, the cache's identity of the file. Up to 1024
    /// bytes of UTF-8; a longer key reads through uncached.</param>
    /// <remarks>Disposing the returned storage disposes <paramref name="remote"/>.</remarks>
    public IBlockStorage Wrap(IBlockStorage remote, string key)
    {
        ArgumentNullException.ThrowIfNull(remote);
        (long mtimeNs, ulong inode) = remote.GetIdentity();
        return Wrap(remote, key, remote.Length, mtimeNs, ownsRemote: true, inode);
    }

    /// <summary>As <see cref="Wrap(IBlockStorage, string)"/>, with the size and modification time (ns since the
    /// epoch) the caller already knows (from the stat that found the file).</summary>
    /// <param name="remote">The file in the store.</param>
    /// <param name="key">What names the file in the store (see <see cref="Wrap(IBlockStorage, string)"/>).</param>
    /// <param name="size">Its size.</param>
    /// <param name="mtimeNs">Its modification time.</param>
    /// <param name="ownsRemote">True: disposing the returned storage disposes <paramref name="remote"/>.</param>
    public IBlockStorage Wrap(IBlockStorage remote, string key, long size, long mtimeNs, bool ownsRemote) =>
        Wrap(remote, key, size, mtimeNs, ownsRemote, inode: 0);

    /// <summary>As the public overload; <paramref name="inode"/> is what the wrapper reports as the file's inode number
    /// (B-CoW files made before the sampled identity record their lower file's, and compare it).</summary>
    /// <paramref name="check"/>, when given, is the file's content check (<see cref="FirstFetchCheck"/>): nothing of
    /// it is read from the store before the whole file is found right.
    internal IBlockStorage Wrap(IBlockStorage remote, string key, long size, long mtimeNs, bool ownsRemote, ulong inode, FirstFetchCheck? check = null)
    {
        ArgumentNullException.ThrowIfNull(remote);
        ArgumentNullException.ThrowIfNull(key);
        ArgumentOutOfRangeException.ThrowIfNegative(size);
        ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
        CachedFile? file = Cacheable(key, size) ? GetFile(key, size, mtimeNs) : null;
        return new CachedLowerStorage(this, file, remote, ownsRemote, inode, check);
    }

    /// <summary>Commits every admission and eviction into the cache files and writes the heat and state files.</summary>
    /// <exception cref="IOException">Writing the heat or state file failed (the cache files are committed or marked broken).</exception>
    public void Flush()
    {
        DrainAdmissions();
        lock (_flushGate)
        {
            foreach (CachedFile file in _files.Values)
            {
                lock (file.Maintenance)
                {
                    CommitLocked(file);
                }
            }
            _store.WriteSideFile(HeatFile, HeatMap.Write(ZoneSize, _options.Clock(), HeatEntries(minimumHeat: 0.001)));
            WriteState();
            Volatile.Write(ref _lastFlush, Stopwatch.GetTimestamp());
        }
    }

    /// <summary>
    /// Writes the heat of every zone with heat of at least <paramref name="minimumHeat"/> to <paramref name="path"/>,
    /// hottest first, in the heat map format (docs/layer-store.md), for another host's <see cref="Prefetch"/>.
    /// </summary>
    public void ExportHeat(string path, double minimumHeat = 0.01)
    {
        ArgumentNullException.ThrowIfNull(path);
        File.WriteAllBytes(path, HeatMap.Write(ZoneSize, _options.Clock(), HeatEntries(minimumHeat).OrderByDescending(e => e.Heat)));
    }

    /// <summary>
    /// Fetches into the cache, hottest first, the zones a heat map (<see cref="ExportHeat"/>, possibly another host's)
    /// lists with heat of at least <paramref name="minimumHeat"/> (decayed to now), as far as the budget allows; each
    /// zone also gets the map's heat, so what was prefetched is not the first to go. A file whose size or
    /// modification time differs from the map's is skipped (other content).
    /// </summary>
    /// <param name="heatMapPath">The heat map.</param>
    /// <param name="minimumHeat">The least heat of a zone to fetch.</param>
    /// <param name="openRemote">Opens a remote file by key (null when it cannot); default: a key that is an absolute
    /// path is opened as a file, others are skipped.</param>
    /// <returns>Zones fetched, bytes fetched, and zones skipped (missing or changed files, no room, store failures).</returns>
    /// <exception cref="FormatException">The file is not a heat map.</exception>
    public (int Zones, long Bytes, int Skipped) Prefetch(string heatMapPath, double minimumHeat = 1, Func<string, IBlockStorage?>? openRemote = null)
    {
        ArgumentNullException.ThrowIfNull(heatMapPath);
        var (mapZoneSize, taken, entries, skipped) = HeatMap.Parse(File.ReadAllBytes(heatMapPath), heatMapPath);
        openRemote ??= key => Path.IsPathRooted(key) && File.Exists(key) ? new FileStorage(key, FileMode.Open, FileAccess.Read) : null;
        double now = Now();
        double age = Math.Max(0, now - (taken.ToUnixTimeMilliseconds() / 1000.0));
        var remotes = new Dictionary<string, IBlockStorage?>(StringComparer.Ordinal);
        int zones = 0;
        long bytes = 0;
        try
        {
            foreach (HeatEntry entry in entries.OrderByDescending(e => e.Heat))
            {
                double heat = entry.Heat * Math.Pow(2, -age / _halfLife);
                if (heat < minimumHeat)
                {
                    break;
                }
                if (!Cacheable(entry.Key, entry.Size))
                {
                    skipped++;
                    continue;
                }
                if (!remotes.TryGetValue(entry.Key, out IBlockStorage? remote))
                {
                    remote = TryOpen(openRemote, entry);
                    remotes[entry.Key] = remote;
                }
                if (remote is null)
                {
                    skipped++;
                    continue;
                }
                CachedFile file = GetFile(entry.Key, entry.Size, entry.MTimeNs);
                // The map's zones, in this cache's zone size.
                long from = (long)entry.Zone * mapZoneSize;
                long to = Math.Min(entry.Size, from + mapZoneSize);
                for (int zone = (int)(from >> _zoneLog2); (long)zone << _zoneLog2 < to; zone++)
                {
                    switch (PrefetchZone(file, zone, heat, remote))
                    {
                        case > 0 and var n:
                            zones++;
                            bytes += n;
                            break;
                        case < 0:
                            skipped++;
                            break;
                    }
                }
            }
        }
        finally
        {
            foreach (IBlockStorage? remote in remotes.Values)
            {
                remote?.Dispose();
            }
        }
        MaybeFlush(force: true);
        return (zones, bytes, skipped);
    }

    /// <summary>
    /// Checks the cache: commits, then runs the B-CoW checker on every cache file (corruptions and leaks), and checks
    /// that every zone counted as cached is present and the charges add up. Empty when all is well.
    /// </summary>
    public IReadOnlyList<string> Check()
    {
        var problems = new List<string>();
        long charged = 0;
        foreach (CachedFile file in _files.Values)
        {
            lock (file.Maintenance)
            {
                CommitLocked(file);
                charged += file.Charged;
                if (file.File is not { } bcow)
                {
                    continue;
                }
                BCowCheckResult result = BCowChecker.Check(bcow.UpperStorage);
                string name = file.FileName;
                problems.AddRange(result.Corruptions.Select(c => $"{name} ({file.Key}): {c}"));
                problems.AddRange(result.Leaks.Select(l => $"{name} ({file.Key}): leak: {l}"));
                if (result.Failure is { } failure)
                {
                    problems.Add($"{name} ({file.Key}): {failure}");
                }
                lock (file.Gate)
                {
                    foreach (var (zone, z) in file.Zones)
                    {
                        if (z.State == ZoneState.Cached && !bcow.AllPresent(file.ZoneStart(zone), file.ZoneLength(zone)))
                        {
                            problems.Add($"{name} ({file.Key}): zone {zone} is counted as cached but not all its blocks are present");
                        }
                    }
                }
            }
        }
        long total = Interlocked.Read(ref _charged);
        if (total != charged)
        {
            problems.Add($"{_store.Name}: {total} bytes charged against the budget, but the cache files account for {charged}");
        }
        return problems;
    }

    /// <summary>
    /// Checks a cache directory no process is using (<c>bcow cache check</c>): every cache file with the B-CoW checker,
    /// and its name against the remote file it records. Empty when all is well. Changes nothing.
    /// </summary>
    public static IReadOnlyList<string> CheckDirectory(string directory)
    {
        ArgumentNullException.ThrowIfNull(directory);
        var problems = new List<string>();
        string files = Path.Combine(directory, "files");
        if (!Directory.Exists(files))
        {
            return [$"{directory}: not a cache directory (no 'files' folder)"];
        }
        foreach (string path in Directory.EnumerateFiles(files).Order(StringComparer.Ordinal))
        {
            string name = Path.GetFileName(path);
            if (!name.EndsWith(".bcow", StringComparison.Ordinal))
            {
                problems.Add($"{path}: not a cache file");
                continue;
            }
            BCowCheckResult result = BCowChecker.Check(path);
            problems.AddRange(result.Corruptions.Select(c => $"{path}: {c}"));
            problems.AddRange(result.Leaks.Select(l => $"{path}: leak: {l}"));
            if (result.Failure is { } failure)
            {
                problems.Add(failure);
                continue;
            }
            using var storage = new FileStorage(path, FileMode.Open, FileAccess.Read);
            try
            {
                BCowHeader header = BCowFile.ReadHeader(storage);
                if (!header.HasLower || CachedFile.IdOf(header.LowerPath, header.Lower.Size, header.Lower.MTimeNs) + ".bcow" != name)
                {
                    problems.Add($"{path}: its name does not match the remote file it records ({header.LowerPath}); the cache drops it at open");
                }
            }
            catch (BCowFormatException e)
            {
                problems.Add(e.Message);
            }
        }
        return problems;
    }

    /// <summary>Commits, writes the heat, closes every cache file and releases the directory.</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }
        StopAdmitter(); // the admissions queued are made first
        try
        {
            Flush();
        }
        catch (IOException e)
        {
            _log($"{_store.Name}: {e.Message}");
        }
        CloseFiles(commit: true);
        _store.Dispose();
        _guard.Stop();
    }

    /// <summary>What a killed process leaves: cache files closed without a commit, no heat written (crash tests).</summary>
    internal void SimulateCrash()
    {
        Interlocked.Exchange(ref _disposed, 1);
        CloseFiles(commit: false);
        _store.Dispose();
        _guard.Stop();
    }

    internal RemoteGuard Guard => _guard;

    internal Action<string> Log => _log;

    internal int ZoneLog2 => _zoneLog2;

    internal void CountHit(int bytes) => Interlocked.Add(ref _hitBytes, bytes);

    internal void CountMiss(int bytes) => Interlocked.Add(ref _missBytes, bytes);

    internal void CountFetched(int bytes) => Interlocked.Add(ref _fetched, bytes);

    /// <summary>A lazily opened remote file (<see cref="LazyRemoteFile"/>) was opened: a read needed the store.</summary>
    internal void CountStoreOpen() => Interlocked.Increment(ref _storeOpens);

    // ---------------------------------------------------------------- reading: the plan for one zone

    internal enum Plan
    {
        Remote,
        Cached,
        Admit,
    }

    /// <summary>
    /// Decides how a reader reads a zone, and counts its heat: once per reader (<paramref name="firstTouch"/>). Cached:
    /// the zone is pinned and <paramref name="cacheFile"/> is the file to read (<see cref="Unpin"/> after). Admit: the
    /// caller fetches the whole zone and calls <see cref="Admit"/> (or <see cref="CancelAdmission"/>).
    /// </summary>
    internal Plan PlanRead(CachedFile file, int zone, bool firstTouch, out BCowFile? cacheFile)
    {
        double now = Now();
        cacheFile = null;
        lock (file.Gate)
        {
            Zone z = file.Get(zone);
            if (firstTouch)
            {
                file.AddHeat(zone, 1, now, _halfLife);
            }
            if (z.State == ZoneState.Cached && file.File is { } open && !file.Broken)
            {
                z.Pins++;
                cacheFile = open;
                return Plan.Cached;
            }
            if (z.State == ZoneState.Remote && !file.Broken && CachedFile.Decayed(z, now, _halfLife) >= _options.AdmissionHeat &&
                ZoneCharge(file.ZoneLength(zone)) + FileOverhead(file.Size) <= BudgetBytes && _guard.State == StoreState.Healthy)
            {
                z.State = ZoneState.Admitting;
                return Plan.Admit;
            }
            return Plan.Remote;
        }
    }

    internal static void Unpin(CachedFile file, int zone)
    {
        lock (file.Gate)
        {
            file.Get(zone).Pins--;
        }
    }

    internal static void CancelAdmission(CachedFile file, int zone)
    {
        lock (file.Gate)
        {
            Zone z = file.Get(zone);
            if (z.State == ZoneState.Admitting)
            {
                z.State = ZoneState.Remote;
            }
        }
    }

    /// <summary>A read of a cache file failed (the local disk): the file is no longer used this run; its zones read
    /// from the store. Its last commit stays on disk for the next open.</summary>
    internal void CacheReadFailed(CachedFile file, Exception error)
    {
        bool first;
        lock (file.Gate)
        {
            first = !file.Broken;
            file.Broken = true;
        }
        if (first)
        {
            _log($"{file.FileName} ({file.Key}): {error.Message}; its zones are read from the store from now on");
        }
    }

    // ---------------------------------------------------------------- admission and eviction

    /// <summary>
    /// Copies a zone just fetched into the cache (the caller's plan was <see cref="Plan.Admit"/>): makes room by
    /// evicting colder zones (never one hotter than this), creates the cache file if needed, writes the zone's blocks
    /// (data before map, as every B-CoW write), and counts it. Best effort: a failure is logged and the zone stays
    /// remote. Local I/O only, plus, when the cache file is created, the sampled identity of the remote file (64 reads
    /// of 4 KiB under the deadline, most from the zone itself for a small file).
    /// </summary>
    /// <returns>True when the zone is now cached.</returns>
    internal bool Admit(CachedFile file, int zone, ReadOnlyMemory<byte> data, IBlockStorage remote)
    {
        bool admitted = false;
        try
        {
            admitted = AdmitCore(file, zone, data, remote);
        }
        catch (Exception e) when (e is IOException or BCowFormatException or UnauthorizedAccessException)
        {
            _log($"{file.Key}: zone {zone} not cached: {e.Message}");
        }
        finally
        {
            if (!admitted)
            {
                CancelAdmission(file, zone);
            }
        }
        if (admitted)
        {
            Interlocked.Increment(ref _admissions);
            MaybeFlush(force: false);
        }
        return admitted;
    }

    private bool AdmitCore(CachedFile file, int zone, ReadOnlyMemory<byte> data, IBlockStorage remote)
    {
        double heat;
        long overhead;
        lock (file.Gate)
        {
            heat = file.HeatOf(zone, Now(), _halfLife);
            overhead = file.File is null ? FileOverhead(file.Size) : 0; // a new cache file's headers and root
        }
        long charge = ZoneCharge(data.Length);
        if (!Reserve(charge + overhead, heat))
        {
            return false;
        }
        long reserved = charge + overhead;
        try
        {
            lock (file.Maintenance)
            {
                if (file.Broken)
                {
                    return false;
                }
                if (file.File is null)
                {
                    if (overhead == 0)
                    {
                        return false; // its cache file was deleted since (its last zone evicted): not charged for a new one
                    }
                    CreateCacheFile(file, zone, data, remote);
                    file.Charged += overhead;
                }
                else
                {
                    Unreserve(overhead); // another reader created it meanwhile
                }
                reserved = charge;
                long start = file.ZoneStart(zone);
                file.View!.Pin(start, data);
                try
                {
                    file.File!.WriteAt(data.Span, start);
                }
                catch
                {
                    TryRelease(file, start, data.Length);
                    throw;
                }
                finally
                {
                    file.View.Unpin();
                }
                lock (file.Gate)
                {
                    file.SetCached(file.Get(zone));
                }
                file.Charged += charge;
                file.Dirty = true;
                reserved = 0;
                return true;
            }
        }
        finally
        {
            Unreserve(reserved);
        }
    }

    /// <summary>Creates the cache file of <paramref name="file"/>, under its maintenance lock. The engine records the
    /// remote file's sampled identity (read through the view: from the zone, or the store under the deadline).</summary>
    private void CreateCacheFile(CachedFile file, int zone, ReadOnlyMemory<byte> data, IBlockStorage remote)
    {
        try
        {
            _store.DeleteCacheFile(file.FileName); // a leftover of a file dropped this run
        }
        catch (IOException)
        {
        }
        IBlockStorage storage = _store.OpenCacheFile(file.FileName, create: true);
        var view = new CacheLowerView(file.Key, file.Size, file.MTimeNs, _guard);
        view.Pin(file.ZoneStart(zone), data);
        view.Attach(new CountingRemote(this, remote));
        BCowFile bcow;
        try
        {
            bcow = BCowFile.Create(storage, view, new BCowCreateOptions
            {
                BlockSize = CacheBlockSize,
                LowerPath = file.Key,
                Open = s_openOptions,
            }, ownsStorage: true);
        }
        catch
        {
            TryDelete(file.FileName);
            throw;
        }
        finally
        {
            view.Attach(null);
            view.Unpin();
        }
        lock (file.Gate)
        {
            file.File = bcow;
            file.View = view;
        }
    }

    /// <summary>Charges <paramref name="bytes"/> to the budget, evicting zones colder than <paramref name="heat"/>
    /// as needed; false when no room can be made. Takes no maintenance lock of its own while it holds the budget's.</summary>
    private bool Reserve(long bytes, double heat)
    {
        for (int round = 0; round < 1024; round++)
        {
            lock (_budgetGate)
            {
                if (_charged + bytes <= Volatile.Read(ref _budget))
                {
                    _charged += bytes;
                    return true;
                }
            }
            if (!EvictColdest(heat))
            {
                return false;
            }
        }
        return false;
    }

    private void Unreserve(long bytes)
    {
        if (bytes != 0)
        {
            lock (_budgetGate)
            {
                _charged -= bytes;
            }
        }
    }

    /// <summary>Evicts zones, coldest first, until the charge is within the budget.</summary>
    private void EnforceBudget()
    {
        for (int round = 0; round < 1 << 20 && Interlocked.Read(ref _charged) > Volatile.Read(ref _budget); round++)
        {
            if (!EvictColdest(double.PositiveInfinity))
            {
                break;
            }
        }
        MaybeFlush(force: true);
    }

    /// <summary>Evicts the coldest cached zone colder than <paramref name="below"/> that no reader holds. A scan of
    /// every zone known (heat is decayed at the moment of the scan); false when there is none.</summary>
    private bool EvictColdest(double below)
    {
        double now = Now();
        CachedFile? victim = null;
        int victimZone = 0;
        double coldest = below;
        foreach (CachedFile file in _files.Values)
        {
            lock (file.Gate)
            {
                if (file.Broken || file.CachedZones == 0)
                {
                    continue;
                }
                foreach (var (zone, z) in file.Zones)
                {
                    if (z.State == ZoneState.Cached && z.Pins == 0)
                    {
                        double heat = CachedFile.Decayed(z, now, _halfLife);
                        if (heat < coldest)
                        {
                            coldest = heat;
                            victim = file;
                            victimZone = zone;
                        }
                    }
                }
            }
        }
        if (victim is null)
        {
            return false;
        }
        Evict(victim, victimZone);
        return true; // or a reader pinned it meanwhile: the caller looks again
    }

    /// <summary>Evicts one zone: unmarked first (new readers go to the store), then its blocks go back to lower
    /// (punched once the release is committed), and the file is deleted when it holds no zone any more.</summary>
    internal bool Evict(CachedFile file, int zone)
    {
        lock (file.Maintenance)
        {
            BCowFile? bcow;
            lock (file.Gate)
            {
                if (!file.TryGet(zone, out Zone? z) || z!.State != ZoneState.Cached || z.Pins > 0 || file.Broken)
                {
                    return false;
                }
                file.SetUncached(z);
                bcow = file.File;
            }
            long refund = ZoneCharge(file.ZoneLength(zone));
            file.Charged -= refund;
            if (!TryRelease(file, file.ZoneStart(zone), file.ZoneLength(zone)))
            {
                lock (file.Gate)
                {
                    file.Broken = true;
                }
            }
            file.Dirty = true;
            int left;
            lock (file.Gate)
            {
                left = file.CachedZones;
            }
            if (left == 0 && !file.Broken)
            {
                lock (file.Gate)
                {
                    file.File = null;
                    file.View = null;
                }
                try
                {
                    bcow!.Dispose();
                }
                catch (IOException e)
                {
                    _log($"{file.FileName} ({file.Key}): {e.Message}");
                }
                TryDelete(file.FileName);
                refund += file.Charged;
                file.Charged = 0;
                file.Dirty = false;
            }
            Unreserve(refund);
            Interlocked.Increment(ref _evictions);
            return true;
        }
    }

    private bool TryRelease(CachedFile file, long start, long length)
    {
        try
        {
            file.File?.ReleaseToLower(start, length);
            return true;
        }
        catch (Exception e) when (e is IOException or InvalidOperationException)
        {
            _log($"{file.FileName} ({file.Key}): cannot release blocks at {start} (+{length}): {e.Message}");
            return false;
        }
    }

    private void TryDelete(string name)
    {
        try
        {
            _store.DeleteCacheFile(name);
        }
        catch (IOException e)
        {
            _log($"{name}: cannot delete: {e.Message}");
        }
    }

    /// <summary>Prefetches one zone; returns its bytes (&gt; 0), 0 when already cached or taken, -1 when it could not.</summary>
    private int PrefetchZone(CachedFile file, int zone, double heat, IBlockStorage remote)
    {
        lock (file.Gate)
        {
            file.RaiseHeat(zone, heat, Now(), _halfLife);
            Zone z = file.Get(zone);
            if (z.State != ZoneState.Remote)
            {
                return 0;
            }
            if (file.Broken)
            {
                return -1;
            }
            z.State = ZoneState.Admitting;
        }
        int length = file.ZoneLength(zone);
        byte[] buffer = System.Buffers.ArrayPool<byte>.Shared.Rent(length);
        try
        {
            int n = _guard.Read(remote, buffer.AsSpan(0, length), file.ZoneStart(zone));
            CountFetched(n);
            if (n < length)
            {
                CancelAdmission(file, zone);
                return -1;
            }
            return Admit(file, zone, buffer.AsMemory(0, length), remote) ? length : -1;
        }
        catch (IOException e)
        {
            CancelAdmission(file, zone);
            _log($"{file.Key}: zone {zone} not prefetched: {e.Message}");
            return -1;
        }
        finally
        {
            System.Buffers.ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    private IBlockStorage? TryOpen(Func<string, IBlockStorage?> openRemote, HeatEntry entry)
    {
        IBlockStorage? remote;
        try
        {
            remote = openRemote(entry.Key);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            _log($"{entry.Key}: not prefetched: {e.Message}");
            return null;
        }
        if (remote is not null && (remote.Length != entry.Size || remote.GetIdentity().MTimeNs != entry.MTimeNs))
        {
            _log($"{entry.Key}: not prefetched: its size or modification time differs from the heat map's (other content)");
            remote.Dispose();
            return null;
        }
        return remote;
    }

    // ---------------------------------------------------------------- commit, heat, state

    private void MaybeFlush(bool force)
    {
        long interval = (long)(_options.CommitInterval.TotalSeconds * Stopwatch.Frequency);
        if (!force && Stopwatch.GetTimestamp() - Volatile.Read(ref _lastFlush) < interval)
        {
            return;
        }
        if (!Monitor.TryEnter(_flushGate))
        {
            return; // another thread is flushing
        }
        try
        {
            Flush();
        }
        catch (IOException e)
        {
            _log($"{_store.Name}: {e.Message}");
        }
        finally
        {
            Monitor.Exit(_flushGate);
        }
    }

    /// <summary>Commits one cache file (under its maintenance lock); a failure marks it broken for this run.</summary>
    private void CommitLocked(CachedFile file)
    {
        if (!file.Dirty || file.File is not { } bcow || file.Broken)
        {
            return;
        }
        try
        {
            bcow.Flush();
            file.Dirty = false;
        }
        catch (IOException e)
        {
            CacheReadFailed(file, e);
        }
    }

    private List<HeatEntry> HeatEntries(double minimumHeat)
    {
        double now = Now();
        var entries = new List<HeatEntry>();
        foreach (CachedFile file in _files.Values)
        {
            lock (file.Gate)
            {
                foreach (var (zone, z) in file.Zones)
                {
                    double heat = CachedFile.Decayed(z, now, _halfLife);
                    if (heat >= minimumHeat || z.State == ZoneState.Cached)
                    {
                        entries.Add(new HeatEntry(file.Key, file.Size, file.MTimeNs, zone, heat, z.State == ZoneState.Cached));
                    }
                }
            }
        }
        return entries;
    }

    private void WriteState()
    {
        try
        {
            _store.WriteSideFile(StateFile, Encoding.UTF8.GetBytes(Status.ToString()));
        }
        catch (IOException e)
        {
            _log($"{_store.Name}: cannot write the state file: {e.Message}");
        }
    }

    private void LoadHeat()
    {
        byte[]? content;
        try
        {
            content = _store.ReadSideFile(HeatFile);
        }
        catch (IOException e)
        {
            _log($"{_store.Name}: heat not read back ({e.Message}); it starts from zero");
            return;
        }
        if (content is null)
        {
            return;
        }
        try
        {
            var (zoneSize, taken, entries, skipped) = HeatMap.Parse(content, $"{_store.Name}/{HeatFile}");
            if (skipped > 0)
            {
                _log($"{_store.Name}/{HeatFile}: {skipped} bad lines skipped");
            }
            double now = Now();
            double age = Math.Max(0, now - (taken.ToUnixTimeMilliseconds() / 1000.0));
            foreach (HeatEntry entry in entries)
            {
                if (!Cacheable(entry.Key, entry.Size))
                {
                    continue;
                }
                CachedFile file = GetFile(entry.Key, entry.Size, entry.MTimeNs);
                double heat = entry.Heat * Math.Pow(2, -age / _halfLife);
                long from = (long)entry.Zone * zoneSize;
                long to = Math.Min(entry.Size, from + zoneSize);
                lock (file.Gate)
                {
                    for (int zone = (int)(from >> _zoneLog2); (long)zone << _zoneLog2 < to; zone++)
                    {
                        file.RaiseHeat(zone, heat, now, _halfLife);
                    }
                }
            }
        }
        catch (FormatException e)
        {
            _log($"{e.Message}; heat starts from zero");
        }
    }

    private void LoadFiles()
    {
        foreach (string name in _store.ListCacheFiles())
        {
            try
            {
                LoadFile(name);
            }
            catch (Exception e) when (e is IOException or BCowFormatException or ArgumentException or UnauthorizedAccessException)
            {
                _log($"{_store.Name}: cache file {name} dropped: {e.Message}");
                TryDelete(name);
            }
        }
    }

    /// <summary>
    /// Opens a cache file found at start: its header names the remote file (key, size, time), which must give its
    /// name; it is opened for writing, which reclaims what a crash leaked. A zone is cached when all its blocks are
    /// present; blocks of a zone a crash left half admitted are released.
    /// </summary>
    private void LoadFile(string name)
    {
        IBlockStorage storage = _store.OpenCacheFile(name, create: false);
        BCowHeader header;
        try
        {
            header = BCowFile.ReadHeader(storage);
            if (!header.HasLower || header.LowerPath.Length == 0 || header.VirtualSize != header.Lower.Size ||
                CachedFile.IdOf(header.LowerPath, header.Lower.Size, header.Lower.MTimeNs) + ".bcow" != name)
            {
                throw new BCowFormatException(name, "its name, size or remote file do not match: not a cache file of this cache");
            }
            if (header.BlockSize > ZoneSize)
            {
                throw new BCowFormatException(name, $"its blocks ({header.BlockSize} bytes) are larger than a zone ({ZoneSize})");
            }
        }
        catch
        {
            storage.Dispose();
            throw;
        }
        CachedFile file = GetFile(header.LowerPath, header.Lower.Size, header.Lower.MTimeNs);
        var view = new CacheLowerView(file.Key, file.Size, file.MTimeNs, _guard) { AnswerPeeksWithZeros = true };
        BCowFile bcow = BCowFile.Open(storage, view, s_openOptions, ownsStorage: true);
        view.AnswerPeeksWithZeros = false;
        try
        {
            var zones = new SortedSet<int>();
            foreach (long block in bcow.AllocatedBlocks())
            {
                zones.Add((int)((block * header.BlockSize) >> _zoneLog2));
            }
            long charged = FileOverhead(file.Size);
            bool released = false;
            foreach (int zone in zones)
            {
                long start = file.ZoneStart(zone);
                int length = file.ZoneLength(zone);
                if (bcow.AllPresent(start, length))
                {
                    lock (file.Gate)
                    {
                        file.SetCached(file.Get(zone));
                    }
                    charged += ZoneCharge(length);
                }
                else
                {
                    bcow.ReleaseToLower(start, length);
                    released = true;
                }
            }
            lock (file.Gate)
            {
                file.File = bcow;
                file.View = view;
            }
            file.Charged = charged;
            file.Dirty = released;
            lock (_budgetGate)
            {
                _charged += charged;
            }
            if (file.CachedZones == 0)
            {
                lock (file.Gate)
                {
                    file.File = null;
                    file.View = null;
                }
                Unreserve(file.Charged);
                file.Charged = 0;
                bcow.Dispose();
                TryDelete(name);
            }
        }
        catch
        {
            bcow.CloseWithoutCommit();
            throw;
        }
    }

    private void CloseFiles(bool commit)
    {
        foreach (CachedFile file in _files.Values)
        {
            lock (file.Maintenance)
            {
                BCowFile? bcow;
                lock (file.Gate)
                {
                    bcow = file.File;
                    file.File = null;
                }
                if (bcow is null)
                {
                    continue;
                }
                if (commit && !file.Broken)
                {
                    try
                    {
                        bcow.Dispose();
                        continue;
                    }
                    catch (IOException e)
                    {
                        _log($"{file.FileName} ({file.Key}): {e.Message}");
                    }
                }
                bcow.CloseWithoutCommit();
            }
        }
    }

    // ---------------------------------------------------------------- helpers

    private CachedFile GetFile(string key, long size, long mtimeNs) =>
        _files.GetOrAdd(CachedFile.IdOf(key, size, mtimeNs), static (_, a) => new CachedFile(a.key, a.size, a.mtimeNs, a.log2), (key, size, mtimeNs, log2: _zoneLog2));

    private static bool Cacheable(string key, long size) =>
        size > 0 && size <= Layout.MaxVirtualSize && key.Length > 0 && Encoding.UTF8.GetByteCount(key) <= MaxKeyBytes;

    private double Now() => _options.Clock().ToUnixTimeMilliseconds() / 1000.0;

    /// <summary>
    /// What a zone costs in a cache file, from above: its bytes in whole blocks, plus the map pages that can point at
    /// them (an L2 page maps 256 blocks; a zone's blocks can straddle one page boundary).
    /// </summary>
    internal static long ZoneCharge(int length)
    {
        long blocks = (length + CacheBlockSize - 1) / CacheBlockSize;
        return (blocks * CacheBlockSize) + ((((blocks + 255) / 256) + 1) * CacheBlockSize);
    }

    /// <summary>What a cache file costs besides its zones: two header slots, the root table, and an L1 page per
    /// 256 MiB of the file's size (for 4 KiB blocks, an L1 page maps 64 Ki blocks).</summary>
    internal static long FileOverhead(long size)
    {
        long blocks = Layout.BlockCount(size, 12);
        long roots = Math.Max(1, (blocks + 65535) / 65536);
        long rootTable = Math.Max(4096, ((roots * 16) + 4095) / 4096 * 4096);
        return (2 * 4096) + rootTable + (roots * 4096);
    }

    /// <summary>Counts the bytes the engine reads from the store while it creates a cache file (the sampled identity).</summary>
    private sealed class CountingRemote(ZoneCache cache, IBlockStorage inner) : IBlockStorage
    {
        public string Name => inner.Name;

        public bool CanWrite => false;

        public long Length => inner.Length;

        public int ReadAt(Span<byte> buffer, long offset)
        {
            int n = inner.ReadAt(buffer, offset);
            cache.CountFetched(n);
            return n;
        }

        public ValueTask<int> ReadAtAsync(Memory<byte> buffer, long offset, CancellationToken cancellationToken = default) =>
            ValueTask.FromResult(ReadAt(buffer.Span, offset));

        public void WriteAt(ReadOnlySpan<byte> data, long offset) => throw new NotSupportedException();

        public ValueTask WriteAtAsync(ReadOnlyMemory<byte> data, long offset, CancellationToken cancellationToken = default) => throw new NotSupportedException();

        public void Flush()
        {
        }

        public void SetLength(long length) => throw new NotSupportedException();

        public void PunchHole(long offset, long length) => throw new NotSupportedException();

        public (long MTimeNs, ulong Inode) GetIdentity() => inner.GetIdentity();

        public IEnumerable<(long Offset, long Length)> GetDataRanges(long start, long end) => inner.GetDataRanges(start, end);

        public void Dispose()
        {
        }
    }
}
