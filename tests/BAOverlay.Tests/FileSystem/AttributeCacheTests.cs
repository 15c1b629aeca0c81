using System.Collections.Concurrent;
using BAOverlay.FileSystem;
using Mono.Unix.Native;
using static BAOverlay.Tests.FileSystem.OverlayFixture;

namespace BAOverlay.Tests.FileSystem;

/// <summary>
/// What lookup and getattr keep per node instead of reading it again: the inode number of an upper object, whether it
/// is a B-CoW file, and a closed B-CoW file's logical size (from its header). Each test changes the file in every way
/// the overlay can and compares with a fresh overlay over the same layers, which has kept nothing.
/// </summary>
public class AttributeCacheTests
{
    private const int Large = 200 * 1024; // above the fixture's 64 KiB threshold: copied up as a B-CoW file

    private static readonly OverlayCaller Root = new(0, 0, 0x12);

    private static OverlayStat Fresh(OverlayFixture f, string path)
    {
        using OverlayFileSystem fresh = f.Open();
        return Resolve(fresh, path);
    }

    private static void AssertSameAsFresh(OverlayFixture f, OverlayFileSystem fs, string path, long size, string step)
    {
        OverlayStat kept = fs.GetAttr(Resolve(fs, path).Ino);
        OverlayStat looked = Resolve(fs, path);
        OverlayStat fresh = Fresh(f, path);
        Assert.That(kept.Size, Is.EqualTo(size), $"{step}: getattr size");
        Assert.That(looked.Size, Is.EqualTo(size), $"{step}: lookup size");
        Assert.That(fresh.Size, Is.EqualTo(size), $"{step}: size seen by a fresh overlay");
        Assert.That((kept.Ino, looked.Ino), Is.EqualTo((fresh.Ino, fresh.Ino)), $"{step}: inode number");
    }

    [Test]
    public void AClosedBCowFilesSizeFollowsEveryChange()
    {
        using var f = new OverlayFixture();
        WriteFile(Path.Combine(f.Lowers[0], "big"), new byte[Large]);
        using OverlayFileSystem fs = f.Open();
        ulong ino = Resolve(fs, "big").Ino;
        AssertSameAsFresh(f, fs, "big", Large, "lower, untouched");

        WriteAt(fs, "big", Large + 5000, [1, 2, 3]);
        Assert.That(TreeEntry.BCowFiles(f.Upper!), Has.Count.EqualTo(1), "copied up as a B-CoW file");
        AssertSameAsFresh(f, fs, "big", Large + 5003, "extended through a handle, closed");
        AssertSameAsFresh(f, fs, "big", Large + 5003, "getattr again");

        fs.SetAttr(ino, new OverlaySetAttr { Size = 10 }, Root);
        AssertSameAsFresh(f, fs, "big", 10, "truncated while closed");

        fs.SetAttr(ino, new OverlaySetAttr { Size = 1 << 20 }, Root);
        AssertSameAsFresh(f, fs, "big", 1 << 20, "extended while closed");

        using (OverlayHandle handle = fs.Open(ino, write: true, truncate: false))
        {
            handle.Write(new byte[100], (2 << 20) - 100);
            Assert.That(fs.GetAttr(ino).Size, Is.EqualTo(2 << 20), "open: the open file answers");
            fs.SetAttr(ino, new OverlaySetAttr { Size = 12345 }, Root);
            Assert.That(fs.GetAttr(ino).Size, Is.EqualTo(12345), "truncated while open");
        }
        AssertSameAsFresh(f, fs, "big", 12345, "closed after a truncate while open");

        using (OverlayHandle handle = fs.Open(ino, write: true, truncate: true))
        {
            Assert.That(fs.GetAttr(ino).Size, Is.Zero, "opened with O_TRUNC");
        }
        AssertSameAsFresh(f, fs, "big", 0, "closed after O_TRUNC");

        using (OverlayHandle reader = fs.Open(ino, write: false, truncate: false))
        {
            WriteAt(fs, "big", 0, new byte[777]);
        }
        AssertSameAsFresh(f, fs, "big", 777, "written while another handle read");
    }

