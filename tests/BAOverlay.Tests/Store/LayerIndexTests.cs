using BAOverlay.Cache;
using BAOverlay.FileSystem;
using BAOverlay.Store;
using Mono.Unix.Native;

namespace BAOverlay.Tests.Store;

/// <summary>
/// A verified layer's metadata index: an overlay answering from it shows what the layer itself shows; an index read
/// back from disk that is damaged, edited, or another layer's is found out and made again, never obeyed.
/// </summary>
public class LayerIndexTests
{
    /// <summary>Two random layers (seeded): files of random sizes, directories, symbolic links; the top one hides
    /// some of the base's names with whiteouts and makes one directory opaque (as root).</summary>
    private static (LayerStore Reader, string Image) MakeStore(TempDir temp, int seed)
    {
        var random = new Random(seed);
        string baseLayer = temp.File("base");
        string topLayer = temp.File("top");
        var names = new List<string>();
        foreach (string root in new[] { baseLayer, topLayer })
        {
            Directory.CreateDirectory(root);
            for (int i = 0; i < 40; i++)
            {
                string dir = random.Next(3) switch
                {
                    0 => "",
                    1 => "usr/lib",
                    _ => $"d{random.Next(4)}/e{random.Next(3)}",
                };
                Directory.CreateDirectory(Path.Combine(root, dir));
                string path = Path.Combine(dir, $"n{random.Next(30)}");
                string full = Path.Combine(root, path);
                if (File.Exists(full) || Directory.Exists(full) || File.Exists(full + ".x"))
                {
                    continue;
                }
                switch (random.Next(5))
                {
                    case 0:
                        File.CreateSymbolicLink(full, $"target-{random.Next(100)}");
                        break;
                    default:
                        byte[] bytes = new byte[random.Next(4) == 0 ? random.Next(200_000) : random.Next(300)];
                        random.NextBytes(bytes);
                        File.WriteAllBytes(full, bytes);
                        Assert.That(Syscall.chmod(full, (FilePermissions)(uint)random.Next(0x100, 0x1FF)), Is.Zero);
                        for (int x = random.Next(4) == 0 ? random.Next(1, 3) : 0; x > 0; x--)
                        {
                            byte[] value = new byte[random.Next(40)];
                            random.NextBytes(value);
                            Assert.That(Syscall.lsetxattr(full, $"user.k{random.Next(5)}", value, XattrFlags.XATTR_AUTO), Is.Zero);
                        }
                        break;
                }
                names.Add(path);
            }
        }
        if (Syscall.geteuid() == 0)
        {
            // Whiteouts of base names in the top layer, and an opaque directory.
            foreach (string hidden in names.Where(n => File.Exists(Path.Combine(baseLayer, n)) && !File.Exists(Path.Combine(topLayer, n))).Take(5))
            {
                Directory.CreateDirectory(Path.GetDirectoryName(Path.Combine(topLayer, hidden))!);
                Assert.That(Syscall.mknod(Path.Combine(topLayer, hidden), FilePermissions.S_IFCHR, 0), Is.Zero);
            }
            Directory.CreateDirectory(Path.Combine(topLayer, "usr", "lib"));
            Assert.That(Syscall.lsetxattr(Path.Combine(topLayer, "usr", "lib"), "trusted.overlay.opaque", "y"u8.ToArray(), XattrFlags.XATTR_AUTO), Is.Zero);
        }
        using (LayerStore writer = LayerStore.Create(temp.File("store"), StoreTrees.Options("writer")))
        {
            StoreLayer b = writer.PublishDirectory(baseLayer);
            StoreLayer t = writer.PublishDirectory(topLayer);
            writer.PublishImage("app", [b.Digest, t.Digest]);
        }
        return (LayerStore.Open(temp.File("store"), StoreTrees.Options("reader")), "app");
    }

    private static OverlayFileSystem Mount(IReadOnlyList<string> lowers, IReadOnlyList<LayerIndex>? indexes, ZoneCache? cache) =>
        OverlayFileSystem.Open(new OverlayOptions { LowerDirectories = lowers, LowerIndexes = indexes, LowerCache = cache });

