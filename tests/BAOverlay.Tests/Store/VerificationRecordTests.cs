using System.Collections.Concurrent;
using BAOverlay.Store;
using BAOverlay.Tests.Tool;
using Mono.Unix.Native;

namespace BAOverlay.Tests.Store;

/// <summary>
/// A host's record of a layer's verification (its metadata index): a layer this host verified before is not read
/// again at the next use (a new <see cref="LayerStore"/>, as each mount is), unless the record does not check, the
/// store holds another publication of the layer, its tree root changed, or a full verification is asked for.
/// Reads of content are counted by the verification's hook (every regular file, before its content is read).
/// </summary>
[TestFixture]
public class VerificationRecordTests
{
    /// <summary>The calls baoverlayfs -o store=,image=,cache= makes, on a new instance (a new mount).</summary>
    private static (IReadOnlyList<LayerIndex> Indexes, IReadOnlyList<string> Lowers, List<string> Hashed, List<string> Log) Mount(
        string store, string indexDirectory, bool reverify = false)
    {
        var hashed = new ConcurrentQueue<string>();
        var log = new List<string>();
        using LayerStore reader = LayerStore.Open(store, new LayerStoreOptions
        {
            HostId = "reader",
            ReverifyIndexedLayers = reverify,
            ContentReadHook = hashed.Enqueue,
        });
        IReadOnlyList<LayerIndex> indexes = reader.OpenIndexes("app", indexDirectory, log.Add);
        using StoreLease lease = reader.LeaseImage("app");
        IReadOnlyList<string> lowers = reader.ResolveLowerDirectories("app");
        return (indexes, lowers, [.. hashed], log);
    }

    /// <summary>Publishes an image "app" of two small layers; returns the number of regular files in them.</summary>
    private static int Publish(TempDir temp, LayerStoreOptions? options = null)
    {
        using LayerStore writer = LayerStore.Create(temp.File("store"), options ?? StoreTrees.Options("writer"));
        StoreLayer bottom = writer.PublishDirectory(StoreTrees.MakePlain(temp.File("bottom"), "bottom content"));
        Directory.CreateDirectory(temp.File("top"));
        File.WriteAllText(temp.File("top/a"), "a");
        File.WriteAllText(temp.File("top/b"), "b");
        StoreLayer top = writer.PublishDirectory(temp.File("top"));
        writer.PublishImage("app", [bottom.Digest, top.Digest]);
        return 3;
    }

    [Test]
    public void ALayerVerifiedOnceByThisHostIsNotReadAgainAtTheNextMount()
    {
        // Before the record, "verified once" was per LayerStore instance, i.e. per process: every mount read and
        // hashed every file of every layer through the share, however warm its cache and indexes (on that code the
        // second Mount below hashes 3 files, not 0).
        using var temp = new TempDir();
        int files = Publish(temp);
        string index = temp.File("index");

        var first = Mount(temp.File("store"), index);
        Assert.That(first.Hashed, Has.Count.EqualTo(files), "the first use on this host verifies every file, once (the walk that makes the index)");
        Assert.That(first.Log, Is.Empty);

        var second = Mount(temp.File("store"), index);
        Assert.Multiple(() =>
        {
            Assert.That(second.Hashed, Is.Empty, "the record vouches for the layers: no content read");
            Assert.That(second.Log, Is.Empty);
            Assert.That(second.Lowers, Is.EqualTo(first.Lowers));
            Assert.That(second.Indexes.Select(i => i.Count), Is.EqualTo(first.Indexes.Select(i => i.Count)));
        });

        // A full verification when asked for; the record stays as it was (the layer did not change).
        byte[][] records = [.. Directory.GetFiles(index).Order(StringComparer.Ordinal).Select(File.ReadAllBytes)];
        var forced = Mount(temp.File("store"), index, reverify: true);
        Assert.That(forced.Hashed, Has.Count.EqualTo(files));
        Assert.That(Directory.GetFiles(index).Order(StringComparer.Ordinal).Select(File.ReadAllBytes), Is.EqualTo(records));

        // A record that does not check (one byte flipped) is not trusted: the layer is verified, the record made again.
        string victim = Directory.GetFiles(index).Order(StringComparer.Ordinal).First();
        byte[] bad = File.ReadAllBytes(victim);
        bad[bad.Length / 2] ^= 1;
        File.WriteAllBytes(victim, bad);
        var damaged = Mount(temp.File("store"), index);
        Assert.That(damaged.Hashed, Is.Not.Empty);
        Assert.That(damaged.Log, Has.One.Contains("made again"));
        Assert.That(Mount(temp.File("store"), index).Hashed, Is.Empty, "made again: trusted at the next mount");
    }

