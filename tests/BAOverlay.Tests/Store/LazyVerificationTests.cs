using System.Collections.Concurrent;
using System.Security.Cryptography;
using BAOverlay.Cache;
using BAOverlay.FileSystem;
using BAOverlay.Store;
using BAOverlay.Tests.Cache;
using Mono.Unix.Native;

namespace BAOverlay.Tests.Store;

/// <summary>
/// A layer published with its tree list is verified lazily at its first use on a host
/// (<see cref="LayerStoreOptions.VerifyFilesAtFirstRead"/>): its metadata against the list, no file content read; each
/// file's content hashed at its first read from the store through the cache, refused with EIO when it does not match,
/// and recorded beside the index when it does. Content reads by the verification walk are counted by its hook; reads of
/// the store through the cache by the cache's status.
/// </summary>
[TestFixture]
public class LazyVerificationTests
{
    private static readonly string[] Names = ["a", "b", "c", "d/e", "d/big", "g"];

    /// <summary>Publishes an image "app" of one layer holding <see cref="Names"/> (d/big: 2.5 MiB, read in several
    /// pieces by a verification); returns the layer's tree directory.</summary>
    private static string Publish(TempDir temp)
    {
        Directory.CreateDirectory(temp.File("layer/d"));
        for (int i = 0; i < Names.Length; i++)
        {
            byte[] content = Names[i] == "d/big" ? CacheTesting.Bytes((5 << 19) + 17, 7) : CacheTesting.Bytes(1000 + (i * 3000), i);
            File.WriteAllBytes(temp.File("layer/" + Names[i]), content);
        }
        File.CreateSymbolicLink(temp.File("layer/link"), "a");
        using LayerStore writer = LayerStore.Create(temp.File("store"), StoreTrees.Options("writer"));
        StoreLayer layer = writer.PublishDirectory(temp.File("layer"));
        writer.PublishImage("app", [layer.Digest]);
        return layer.Directory;
    }

    private sealed class Host : IDisposable
    {
        public Host(TempDir temp, string cacheName = "cache", bool lazy = true, bool reverify = false)
        {
            Store = LayerStore.Open(temp.File("store"), new LayerStoreOptions
            {
                HostId = "reader",
                VerifyFilesAtFirstRead = lazy,
                ReverifyIndexedLayers = reverify,
                ContentReadHook = Hashed.Enqueue,
            });
            Indexes = Store.OpenIndexes("app", temp.File(cacheName + "/index"), Log.Add);
            Lease = Store.LeaseImage("app");
            Cache = new ZoneCache(CacheTesting.Options(temp.File(cacheName), log: Log));
            Fs = OverlayFileSystem.Open(new OverlayOptions
            {
                LowerDirectories = Store.ResolveLowerDirectories("app"),
                LowerIndexes = Indexes,
                LowerCache = Cache,
            });
        }

        public ConcurrentQueue<string> Hashed { get; } = new();

        public List<string> Log { get; } = [];

        public LayerStore Store { get; }

        public IReadOnlyList<LayerIndex> Indexes { get; }

        public StoreLease Lease { get; }

        public ZoneCache Cache { get; }

        public OverlayFileSystem Fs { get; }

        public ulong Find(string path)
        {
            ulong ino = OverlayFileSystem.RootIno;
            foreach (string part in path.Split('/'))
            {
                ino = Fs.Lookup(ino, part).Ino;
            }
            return ino;
        }

        /// <summary>The file read whole through the overlay (in 64 KiB reads, as the kernel would).</summary>
        public byte[] Read(string path)
        {
            ulong ino = Find(path);
            using OverlayHandle handle = Fs.Open(ino, write: false, truncate: false);
            var bytes = new MemoryStream();
            byte[] buffer = new byte[64 << 10];
            for (long offset = 0; ;)
            {
                int n = handle.Read(buffer, offset);
                if (n == 0)
                {
                    return bytes.ToArray();
                }
                bytes.Write(buffer, 0, n);
                offset += n;
            }
        }

        public void Dispose()
        {
            Fs.Dispose();
            Cache.Dispose();
            Lease.Dispose();
            Store.Dispose();
        }
    }

