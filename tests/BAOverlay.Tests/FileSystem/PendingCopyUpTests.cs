using BAOverlay.FileSystem;
using Mono.Unix.Native;
using static BAOverlay.Tests.FileSystem.OverlayFixture;

namespace BAOverlay.Tests.FileSystem;

/// <summary>
/// A B-CoW copy-up is not flushed (the open that copies up pays no fsync): the file is marked pending
/// (<see cref="LayerPaths.PendingXattr"/>) until its first durable commit. The states a crash can leave before that
/// commit are planted here — any subset of the file's unflushed pages lost, or the file left empty — and a reopened
/// overlay must read the lower file's bytes with the object's metadata, never fail, never show other bytes; a file
/// without the mark that cannot be opened is still damage (EIO), and a marked file whose header is good is used as it is.
/// </summary>
[TestFixture]
[Platform("Linux")]
public sealed class PendingCopyUpTests
{
    private const int Size = 600_000; // over the 64 KiB threshold: a B-CoW copy-up

    private static byte[] Bytes(int seed, int length)
    {
        byte[] b = new byte[length];
        new Random(seed).NextBytes(b);
        return b;
    }

    private static OverlayFileSystem Open(OverlayFixture f, TimeSpan closeDelay = default) => OverlayFileSystem.Open(new OverlayOptions
    {
        LowerDirectories = f.Lowers,
        UpperDirectory = f.Upper,
        WorkDirectory = f.Work,
        BlockCopyUpThreshold = 64 * 1024,
        BlockSize = 4096,
        CloseDelay = closeDelay,
        Log = f.Log.Add,
    });

    private static bool IsPending(string path) => Syscall.lgetxattr(path, LayerPaths.PendingXattr, out byte[] _) >= 0;

    private static byte[] ReadAll(OverlayFileSystem fs, ulong ino)
    {
        using OverlayHandle h = fs.Open(ino, write: false, truncate: false);
        byte[] b = new byte[fs.GetAttr(ino).Size];
        int n = h.Read(b, 0);
        Assert.That(n, Is.EqualTo(b.Length));
        return b;
    }

    [Test]
    public void ACopyUpIsPendingUntilItsFirstDurableCommit()
    {
        using var f = new OverlayFixture(lowers: 1);
        WriteFile(Path.Combine(f.Lowers[0], "synced"), Bytes(1, Size));
        WriteFile(Path.Combine(f.Lowers[0], "closed"), Bytes(2, Size));
        WriteFile(Path.Combine(f.Lowers[0], "chmod"), Bytes(3, Size));
        using (OverlayFileSystem fs = Open(f))
        {
            ulong synced = fs.Lookup(OverlayFileSystem.RootIno, "synced").Ino;
            using (OverlayHandle h = fs.Open(synced, write: true, truncate: false))
            {
                Assert.That(IsPending(Path.Combine(f.Upper!, "synced")), Is.True, "copied up, not yet durable");
                h.Write("x"u8, 10);
                Assert.That(IsPending(Path.Combine(f.Upper!, "synced")), Is.True, "a write is not durable");
                h.Fsync();
                Assert.That(IsPending(Path.Combine(f.Upper!, "synced")), Is.False, "fsync made it durable");
            }

            ulong closed = fs.Lookup(OverlayFileSystem.RootIno, "closed").Ino;
            using (OverlayHandle h = fs.Open(closed, write: true, truncate: false))
            {
                h.Write("y"u8, 10);
            }
            Assert.That(IsPending(Path.Combine(f.Upper!, "closed")), Is.False, "the closing commit is durable (close_delay 0)");

            ulong chmod = fs.Lookup(OverlayFileSystem.RootIno, "chmod").Ino;
            fs.SetAttr(chmod, new OverlaySetAttr { Mode = Mode("600") }, OverlayCaller.Root);
            Assert.That(IsPending(Path.Combine(f.Upper!, "chmod")), Is.True, "a metadata copy-up commits nothing");
            Assert.That(Syscall.lgetxattr(Path.Combine(f.Upper!, "chmod"), LayerPaths.PendingXattr, out byte[] _), Is.GreaterThanOrEqualTo(0));
            Assert.That(fs.ListXattrs(chmod), Has.None.StartsWith("user.baoverlay."), "the mark is the overlay's own: hidden");
        }
        Assert.That(f.Log, Is.Empty);
    }