    [Test]
    public void AHardLinkedBCowFileShowsOneSizeUnderBothNames()
    {
        using var f = new OverlayFixture();
        WriteFile(Path.Combine(f.Lowers[0], "big"), new byte[Large]);
        using OverlayFileSystem fs = f.Open();
        fs.Link(Resolve(fs, "big").Ino, OverlayFileSystem.RootIno, "twin");
        AssertSameAsFresh(f, fs, "twin", Large, "linked");
        WriteAt(fs, "twin", Large, [9]);
        AssertSameAsFresh(f, fs, "big", Large + 1, "written through the other name");
        AssertSameAsFresh(f, fs, "twin", Large + 1, "written through this name");
    }

    [Test]
    public void IsReferencedTellsWhichNamesHoldCountedLookups()
    {
        using var f = new OverlayFixture();
        WriteFile(Path.Combine(f.Lowers[0], "lower"), "lower");
        using OverlayFileSystem fs = f.Open();
        ulong root = OverlayFileSystem.RootIno;
        Assert.That(fs.IsReferenced(root, "lower"), Is.False, "never looked up");
        OverlayStat lower = fs.Lookup(root, "lower");
        Assert.That(fs.IsReferenced(root, "lower"), Is.True, "looked up once");
        OverlayStat dir = fs.MakeDirectory(root, "dir", Mode("755"), Root);
        var (file, handle) = fs.Create(dir.Ino, "made", Mode("644"), Root);
        handle.Write(new byte[100], 0);
        fs.SetAttr(file.Ino, new OverlaySetAttr { MTimeNs = 1_000_000_000L }, Root);
        handle.Dispose();
        fs.GetAttr(file.Ino);
        fs.MakeNode(dir.Ino, "fifo", Mode("644") | 0x1000, 0, Root);
        Assert.That((fs.IsReferenced(root, "dir"), fs.IsReferenced(dir.Ino, "made"), fs.IsReferenced(dir.Ino, "fifo")), Is.EqualTo((true, true, true)),
            "creations count a lookup");
        fs.Forget(lower.Ino, 1);
        fs.Forget(file.Ino, 1);
        Assert.That((fs.IsReferenced(root, "lower"), fs.IsReferenced(dir.Ino, "made")), Is.EqualTo((false, false)), "all forgotten");
        fs.Unlink(dir.Ino, "fifo");
        Assert.That(fs.IsReferenced(dir.Ino, "fifo"), Is.False, "removed");
        Assert.That(fs.IsReferenced(root, "missing"), Is.False);
    }

    /// <summary>TryLookup: null for an absent name and nothing counted; a present one answers and counts as Lookup
    /// does; errors other than absence still throw.</summary>
    [Test]
    public void TryLookupAnswersNullForAnAbsentNameAndCountsAPresentOne()
    {
        using var f = new OverlayFixture(lowers: 1);
        WriteFile(Path.Combine(f.Lowers[0], "lower"), "x");
        using OverlayFileSystem fs = f.Open();
        ulong root = OverlayFileSystem.RootIno;
        Assert.That(fs.TryLookup(root, "missing"), Is.Null);
        Assert.That(fs.IsReferenced(root, "missing"), Is.False);
        OverlayStat? found = fs.TryLookup(root, "lower");
        Assert.That(found?.Ino, Is.EqualTo(fs.Lookup(root, "lower").Ino));
        Assert.That(() => fs.TryLookup(found!.Value.Ino, "x"), Throws.TypeOf<OverlayException>().With.Property("Errno").EqualTo(OverlayErrno.ENOTDIR));
        fs.Forget(found!.Value.Ino, 1);
        Assert.That(fs.IsReferenced(root, "lower"), Is.True, "two lookups counted, one forgotten");
        fs.Forget(found.Value.Ino, 1);
        Assert.That(fs.IsReferenced(root, "lower"), Is.False);
    }