    [Test]
    public void WithoutAnIndexDirectoryEveryInstanceVerifies()
    {
        using var temp = new TempDir();
        int files = Publish(temp);
        for (int i = 0; i < 2; i++)
        {
            var hashed = new ConcurrentQueue<string>();
            using LayerStore reader = LayerStore.Open(temp.File("store"), new LayerStoreOptions { HostId = "r", ContentReadHook = hashed.Enqueue });
            using (reader.LeaseImage("app"))
            {
                reader.ResolveLowerDirectories("app");
            }
            Assert.That(hashed, Has.Count.EqualTo(files), "no record: each instance verifies at first use, once");
        }
    }

    [Test]
    public void ALayerCollectedAndPublishedAgainIsVerifiedAgain()
    {
        using var temp = new TempDir();
        LayerStoreOptions quick = new()
        {
            HostId = "writer", GracePeriod = TimeSpan.Zero, ClockSkewMargin = TimeSpan.Zero, StagingAge = TimeSpan.Zero,
        };
        Publish(temp, quick);
        string index = temp.File("index");
        Assert.That(Mount(temp.File("store"), index).Hashed, Is.Not.Empty);
        Assert.That(Mount(temp.File("store"), index).Hashed, Is.Empty);

        // The image deleted, its layers collected, the same content published again: the same digests, another
        // publication (manifest time) and other file times, which the lazy opens compare with the index's.
        using (LayerStore writer = LayerStore.Open(temp.File("store"), quick))
        {
            Assert.That(writer.DeleteName("app"), Is.True);
            Assert.That(writer.CollectGarbage().RemovedLayers, Has.Count.EqualTo(2));
            StoreLayer bottom = writer.PublishDirectory(temp.File("bottom"));
            StoreLayer top = writer.PublishDirectory(temp.File("top"));
            writer.PublishImage("app", [bottom.Digest, top.Digest]);
        }
        var again = Mount(temp.File("store"), index);
        Assert.Multiple(() =>
        {
            Assert.That(again.Hashed, Has.Count.EqualTo(3), "both layers verified again");
            Assert.That(again.Log, Has.Exactly(2).Contains("published again"));
        });
        string file = Path.Combine(again.Lowers[1], "d", "f");
        Assert.That(Syscall.lstat(file, out Stat now), Is.Zero);
        Stat indexed = again.Indexes[1].StatOf(again.Indexes[1].Find("d/f"));
        Assert.That((indexed.st_mtime, indexed.st_mtime_nsec), Is.EqualTo((now.st_mtime, now.st_mtime_nsec)), "the index shows the new publication's times");
        Assert.That(Mount(temp.File("store"), index).Hashed, Is.Empty);
    }

