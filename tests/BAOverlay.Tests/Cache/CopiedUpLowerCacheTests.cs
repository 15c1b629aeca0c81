using BAOverlay.Cache;
using BAOverlay.FileSystem;
using static BAOverlay.Tests.Cache.CacheTesting;

namespace BAOverlay.Tests.Cache;

/// <summary>
/// The lower file under a copied-up (B-CoW) file is read through the cache too: its unwritten parts come from cached
/// zones and from the store under the deadline; the sampled identity check of its creation and of every open (64
/// chunks spread over the file) adds no heat.
/// </summary>
public class CopiedUpLowerCacheTests
{
    private const int Size = 64 * ZoneBytes; // 1 MiB: copied up block by block with a threshold of 64 KiB

    [Test]
    public void TheIdentityChecksOfACopiedUpFileAddNoHeatAndItsReadsAreCachedAsAnyOthers()
    {
        using var dir = new TempDir();
        string lower = Path.Combine(dir.Path, "lower");
        Directory.CreateDirectory(lower);
        byte[] content = Bytes(Size, 7);
        File.WriteAllBytes(Path.Combine(lower, "image.bin"), content);
        Directory.CreateDirectory(Path.Combine(dir.Path, "upper"));
        Directory.CreateDirectory(Path.Combine(dir.Path, "work"));
        using var cache = new ZoneCache(Options(Path.Combine(dir.Path, "cache")));
        using (OverlayFileSystem fs = OverlayFileSystem.Open(new OverlayOptions
        {
            LowerDirectories = [lower],
            UpperDirectory = Path.Combine(dir.Path, "upper"),
            WorkDirectory = Path.Combine(dir.Path, "work"),
            LowerCache = cache,
            BlockCopyUpThreshold = 64 << 10,
        }))
        {
            ulong ino = fs.Lookup(OverlayFileSystem.RootIno, "image.bin").Ino;
            using (OverlayHandle writer = fs.Open(ino, write: true, truncate: false))
            {
                writer.Write("patched"u8, 0);
            }
            Assert.That(Mono.Unix.Native.Syscall.getxattr(Path.Combine(dir.Path, "upper", "image.bin"), "user.baoverlay.bcow", out byte[] _), Is.GreaterThan(0), "copied up block by block");
            // Opens (each checks the lower file's identity) and no reads: nothing gets hot, nothing is admitted.
            for (int i = 0; i < 4; i++)
            {
                fs.Open(ino, write: false, truncate: false).Dispose();
            }
            Assert.That(cache.Status.Admissions, Is.Zero, "identity checks admit nothing");
            Assert.That(cache.Status.FetchedBytes, Is.GreaterThan(0), "the identity samples were read through the cache");

            // Reads of the unwritten part by two readers: the second admits the zone, as for any lower file.
            byte[] expected = (byte[])content.Clone();
            "patched"u8.CopyTo(expected);
            for (int reader = 0; reader < 2; reader++)
            {
                using OverlayHandle handle = fs.Open(ino, write: false, truncate: false);
                byte[] buffer = new byte[ZoneBytes];
                Assert.That(handle.Read(buffer, 10L * ZoneBytes), Is.EqualTo(ZoneBytes));
                Assert.That(buffer, Is.EqualTo(expected[(10 * ZoneBytes)..(11 * ZoneBytes)]));
            }
            Assert.That(cache.Status.Admissions, Is.EqualTo(1), "the zone read by two readers is admitted");
            using (OverlayHandle handle = fs.Open(ino, write: false, truncate: false))
            {
                byte[] all = new byte[Size];
                Assert.That(handle.Read(all, 0), Is.EqualTo(Size));
                Assert.That(all, Is.EqualTo(expected));
            }
        }
        AssertCheckClean(cache);
    }
}
