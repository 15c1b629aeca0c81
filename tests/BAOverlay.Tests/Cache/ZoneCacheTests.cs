using BAOverlay.Cache;
using BAOverlay.Storage;
using static BAOverlay.Tests.Cache.CacheTesting;

namespace BAOverlay.Tests.Cache;

public class ZoneCacheTests
{
    [Test]
    public void ReadsThroughTheCacheReturnTheStoresBytesAtEveryOffset()
    {
        using var dir = new TempDir();
        var remote = new FakeRemote(Bytes((3 * ZoneBytes) + 1234, 1));
        using var cache = new ZoneCache(Options(dir.Path));
        var random = new Random(7);
        for (int i = 0; i < 200; i++)
        {
            int offset = random.Next(remote.Content.Length + 10);
            ReadAndCheck(cache, remote, "layer/a", offset, random.Next(1, 3 * ZoneBytes));
        }
        AssertCheckClean(cache);
    }

    [Test]
    public void OneReaderDoesNotAdmitAZoneHoweverOftenItReadsItButASecondReaderDoes()
    {
        using var dir = new TempDir();
        var remote = new FakeRemote(Bytes(4 * ZoneBytes, 2));
        using var cache = new ZoneCache(Options(dir.Path));
        using (IBlockStorage scan = cache.Wrap(remote, "k", remote.Length, remote.GetIdentity().MTimeNs, ownsRemote: false))
        {
            byte[] buffer = new byte[1024];
            for (int pass = 0; pass < 3; pass++)
            {
                for (long offset = 0; offset < remote.Length; offset += buffer.Length)
                {
                    scan.ReadAt(buffer, offset);
                }
            }
        }
        Assert.That(cache.Status.Admissions, Is.Zero, "a scan, however many reads, is one touch per zone");

        ReadAndCheck(cache, remote, "k", ZoneBytes + 10, 100);
        Assert.That(cache.Status.Admissions, Is.EqualTo(1), "the second reader of zone 1 admits it");
        Assert.That(cache.Status.CachedZones, Is.EqualTo(1));

        int readsBefore = remote.Reads;
        ReadAndCheck(cache, remote, "k", ZoneBytes, ZoneBytes);
        Assert.That(remote.Reads, Is.EqualTo(readsBefore), "a cached zone is read without the store");
        Assert.That(cache.Status.HitBytes, Is.EqualTo(ZoneBytes));
        AssertCheckClean(cache);
    }

    [Test]
    public void HeatFadesSoTouchesFarApartDoNotAdmit()
    {
        using var dir = new TempDir();
        var remote = new FakeRemote(Bytes(2 * ZoneBytes, 3));
        DateTimeOffset now = DateTimeOffset.UnixEpoch.AddDays(20000);
        using var cache = new ZoneCache(new ZoneCacheOptions
        {
            Directory = dir.Path,
            ZoneSize = ZoneBytes,
            HeatHalfLife = TimeSpan.FromHours(1),
            Clock = () => now,
        });
        ReadAndCheck(cache, remote, "k", 0, 10);
        now = now.AddHours(2); // heat 1 → 0.25
        ReadAndCheck(cache, remote, "k", 0, 10); // 1.25 < 1.5
        Assert.That(cache.Status.Admissions, Is.Zero);
        now = now.AddMinutes(10);
        ReadAndCheck(cache, remote, "k", 0, 10); // ~2.1
        Assert.That(cache.Status.Admissions, Is.EqualTo(1));
    }

