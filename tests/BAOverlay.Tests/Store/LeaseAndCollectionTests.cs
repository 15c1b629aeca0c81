using BAOverlay.Store;
using Mono.Unix.Native;

namespace BAOverlay.Tests.Store;

/// <summary>Leases and garbage collection, with a clock the test moves: a leased layer survives, an expired lease
/// stops protecting, young unreferenced layers and staging are kept, old ones removed.</summary>
[TestFixture]
public class LeaseAndCollectionTests
{
    private static readonly TimeSpan Lease = TimeSpan.FromMinutes(5);
    private static readonly TimeSpan Margin = TimeSpan.FromMinutes(1);
    private static readonly TimeSpan Grace = TimeSpan.FromHours(1);

    private static LayerStoreOptions Options(string host, ManualClock clock) => new()
    {
        HostId = host,
        TimeProvider = clock,
        LeaseDuration = Lease,
        ClockSkewMargin = Margin,
        GracePeriod = Grace,
        StagingAge = Grace,
    };

    [Test]
    public void ALeasedLayerSurvivesCollectionAfterItsImageIsDeletedAndGoesOnceTheLeaseExpires()
    {
        using var temp = new TempDir();
        var clock = new ManualClock();
        using LayerStore writer = LayerStore.Create(temp.File("store"), Options("writer", clock));
        StoreLayer layer = writer.PublishDirectory(StoreTrees.MakePlain(temp.File("a"), "a"));
        writer.PublishImage("app", [layer.Digest]);

        // Host B runs the image: it holds a lease (not renewed: host B is about to die).
        using LayerStore hostB = LayerStore.Open(temp.File("store"), Options("hostB", clock));
        StoreLease lease = hostB.LeaseImage("app", renew: false);
        Assert.That(File.Exists(temp.File($"store/leases/{lease.Id}.json")), Is.True);

        // The image is deleted on the writer; long after, a collection runs there.
        Assert.That(writer.DeleteName("app"), Is.True);
        clock.Advance(Grace + Margin + TimeSpan.FromMinutes(1));
        lease.Renew(); // host B is alive and renews
        StoreCollectionResult first = writer.CollectGarbage();
        Assert.Multiple(() =>
        {
            Assert.That(first.RemovedLayers, Is.Empty);
            Assert.That(first.KeptForLeases, Is.EqualTo(new[] { layer.Digest }));
            Assert.That(first.RemovedImages, Has.Count.EqualTo(1), "the unnamed image record is removed");
            Assert.That(Directory.Exists(layer.Directory), Is.True);
        });

        // Host B dies: its lease is not renewed. Within duration + margin it still protects...
        clock.Advance(Lease + Margin - TimeSpan.FromSeconds(1));
        Assert.That(writer.CollectGarbage().RemovedLayers, Is.Empty, "a lease protects until expiry plus the skew margin");
        // ...after, it does not.
        clock.Advance(TimeSpan.FromSeconds(2));
        StoreCollectionResult second = writer.CollectGarbage();
        Assert.Multiple(() =>
        {
            Assert.That(second.RemovedLayers, Is.EqualTo(new[] { layer.Digest }));
            Assert.That(second.RemovedLeases, Is.EqualTo(new[] { lease.Id }));
            Assert.That(Directory.Exists(Path.GetDirectoryName(layer.Directory)), Is.False);
            Assert.That(Directory.EnumerateFileSystemEntries(temp.File("store/trash")), Is.Empty);
        });
        using LayerStore reader = LayerStore.Open(temp.File("store"), Options("r", clock));
        Assert.That(reader.Layers, Is.Empty);
        Assert.Throws<LayerStoreException>(() => hostB.LeaseLayers([layer.Digest], renew: false), "a removed layer cannot be leased");
    }

    [Test]
    public void NamedImagesKeepTheirLayersAndYoungUnreferencedLayersAreKeptForTheGracePeriod()
    {
        using var temp = new TempDir();
        var clock = new ManualClock();
        using LayerStore store = LayerStore.Create(temp.File("store"), Options("h", clock));
        StoreLayer named = store.PublishDirectory(StoreTrees.MakePlain(temp.File("a"), "a"));
        store.PublishImage("app", [named.Digest]);
        StoreLayer loose = store.PublishDirectory(StoreTrees.MakePlain(temp.File("b"), "b"));

        Assert.That(store.CollectGarbage().RemovedLayers, Is.Empty, "a young unreferenced layer is kept: its image may be on its way");
        clock.Advance(Grace + Margin + TimeSpan.FromMinutes(1));
        StoreCollectionResult result = store.CollectGarbage();
        Assert.That(result.RemovedLayers, Is.EqualTo(new[] { loose.Digest }));
        Assert.That(store.FindLayer(named.Digest), Is.Not.Null);
        Assert.That(store.ResolveLowerDirectories("app"), Is.EqualTo(new[] { named.Directory }));
    }

