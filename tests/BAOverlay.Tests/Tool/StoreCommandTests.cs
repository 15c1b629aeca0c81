using BAOverlay.Tests.Store;

namespace BAOverlay.Tests.Tool;

/// <summary><c>bcow store</c>: the store's actions from the command line, their output and their errors.</summary>
[TestFixture]
public class StoreCommandTests
{
    [Test]
    public void PublishListResolveLeaseRemoveAndCollectFromTheCommandLine()
    {
        using var temp = new TempDir();
        string store = temp.File("store");
        Assert.That(Bcow.Run("store", "init", store).ExitCode, Is.Zero);
        string a = StoreTrees.MakePlain(temp.File("a"), "base");
        string b = StoreTrees.MakePlain(temp.File("b"), "top");

        BcowResult published = Bcow.Run("store", "publish", "--host", "w", "--name", "example.org/app:1", store, a, b);
        Assert.That(published.ExitCode, Is.Zero, published.ToString());
        string[] lines = published.Out.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.That(lines, Has.Length.EqualTo(3));
        string baseDigest = lines[0].Split(' ')[1], topDigest = lines[1].Split(' ')[1];
        Assert.That(lines[2], Does.StartWith("image sha256:").And.EndWith(" example.org/app:1"));

        BcowResult list = Bcow.Run("store", "list", store);
        Assert.That(list.Out, Does.Contain(baseDigest + " ").And.Contain(topDigest + " "));
        BcowResult images = Bcow.Run("store", "images", store);
        Assert.That(images.Out.Trim(), Does.EndWith(" 2 example.org/app:1"));

        BcowResult resolved = Bcow.Run("store", "resolve", store, "example.org/app:1");
        Assert.That(resolved.ExitCode, Is.Zero, resolved.ToString());
        Assert.That(resolved.Out.Trim(), Is.EqualTo(
            $"{store}/layers/sha256-{topDigest[7..]}/tree:{store}/layers/sha256-{baseDigest[7..]}/tree"));

        BcowResult lease = Bcow.Run("store", "lease", "--host", "r", "--duration", "10m", store, "example.org/app:1");
        Assert.That(lease.ExitCode, Is.Zero, lease.ToString());
        string id = lease.Out.Split(' ')[0];
        Assert.That(File.Exists(Path.Combine(store, "leases", id + ".json")), Is.True);
        Assert.That(Bcow.Run("store", "rm", store, "example.org/app:1").ExitCode, Is.Zero);
        BcowResult gc = Bcow.Run("store", "gc", store);
        Assert.That(gc.ExitCode, Is.Zero, gc.ToString());
        Assert.That(Bcow.Run("store", "verify", store).Out, Does.Contain(baseDigest + " ok"));
        Assert.That(Bcow.Run("store", "release", store, id).ExitCode, Is.Zero);
        BcowResult again = Bcow.Run("store", "release", store, id);
        Assert.That((again.ExitCode, again.Error.Trim()), Is.EqualTo((1, $"bcow: {id}: no such lease")));
    }

    [Test]
    public void VerifyNamesTheLayerWhoseContentChangedAndExitsOne()
    {
        using var temp = new TempDir();
        string store = temp.File("store");
        Bcow.Run("store", "init", store);
        BcowResult published = Bcow.Run("store", "publish", store, StoreTrees.MakePlain(temp.File("a"), "a"));
        string digest = published.Out.Split('\n')[0].Split(' ')[1];
        File.WriteAllText(Path.Combine(store, "layers", "sha256-" + digest[7..], "tree", "d", "f"), "changed");
        BcowResult verify = Bcow.Run("store", "verify", store);
        Assert.That(verify.ExitCode, Is.EqualTo(1));
        Assert.That(verify.Error, Does.Contain("sha256-" + digest[7..] + "/tree: the content does not match"));
        BcowResult resolve = Bcow.Run("store", "resolve", store, digest);
        Assert.That(resolve.ExitCode, Is.EqualTo(1), "a layer digest is not an image");
    }

    [Test]
    public void WrongCommandLinesAreUsageErrors()
    {
        using var temp = new TempDir();
        Assert.Multiple(() =>
        {
            Assert.That(Bcow.Run("store").Error, Does.Contain("missing ACTION"));
            Assert.That(Bcow.Run("store", "frob", temp.Path).Error, Does.Contain("unknown action 'frob'"));
            Assert.That(Bcow.Run("store", "list").Error, Does.Contain("list: missing STORE"));
            Assert.That(Bcow.Run("store", "lease", "--duration", "soon", temp.Path, "x").Error, Does.Contain("invalid duration 'soon'"));
            Assert.That(Bcow.Run("store", "list", temp.Path).Error.Trim(), Does.EndWith(": not a layer store (no store.json; make one with LayerStore.Create or bcow store init)"));
            Assert.That(Bcow.Run("store", "--help").Out, Does.Contain("resolve STORE IMAGE"));
        });
    }
}
