using System.Formats.Tar;
using BAOverlay.Store;
using Mono.Unix.Native;

namespace BAOverlay.Tests.Store;

/// <summary>Publishing, reading, verifying and resolving layers and images; hostile stores.</summary>
[TestFixture]
public class LayerStoreTests
{
    [Test]
    public void APublishedLayerIsSeenCompleteByAnotherInstanceWithItsMetadata()
    {
        StoreTrees.RequireRoot();
        using var temp = new TempDir();
        string source = StoreTrees.MakeLayer(temp.File("src"));
        using LayerStore writer = LayerStore.Create(temp.File("store"), StoreTrees.Options("writer"));
        using LayerStore reader = LayerStore.Open(temp.File("store"), StoreTrees.Options("reader"));
        Assert.That(reader.Layers, Is.Empty);

        StoreLayer layer = writer.PublishDirectory(source);
        Assert.That(reader.Refresh(), Is.True, "the generation changed");
        StoreLayer? seen = reader.FindLayer(layer.Digest);
        Assert.That(seen, Is.Not.Null);
        string tree = seen!.Directory;
        Assert.Multiple(() =>
        {
            Assert.That(reader.Problems, Is.Empty);
            Assert.That(File.ReadAllText(Path.Combine(tree, "file.txt")), Is.EqualTo("hello from a layer"));
            Assert.That(File.ReadAllBytes(Path.Combine(tree, "etc", "big.bin")), Is.EqualTo(File.ReadAllBytes(Path.Combine(source, "etc", "big.bin"))));
            Assert.That(new FileInfo(Path.Combine(tree, "abs-link")).LinkTarget, Is.EqualTo("/etc/passwd"));
            Assert.That(Syscall.lstat(Path.Combine(tree, "deleted"), out Stat whiteout), Is.Zero);
            Assert.That(whiteout.st_mode & FilePermissions.S_IFMT, Is.EqualTo(FilePermissions.S_IFCHR));
            Assert.That(whiteout.st_rdev, Is.Zero);
            Assert.That(Syscall.lgetxattr(Path.Combine(tree, "opaque"), "trusted.overlay.opaque", out byte[] opaque), Is.EqualTo(1));
            Assert.That(opaque, Is.EqualTo("y"u8.ToArray()));
            Assert.That(Syscall.lstat(Path.Combine(tree, "file.txt"), out Stat file), Is.Zero);
            Assert.That((file.st_uid, file.st_gid), Is.EqualTo((1000u, 1001u)));
            Assert.That((uint)file.st_mode & 0xFFF, Is.EqualTo(0x1A4u | 0x800u), "mode with set-user-ID kept (set after chown)");
            Assert.That(Syscall.lgetxattr(Path.Combine(tree, "etc", "conf.d", "a.conf"), "user.note", out byte[] note), Is.EqualTo(4));
            Assert.That(seen.Entries, Is.EqualTo(StoreTrees.Listing(source).Count + 1));
            Assert.That(seen.Bytes, Is.EqualTo(18 + 4 + 300_000 + 6));
        });
        reader.VerifyLayer(layer.Digest);
    }

    [Test]
    public void TheSameTreeHasTheSameDigestAndAnyChangeToItsContentOrMetadataChangesIt()
    {
        using var temp = new TempDir();
        using LayerStore store = LayerStore.Create(temp.File("store"), StoreTrees.Options("h"));
        string a = StoreTrees.MakePlain(temp.File("a"), "x");
        string b = StoreTrees.MakePlain(temp.File("b"), "x");
        string first = store.PublishDirectory(a).Digest;
        Assert.That(store.PublishDirectory(b).Digest, Is.EqualTo(first), "same tree elsewhere, other times and inode numbers");
        var digests = new HashSet<string> { first };
        void Changed(string what, Action<string> change)
        {
            string copy = StoreTrees.MakePlain(temp.File(what), "x");
            change(copy);
            Assert.That(digests.Add(store.PublishDirectory(copy).Digest), Is.True, what);
        }
        Changed("content", d => File.WriteAllText(Path.Combine(d, "d", "f"), "y"));
        Changed("mode", d => Syscall.chmod(Path.Combine(d, "d", "f"), (FilePermissions)0x1C0));
        Changed("link", d => { File.Delete(Path.Combine(d, "l")); File.CreateSymbolicLink(Path.Combine(d, "l"), "d/g"); });
        Changed("name", d => File.Move(Path.Combine(d, "d", "f"), Path.Combine(d, "d", "g")));
        Changed("empty-dir", d => Directory.CreateDirectory(Path.Combine(d, "e")));
        Changed("xattr", d => Syscall.lsetxattr(Path.Combine(d, "d", "f"), "user.x", "1"u8.ToArray(), XattrFlags.XATTR_AUTO));
        if (Syscall.geteuid() == 0)
        {
            Changed("owner", d => Syscall.lchown(Path.Combine(d, "d", "f"), 5, 5));
        }
        Assert.That(store.Layers.Select(l => l.Digest), Is.EquivalentTo(digests));
    }