    [Test]
    public void TheFirstUseOnAHostReadsNoContentAndAStartFetchesOnlyTheFilesItReads()
    {
        // Before: the first use on a host hashed every file of the layer through the share (6 content reads here, 2.5 MiB
        // fetched for a start that reads 4 KiB).
        using var temp = new TempDir();
        string tree = Publish(temp);
        using var host = new Host(temp);
        Assert.Multiple(() =>
        {
            Assert.That(host.Hashed, Is.Empty, "no file content read to verify the layer");
            Assert.That(host.Log, Is.Empty);
            Assert.That(host.Cache.Status.StoreOpens, Is.Zero);
        });

        byte[] a = host.Read("a");
        byte[] e = host.Read("d/e");
        Assert.Multiple(() =>
        {
            Assert.That(a, Is.EqualTo(File.ReadAllBytes(Path.Combine(tree, "a"))));
            Assert.That(e, Is.EqualTo(File.ReadAllBytes(Path.Combine(tree, "d/e"))));
            Assert.That(host.Cache.Status.StoreOpens, Is.EqualTo(2), "the two files read, opened once each");
            Assert.That(host.Cache.Status.FetchedBytes, Is.EqualTo(a.Length + e.Length), "each fetched once, whole: the verification's bytes answer the reads");
            Assert.That(host.Indexes[0].Lazy!.VerifiedFiles, Is.EqualTo(2));
            Assert.That(host.Indexes[0].ContentCheck("a"), Is.Null, "verified");
            Assert.That(host.Indexes[0].ContentCheck("b"), Is.Not.Null, "never read, never verified");
        });

        // A large file is verified in pieces (each under the deadline) and reads right.
        Assert.That(host.Read("d/big"), Is.EqualTo(File.ReadAllBytes(Path.Combine(tree, "d/big"))));
        Assert.That(host.Cache.Status.State, Is.EqualTo(StoreState.Healthy));
    }

    [Test]
    public void AFileChangedOnTheShareIsRefusedAtItsFirstReadNamingItAndOthersStillRead()
    {
        using var temp = new TempDir();
        string tree = Publish(temp);
        using (new Host(temp))
        {
            // The first use: the layer's metadata checked, its index and record made.
        }
        // Rewritten behind the store with the same size, its times put back: only a hash sees it.
        string victim = Path.Combine(tree, "b");
        Assert.That(Syscall.lstat(victim, out Stat before), Is.Zero);
        byte[] changed = File.ReadAllBytes(victim);
        changed[10] ^= 1;
        File.WriteAllBytes(victim, changed);
        Restore(victim, before);
        // Another rewritten with another size.
        File.AppendAllText(Path.Combine(tree, "c"), "more");

        using var host = new Host(temp);
        Assert.That(host.Hashed, Is.Empty, "the record of the metadata check is trusted");
        IOException error = Assert.Catch<IOException>(() => host.Read("b"))!;
        Assert.That(OverlayException.ErrnoOf(error, out _), Is.EqualTo(OverlayErrno.EIO));
        Assert.That(host.Log, Has.Some.Contains("/tree/b").And.Contains("refused"), "the log names the layer and the file");
        Assert.That(host.Log, Has.Some.Contains(StoreLayout.DirectoryName(host.Indexes[0].Digest)));
        Assert.That(OverlayException.ErrnoOf(Assert.Catch<IOException>(() => host.Read("b"))!, out _), Is.EqualTo(OverlayErrno.EIO), "and at every read after");
        Assert.That(OverlayException.ErrnoOf(Assert.Catch<IOException>(() => host.Read("c"))!, out _), Is.EqualTo(OverlayErrno.EIO), "another size: refused");
        Assert.That(host.Read("a"), Is.EqualTo(File.ReadAllBytes(Path.Combine(tree, "a"))), "the other files read");
        Assert.That(host.Cache.Status.State, Is.EqualTo(StoreState.Healthy), "a file's content is not the store failing");
        Assert.That(host.Cache.Status.CachedZones, Is.Zero.Or.GreaterThan(0));
        Assert.That(host.Indexes[0].ContentCheck("b"), Is.Not.Null, "never recorded as verified");
    }