    [Test]
    public void UnderTheBudgetTheColdestZoneIsEvictedFirstAndAZoneColderThanAllCachedIsNotAdmitted()
    {
        using var dir = new TempDir();
        var remote = new FakeRemote(Bytes(8 * ZoneBytes, 4));
        long oneZone = ZoneCache.ZoneCharge(ZoneBytes);
        long budget = ZoneCache.FileOverhead(remote.Length) + (2 * oneZone);
        using var cache = new ZoneCache(Options(dir.Path, budget));

        void Touch(int zone, int readers)
        {
            for (int r = 0; r < readers; r++)
            {
                ReadAndCheck(cache, remote, "k", (long)zone * ZoneBytes, 100);
            }
        }

        Touch(0, 4); // heat 4
        Touch(1, 3); // heat 3
        Assert.That(cache.Status.CachedZones, Is.EqualTo(2));
        Touch(2, 2); // heat 2: colder than both, no room: stays remote
        Assert.That(cache.Status.CachedZones, Is.EqualTo(2));
        Assert.That(cache.Status.Evictions, Is.Zero);
        Touch(2, 2); // heat 4 > zone 1's 3: zone 1 goes
        Assert.That(cache.Status.Evictions, Is.EqualTo(1));
        int reads = remote.Reads;
        ReadAndCheck(cache, remote, "k", 0, ZoneBytes);
        ReadAndCheck(cache, remote, "k", 2L * ZoneBytes, ZoneBytes);
        Assert.That(remote.Reads, Is.EqualTo(reads), "zones 0 and 2 are cached");
        ReadAndCheck(cache, remote, "k", ZoneBytes, ZoneBytes);
        Assert.That(remote.Reads, Is.GreaterThan(reads), "zone 1 was evicted");

        Assert.That(cache.Status.ChargedBytes, Is.LessThanOrEqualTo(budget));
        cache.Flush();
        AssertCheckClean(cache);
        Assert.That(AllocatedBytes(dir.Path), Is.LessThanOrEqualTo(budget), "what the files allocate is within what was charged");
    }

    [Test]
    public void LoweringTheBudgetEvictsAndAFileWithNoZoneLeftIsDeleted()
    {
        using var dir = new TempDir();
        var a = new FakeRemote(Bytes(3 * ZoneBytes, 5), "a");
        var b = new FakeRemote(Bytes(3 * ZoneBytes, 6), "b");
        using var cache = new ZoneCache(Options(dir.Path));
        for (int r = 0; r < 2; r++)
        {
            ReadAndCheck(cache, a, "a", 0, 3 * ZoneBytes);
        }
        for (int r = 0; r < 3; r++)
        {
            ReadAndCheck(cache, b, "b", 0, ZoneBytes);
        }
        Assert.That(cache.Status.CacheFiles, Is.EqualTo(2));
        Assert.That(Directory.GetFiles(Path.Combine(dir.Path, "files")), Has.Length.EqualTo(2));

        cache.BudgetBytes = ZoneCache.FileOverhead(b.Length) + ZoneCache.ZoneCharge(ZoneBytes);
        Assert.That(cache.Status.CachedZones, Is.EqualTo(1), "only b's hotter zone fits");
        Assert.That(cache.Status.CacheFiles, Is.EqualTo(1));
        Assert.That(Directory.GetFiles(Path.Combine(dir.Path, "files")), Has.Length.EqualTo(1), "a's cache file is gone");
        int reads = b.Reads;
        ReadAndCheck(cache, b, "b", 0, ZoneBytes);
        Assert.That(b.Reads, Is.EqualTo(reads));
        for (int r = 0; r < 2; r++)
        {
            ReadAndCheck(cache, a, "a", 0, 3 * ZoneBytes);
        }
        AssertCheckClean(cache);

        cache.BudgetBytes = 0;
        Assert.That(cache.Status.CachedZones, Is.Zero);
        Assert.That(cache.Status.ChargedBytes, Is.Zero);
        Assert.That(Directory.GetFiles(Path.Combine(dir.Path, "files")), Is.Empty);
        ReadAndCheck(cache, a, "a", 0, 3 * ZoneBytes);
    }

