using BAOverlay.Cache;
using BAOverlay.FileSystem;
using static BAOverlay.Tests.Cache.CacheTesting;

namespace BAOverlay.Tests.Cache;

public class OverlayLowerCacheTests
{
    private static byte[] ReadThroughOverlay(OverlayFileSystem fs, string name, long offset, int length)
    {
        OverlayStat stat = fs.Lookup(OverlayFileSystem.RootIno, name);
        using OverlayHandle handle = fs.Open(stat.Ino, write: false, truncate: false);
        byte[] buffer = new byte[length];
        int n = handle.Read(buffer, offset);
        return buffer[..n];
    }

    [Test]
    public void AnOverlayReadsLowerFilesThroughTheCacheAndAdmitsZonesReadAgain()
    {
        using var dir = new TempDir();
        string lower = Path.Combine(dir.Path, "lower");
        Directory.CreateDirectory(lower);
        byte[] content = Bytes((3 * ZoneBytes) + 10, 1);
        File.WriteAllBytes(Path.Combine(lower, "lib"), content);
        using var cache = new ZoneCache(Options(Path.Combine(dir.Path, "cache")));
        using (OverlayFileSystem fs = OverlayFileSystem.Open(new OverlayOptions { LowerDirectories = [lower], LowerCache = cache }))
        {
            Assert.That(ReadThroughOverlay(fs, "lib", 0, content.Length), Is.EqualTo(content));
            Assert.That(cache.Status.Admissions, Is.Zero);
            Assert.That(ReadThroughOverlay(fs, "lib", ZoneBytes, 100), Is.EqualTo(content[ZoneBytes..(ZoneBytes + 100)]));
            Assert.That(cache.Status.Admissions, Is.EqualTo(1), "the second open's read admits the zone");
            Assert.That(ReadThroughOverlay(fs, "lib", 0, content.Length), Is.EqualTo(content));
            Assert.That(cache.Status.HitBytes, Is.EqualTo(ZoneBytes));
        }
        AssertCheckClean(cache);
    }

    [Test]
    public void ALayerLeftOutOfTheCacheReadsDirectly()
    {
        using var dir = new TempDir();
        string top = Path.Combine(dir.Path, "top");
        string bottom = Path.Combine(dir.Path, "bottom");
        Directory.CreateDirectory(top);
        Directory.CreateDirectory(bottom);
        File.WriteAllBytes(Path.Combine(bottom, "f"), Bytes(1000, 2));
        using var cache = new ZoneCache(Options(Path.Combine(dir.Path, "cache")));
        using OverlayFileSystem fs = OverlayFileSystem.Open(new OverlayOptions { LowerDirectories = [top, bottom], LowerCache = cache, LowerCacheLayers = [0] });
        ReadThroughOverlay(fs, "f", 0, 1000);
        ReadThroughOverlay(fs, "f", 0, 1000);
        Assert.That(cache.Status.MissBytes + cache.Status.HitBytes, Is.Zero);
    }

    [Test]
    public void WhenTheStoreHangsAnOverlayGivesCachedBytesAndEioForTheRest()
    {
        using var dir = new TempDir();
        var log = new List<string>();
        var remote = new FakeRemote(Bytes(4 * ZoneBytes, 3), "lib");
        using var cache = new ZoneCache(new ZoneCacheOptions
        {
            Directory = Path.Combine(dir.Path, "cache"),
            ZoneSize = ZoneBytes,
            RemoteTimeout = TimeSpan.FromMilliseconds(200),
            ProbeInterval = TimeSpan.FromHours(1),
            Log = log.Add,
        });
        // The overlay's own lower files are local here; the store that hangs is the fake one, read as the overlay
        // reads a lower file: through NodeData over the cache's storage.
        ReadAndCheck(cache, remote, "lib", 0, 100);
        ReadAndCheck(cache, remote, "lib", 0, 100);
        remote.Hang();
        using var data = new NodeData.Plain(cache.Wrap(remote, "lib", remote.Length, remote.GetIdentity().MTimeNs, ownsRemote: false));
        byte[] buffer = new byte[ZoneBytes];
        Assert.That(data.Read(buffer, 0), Is.EqualTo(ZoneBytes));
        Assert.That(buffer, Is.EqualTo(remote.Content[..ZoneBytes]));
        IOException error = Assert.Throws<IOException>(() => data.Read(buffer, 2L * ZoneBytes))!;
        Assert.That(OverlayException.ErrnoOf(error, out _), Is.EqualTo(OverlayErrno.EIO));
        remote.Answer();
    }
}