    [Test]
    public void ALayerChangedBeforeItsFirstUseIsVerifiedWholeAndRefused()
    {
        using var temp = new TempDir();
        string tree = Publish(temp);
        File.AppendAllText(Path.Combine(tree, "c"), "more");
        var log = new List<string>();
        using LayerStore store = LayerStore.Open(temp.File("store"), new LayerStoreOptions { HostId = "reader", VerifyFilesAtFirstRead = true });
        var refused = Assert.Throws<LayerStoreException>(() => store.OpenIndexes("app", temp.File("index"), log.Add))!;
        Assert.That(log, Has.One.Contains("tree list").And.Contains("tree/c"), "the lazy check's finding, logged");
        Assert.That(refused.Message, Does.Contain("does not match"));
    }

    [Test]
    public void ATamperedOrForeignTreeListIsNeverTrusted([Values("flipped", "foreign", "link", "truncated")] string how)
    {
        using var temp = new TempDir();
        string tree = Publish(temp);
        string list = Path.Combine(tree, "..", "tree.list");
        byte[] bytes = File.ReadAllBytes(list);
        File.SetAttributes(list, FileAttributes.Normal);
        File.Delete(list);
        switch (how)
        {
            case "flipped":
                // A content hash changed in the list (as one would to make a tampered file pass).
                int at = System.Text.Encoding.ASCII.GetString(bytes).IndexOf("64:", StringComparison.Ordinal) + 3;
                bytes[at] = (byte)(bytes[at] == (byte)'0' ? '1' : '0');
                File.WriteAllBytes(list, bytes);
                break;
            case "foreign":
                // Another layer's list: well formed, the hash of another id.
                Directory.CreateDirectory(temp.File("other"));
                File.WriteAllText(temp.File("other/x"), "x");
                using (LayerStore writer = LayerStore.Open(temp.File("store"), StoreTrees.Options("writer")))
                {
                    StoreLayer other = writer.PublishDirectory(temp.File("other"));
                    File.Copy(Path.Combine(other.Directory, "..", "tree.list"), list);
                }
                break;
            case "link":
                File.WriteAllBytes(temp.File("outside"), bytes);
                File.CreateSymbolicLink(list, temp.File("outside"));
                break;
            default:
                File.WriteAllBytes(list, bytes[..(bytes.Length / 2)]);
                break;
        }
        // Not trusted, and a sign of damage or tampering on the share: the layer is refused (a lazy use falls back
        // to a whole verification, which checks the list too), and so does bcow store verify (VerifyLayer).
        var log = new List<string>();
        using LayerStore store = LayerStore.Open(temp.File("store"), new LayerStoreOptions { HostId = "reader", VerifyFilesAtFirstRead = true });
        LayerStoreException refused = Assert.Throws<LayerStoreException>(() => store.OpenIndexes("app", temp.File("index"), log.Add))!;
        Assert.Multiple(() =>
        {
            Assert.That(refused.FilePath, Does.EndWith("tree.list"), refused.Message);
            Assert.That(log, Has.One.Contains("tree.list"), "the lazy verification's reason, logged");
            Assert.That(Directory.GetFiles(temp.File("index")), Is.Empty, "no record of anything");
        });
        string digest = store.FindImage("app")!.Layers[0];
        Assert.That(Assert.Throws<LayerStoreException>(() => store.VerifyLayer(digest))!.FilePath, Does.EndWith("tree.list"));
    }

    [Test]
    public void ALayerWithoutATreeListIsVerifiedWhole()
    {
        using var temp = new TempDir();
        string tree = Publish(temp);
        File.Delete(Path.Combine(tree, "..", "tree.list")); // as published before lists were written
        using var host = new Host(temp);
        Assert.That(host.Hashed, Has.Count.EqualTo(Names.Length));
        Assert.That(host.Log, Is.Empty);
        Assert.That(host.Indexes[0].ContentCheck("a"), Is.Null);
        host.Store.VerifyLayer(host.Indexes[0].Digest);
    }