    /// <summary>
    /// The crash states: the copy-up (metadata only, or with writes never made durable) landed with any subset of its
    /// pages lost. Each seed drops a different subset (or empties the file); the reopened overlay reads the lower bytes
    /// and the mode given, makes the file again once, and it is then an ordinary B-CoW file that takes writes.
    /// </summary>
    [Test]
    public void AnUnfinishedCopyUpIsMadeAgainOverItsLowerFile([Range(0, 11)] int variant)
    {
        int seed = Environment.TickCount ^ (variant * 7919);
        TestContext.Out.WriteLine($"seed {seed}");
        var random = new Random(seed);
        using var f = new OverlayFixture(lowers: 1);
        byte[] lower = Bytes(4, Size);
        WriteFile(Path.Combine(f.Lowers[0], "d", "big"), lower);
        string upperFile = Path.Combine(f.Upper!, "d", "big");
        byte[] planted;
        using (OverlayFileSystem fs = Open(f, closeDelay: TimeSpan.FromHours(1)))
        {
            ulong dir = fs.Lookup(OverlayFileSystem.RootIno, "d").Ino;
            ulong ino = fs.Lookup(dir, "big").Ino;
            fs.SetAttr(ino, new OverlaySetAttr { Mode = Mode("640") }, OverlayCaller.Root);
            if (variant % 2 == 1)
            {
                // Writes never made durable (close_delay keeps the file open and uncommitted).
                using OverlayHandle h = fs.Open(ino, write: true, truncate: false);
                for (int i = 0; i < 8; i++)
                {
                    h.Write(Bytes(100 + i, 4096), random.Next(Size / 4096) * 4096L);
                }
            }
            planted = File.ReadAllBytes(upperFile); // what had reached the file (the page cache) at the "crash"
        }
        // The crash: of what had reached the file, only some pages reached the disk; the rest read as zeros (or
        // the file is empty). The mark stays (it is metadata, journaled with the rename).
        if (variant == 0)
        {
            planted = [];
        }
        else
        {
            for (int page = 0; page * 4096 < planted.Length; page++)
            {
                if (random.Next(2) == 0)
                {
                    Array.Clear(planted, page * 4096, Math.Min(4096, planted.Length - page * 4096));
                }
            }
        }
        File.WriteAllBytes(upperFile, planted);
        Assert.That(Syscall.lsetxattr(upperFile, LayerPaths.PendingXattr, "1"u8.ToArray(), XattrFlags.XATTR_AUTO), Is.Zero);
        Assert.That(Syscall.chmod(upperFile, (FilePermissions)Mode("640")), Is.Zero);

        using (OverlayFileSystem fs = Open(f))
        {
            ulong dir = fs.Lookup(OverlayFileSystem.RootIno, "d").Ino;
            ulong ino = fs.Lookup(dir, "big").Ino;
            OverlayStat stat = fs.GetAttr(ino);
            Assert.That(stat.Size, Is.EqualTo(Size), "the lower file's size");
            Assert.That(stat.Mode & 0xFFF, Is.EqualTo(Mode("640")), "the copy-up's metadata is kept");
            Assert.That(ReadAll(fs, ino), Is.EqualTo(lower), "the lower file's bytes: nothing written was durable");
            using (OverlayHandle h = fs.Open(ino, write: true, truncate: false))
            {
                h.Write("after"u8, 1000);
            }
            "after"u8.CopyTo(lower.AsSpan(1000));
        }
        Assert.That(IsPending(upperFile), Is.False, "made durable: no longer pending");
        using (OverlayFileSystem fs = Open(f))
        {
            ulong ino = fs.Lookup(fs.Lookup(OverlayFileSystem.RootIno, "d").Ino, "big").Ino;
            Assert.That(ReadAll(fs, ino), Is.EqualTo(lower), "the write after the repair is kept");
        }
        Assert.That(BAOverlay.Checking.BCowChecker.Check(upperFile).IsClean, Is.True, "the file checks clean");
        Assert.That(f.Log.Where(l => !l.Contains("unfinished copy-up")), Is.Empty);
    }

    [Test]
    public void ADamagedFileWithoutTheMarkIsStillAnError()
    {
        using var f = new OverlayFixture(lowers: 1);
        WriteFile(Path.Combine(f.Lowers[0], "big"), Bytes(5, Size));
        string upperFile = Path.Combine(f.Upper!, "big");
        using (OverlayFileSystem fs = Open(f))
        {
            ulong ino = fs.Lookup(OverlayFileSystem.RootIno, "big").Ino;
            using OverlayHandle h = fs.Open(ino, write: true, truncate: false);
            h.Write("durable"u8, 0);
            h.Fsync();
        }
        Assert.That(IsPending(upperFile), Is.False);
        byte[] damaged = File.ReadAllBytes(upperFile);
        Array.Clear(damaged, 0, 8192); // both header slots
        File.WriteAllBytes(upperFile, damaged);
        using (OverlayFileSystem fs = Open(f))
        {
            var e = Assert.Throws<OverlayException>(() => fs.Lookup(OverlayFileSystem.RootIno, "big"), "its size is in the header");
            Assert.That(e!.Errno, Is.EqualTo(OverlayErrno.EIO), "damage, not an unfinished copy-up: never replaced by the lower bytes");
        }
        Assert.That(f.Log, Has.Some.Contains("bad magic"), "said in the log");
    }

    [Test]
    public void AMarkedFileThatOpensIsUsedAsItIs()
    {
        // A crash after the first durable commit and before the removal of the mark reached the disk.
        using var f = new OverlayFixture(lowers: 1);
        byte[] expected = Bytes(6, Size);
        WriteFile(Path.Combine(f.Lowers[0], "big"), expected);
        string upperFile = Path.Combine(f.Upper!, "big");
        using (OverlayFileSystem fs = Open(f))
        {
            ulong ino = fs.Lookup(OverlayFileSystem.RootIno, "big").Ino;
            using OverlayHandle h = fs.Open(ino, write: true, truncate: false);
            h.Write("acknowledged"u8, 5000);
            h.Fsync();
        }
        "acknowledged"u8.CopyTo(expected.AsSpan(5000));
        Assert.That(Syscall.lsetxattr(upperFile, LayerPaths.PendingXattr, "1"u8.ToArray(), XattrFlags.XATTR_AUTO), Is.Zero);
        using (OverlayFileSystem fs = Open(f))
        {
            ulong ino = fs.Lookup(OverlayFileSystem.RootIno, "big").Ino;
            Assert.That(ReadAll(fs, ino), Is.EqualTo(expected), "the durable write is there: the file was not made again");
        }
        Assert.That(f.Log, Is.Empty);
    }
}
