using BAOverlayFs;

namespace BAOverlay.Tests.Store;

/// <summary>baoverlayfs's cache options: <c>cache=DIR[,cache_size=BYTES][,store_timeout=S]</c>.</summary>
[TestFixture]
public class CacheOptionsTests
{
    [Test]
    public void TheCacheOptionsAreParsedWithTheStoreOrWithLowerDirectories()
    {
        CommandLine line = CommandLine.Parse(["-o", "store=/s,image=app,cache=/var/cache/bao,cache_size=512M,store_timeout=1.5", "/m"]);
        Assert.That((line.CacheDirectory, line.CacheSize, line.StoreTimeout), Is.EqualTo(("/var/cache/bao", 512L << 20, 1.5)));
        line = CommandLine.Parse(["-o", "lowerdir=/l,cache=/c", "/m"]);
        Assert.That((line.CacheDirectory, line.CacheSize, line.StoreTimeout), Is.EqualTo(("/c", (long?)null, (double?)null)));
        Assert.That(CommandLine.Parse(["-o", "lowerdir=/l,cache=/c,cache_size=1073741824", "/m"]).CacheSize, Is.EqualTo(1L << 30));
        Assert.That(CommandLine.Parse(["-o", "lowerdir=/l,cache=/c,cache_size=2g", "/m"]).CacheSize, Is.EqualTo(2L << 30));
    }

    [TestCase("lowerdir=/l,cache_size=1G", "cache_size= needs cache=DIR")]
    [TestCase("lowerdir=/l,store_timeout=2", "store_timeout= needs cache=DIR")]
    [TestCase("lowerdir=/l,cache=/c,store_timeout=0", "store_timeout=0: must be more than 0 seconds")]
    [TestCase("lowerdir=/l,cache=/c,store_timeout=x", "store_timeout=x: not a number of seconds")]
    [TestCase("lowerdir=/l,cache=/c,cache_size=12Q", "cache_size=12Q: not a number of bytes (e.g. 1073741824, 1G, 512M)")]
    [TestCase("lowerdir=/l,cache=/c,cache_size=99999999999T", "cache_size=99999999999T: not a number of bytes (e.g. 1073741824, 1G, 512M)")]
    public void WrongCacheOptionsAreRefusedWithTheReason(string options, string message) =>
        Assert.That(Assert.Throws<UsageException>(() => CommandLine.Parse(["-o", options, "/m"]))!.Message, Is.EqualTo(message));
}