    [Test]
    public void WithoutTheOptionOrWithVerifyAlwaysTheLayerIsHashedWhole()
    {
        using var temp = new TempDir();
        Publish(temp);
        using (var host = new Host(temp))
        {
            Assert.That(host.Hashed, Is.Empty);
        }
        // bcow store resolve --cache (the directories may go to kernel overlayfs): a lazy record is not enough.
        using (var plain = new Host(temp, lazy: false))
        {
            Assert.That(plain.Hashed, Has.Count.EqualTo(Names.Length));
            Assert.That(plain.Log, Has.One.Contains("verified whole now"));
        }
        using (var always = new Host(temp, reverify: true))
        {
            Assert.That(always.Hashed, Has.Count.EqualTo(Names.Length));
        }
    }

    [Test]
    public void TheRecordOfVerifiedFilesSurvivesARestartAndADamagedRecordIsNeverTrusted()
    {
        using var temp = new TempDir();
        Publish(temp);
        using (var first = new Host(temp))
        {
            first.Read("a");
            first.Read("d/e");
            first.Read("g");
        }
        string record = Directory.GetFiles(temp.File("cache/index"), "*.verified").Single();

        // A restart (new store instance, new cache: nothing cached) trusts the record: those files are not verified again.
        using (var second = new Host(temp, cacheName: "cache2"))
        {
            Assert.That(second.Hashed, Is.Empty);
        }
        File.Copy(record, temp.File("cache2/index/" + Path.GetFileName(record)), overwrite: true);
        using (var second = new Host(temp, cacheName: "cache2"))
        {
            Assert.That(second.Indexes[0].Lazy!.VerifiedFiles, Is.EqualTo(3));
            Assert.That(new[] { "a", "d/e", "g" }.Select(second.Indexes[0].ContentCheck), Is.All.Null);
            second.Read("a");
            Assert.That(second.Cache.Status.FetchedBytes, Is.EqualTo(1000), "read as a verified file: only what is asked");
        }

        byte[] good = File.ReadAllBytes(record);
        // One record damaged (a bit of its check flipped): that file is verified again, the others still trusted.
        byte[] damaged = (byte[])good.Clone();
        damaged[^1] ^= 1;
        File.WriteAllBytes(record, damaged);
        using (var host = new Host(temp))
        {
            Assert.That(host.Indexes[0].Lazy!.VerifiedFiles, Is.EqualTo(2));
        }
        // A crash in the middle of writing the last record (torn): the same; and the next record written over it.
        File.WriteAllBytes(record, good[..^5]);
        using (var host = new Host(temp))
        {
            Assert.That(host.Indexes[0].Lazy!.VerifiedFiles, Is.EqualTo(2));
            host.Read("b");
        }
        using (var host = new Host(temp))
        {
            Assert.That(host.Indexes[0].Lazy!.VerifiedFiles, Is.EqualTo(3), "a, d/e and b");
        }
        // A record of another index (the index made again: another publication, a changed root) is not trusted.
        byte[] foreign = File.ReadAllBytes(record);
        foreign["baoverlay-verified/1\n".Length] ^= 1;
        File.WriteAllBytes(record, foreign);
        using (var host = new Host(temp))
        {
            Assert.That(host.Indexes[0].Lazy!.VerifiedFiles, Is.Zero);
        }
        // Garbage: not trusted, started anew.
        File.WriteAllBytes(record, RandomNumberGenerator.GetBytes(200));
        using (var host = new Host(temp))
        {
            Assert.That(host.Indexes[0].Lazy!.VerifiedFiles, Is.Zero);
            Assert.That(host.Read("a"), Has.Length.EqualTo(1000));
        }
    }

    [Test]
    public void AnOverlayRefusesALazyIndexForALayerItDoesNotReadThroughTheCache()
    {
        using var temp = new TempDir();
        Publish(temp);
        using LayerStore store = LayerStore.Open(temp.File("store"), new LayerStoreOptions { HostId = "reader", VerifyFilesAtFirstRead = true });
        IReadOnlyList<LayerIndex> indexes = store.OpenIndexes("app", temp.File("index"));
        Assert.Throws<ArgumentException>(() => OverlayFileSystem.Open(new OverlayOptions
        {
            LowerDirectories = store.ResolveLowerDirectories("app"),
            LowerIndexes = indexes,
        }));
    }