    [Test]
    public void ACrashedWritersStagingIsRemovedByAgeAndALiveOneIsKept()
    {
        using var temp = new TempDir();
        var clock = new ManualClock();
        using LayerStore store = LayerStore.Create(temp.File("store"), Options("h", clock));
        string crashed = temp.File("store/staging/other.123.0123456789abcdef");
        Directory.CreateDirectory(Path.Combine(crashed, "tree", "half"));
        File.WriteAllText(Path.Combine(crashed, "tree", "half", "made"), "x");
        Syscall.chmod(Path.Combine(crashed, "tree", "half"), (FilePermissions)0x16D); // a read-only directory inside
        File.WriteAllText(temp.File("store/staging/other.0123456789abcdef.tmp"), "a record never renamed");

        Assert.That(store.CollectGarbage().RemovedStaging, Is.Empty, "young staging may be a live writer's");
        clock.Advance(Grace + Margin + TimeSpan.FromMinutes(1));
        StoreCollectionResult result = store.CollectGarbage();
        Assert.That(result.RemovedStaging, Is.EquivalentTo(new[] { "other.123.0123456789abcdef", "other.0123456789abcdef.tmp" }));
        Assert.That(Directory.EnumerateFileSystemEntries(temp.File("store/staging")), Is.Empty);
    }

    [Test]
    public void AnUnreadableLeaseKeepsEveryLayerWhileYoungAndIsRemovedWhenOld()
    {
        using var temp = new TempDir();
        var clock = new ManualClock();
        using LayerStore store = LayerStore.Create(temp.File("store"), Options("h", clock));
        StoreLayer layer = store.PublishDirectory(StoreTrees.MakePlain(temp.File("a"), "a"));
        File.WriteAllText(temp.File("store/leases/dead.0123456789abcdef.json"), "{ truncated");
        clock.Advance(Grace / 2 + Margin);
        // Old enough to collect the layer if the lease were not there... but the lease is young.
        var options = Options("h", clock);
        using LayerStore gc = LayerStore.Open(temp.File("store"), new LayerStoreOptions
        {
            HostId = "h", TimeProvider = clock, LeaseDuration = Lease, ClockSkewMargin = Margin, GracePeriod = TimeSpan.FromMinutes(1), StagingAge = Grace,
        });
        StoreCollectionResult young = gc.CollectGarbage();
        Assert.That(young.RemovedLayers, Is.Empty);
        Assert.That(young.Problems, Has.Some.Contains("dead.0123456789abcdef.json"));
        clock.Advance(Grace);
        StoreCollectionResult old = gc.CollectGarbage();
        Assert.That(old.RemovedLayers, Is.EqualTo(new[] { layer.Digest }));
        Assert.That(File.Exists(temp.File("store/leases/dead.0123456789abcdef.json")), Is.False);
        _ = options;
    }

    [Test]
    public void AHeldLeaseRenewsItselfAndReleasingRemovesItsRecord()
    {
        using var temp = new TempDir();
        using LayerStore store = LayerStore.Create(temp.File("store"), new LayerStoreOptions { HostId = "h", LeaseDuration = TimeSpan.FromMilliseconds(300) });
        StoreLayer layer = store.PublishDirectory(StoreTrees.MakePlain(temp.File("a"), "a"));
        StoreLease lease = store.LeaseLayers([layer.Digest]);
        DateTimeOffset first = lease.Expires;
        string record = temp.File($"store/leases/{lease.Id}.json");
        Assert.That(File.Exists(record), Is.True);
        SpinWait.SpinUntil(() => lease.Expires > first, TimeSpan.FromSeconds(30));
        Assert.That(lease.Expires, Is.GreaterThan(first), "renewed by its timer");
        Assert.That(lease.RenewalError, Is.Null);
        lease.Dispose();
        Assert.That(File.Exists(record), Is.False);
        lease.Dispose();
        Assert.Throws<ObjectDisposedException>(lease.Renew);
    }

    [Test]
    public void ALeaseTakenWhileCollectionMovesTheLayerAwayEitherKeepsItOrFails()
    {
        // The race the trash step closes, played both ways by hand.
        using var temp = new TempDir();
        var clock = new ManualClock();
        using LayerStore store = LayerStore.Create(temp.File("store"), Options("h", clock));
        StoreLayer layer = store.PublishDirectory(StoreTrees.MakePlain(temp.File("a"), "a"));
        string layerDirectory = Path.GetDirectoryName(layer.Directory)!;
        string trashed = temp.File("store/trash/moved");

        // The collector moved it to trash; a host leasing now finds it gone and fails (and releases its lease).
        Directory.Move(layerDirectory, trashed);
        using LayerStore host = LayerStore.Open(temp.File("store"), Options("host", clock));
        Assert.Throws<LayerStoreException>(() => host.LeaseLayers([layer.Digest], renew: false));
        Assert.That(Directory.EnumerateFiles(temp.File("store/leases")), Is.Empty);
        Directory.Move(trashed, layerDirectory);

        // A lease written before the collector's second reading of the leases keeps the layer.
        using StoreLease lease = host.LeaseLayers([layer.Digest], renew: false);
        clock.Advance(Grace + Margin + TimeSpan.FromMinutes(1));
        lease.Renew();
        StoreCollectionResult result = store.CollectGarbage();
        Assert.That(result.RemovedLayers, Is.Empty);
        Assert.That(Directory.Exists(layer.Directory), Is.True);
    }
}