    [Test]
    public void AnImageResolvesToItsLayersHighestFirstAndTheKernelOverlayMountsThem()
    {
        StoreTrees.RequireRoot();
        using var temp = new TempDir();
        using LayerStore store = LayerStore.Create(temp.File("store"), StoreTrees.Options("h"));
        string baseDir = StoreTrees.MakePlain(temp.File("base"), "base");
        File.WriteAllText(Path.Combine(baseDir, "gone"), "removed by the top layer");
        string topDir = temp.File("top");
        Directory.CreateDirectory(Path.Combine(topDir, "d"));
        File.WriteAllText(Path.Combine(topDir, "d", "f"), "top");
        Assert.That(Syscall.mknod(Path.Combine(topDir, "gone"), FilePermissions.S_IFCHR, 0), Is.Zero);
        StoreLayer bottom = store.PublishDirectory(baseDir);
        StoreLayer top = store.PublishDirectory(topDir);
        StoreImage image = store.PublishImage("example.org/app:1", [bottom.Digest, top.Digest]);
        Assert.That(image.Names, Is.EqualTo(new[] { "example.org/app:1" }));

        using LayerStore reader = LayerStore.Open(temp.File("store"), StoreTrees.Options("r"));
        IReadOnlyList<string> lowers = reader.ResolveLowerDirectories("example.org/app:1");
        Assert.That(lowers, Is.EqualTo(new[] { top.Directory, bottom.Directory }));
        Assert.That(reader.ResolveLowerDirectories(image.Digest), Is.EqualTo(lowers));

        // The store's layer directories are plain lower directories for the kernel's overlayfs.
        string upper = temp.File("upper"), work = temp.File("work"), merged = temp.File("merged");
        Directory.CreateDirectory(upper);
        Directory.CreateDirectory(work);
        Directory.CreateDirectory(merged);
        Checks.Run("mount", $"-t overlay overlay -o lowerdir={string.Join(':', lowers)},upperdir={upper},workdir={work} {merged}");
        try
        {
            Assert.Multiple(() =>
            {
                Assert.That(File.ReadAllText(Path.Combine(merged, "d", "f")), Is.EqualTo("top"));
                Assert.That(File.ReadAllText(Path.Combine(merged, "l")), Is.EqualTo("top"));
                Assert.That(File.Exists(Path.Combine(merged, "gone")), Is.False, "the whiteout hides the base's file");
            });
            File.WriteAllText(Path.Combine(merged, "new"), "written");
        }
        finally
        {
            Checks.Run("umount", merged);
        }
        Assert.That(File.Exists(Path.Combine(top.Directory, "new")), Is.False, "the layer is never written");
        reader.VerifyLayer(top.Digest);
    }