    [Test]
    public void TheCacheAndItsHeatSurviveARestart()
    {
        using var dir = new TempDir();
        var remote = new FakeRemote(Bytes((2 * ZoneBytes) + 100, 8));
        using (var cache = new ZoneCache(Options(dir.Path)))
        {
            ReadAndCheck(cache, remote, "k", 0, 10);
            ReadAndCheck(cache, remote, "k", 0, 10); // zone 0 admitted
            ReadAndCheck(cache, remote, "k", 2L * ZoneBytes, 50); // zone 2 (the short last one): heat 1
        }
        Assert.That(ZoneCache.CheckDirectory(dir.Path), Is.Empty, "checker clean after close");
        using (var cache = new ZoneCache(Options(dir.Path)))
        {
            Assert.That(cache.Status.CachedZones, Is.EqualTo(1));
            int reads = remote.Reads;
            ReadAndCheck(cache, remote, "k", 0, ZoneBytes);
            Assert.That(remote.Reads, Is.EqualTo(reads), "zone 0 is still cached");
            ReadAndCheck(cache, remote, "k", (2L * ZoneBytes) + 10, 50); // zone 2's second touch, across the restart
            Assert.That(cache.Status.CachedZones, Is.EqualTo(2), "the heat came back");
            reads = remote.Reads;
            ReadAndCheck(cache, remote, "k", 2L * ZoneBytes, 200);
            Assert.That(remote.Reads, Is.EqualTo(reads));
            AssertCheckClean(cache);
        }
    }

    [Test]
    public void AFileWhoseSizeOrTimeChangedIsAnotherFile()
    {
        using var dir = new TempDir();
        var old = new FakeRemote(Bytes(ZoneBytes, 9), "r", mtimeNs: 1);
        var changed = new FakeRemote(Bytes(ZoneBytes, 10), "r", mtimeNs: 2);
        using var cache = new ZoneCache(Options(dir.Path));
        ReadAndCheck(cache, old, "k", 0, 100);
        ReadAndCheck(cache, old, "k", 0, 100);
        Assert.That(cache.Status.CachedZones, Is.EqualTo(1));
        ReadAndCheck(cache, changed, "k", 0, ZoneBytes);
        ReadAndCheck(cache, changed, "k", 0, ZoneBytes);
        ReadAndCheck(cache, changed, "k", 0, ZoneBytes);
    }

    [Test]
    public void ADamagedCacheFileIsDroppedAtOpenAndReadsStayRight()
    {
        using var dir = new TempDir();
        var remote = new FakeRemote(Bytes(2 * ZoneBytes, 11));
        var log = new List<string>();
        using (var cache = new ZoneCache(Options(dir.Path)))
        {
            ReadAndCheck(cache, remote, "k", 0, 2 * ZoneBytes);
            ReadAndCheck(cache, remote, "k", 0, 2 * ZoneBytes);
        }
        string file = Directory.GetFiles(Path.Combine(dir.Path, "files")).Single();
        using (var stream = new FileStream(file, FileMode.Open, FileAccess.Write))
        {
            stream.Write(Bytes(8192, 12)); // both header slots
        }
        File.WriteAllText(Path.Combine(dir.Path, "files", "0123.bcow"), "not a cache file");
        using (var cache = new ZoneCache(Options(dir.Path, log: log)))
        {
            Assert.That(cache.Status.CachedZones, Is.Zero);
            Assert.That(log, Has.Some.Contains("dropped"));
            Assert.That(Directory.GetFiles(Path.Combine(dir.Path, "files")), Is.Empty);
            ReadAndCheck(cache, remote, "k", 0, 2 * ZoneBytes);
            AssertCheckClean(cache);
        }
    }