    /// <summary>Every object of the merged tree, by path: attributes (all but the inode number), extended attributes,
    /// link target, bytes.</summary>
    private static SortedDictionary<string, string> Walk(OverlayFileSystem fs)
    {
        var seen = new SortedDictionary<string, string>(StringComparer.Ordinal);
        void Visit(ulong ino, string path)
        {
            foreach (OverlayDirEntry entry in fs.ReadDirectory(ino))
            {
                if (entry.Name is "." or "..")
                {
                    continue;
                }
                OverlayStat st = fs.Lookup(ino, entry.Name);
                string child = path + "/" + entry.Name;
                string what = $"mode {Convert.ToString(st.Mode, 8)} uid {st.Uid} gid {st.Gid} size {st.Size} mtime {st.MTimeNs} type {entry.Type:x}" +
                    $" xattrs {string.Join(',', fs.ListXattrs(st.Ino).Order(StringComparer.Ordinal).Select(n => n + "=" + Convert.ToHexString(fs.GetXattr(st.Ino, n))))}";
                if (st.IsSymbolicLink)
                {
                    what += " -> " + fs.ReadLink(st.Ino);
                }
                else if (st.IsRegularFile)
                {
                    using OverlayHandle handle = fs.Open(st.Ino, write: false, truncate: false);
                    byte[] bytes = new byte[st.Size + 1];
                    int n = handle.Read(bytes, 0);
                    what += $" read {n} sha {Convert.ToHexString(System.Security.Cryptography.SHA256.HashData(bytes.AsSpan(0, n)))}";
                }
                seen[child] = what;
                if (st.IsDirectory)
                {
                    Visit(st.Ino, child);
                }
            }
        }
        Visit(OverlayFileSystem.RootIno, "");
        return seen;
    }

    [Test]
    public void AnOverlayAnsweringFromTheIndexShowsWhatTheLayersShow()
    {
        int seed = Environment.GetEnvironmentVariable("BAOVERLAY_INDEX_SEED") is { } s ? int.Parse(s, System.Globalization.CultureInfo.InvariantCulture) : Random.Shared.Next();
        TestContext.Progress.WriteLine($"seed {seed} (BAOVERLAY_INDEX_SEED={seed} replays)");
        using var temp = new TempDir();
        (LayerStore reader, string image) = MakeStore(temp, seed);
        using (reader)
        {
            IReadOnlyList<LayerIndex> indexes = reader.OpenIndexes(image, temp.File("index"));
            IReadOnlyList<string> lowers = reader.ResolveLowerDirectories(image);
            Assert.That(indexes.Select(i => i.Digest), Is.EqualTo(lowers.Select(l => "sha256:" + Path.GetFileName(Path.GetDirectoryName(l))![7..])));
            using var cache = new ZoneCache(new ZoneCacheOptions { Directory = temp.File("cache") });
            SortedDictionary<string, string> plain, indexed;
            using (OverlayFileSystem fs = Mount(lowers, null, null))
            {
                plain = Walk(fs);
            }
            using (OverlayFileSystem fs = Mount(lowers, indexes, cache))
            {
                indexed = Walk(fs);
                indexed = Walk(fs); // twice: the second from cached zones
            }
            Assert.That(plain, Is.Not.Empty);
            Assert.That(indexed, Is.EqualTo(plain), $"seed {seed}");
            Assert.That(plain.Values, Has.Some.Contains("user.k"), "some objects carry xattrs");

            // Answered from the index, not the layer: a mode changed behind the store's back (layers never change) is
            // not seen by lookups of the indexed overlay.
            string lowerFile = Directory.EnumerateFiles(lowers[0], "*", SearchOption.AllDirectories)
                .First(f => Syscall.lstat(f, out Stat l) == 0 && (l.st_mode & FilePermissions.S_IFMT) == FilePermissions.S_IFREG);
            string relative = Path.GetRelativePath(lowers[0], lowerFile);
            Assert.That(Syscall.lstat(lowerFile, out Stat before), Is.Zero);
            Assert.That(Syscall.chmod(lowerFile, (FilePermissions)0x1C0), Is.Zero);
            Assert.That(Syscall.lsetxattr(lowerFile, "user.added", "behind"u8.ToArray(), XattrFlags.XATTR_AUTO), Is.Zero);
            using (OverlayFileSystem fs = Mount(lowers, indexes, cache))
            {
                ulong ino = OverlayFileSystem.RootIno;
                OverlayStat st = default;
                foreach (string part in relative.Split('/'))
                {
                    st = fs.Lookup(ino, part);
                    ino = st.Ino;
                }
                Assert.That(st.Mode, Is.EqualTo((uint)before.st_mode), "the index's mode, not the changed one");
                Assert.That(fs.ListXattrs(st.Ino), Does.Not.Contain("user.added"), "the index's xattrs");
                Assert.That(fs.TryGetXattr(st.Ino, "user.added"), Is.Null);
            }
        }
    }

