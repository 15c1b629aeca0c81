using BAOverlay.Store;

namespace BAOverlay.Tests.Store;

/// <summary>
/// A writer stopped after every step of a publication: a reader (a fresh instance, as another host) sees either no
/// layer or the complete, verified one, never a part; and what a dead writer leaves is removed by garbage collection.
/// In-process here (the step hook throws, as an error at that point would); <see cref="PublishKillTests"/> kills a real
/// writer process at each step.
/// </summary>
[TestFixture]
public class PublishCrashTests
{
    private sealed class StopHere : Exception;

    [Test]
    public void AWriterStoppedAfterEachStepNeverExposesAPartialLayer([Range(0, 8)] int step)
    {
        var stopAfter = (PublishStep)step;
        Assert.That(Enum.GetValues<PublishStep>(), Has.Length.EqualTo(9), "one case per step");
        using var temp = new TempDir();
        string source = StoreTrees.MakePlain(temp.File("src"), "content");
        LayerStore.Create(temp.File("store"), StoreTrees.Options("w")).Dispose();
        using LayerStore reader = LayerStore.Open(temp.File("store"), StoreTrees.Options("r"));
        var seenAt = new List<(PublishStep Step, int Layers)>();
        using LayerStore writer = LayerStore.Open(temp.File("store"), new LayerStoreOptions
        {
            HostId = "w",
            PublishStepHook = step =>
            {
                // At every step, a reader sees nothing or the whole layer.
                using LayerStore fresh = LayerStore.Open(temp.File("store"), StoreTrees.Options("r2"));
                foreach (StoreLayer layer in fresh.Layers)
                {
                    fresh.VerifyLayer(layer.Digest);
                }
                seenAt.Add((step, fresh.Layers.Count));
                if (step == stopAfter)
                {
                    throw new StopHere();
                }
            },
        });
        Assert.Throws<StopHere>(() => writer.PublishDirectory(source));
        Assert.That(seenAt.Where(s => s.Step < PublishStep.Renamed).All(s => s.Layers == 0), Is.True, "no layer before the rename");
        Assert.That(seenAt.Where(s => s.Step >= PublishStep.Renamed).All(s => s.Layers == 1), Is.True, "the whole layer after it");

        reader.Refresh(force: true);
        Assert.That(reader.Problems, Is.Empty);
        if (stopAfter >= PublishStep.Renamed)
        {
            StoreLayer layer = reader.Layers.Single();
            reader.VerifyLayer(layer.Digest);
            Assert.That(File.ReadAllText(Path.Combine(layer.Directory, "d", "f")), Is.EqualTo("content"));
            // Published with the layer: its tree list, whose sha256 is the layer's id.
            byte[] list = File.ReadAllBytes(Path.Combine(layer.Directory, "..", "tree.list"));
            Assert.That("sha256:" + Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(list)), Is.EqualTo(layer.Digest));
        }
        else
        {
            Assert.That(reader.Layers, Is.Empty);
            Assert.That(Directory.EnumerateFileSystemEntries(temp.File("store/staging")), Is.Empty, "a failed publication removes its staging");
        }
        // Publishing again completes.
        using LayerStore again = LayerStore.Open(temp.File("store"), StoreTrees.Options("w"));
        StoreLayer published = again.PublishDirectory(source);
        reader.Refresh(force: true);
        Assert.That(reader.FindLayer(published.Digest), Is.Not.Null);
    }
}