    [Test]
    public void AHeatMapExportedByOneHostLetsAnotherPrefetchTheHotZones()
    {
        using var dir = new TempDir();
        string store = Path.Combine(dir.Path, "store");
        Directory.CreateDirectory(store);
        string path = Path.Combine(store, "lib.so");
        byte[] content = Bytes((5 * ZoneBytes) + 77, 13);
        File.WriteAllBytes(path, content);
        string heat = Path.Combine(dir.Path, "heat.map");

        using (var hostA = new ZoneCache(Options(Path.Combine(dir.Path, "a"))))
        {
            for (int r = 0; r < 3; r++)
            {
                using IBlockStorage reader = hostA.Wrap(new FileStorage(path, FileMode.Open, FileAccess.Read), path);
                reader.ReadAt(new byte[100], 1L * ZoneBytes);
                reader.ReadAt(new byte[100], 5L * ZoneBytes);
                if (r == 0)
                {
                    reader.ReadAt(new byte[100], 3L * ZoneBytes); // heat 1 only
                }
            }
            hostA.ExportHeat(heat);
        }
        using var hostB = new ZoneCache(Options(Path.Combine(dir.Path, "b")));
        var (zones, bytes, skipped) = hostB.Prefetch(heat, minimumHeat: 2);
        Assert.That(zones, Is.EqualTo(2));
        Assert.That(bytes, Is.EqualTo(ZoneBytes + 77));
        Assert.That(skipped, Is.Zero);
        Assert.That(hostB.Status.CachedZones, Is.EqualTo(2));

        var remote = new FakeRemote(content, path, new FileStorage(path, FileMode.Open, FileAccess.Read).GetIdentity().MTimeNs);
        ReadAndCheck(hostB, remote, path, ZoneBytes, ZoneBytes);
        ReadAndCheck(hostB, remote, path, 5L * ZoneBytes, 77);
        Assert.That(remote.Reads, Is.Zero, "the prefetched zones are read from the cache at the first read");
        AssertCheckClean(hostB);
    }

    [Test]
    public void AHeatMapThatIsNotOneIsRefusedAndBadLinesAreSkipped()
    {
        using var dir = new TempDir();
        using var cache = new ZoneCache(Options(Path.Combine(dir.Path, "c")));
        string map = Path.Combine(dir.Path, "map");
        File.WriteAllText(map, "hello\n");
        Assert.That(() => cache.Prefetch(map), Throws.InstanceOf<FormatException>().With.Message.Contains(map));
        File.WriteAllText(map, $"{HeatMap.Magic}\nzone-size 16384\ntaken 0\n" +
            "5\t0\t0\t100\t1\t/no/such/file\n" + // missing file: skipped
            "NaN\t0\t0\t100\t1\t/x\n" + // bad heat
            "5\t9\t0\t100\t1\t/x\n" + // zone beyond the file
            "5\t0\t0\t100\t1\t\n"); // no key
        var (zones, _, skipped) = cache.Prefetch(map, minimumHeat: 0);
        Assert.That(zones, Is.Zero);
        Assert.That(skipped, Is.EqualTo(4));
    }

    [Test]
    public void ASecondProcessCannotUseTheSameCacheDirectory()
    {
        using var dir = new TempDir();
        using var cache = new ZoneCache(Options(dir.Path));
        Assert.That(() => new ZoneCache(Options(dir.Path)), Throws.InstanceOf<IOException>().With.Message.Contains("in use"));
    }

    [Test]
    public void TheStateFileSaysWhatTheStatusSays()
    {
        using var dir = new TempDir();
        using var cache = new ZoneCache(Options(dir.Path));
        cache.Flush();
        string state = File.ReadAllText(Path.Combine(dir.Path, ZoneCache.StateFile));
        Assert.That(state, Does.Contain("store: healthy"));
        Assert.That(state, Does.Contain($"budget-bytes: {1 << 30}"));
    }

    internal static long AllocatedBytes(string cacheDirectory) =>
        Directory.GetFiles(Path.Combine(cacheDirectory, "files")).Sum(f =>
        {
            using var storage = new FileStorage(f, FileMode.Open, FileAccess.Read);
            return storage.GetDataRanges(0, storage.Length).Sum(r => r.Length);
        });
}
