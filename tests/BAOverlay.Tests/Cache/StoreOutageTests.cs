using BAOverlay.Cache;
using BAOverlay.Storage;
using static BAOverlay.Tests.Cache.CacheTesting;

namespace BAOverlay.Tests.Cache;

/// <summary>Degrade, never corrupt: a store that hangs or fails leaves cached reads working, fails the others promptly
/// with EIO, holds a bounded number of threads, says so, and recovers by itself.</summary>
public class StoreOutageTests
{
    private static ZoneCacheOptions Outage(string directory, List<string> log, TimeSpan probeInterval, int maxReads = 16) => new()
    {
        Directory = directory,
        ZoneSize = ZoneBytes,
        RemoteTimeout = TimeSpan.FromMilliseconds(200),
        ProbeInterval = probeInterval,
        MaxRemoteReads = maxReads,
        Log = line =>
        {
            lock (log)
            {
                log.Add(line);
            }
        },
    };

    private static void AdmitZoneZero(ZoneCache cache, FakeRemote remote)
    {
        ReadAndCheck(cache, remote, "k", 0, 100);
        ReadAndCheck(cache, remote, "k", 0, 100);
        Assert.That(cache.Status.CachedZones, Is.EqualTo(1));
    }

    private static IOException ReadFails(ZoneCache cache, FakeRemote remote, long offset)
    {
        using IBlockStorage reader = cache.Wrap(remote, "k", remote.Length, remote.GetIdentity().MTimeNs, ownsRemote: false);
        return Assert.Throws<IOException>(() => reader.ReadAt(new byte[100], offset))!;
    }

    private static void WaitFor(Func<bool> condition, string what)
    {
        for (int i = 0; i < 1000 && !condition(); i++)
        {
            Thread.Sleep(10);
        }
        Assert.That(condition(), what);
    }

    [Test]
    public void AHangingStoreGivesCachedReadsAndEioForTheRestWithoutSendingMoreReads()
    {
        using var dir = new TempDir();
        var log = new List<string>();
        var remote = new FakeRemote(Bytes(4 * ZoneBytes, 1));
        using var cache = new ZoneCache(Outage(dir.Path, log, probeInterval: TimeSpan.FromHours(1)));
        AdmitZoneZero(cache, remote);

        remote.Hang();
        IOException timedOut = ReadFails(cache, remote, ZoneBytes);
        Assert.That(timedOut.HResult, Is.EqualTo(5), "EIO");
        Assert.That(timedOut.Message, Does.Contain("no answer within"));
        ZoneCacheStatus status = cache.Status;
        Assert.That(status.State, Is.EqualTo(StoreState.Unreachable));
        Assert.That(status.Since, Is.Not.Null);
        Assert.That(status.LastError, Does.Contain("no answer"));
        Assert.That(status.StuckReads, Is.EqualTo(1));
        Assert.That(log, Has.Some.Contains("unreachable"));
        Assert.That(File.ReadAllText(Path.Combine(dir.Path, ZoneCache.StateFile)), Does.Contain("store: unreachable"));

        ReadAndCheck(cache, remote, "k", 0, ZoneBytes); // cached: as before
        int reads = remote.Reads;
        IOException fast = ReadFails(cache, remote, 2L * ZoneBytes);
        Assert.That(fast.HResult, Is.EqualTo(5));
        Assert.That(fast.Message, Does.Contain("unreachable since"));
        Assert.That(remote.Reads, Is.EqualTo(reads), "no read is sent to a store known unreachable before the next probe");

        remote.Answer();
        WaitFor(() => cache.Status.StuckReads == 0, "the stuck read finishes on its own thread");
        // Said by that thread after it counts itself out: waited for, not merely checked once.
        WaitFor(() => Logged(log, "passed its deadline finished"), "the late answer is logged");
    }

    /// <summary>Whether a line containing <paramref name="text"/> was logged (the cache logs from its threads).</summary>
    private static bool Logged(List<string> log, string text)
    {
        lock (log)
        {
            return log.Any(line => line.Contains(text, StringComparison.Ordinal));
        }
    }

    [Test]
    public void TheStoreIsHealthyAgainOnceAProbeReadSucceeds()
    {
        using var dir = new TempDir();
        var log = new List<string>();
        var remote = new FakeRemote(Bytes(4 * ZoneBytes, 2));
        using var cache = new ZoneCache(Outage(dir.Path, log, probeInterval: TimeSpan.Zero));
        remote.Hang();
        Assert.That(ReadFails(cache, remote, 0).HResult, Is.EqualTo(5));
        Assert.That(cache.Status.State, Is.EqualTo(StoreState.Unreachable));
        remote.Answer();
        ReadAndCheck(cache, remote, "k", ZoneBytes, 500); // the probe
        Assert.That(cache.Status.State, Is.EqualTo(StoreState.Healthy));
        Assert.That(log, Has.Some.Contains("answers again"));
        ReadAndCheck(cache, remote, "k", 2L * ZoneBytes, 500);
    }