    [Test]
    public void ANameReusedByAnotherObjectIsLookedUpAfresh()
    {
        using var f = new OverlayFixture();
        WriteFile(Path.Combine(f.Lowers[0], "big"), new byte[Large]);
        WriteFile(Path.Combine(f.Lowers[0], "small"), "small");
        using OverlayFileSystem fs = f.Open();
        WriteAt(fs, "big", 0, [1]);
        Resolve(fs, "big");
        Resolve(fs, "small");
        var (_, created) = fs.Create(OverlayFileSystem.RootIno, "new", Mode("644"), Root);
        created.Dispose();
        Resolve(fs, "new");

        // Swap the names around: each name now holds another object, some in upper, some copied up by the rename.
        fs.Rename(OverlayFileSystem.RootIno, "big", OverlayFileSystem.RootIno, "small", OverlayRenameFlags.Exchange);
        fs.Rename(OverlayFileSystem.RootIno, "new", OverlayFileSystem.RootIno, "big");
        foreach (string name in new[] { "big", "small" })
        {
            OverlayStat fresh = Fresh(f, name);
            AssertSameAsFresh(f, fs, name, fresh.Size, $"{name} after the renames");
        }
        Assert.That(Resolve(fs, "small").Size, Is.EqualTo(Large));
        Assert.That(Resolve(fs, "big").Size, Is.Zero);
    }

    [Test]
    public void AnUpperObjectReplacedBehindTheOverlaysBackIsLookedUpAfresh()
    {
        // Not supported (the upper layer changes only through the overlay), but lookups have always re-read the layers:
        // what they keep is tied to the upper object's inode number, so they still notice.
        using var f = new OverlayFixture();
        WriteFile(Path.Combine(f.Upper!, "a"), "first");
        using OverlayFileSystem fs = f.Open();
        OverlayStat before = Resolve(fs, "a");
        string path = Path.Combine(f.Upper!, "a");
        string keep = Path.Combine(f.Upper!, "keep");
        File.Move(path, keep); // held, so the new file cannot get the same inode number
        WriteFile(path, "second, longer");
        OverlayStat after = Resolve(fs, "a");
        Assert.That(after.Ino, Is.Not.EqualTo(before.Ino));
        Assert.That((after.Ino, after.Size), Is.EqualTo((Fresh(f, "a").Ino, 14L)));
    }

    [Test]
    public void GetAttrOnManyThreadsWhileTheFileGrowsNeverGoesBack()
    {
        using var f = new OverlayFixture();
        WriteFile(Path.Combine(f.Lowers[0], "big"), new byte[Large]);
        using OverlayFileSystem fs = f.Open();
        ulong ino = Resolve(fs, "big").Ino;
        const int rounds = 100;
        var failures = new ConcurrentQueue<string>();
        using var stop = new CancellationTokenSource();
        var readers = Enumerable.Range(0, 3).Select(_ => new Thread(() =>
        {
            long last = 0;
            while (!stop.IsCancellationRequested)
            {
                long size = fs.GetAttr(ino).Size;
                if (size < last || (size - Large) % 10 != 0)
                {
                    failures.Enqueue($"size {size} after {last}");
                }
                last = size;
            }
        })).ToList();
        readers.ForEach(t => t.Start());
        for (int i = 1; i <= rounds; i++)
        {
            using OverlayHandle handle = fs.Open(ino, write: true, truncate: false);
            handle.Write(new byte[10], Large + (10 * i) - 10);
        }
        stop.Cancel();
        readers.ForEach(t => t.Join());
        Assert.That(failures, Is.Empty);
        AssertSameAsFresh(f, fs, "big", Large + (10 * rounds), "at the end");
    }
}