    private static void Restore(string file, in Stat before) =>
        Assert.That(Syscall.utimensat(Syscall.AT_FDCWD, file,
            [new Timespec { tv_sec = before.st_atime, tv_nsec = before.st_atime_nsec }, new Timespec { tv_sec = before.st_mtime, tv_nsec = before.st_mtime_nsec }], 0), Is.Zero);
}

/// <summary>
/// Lazy verification through a real network file system: a store served by sshd on 127.0.0.1, mounted with sshfs
/// (no extended attributes: the metadata walk is checked against the portable digest recomputed from the tree list).
/// </summary>
[TestFixture]
public class LazyVerificationSshfsTests
{
    [Test]
    public void OverSshfsTheFirstUseReadsNoContentAStartFetchesWhatItReadsAndAChangedFileIsRefused()
    {
        using var temp = new TempDir();
        Directory.CreateDirectory(temp.File("layer/usr/lib"));
        var contents = new Dictionary<string, byte[]>();
        for (int i = 0; i < 8; i++)
        {
            string name = $"usr/lib/lib{i}.so";
            contents[name] = CacheTesting.Bytes(20_000 + (i * 150_000), i);
            File.WriteAllBytes(temp.File("layer/" + name), contents[name]);
        }
        string local = temp.File("store");
        string tree;
        using (LayerStore writer = LayerStore.Create(local, StoreTrees.Options("writer")))
        {
            StoreLayer layer = writer.PublishDirectory(temp.File("layer"));
            writer.PublishImage("app", [layer.Digest]);
            tree = layer.Directory;
        }
        using SshfsStore share = SshfsStore.Start(local, SshfsStore.BoundedConnectionOptions);
        var hashed = new ConcurrentQueue<string>();
        var log = new List<string>();
        using LayerStore reader = LayerStore.Open(share.MountPoint, new LayerStoreOptions
        {
            HostId = "hostB",
            VerifyFilesAtFirstRead = true,
            ContentReadHook = hashed.Enqueue,
        });
        IReadOnlyList<LayerIndex> indexes = reader.OpenIndexes("app", temp.File("cache/index"), log.Add);
        Assert.That(hashed, Is.Empty, "no file content read through the share to verify the layer");
        Assert.That(log, Is.Empty);

        // Changed on the file server after this host's check, with its size and times kept.
        string victim = Path.Combine(tree, "usr/lib/lib3.so");
        Assert.That(Syscall.lstat(victim, out Stat before), Is.Zero);
        byte[] changed = (byte[])contents["usr/lib/lib3.so"].Clone();
        changed[^1] ^= 0xFF;
        File.WriteAllBytes(victim, changed);
        Assert.That(Syscall.utimensat(Syscall.AT_FDCWD, victim,
            [new Timespec { tv_sec = before.st_atime, tv_nsec = before.st_atime_nsec }, new Timespec { tv_sec = before.st_mtime, tv_nsec = before.st_mtime_nsec }], 0), Is.Zero);

        using StoreLease lease = reader.LeaseImage("app");
        Assert.That(hashed, Is.Empty, "nor by the lease");
        using var cache = new ZoneCache(new ZoneCacheOptions { Directory = temp.File("cache"), Log = log.Add });
        using OverlayFileSystem fs = OverlayFileSystem.Open(new OverlayOptions
        {
            LowerDirectories = reader.ResolveLowerDirectories("app"),
            LowerIndexes = indexes,
            LowerCache = cache,
        });
        foreach (string name in new[] { "usr/lib/lib1.so", "usr/lib/lib6.so" })
        {
            Assert.That(IndexedStoreOutageTests.ReadWhole(fs, name), Is.EqualTo(contents[name]), name);
        }
        Assert.Multiple(() =>
        {
            Assert.That(cache.Status.StoreOpens, Is.EqualTo(2), "the two files read, and no other");
            Assert.That(cache.Status.FetchedBytes, Is.EqualTo(contents["usr/lib/lib1.so"].Length + contents["usr/lib/lib6.so"].Length), "each fetched once");
        });
        IOException error = Assert.Catch<IOException>(() => IndexedStoreOutageTests.ReadWhole(fs, "usr/lib/lib3.so"))!;
        Assert.That(OverlayException.ErrnoOf(error, out _), Is.EqualTo(OverlayErrno.EIO));
        Assert.That(log, Has.One.Contains("tree/usr/lib/lib3.so").And.Contains("refused"));
        Assert.That(cache.Status.State, Is.EqualTo(StoreState.Healthy));
    }
}