    [Test]
    public void AStoreThatFailsMakesReadsFailWithEioAndCachedReadsGoOn([Values] bool async)
    {
        using var dir = new TempDir();
        var log = new List<string>();
        var remote = new FakeRemote(Bytes(4 * ZoneBytes, 3));
        using var cache = new ZoneCache(Outage(dir.Path, log, probeInterval: TimeSpan.Zero));
        AdmitZoneZero(cache, remote);
        remote.Failing = true;
        using IBlockStorage reader = cache.Wrap(remote, "k", remote.Length, remote.GetIdentity().MTimeNs, ownsRemote: false);
        byte[] buffer = new byte[ZoneBytes];
        IOException error = async
            ? Assert.Throws<IOException>(() => reader.ReadAtAsync(buffer, 3L * ZoneBytes).AsTask().GetAwaiter().GetResult())!
            : Assert.Throws<IOException>(() => reader.ReadAt(buffer, 3L * ZoneBytes))!;
        Assert.That(error.HResult, Is.EqualTo(5), "EIO, whatever errno the store gave (here ENOTCONN)");
        Assert.That(error.Message, Does.Contain("connection lost"));
        Assert.That(cache.Status.State, Is.EqualTo(StoreState.Unreachable));
        int n = async ? reader.ReadAtAsync(buffer, 0).AsTask().Result : reader.ReadAt(buffer, 0);
        Assert.That(n, Is.EqualTo(ZoneBytes));
        Assert.That(buffer.AsSpan().SequenceEqual(remote.Content.AsSpan(0, ZoneBytes)));
        remote.Failing = false;
        ReadAndCheck(cache, remote, "k", 3L * ZoneBytes, 10);
        Assert.That(cache.Status.State, Is.EqualTo(StoreState.Healthy));
    }

    [Test]
    public void AStoreThatHangsForGoodHoldsAtMostMaxRemoteReadsThreads()
    {
        using var dir = new TempDir();
        var log = new List<string>();
        var remote = new FakeRemote(Bytes(16 * ZoneBytes, 4));
        using var cache = new ZoneCache(Outage(dir.Path, log, probeInterval: TimeSpan.Zero, maxReads: 2));
        remote.Hang();
        var readers = Enumerable.Range(0, 12).Select(i => Task.Run(() =>
        {
            using IBlockStorage reader = cache.Wrap(remote, "k", remote.Length, remote.GetIdentity().MTimeNs, ownsRemote: false);
            try
            {
                reader.ReadAt(new byte[100], (long)i * ZoneBytes);
                return 0;
            }
            catch (IOException e)
            {
                return e.HResult;
            }
        })).ToArray();
        Assert.That(Task.WaitAll(readers, TimeSpan.FromSeconds(60)), "no reader hangs");
        Assert.That(readers.Select(r => r.Result), Is.All.EqualTo(5));
        Assert.That(remote.Reads, Is.LessThanOrEqualTo(2), "at most MaxRemoteReads reads ever reached the hanging store");
        Assert.That(cache.Status.StuckReads, Is.LessThanOrEqualTo(2));
        remote.Answer();
        WaitFor(() => cache.Status.StuckReads == 0, "stuck reads finish");
        ReadAndCheck(cache, remote, "k", 0, 100);
        Assert.That(cache.Status.State, Is.EqualTo(StoreState.Healthy));
    }

    [Test]
    public void AReadOfARealFileUnderTheDeadlineReturnsItsBytes()
    {
        using var dir = new TempDir();
        string path = dir.File("remote");
        byte[] content = Bytes((3 * ZoneBytes) + 5, 5);
        File.WriteAllBytes(path, content);
        var log = new List<string>();
        using var cache = new ZoneCache(Outage(Path.Combine(dir.Path, "cache"), log, TimeSpan.Zero));
        for (int r = 0; r < 3; r++)
        {
            using IBlockStorage reader = cache.Wrap(new FileStorage(path, FileMode.Open, FileAccess.Read), path);
            byte[] buffer = new byte[content.Length];
            Assert.That(reader.ReadAtAsync(buffer, 0).AsTask().Result, Is.EqualTo(content.Length));
            Assert.That(buffer, Is.EqualTo(content));
        }
        Assert.That(cache.Status.CachedZones, Is.EqualTo(4), string.Join("\n", log));
        Assert.That(cache.Status.HitBytes, Is.EqualTo(content.Length));
        AssertCheckClean(cache);
    }
}
