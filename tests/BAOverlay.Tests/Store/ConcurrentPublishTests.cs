using BAOverlay.Store;

namespace BAOverlay.Tests.Store;

/// <summary>Several writers publishing at once (the same layer and different ones) while a reader refreshes: one copy
/// of each layer, no staging left, every layer the reader ever shows complete, every publication announced.</summary>
[TestFixture]
public class ConcurrentPublishTests
{
    [Test]
    public void WritersRacingOnTheSameAndOnDifferentLayersLeaveOneCompleteCopyOfEach()
    {
        using var temp = new TempDir();
        LayerStore.Create(temp.File("store"), StoreTrees.Options("init")).Dispose();
        const int writers = 4;
        string shared = StoreTrees.MakePlain(temp.File("shared"), "the same for everyone");
        string[] own = Enumerable.Range(0, writers).Select(i => StoreTrees.MakePlain(temp.File($"own{i}"), $"writer {i}")).ToArray();
        using var stop = new CancellationTokenSource();
        var seen = new HashSet<string>();
        Task reader = Task.Run(() =>
        {
            using LayerStore store = LayerStore.Open(temp.File("store"), StoreTrees.Options("reader"));
            while (!stop.IsCancellationRequested)
            {
                store.Refresh();
                Assert.That(store.Problems, Is.Empty);
                foreach (StoreLayer layer in store.Layers.Where(l => seen.Add(l.Digest)))
                {
                    store.VerifyLayer(layer.Digest); // complete when first shown
                }
            }
        });
        var results = new string[writers][];
        Parallel.For(0, writers, i =>
        {
            using LayerStore store = LayerStore.Open(temp.File("store"), StoreTrees.Options($"w{i}"));
            results[i] = [store.PublishDirectory(shared).Digest, store.PublishDirectory(own[i]).Digest];
        });
        stop.Cancel();
        reader.Wait();

        Assert.That(results.Select(r => r[0]).Distinct().Count(), Is.EqualTo(1), "one digest for the shared tree");
        using LayerStore check = LayerStore.Open(temp.File("store"), StoreTrees.Options("check"));
        Assert.That(check.Layers, Has.Count.EqualTo(writers + 1));
        Assert.That(Directory.EnumerateDirectories(temp.File("store/layers")).Count(), Is.EqualTo(writers + 1));
        Assert.That(Directory.EnumerateFileSystemEntries(temp.File("store/staging")), Is.Empty, "losers removed their staging");
        // Writers bumping at once may write the same number (read, add one, rename); the random token still makes each
        // bump a change readers see, so the number only says "changed", not how often.
        Assert.That(check.Generation, Is.InRange(1, writers + 1));
        foreach (StoreLayer layer in check.Layers)
        {
            check.VerifyLayer(layer.Digest);
        }
    }
}