    [Test]
    public void AFileCopiedUpFromAnIndexedLayerKeepsItsInodeNumber()
    {
        int seed = Random.Shared.Next();
        TestContext.Progress.WriteLine($"seed {seed}");
        using var temp = new TempDir();
        (LayerStore reader, string image) = MakeStore(temp, seed);
        using (reader)
        {
            IReadOnlyList<LayerIndex> indexes = reader.OpenIndexes(image, temp.File("index"));
            IReadOnlyList<string> lowers = reader.ResolveLowerDirectories(image);
            Directory.CreateDirectory(temp.File("upper"));
            Directory.CreateDirectory(temp.File("work"));
            OverlayFileSystem Open() => OverlayFileSystem.Open(new OverlayOptions
            {
                LowerDirectories = lowers,
                LowerIndexes = indexes,
                UpperDirectory = temp.File("upper"),
                WorkDirectory = temp.File("work"),
                Log = line => TestContext.Progress.WriteLine(line),
            });
            string name = Directory.EnumerateFiles(lowers[0]).Select(Path.GetFileName).First(n => Syscall.lstat(Path.Combine(lowers[0], n!), out Stat l) == 0 &&
                (l.st_mode & FilePermissions.S_IFMT) == FilePermissions.S_IFREG)!;
            ulong before;
            using (OverlayFileSystem fs = Open())
            {
                before = fs.Lookup(OverlayFileSystem.RootIno, name).Ino;
                using OverlayHandle handle = fs.Open(before, write: true, truncate: false);
                handle.Write("changed"u8, 0);
            }
            Assert.That(File.Exists(temp.File("upper/" + name)), "copied up");
            using (OverlayFileSystem fs = Open())
            {
                Assert.That(fs.Lookup(OverlayFileSystem.RootIno, name).Ino, Is.EqualTo(before), "the number it had in the indexed layer");
            }
        }
    }