    [Test]
    public void DamagedOrHostileLayersAreNeverExposedAndNamedInProblems()
    {
        using var temp = new TempDir();
        using LayerStore store = LayerStore.Create(temp.File("store"), StoreTrees.Options("h"));
        StoreLayer good = store.PublishDirectory(StoreTrees.MakePlain(temp.File("good"), "good"));
        string layers = temp.File("store/layers");
        string Fake(char c) => new(c, 64);
        void MakeLayer(string hex, string? manifest, bool tree = true)
        {
            string dir = Path.Combine(layers, "sha256-" + hex);
            Directory.CreateDirectory(dir);
            if (tree)
            {
                Directory.CreateDirectory(Path.Combine(dir, "tree"));
            }
            if (manifest is not null)
            {
                File.WriteAllText(Path.Combine(dir, "manifest.json"), manifest);
            }
        }
        string Manifest(string hex, bool complete = true, string entries = "1") =>
            $$"""{"schema":"baoverlay-layer/1","digest":"sha256:{{hex}}","portableDigest":"sha256:{{hex}}","entries":{{entries}},"bytes":0,"host":"x","created":"2026-01-01T00:00:00Z","complete":{{(complete ? "true" : "false")}}}""";
        MakeLayer(Fake('1'), null);                                        // no manifest: a half-made layer
        MakeLayer(Fake('2'), Manifest(Fake('2'), complete: false));        // no completion record
        MakeLayer(Fake('3'), Manifest(Fake('4')));                         // names another layer
        MakeLayer(Fake('5'), "{not json");                                 // garbage
        MakeLayer(Fake('6'), Manifest(Fake('6')), tree: false);            // no tree
        MakeLayer(Fake('7'), Manifest(Fake('7'), entries: "-5"));          // a negative size
        MakeLayer(Fake('8'), new string(' ', 70_000) + Manifest(Fake('8'))); // larger than a record may be
        Directory.CreateDirectory(Path.Combine(layers, "sha256-" + Fake('9')));
        File.CreateSymbolicLink(Path.Combine(layers, "sha256-" + Fake('9'), "manifest.json"), Path.Combine(good.Directory, "..", "manifest.json"));
        Directory.CreateDirectory(Path.Combine(layers, "sha256-" + Fake('a')));
        File.WriteAllText(Path.Combine(layers, "sha256-" + Fake('a'), "manifest.json"), Manifest(Fake('a')));
        File.CreateSymbolicLink(Path.Combine(layers, "sha256-" + Fake('a'), "tree"), "/"); // a tree that leads out
        Directory.CreateSymbolicLink(Path.Combine(layers, "sha256-" + Fake('b')), Path.GetDirectoryName(good.Directory)!); // a layer that is a link
        Directory.CreateDirectory(Path.Combine(layers, "not-a-digest"));

        using LayerStore reader = LayerStore.Open(temp.File("store"), StoreTrees.Options("r"));
        Assert.That(reader.Layers.Select(l => l.Digest), Is.EqualTo(new[] { good.Digest }));
        foreach (char c in "123567 89ab".Where(c => c != ' '))
        {
            Assert.That(reader.Problems.Any(p => p.Contains("sha256-" + Fake(c))), Is.True, $"layer {c}: {string.Join("\n", reader.Problems)}");
        }
        Assert.That(reader.Problems.Any(p => p.Contains("not-a-digest")), Is.True);
    }

    [Test]
    public void ALayerWhoseContentWasChangedOnTheShareIsRefusedWhenResolved()
    {
        using var temp = new TempDir();
        using LayerStore store = LayerStore.Create(temp.File("store"), StoreTrees.Options("h"));
        StoreLayer layer = store.PublishDirectory(StoreTrees.MakePlain(temp.File("a"), "original"));
        store.PublishImage("app", [layer.Digest]);
        File.WriteAllText(Path.Combine(layer.Directory, "d", "f"), "tampered");

        using LayerStore reader = LayerStore.Open(temp.File("store"), StoreTrees.Options("r"));
        var error = Assert.Throws<LayerStoreException>(() => reader.ResolveLowerDirectories("app"));
        Assert.That(error!.Message, Does.Contain(layer.Digest["sha256:".Length..]).And.Contain("does not match"));
        Assert.Throws<LayerStoreException>(() => reader.LeaseImage("app", renew: false));
        Assert.That(Directory.EnumerateFiles(temp.File("store/leases")), Is.Empty, "the failed lease was released");

        using LayerStore trusting = LayerStore.Open(temp.File("store"), new LayerStoreOptions { HostId = "t", VerifyContent = false });
        Assert.That(trusting.ResolveLowerDirectories("app"), Is.EqualTo(new[] { layer.Directory }), "without content verification the manifest is enough");
    }

    [Test]
    public void ImagesWithAMissingOrDamagedRecordAreNotShown()
    {
        using var temp = new TempDir();
        using LayerStore store = LayerStore.Create(temp.File("store"), StoreTrees.Options("h"));
        StoreLayer layer = store.PublishDirectory(StoreTrees.MakePlain(temp.File("a"), "a"));
        StoreImage image = store.PublishImage("app", [layer.Digest]);
        Assert.Throws<LayerStoreException>(() => store.PublishImage("other", ["sha256:" + new string('0', 64)]));
        Assert.Throws<LayerStoreException>(() => store.PublishImage("../escape", [layer.Digest]));
        string record = Path.Combine(temp.File("store/images"), "sha256-" + image.Digest[7..] + ".json");
        File.AppendAllText(record, " ");
        using LayerStore reader = LayerStore.Open(temp.File("store"), StoreTrees.Options("r"));
        Assert.That(reader.FindImage("app"), Is.Null);
        Assert.That(reader.Problems, Has.Some.Contains("damaged"));
        Assert.Throws<LayerStoreException>(() => reader.ResolveLowerDirectories("app"));
    }