    [Test]
    public void ALayerWhoseRootChangedIsVerifiedAgainAlsoWhenItChangesAfterTheIndexesWereOpened()
    {
        using var temp = new TempDir();
        Publish(temp);
        string index = temp.File("index");
        var first = Mount(temp.File("store"), index);

        Assert.That(Syscall.utimes(first.Lowers[0], [new Timeval { tv_sec = 1_000_000 }, new Timeval { tv_sec = 1_000_000 }]), Is.Zero);
        var changed = Mount(temp.File("store"), index);
        Assert.That(changed.Hashed, Has.Count.EqualTo(2), "the top layer (a and b) verified again");
        Assert.That(changed.Log, Has.One.Contains("root changed"));

        // Between the indexes' opening (trusted) and the lease, the root changes: the lease compares again and hashes.
        var hashed = new ConcurrentQueue<string>();
        using LayerStore reader = LayerStore.Open(temp.File("store"), new LayerStoreOptions { HostId = "r", ContentReadHook = hashed.Enqueue });
        reader.OpenIndexes("app", index);
        Assert.That(hashed, Is.Empty);
        Assert.That(Syscall.utimes(first.Lowers[1], [new Timeval { tv_sec = 2_000_000 }, new Timeval { tv_sec = 2_000_000 }]), Is.Zero);
        using (reader.LeaseImage("app"))
        {
            Assert.That(hashed, Has.Count.EqualTo(1), "the bottom layer (d/f) hashed by the lease");
            reader.ResolveLowerDirectories("app");
            Assert.That(hashed, Has.Count.EqualTo(1), "once");
        }
    }

    [Test]
    public void AnIndexOfTheOlderFormatIsMadeAgain()
    {
        using var temp = new TempDir();
        Publish(temp);
        string index = temp.File("index");
        Mount(temp.File("store"), index);
        string file = Directory.GetFiles(index).First();
        byte[] bytes = File.ReadAllBytes(file);
        "baoverlay-layer-index/1\n"u8.CopyTo(bytes);
        File.WriteAllBytes(file, bytes);
        var again = Mount(temp.File("store"), index);
        Assert.That(again.Log, Has.One.Contains("another format version"));
        Assert.That(again.Hashed, Is.Not.Empty);
    }

    [Test]
    public void BcowStoreResolveWithACacheTrustsTheRecordAndVerifyHashesAgain()
    {
        using var temp = new TempDir();
        Publish(temp);
        string store = temp.File("store");
        string cache = temp.File("cache");
        BcowResult first = Bcow.Run("store", "resolve", "--cache", cache, store, "app");
        Assert.That(first.ExitCode, Is.Zero, first.ToString());
        Assert.That(Directory.GetFiles(Path.Combine(cache, "index")), Has.Length.EqualTo(2), "a record per layer");

        // The bottom layer's file rewritten with the same size, its times restored: only a hash sees it.
        string file = Path.Combine(first.Out.Trim().Split(':')[1], "d", "f");
        Assert.That(Syscall.lstat(file, out Stat before), Is.Zero);
        File.WriteAllText(file, "BOTTOM CONTENT");
        Assert.That(Syscall.utimensat(Syscall.AT_FDCWD, file,
            [new Timespec { tv_sec = before.st_atime, tv_nsec = before.st_atime_nsec }, new Timespec { tv_sec = before.st_mtime, tv_nsec = before.st_mtime_nsec }], 0), Is.Zero);

        BcowResult trusted = Bcow.Run("store", "resolve", "--cache", cache, store, "app");
        Assert.That(trusted.Out, Is.EqualTo(first.Out), trusted.ToString());
        foreach (string[] arguments in new[] { new[] { "--cache", cache, "--verify" }, [] })
        {
            BcowResult hashed = Bcow.Run(["store", "resolve", .. arguments, store, "app"]);
            Assert.That(hashed.ExitCode, Is.EqualTo(1), $"{string.Join(' ', arguments)}: {hashed}");
            Assert.That(hashed.Error, Does.Contain("does not match"));
        }
        Assert.Multiple(() =>
        {
            Assert.That(Bcow.Run("store", "resolve", "--verify", "--no-verify", store, "app").Error, Does.Contain("exclude each other"));
            Assert.That(Bcow.Run("store", "resolve", "--cache", cache, "--no-verify", store, "app").Error, Does.Contain("no use with --no-verify"));
        });
    }
}