    [Test]
    public void AFileWhoseTimeChangedBehindATrustedIndexIsRefusedAndAFullVerificationMakesTheIndexAgain()
    {
        using var temp = new TempDir();
        string source = StoreTrees.MakePlain(temp.File("layer"), "content of a file");
        using (LayerStore writer = LayerStore.Create(temp.File("store"), StoreTrees.Options("writer")))
        {
            writer.PublishImage("app", [writer.PublishDirectory(source).Digest]);
        }
        string index = temp.File("index");
        string lower;
        using (LayerStore first = LayerStore.Open(temp.File("store"), StoreTrees.Options("reader")))
        {
            first.OpenIndexes("app", index);
            lower = first.ResolveLowerDirectories("app")[0];
        }
        // A file's time changed on the share behind the store (a layer is never written; the tree root's times do not
        // show a change this deep): the record is trusted, the lookup shows the index's time, and the lazy open,
        // which compares the file with the index, refuses it with EIO rather than read it as the file the cache knows.
        Assert.That(Syscall.utimes(Path.Combine(lower, "d", "f"), [new Timeval { tv_sec = 1_000_000 }, new Timeval { tv_sec = 1_000_000 }]), Is.Zero);
        var log = new List<string>();
        byte[] bytes = new byte[100];
        using (var cache = new ZoneCache(new ZoneCacheOptions { Directory = temp.File("cache") }))
        using (LayerStore second = LayerStore.Open(temp.File("store"), StoreTrees.Options("reader")))
        {
            IReadOnlyList<LayerIndex> indexes = second.OpenIndexes("app", index, log.Add);
            Assert.That(log, Is.Empty, "trusted");
            using OverlayFileSystem fs = Mount(second.ResolveLowerDirectories("app"), indexes, cache);
            OverlayStat f = fs.Lookup(fs.Lookup(OverlayFileSystem.RootIno, "d").Ino, "f");
            Assert.That(f.MTimeNs, Is.Not.EqualTo(1_000_000L * 1_000_000_000));
            using OverlayHandle handle = fs.Open(f.Ino, write: false, truncate: false);
            IOException error = Assert.Catch<IOException>(() => handle.Read(bytes, 0))!;
            Assert.That(OverlayException.ErrnoOf(error, out _), Is.EqualTo(OverlayErrno.EIO));
        }

        // A full verification (baoverlayfs -o verify=always) makes the index again from the share as it reads now.
        using (var cache = new ZoneCache(new ZoneCacheOptions { Directory = temp.File("cache") }))
        using (LayerStore third = LayerStore.Open(temp.File("store"), new LayerStoreOptions { HostId = "reader", ReverifyIndexedLayers = true }))
        {
            IReadOnlyList<LayerIndex> indexes = third.OpenIndexes("app", index, log.Add);
            Assert.That(log, Has.Some.Contains("made again"), "the verification walk saw other times");
            using OverlayFileSystem fs = Mount(third.ResolveLowerDirectories("app"), indexes, cache);
            OverlayStat f = fs.Lookup(fs.Lookup(OverlayFileSystem.RootIno, "d").Ino, "f");
            Assert.That(f.MTimeNs, Is.EqualTo(1_000_000L * 1_000_000_000));
            using OverlayHandle handle = fs.Open(f.Ino, write: false, truncate: false);
            Assert.That(System.Text.Encoding.UTF8.GetString(bytes, 0, handle.Read(bytes, 0)), Is.EqualTo("content of a file"), "the lazy open finds the file as the index says");
        }

        // A host that does not verify content compares the tree root's time.
        Assert.That(Syscall.utimes(lower, [new Timeval { tv_sec = 2_000_000 }, new Timeval { tv_sec = 2_000_000 }]), Is.Zero);
        log.Clear();
        using (LayerStore fourth = LayerStore.Open(temp.File("store"), new LayerStoreOptions { HostId = "reader", VerifyContent = false }))
        {
            fourth.OpenIndexes("app", index, log.Add);
            Assert.That(log, Has.Some.Contains("root changed"));
            log.Clear();
            fourth.OpenIndexes("app", index, log.Add);
            Assert.That(log, Is.Empty, "made again once");
        }
    }