/// <summary>Random reads of a lazily verified layer against a shadow, some files changed on the share; and the tree
/// list parser given hostile lists (as a hostile publisher would write them: their hash is their id).</summary>
[TestFixture]
public class LazyVerificationModelTests
{
    [Test]
    public void RandomReadsGiveTheLayersBytesOrEioForTheChangedFilesOnly()
    {
        int seed = Environment.GetEnvironmentVariable("BAOVERLAY_LAZY_VERIFY_SEED") is { } s ? int.Parse(s, System.Globalization.CultureInfo.InvariantCulture) : Random.Shared.Next();
        TestContext.Progress.WriteLine($"seed {seed} (BAOVERLAY_LAZY_VERIFY_SEED={seed} replays)");
        var random = new Random(seed);
        using var temp = new TempDir();
        Directory.CreateDirectory(temp.File("layer"));
        var shadow = new Dictionary<string, byte[]>();
        for (int i = 0; i < 12; i++)
        {
            int size = random.Next(4) switch { 0 => 0, 1 => random.Next(1, 5000), 2 => random.Next(5000, 300_000), _ => random.Next(1 << 20, (5 << 20) + 1000) };
            shadow[$"f{i}"] = CacheTesting.Bytes(size, random.Next());
            File.WriteAllBytes(temp.File($"layer/f{i}"), shadow[$"f{i}"]);
        }
        string tree;
        using (LayerStore writer = LayerStore.Create(temp.File("store"), StoreTrees.Options("writer")))
        {
            StoreLayer layer = writer.PublishDirectory(temp.File("layer"));
            writer.PublishImage("app", [layer.Digest]);
            tree = layer.Directory;
        }
        var changed = new HashSet<string>();
        for (int round = 0; round < 3; round++)
        {
            // Each round a new host process (store instance, overlay, cache over the same directory); between rounds a
            // file not read yet may be changed on the share, its size and times kept.
            var log = new List<string>();
            using LayerStore store = LayerStore.Open(temp.File("store"), new LayerStoreOptions { HostId = "reader", VerifyFilesAtFirstRead = true });
            IReadOnlyList<LayerIndex> indexes = store.OpenIndexes("app", temp.File("cache/index"), log.Add);
            string victim = $"f{random.Next(12)}";
            if (shadow[victim].Length > 0 && indexes[0].ContentCheck(victim) is not null && changed.Add(victim))
            {
                string path = Path.Combine(tree, victim);
                Assert.That(Syscall.lstat(path, out Stat before), Is.Zero);
                byte[] bytes = (byte[])shadow[victim].Clone();
                bytes[random.Next(bytes.Length)] ^= (byte)random.Next(1, 256);
                File.WriteAllBytes(path, bytes);
                Assert.That(Syscall.utimensat(Syscall.AT_FDCWD, path,
                    [new Timespec { tv_sec = before.st_atime, tv_nsec = before.st_atime_nsec }, new Timespec { tv_sec = before.st_mtime, tv_nsec = before.st_mtime_nsec }], 0), Is.Zero);
            }
            using var cache = new ZoneCache(new ZoneCacheOptions { Directory = temp.File("cache"), ZoneSize = 64 << 10, Log = log.Add });
            using OverlayFileSystem fs = OverlayFileSystem.Open(new OverlayOptions
            {
                LowerDirectories = store.ResolveLowerDirectories("app"),
                LowerIndexes = indexes,
                LowerCache = cache,
            });
            for (int op = 0; op < 40; op++)
            {
                string name = $"f{random.Next(12)}";
                byte[] expected = shadow[name];
                ulong ino = fs.Lookup(OverlayFileSystem.RootIno, name).Ino;
                using OverlayHandle handle = fs.Open(ino, write: false, truncate: false);
                long offset = expected.Length == 0 ? 0 : random.NextInt64(expected.Length + 10);
                byte[] buffer = new byte[random.Next(1, 200_000)];
                int n;
                try
                {
                    n = handle.Read(buffer, offset);
                }
                catch (IOException e)
                {
                    Assert.That(changed, Does.Contain(name), $"seed {seed} round {round}: {name} at {offset}: {e.Message}");
                    Assert.That(OverlayException.ErrnoOf(e, out _), Is.EqualTo(OverlayErrno.EIO));
                    continue;
                }
                int want = (int)Math.Clamp(expected.Length - offset, 0, buffer.Length);
                Assert.That(n, Is.EqualTo(want), $"seed {seed} round {round}: {name} at {offset}");
                Assert.That(buffer.AsSpan(0, n).SequenceEqual(expected.AsSpan((int)Math.Min(offset, expected.Length), n)), $"seed {seed} round {round}: {name} at {offset}: the layer's bytes");
                // A changed file read right: only if it was verified (and recorded) before it was changed.
                Assert.That(!changed.Contains(name) || n == 0, $"seed {seed}: {name} was changed after its check and read without EIO");
            }
            Assert.That(cache.Status.State, Is.EqualTo(StoreState.Healthy));
            foreach (string line in log.Where(l => l.Contains("refused")))
            {
                Assert.That(changed.Any(c => line.Contains("/tree/" + c + ":")), line);
            }
        }
    }