    [Test]
    public void RefreshReportsAChangeOnlyWhenTheGenerationChanged()
    {
        using var temp = new TempDir();
        using LayerStore writer = LayerStore.Create(temp.File("store"), StoreTrees.Options("w"));
        using LayerStore reader = LayerStore.Open(temp.File("store"), StoreTrees.Options("r"));
        Assert.That(reader.Refresh(), Is.False);
        long before = reader.Generation;
        writer.PublishDirectory(StoreTrees.MakePlain(temp.File("a"), "a"));
        Assert.That(reader.Refresh(), Is.True);
        Assert.That(reader.Generation, Is.EqualTo(before + 1));
        Assert.That(reader.Refresh(), Is.False);
        writer.PublishDirectory(StoreTrees.MakePlain(temp.File("a2"), "a")); // already there: no new generation
        Assert.That(reader.Refresh(), Is.False);
    }

    [Test]
    public void WaitForChangeReturnsOnceAnotherInstancePublishes()
    {
        using var temp = new TempDir();
        using LayerStore writer = LayerStore.Create(temp.File("store"), StoreTrees.Options("w"));
        using LayerStore reader = LayerStore.Open(temp.File("store"), new LayerStoreOptions { HostId = "r", RefreshInterval = TimeSpan.FromMilliseconds(100) });
        Task waiting = reader.WaitForChangeAsync();
        Assert.That(waiting.IsCompleted, Is.False);
        StoreLayer layer = writer.PublishDirectory(StoreTrees.MakePlain(temp.File("a"), "a"));
        Assert.That(waiting.Wait(TimeSpan.FromSeconds(60)), Is.True);
        Assert.That(reader.FindLayer(layer.Digest), Is.Not.Null);
    }

    [Test]
    public void OpeningADirectoryThatIsNotAStoreFailsWithTheReason()
    {
        using var temp = new TempDir();
        var error = Assert.Throws<LayerStoreException>(() => LayerStore.Open(temp.Path));
        Assert.That(error!.Message, Does.StartWith(temp.Path + ": not a layer store"));
        Assert.Throws<ArgumentException>(() => LayerStore.Create(temp.File("s"), new LayerStoreOptions { HostId = "../x" }));
    }

    [Test]
    public void ATreeTooDeepToWalkSafelyIsRefusedAndAHostileDeepLayerIsNeitherExposedForUseNorACrash()
    {
        using var temp = new TempDir();
        using LayerStore store = LayerStore.Create(temp.File("store"), StoreTrees.Options("h"));
        string deep = temp.File("deep");
        string path = deep;
        for (int i = 0; i < 600; i++)
        {
            path = Path.Combine(path, "d");
        }
        Directory.CreateDirectory(path);
        var refused = Assert.Throws<LayerStoreException>(() => store.PublishDirectory(deep));
        Assert.That(refused!.Message, Does.Contain("deeper than the 500 levels"));
        Assert.That(Directory.EnumerateFileSystemEntries(temp.File("store/staging")), Is.Empty, "the deep staging copy was removed");

        // Planted on the share with a manifest that claims it: the reader lists it (the manifest is fine) but refuses it
        // for use, and a collection removes it.
        StoreLayer shallow = store.PublishDirectory(StoreTrees.MakePlain(temp.File("s"), "s"));
        string layerDirectory = Path.GetDirectoryName(shallow.Directory)!;
        Directory.Move(Path.Combine(deep, "d"), Path.Combine(shallow.Directory, "deep"));
        using LayerStore reader = LayerStore.Open(temp.File("store"), StoreTrees.Options("r"));
        Assert.Throws<LayerStoreException>(() => reader.VerifyLayer(shallow.Digest));
        Assert.Throws<LayerStoreException>(() => reader.LeaseLayers([shallow.Digest], renew: false));
        var clock = new ManualClock();
        clock.Advance(TimeSpan.FromHours(3));
        using LayerStore collector = LayerStore.Open(temp.File("store"), StoreTrees.Options("gc", clock));
        Assert.That(collector.CollectGarbage().RemovedLayers, Is.EqualTo(new[] { shallow.Digest }));
        Assert.That(Directory.Exists(layerDirectory), Is.False);
        Assert.That(Directory.EnumerateFileSystemEntries(temp.File("store/trash")), Is.Empty);
    }
}