    [Test]
    public void ADamagedEditedOrForeignIndexIsMadeAgainNeverObeyed()
    {
        int seed = Random.Shared.Next();
        TestContext.Progress.WriteLine($"seed {seed}");
        var random = new Random(seed);
        using var temp = new TempDir();
        (LayerStore reader, string image) = MakeStore(temp, seed);
        using (reader)
        {
            string dir = temp.File("index");
            var log = new List<string>();
            IReadOnlyList<LayerIndex> first = reader.OpenIndexes(image, dir, log.Add);
            Assert.That(log, Is.Empty);
            string[] files = [.. first.Select(i => Path.Combine(dir, "sha256-" + i.Digest[7..] + ".index"))];
            byte[] good = File.ReadAllBytes(files[0]);
            Assert.That(reader.OpenIndexes(image, dir, log.Add).Select(i => i.Count), Is.EqualTo(first.Select(i => i.Count)));
            Assert.That(log, Is.Empty, "a sound index is used as it is");
            StoreLayer layer = reader.FindLayer(first[0].Digest)!;
            StoreLayer other = reader.FindLayer(first[1].Digest)!;

            // Random damage: one byte flipped, or the file cut short; each is refused, and OpenIndexes makes it again.
            for (int i = 0; i < 40; i++)
            {
                byte[] bad = (byte[])good.Clone();
                if (i % 4 == 3)
                {
                    bad = bad[..random.Next(bad.Length)];
                }
                else
                {
                    bad[random.Next(bad.Length)] ^= (byte)(1 << random.Next(8));
                }
                Assert.That(LayerIndex.TryParse(bad, layer.Digest, layer.PortableDigest, out string? problem), Is.Null, $"damage {i}, seed {seed}");
                Assert.That(problem, Is.Not.Null);
            }
            File.WriteAllBytes(files[0], good[..(good.Length / 2)]);
            log.Clear();
            reader.OpenIndexes(image, dir, log.Add);
            Assert.That(log, Has.Count.EqualTo(1).And.Some.Contains("made again"));
            Assert.That(File.ReadAllBytes(files[0]), Is.EqualTo(good), "made again from the layer, the same bytes");

            // Edited with a checksum that matches (a hostile or buggy writer): the digest recomputed from the objects
            // is not the layer's.
            LayerIndex parsed = LayerIndex.TryParse(good, layer.Digest, layer.PortableDigest, out _)!;
            var objects = Enumerable.Range(0, parsed.Count).Select(p => parsed[p]).ToList();
            int victim = objects.FindIndex(o => o.Type == 'f');
            Stat changed = objects[victim].Stat;
            changed.st_mode ^= (FilePermissions)0x49; // the execute bits
            objects[victim] = objects[victim] with { Stat = changed };
            byte[] edited = LayerIndex.FromWalk(layer.Digest, parsed.Publication, parsed.XattrsRead, objects).Serialize();
            Assert.That(LayerIndex.TryParse(edited, layer.Digest, layer.PortableDigest, out string? why), Is.Null);
            Assert.That(why, Does.Contain("hash to"));
            var renamed = Enumerable.Range(0, parsed.Count).Select(p => parsed[p]).ToList();
            renamed[^1] = renamed[^1] with { Path = renamed[^1].Path + "x" };
            Assert.That(LayerIndex.TryParse(LayerIndex.FromWalk(layer.Digest, parsed.Publication, parsed.XattrsRead, renamed).Serialize(), layer.Digest, layer.PortableDigest, out _), Is.Null);

            // Another layer's index under this layer's name, and the same with its recorded digest rewritten.
            byte[] foreign = File.ReadAllBytes(files[1]);
            Assert.That(LayerIndex.TryParse(foreign, layer.Digest, layer.PortableDigest, out why), Is.Null);
            Assert.That(why, Does.Contain("made for layer"));
            LayerIndex otherIndex = LayerIndex.TryParse(foreign, other.Digest, other.PortableDigest, out _)!;
            byte[] relabelled = LayerIndex.FromWalk(layer.Digest, otherIndex.Publication, otherIndex.XattrsRead,
                [.. Enumerable.Range(0, otherIndex.Count).Select(p => otherIndex[p])]).Serialize();
            Assert.That(LayerIndex.TryParse(relabelled, layer.Digest, layer.PortableDigest, out why), Is.Null);
            Assert.That(why, Does.Contain("hash to"));
            File.WriteAllBytes(files[0], relabelled);
            log.Clear();
            IReadOnlyList<LayerIndex> again = reader.OpenIndexes(image, dir, log.Add);
            Assert.That(log, Has.Count.EqualTo(1));
            Assert.That(again[0].Count, Is.EqualTo(first[0].Count));
            Assert.That(File.ReadAllBytes(files[0]), Is.EqualTo(good));

            // Not a regular file (a symbolic link to the good one): not read, made again in its place.
            File.Delete(files[0]);
            File.CreateSymbolicLink(files[0], files[1]);
            reader.OpenIndexes(image, dir);
            Assert.That(new FileInfo(files[0]).LinkTarget, Is.Null);
            Assert.That(File.ReadAllBytes(files[0]), Is.EqualTo(good));
        }
    }
}