    [Test]
    public void AHostileTreeListIsRefusedWithTheFileNamedNeverAnotherError()
    {
        int seed = Environment.GetEnvironmentVariable("BAOVERLAY_LIST_SEED") is { } s ? int.Parse(s, System.Globalization.CultureInfo.InvariantCulture) : Random.Shared.Next();
        TestContext.Progress.WriteLine($"seed {seed} (BAOVERLAY_LIST_SEED={seed} replays)");
        var random = new Random(seed);
        using var temp = new TempDir();
        StoreTrees.MakePlain(temp.File("layer"), "content");
        File.WriteAllText(temp.File("layer/d/g"), "more");
        LayerManifest manifest;
        byte[] list;
        using (LayerStore writer = LayerStore.Create(temp.File("store"), StoreTrees.Options("writer")))
        {
            StoreLayer layer = writer.PublishDirectory(temp.File("layer"));
            list = File.ReadAllBytes(Path.Combine(layer.Directory, "..", "tree.list"));
            manifest = new LayerManifest(layer.Digest, layer.PortableDigest, null, 5, "content".Length + "more".Length, "writer", DateTimeOffset.UnixEpoch, true);
        }
        Assert.That(TreeList.Parse(list, manifest, "tree.list").ContentHash("d/f", 7), Is.Not.Null, "the real list parses");
        int refused = 0;
        for (int i = 0; i < 2000; i++)
        {
            byte[] bad = (byte[])list.Clone();
            switch (random.Next(3))
            {
                case 0:
                    bad[random.Next(bad.Length)] = (byte)random.Next(256);
                    break;
                case 1:
                    bad = bad[..random.Next(bad.Length)];
                    break;
                default:
                    int at = random.Next(bad.Length);
                    bad = [.. bad[..at], .. "9999999999:"u8.ToArray(), .. bad[at..]];
                    break;
            }
            // As a hostile publisher would: the manifest names the mutated list's own hash.
            LayerManifest named = manifest with { Digest = "sha256:" + Convert.ToHexStringLower(SHA256.HashData(bad)) };
            try
            {
                TreeList.Parse(bad, named, "tree.list");
            }
            catch (LayerStoreException e)
            {
                Assert.That(e.FilePath, Is.EqualTo("tree.list"));
                refused++;
            }
        }
        TestContext.Out.WriteLine($"{refused} of 2000 mutated lists refused");
        Assert.That(refused, Is.GreaterThan(1000));
    }
}
