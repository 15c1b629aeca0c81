using BAOverlay.Cache;
using BAOverlay.Storage;
using static BAOverlay.Tests.Cache.CacheTesting;

namespace BAOverlay.Tests.Cache;

/// <summary>The cache against the plain bytes: random reads, restarts, crashes and budget changes, and a power cut at
/// every write of cache maintenance.</summary>
public class ZoneCacheModelTests
{
    [Test]
    public void RandomReadsRestartsCrashesAndBudgetChangesAlwaysReturnTheStoresBytes([Values(1, 2, 3)] int round)
    {
        int seed = int.TryParse(Environment.GetEnvironmentVariable("CACHE_MODEL_SEED"), out int fixedSeed) ? fixedSeed : Environment.TickCount ^ (round * 7919);
        TestContext.Out.WriteLine($"seed {seed}");
        var random = new Random(seed);
        var remotes = Enumerable.Range(0, 4)
            .Select(i => new FakeRemote(Bytes(random.Next(1, 6 * ZoneBytes), seed + i), $"remote{i}", 1000 + i))
            .ToArray();
        var store = new MemoryCacheStore();
        long budget = random.Next(0, 12) * ZoneCache.ZoneCharge(ZoneBytes);
        var cache = new ZoneCache(Options("memory", budget, store));
        long admissions = 0, evictions = 0;
        var readers = new List<(IBlockStorage Reader, FakeRemote Remote)>();
        try
        {
            for (int step = 0; step < 400; step++)
            {
                int action = random.Next(100);
                if (action < 80)
                {
                    if (readers.Count == 0 || random.Next(3) == 0)
                    {
                        FakeRemote r = remotes[random.Next(remotes.Length)];
                        readers.Add((cache.Wrap(r, r.Name, r.Length, r.GetIdentity().MTimeNs, ownsRemote: false), r));
                    }
                    var (reader, remote) = readers[random.Next(readers.Count)];
                    long offset = random.Next((int)remote.Length + 100);
                    byte[] buffer = new byte[random.Next(1, 3 * ZoneBytes)];
                    int n = random.Next(2) == 0 ? reader.ReadAt(buffer, offset) : reader.ReadAtAsync(buffer, offset).AsTask().Result;
                    int expected = (int)Math.Clamp(remote.Length - offset, 0, buffer.Length);
                    Assert.That(n, Is.EqualTo(expected), $"step {step}: length at {offset} of {remote.Name}");
                    Assert.That(n == 0 || buffer.AsSpan(0, n).SequenceEqual(remote.Content.AsSpan((int)offset, n)), $"step {step}: bytes at {offset} of {remote.Name}");
                    if (readers.Count > 6)
                    {
                        readers[0].Reader.Dispose();
                        readers.RemoveAt(0);
                    }
                }
                else if (action < 88)
                {
                    budget = random.Next(0, 12) * ZoneCache.ZoneCharge(ZoneBytes);
                    cache.BudgetBytes = budget;
                    Assert.That(cache.Status.ChargedBytes, Is.LessThanOrEqualTo(budget), $"step {step}: within the budget");
                }
                else
                {
                    bool crash = random.Next(2) == 0;
                    admissions += cache.Status.Admissions;
                    evictions += cache.Status.Evictions;
                    AssertCheckClean(cache);
                    foreach (var (reader, _) in readers)
                    {
                        reader.Dispose();
                    }
                    readers.Clear();
                    if (crash)
                    {
                        cache.SimulateCrash();
                    }
                    else
                    {
                        cache.Dispose();
                    }
                    cache = new ZoneCache(Options("memory", budget, store));
                    AssertCheckClean(cache);
                }
            }
            AssertCheckClean(cache);
            admissions += cache.Status.Admissions;
            evictions += cache.Status.Evictions;
            TestContext.Out.WriteLine($"admissions {admissions}, evictions {evictions}");
            Assert.That(admissions, Is.GreaterThan(0), "the model admits zones");
        }
        finally
        {
            foreach (var (reader, _) in readers)
            {
                reader.Dispose();
            }
            cache.Dispose();
        }
    }

    /// <summary>One round of maintenance on one cache file: admissions (the file's creation among them), a commit,
    /// an eviction, more admissions, a commit.</summary>
    private static void Maintenance(ZoneCache cache, FakeRemote remote)
    {
        for (int zone = 0; zone < 3; zone++)
        {
            ReadOrFail(cache, remote, (long)zone * ZoneBytes);
            ReadOrFail(cache, remote, (long)zone * ZoneBytes);
        }
        try
        {
            cache.Flush();
        }
        catch (IOException)
        {
        }
        cache.BudgetBytes = ZoneCache.FileOverhead(remote.Length) + (2 * ZoneCache.ZoneCharge(ZoneBytes));
        ReadOrFail(cache, remote, 3L * ZoneBytes);
        ReadOrFail(cache, remote, 3L * ZoneBytes);
        try
        {
            cache.Flush();
        }
        catch (IOException)
        {
        }
    }

    /// <summary>Reads through the cache; after a power cut of the cache file the read must still be right.</summary>
    private static void ReadOrFail(ZoneCache cache, FakeRemote remote, long offset) => ReadAndCheck(cache, remote, "k", offset, 3000);

    [Test]
    public void APowerCutAtEveryWriteOfCacheMaintenanceLeavesACleanCacheThatReadsTheStoresBytes()
    {
        var remote = new FakeRemote(Bytes((3 * ZoneBytes) + 999, 77));
        // Count the writes of a run without faults.
        FaultInjectingStorage? counted = null;
        var countingStore = new MemoryCacheStore(name => counted = new FaultInjectingStorage(name: name));
        using (var cache = new ZoneCache(Options("memory", 1 << 30, countingStore)))
        {
            Maintenance(cache, remote);
        }
        int writes = counted!.WriteCount;
        Assert.That(writes, Is.GreaterThan(10));
        var random = new Random(writes);
        for (int cut = 0; cut < writes; cut++)
        {
            bool inject = true;
            var store = new MemoryCacheStore(name =>
            {
                var file = new FaultInjectingStorage(name: name);
                if (inject)
                {
                    file.FailWrite(cut, StorageFault.PowerCut);
                }
                return file;
            });
            var cache = new ZoneCache(Options("memory", 1 << 30, store));
            Maintenance(cache, remote);
            cache.SimulateCrash();
            inject = false;
            foreach (var (name, storage) in store.Files)
            {
                store.Replace(name, ((FaultInjectingStorage)storage).CrashImage(random));
            }
            using var reopened = new ZoneCache(Options("memory", 1 << 30, store));
            Assert.That(reopened.Check(), Is.Empty, $"power cut at write {cut}");
            for (long offset = 0; offset < remote.Length; offset += 1000)
            {
                ReadAndCheck(reopened, remote, "k", offset, 1500);
            }
            Assert.That(reopened.Check(), Is.Empty, $"power cut at write {cut}, after reads");
        }
    }
}
