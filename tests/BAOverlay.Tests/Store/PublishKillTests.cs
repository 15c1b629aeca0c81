using System.Diagnostics;
using BAOverlay.Store;
using BAOverlay.Tool;
using BAOverlay.Tool.Commands;

namespace BAOverlay.Tests.Store;

/// <summary>
/// A real writer process (<c>bcow store publish</c>) killed with SIGKILL after each step of a publication: no cleanup
/// runs, as when a host dies. A reader then sees no layer or the complete, verified one; garbage collection removes the
/// dead writer's staging once it is older than the staging age, and publishing again succeeds.
/// </summary>
[TestFixture]
public class PublishKillTests
{
    [Test]
    public void AWriterKilledAfterEachStepLeavesNoPartialLayerAndItsStagingIsCollectedByAge([Range(0, 8)] int step)
    {
        var stopAfter = (PublishStep)step;
        using var temp = new TempDir();
        string source = StoreTrees.MakePlain(temp.File("src"), "killed writer");
        File.WriteAllBytes(Path.Combine(source, "d", "big"), new byte[3 << 20]);
        LayerStore.Create(temp.File("store"), StoreTrees.Options("w")).Dispose();

        (int exit, string error) = RunBcow(stopAfter, "store", "publish", "--host", "w", temp.File("store"), source);
        Assert.That(exit, Is.EqualTo(137), $"killed by SIGKILL after {stopAfter}: {error}");

        var clock = new ManualClock();
        using LayerStore reader = LayerStore.Open(temp.File("store"), new LayerStoreOptions { HostId = "r", TimeProvider = clock });
        Assert.That(reader.Problems, Is.Empty, "nothing half-made is even looked at");
        if (stopAfter >= PublishStep.Renamed)
        {
            StoreLayer layer = reader.Layers.Single();
            reader.VerifyLayer(layer.Digest);
            Assert.That(File.ReadAllText(Path.Combine(layer.Directory, "d", "f")), Is.EqualTo("killed writer"));
            byte[] list = File.ReadAllBytes(Path.Combine(layer.Directory, "..", "tree.list"));
            Assert.That("sha256:" + Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(list)), Is.EqualTo(layer.Digest), "the tree list published with the layer");
        }
        else
        {
            Assert.That(reader.Layers, Is.Empty);
            Assert.That(Directory.EnumerateFileSystemEntries(temp.File("store/staging")), Is.Not.Empty, "the dead writer's staging is left");
        }
        Assert.That(reader.Images, Is.Empty, "the image comes after its layers");

        // Young staging may be a live writer's: kept. Past the staging age: removed.
        Assert.That(reader.CollectGarbage().RemovedStaging, Is.Empty);
        clock.Advance(TimeSpan.FromHours(1) + TimeSpan.FromMinutes(2));
        reader.CollectGarbage();
        Assert.That(Directory.EnumerateFileSystemEntries(temp.File("store/staging")), Is.Empty);

        using LayerStore writer = LayerStore.Open(temp.File("store"), StoreTrees.Options("w"));
        StoreLayer again = writer.PublishDirectory(source);
        reader.Refresh(force: true);
        Assert.That(reader.FindLayer(again.Digest), Is.Not.Null);
        reader.VerifyLayer(again.Digest);
    }

    private static (int Exit, string Error) RunBcow(PublishStep killAfter, params string[] args)
    {
        var start = new ProcessStartInfo(Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") ?? "dotnet")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        start.ArgumentList.Add(typeof(BcowCli).Assembly.Location);
        foreach (string arg in args)
        {
            start.ArgumentList.Add(arg);
        }
        start.Environment[StoreCommand.KillAfterVariable] = killAfter.ToString();
        using Process process = Process.Start(start)!;
        Task<string> output = process.StandardOutput.ReadToEndAsync();
        Task<string> error = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(120_000))
        {
            process.Kill();
            Assert.Fail("bcow store publish did not end in 120 s");
        }
        return (process.ExitCode, output.Result + error.Result);
    }
}
