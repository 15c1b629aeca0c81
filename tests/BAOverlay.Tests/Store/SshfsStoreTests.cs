using System.Diagnostics;
using BAOverlay.Store;
using Mono.Unix.Native;

namespace BAOverlay.Tests.Store;

/// <summary>The sshfs fixture itself: a real network file system on the loopback address, and its server reachable
/// by process id.</summary>
[TestFixture]
public class SshfsStoreTests
{
    [Test]
    public void FilesWrittenInTheExportedDirectoryAreReadThroughTheMount()
    {
        using var exported = new TempDir();
        using SshfsStore share = SshfsStore.Start(exported.Path);
        File.WriteAllText(exported.File("hello"), "over the network");
        Assert.Multiple(() =>
        {
            Assert.That(File.ReadAllText(Path.Combine(share.MountPoint, "hello")), Is.EqualTo("over the network"));
            Assert.That(File.ReadLines("/proc/self/mountinfo").Any(l => l.Contains(" " + share.MountPoint + " ") && l.Contains("fuse.sshfs")), Is.True,
                "the mount is sshfs");
            Assert.That(Syscall.kill(share.SshdProcessId, 0), Is.Zero, "the sshd process id is a live process");
        });
    }

    [Test]
    public void APublishOnOneHostIsSeenThroughSshfsOnAnotherOnlyOnceCompleteAndVerified()
    {
        StoreTrees.RequireRoot();
        using var temp = new TempDir();
        string source = StoreTrees.MakeLayer(temp.File("src"));
        string local = temp.File("store");
        LayerStore.Create(local, StoreTrees.Options("writer")).Dispose();
        using SshfsStore share = SshfsStore.Start(local);
        // Host B reads the store only through the network file system.
        var clock = new ManualClock();
        using LayerStore reader = LayerStore.Open(share.MountPoint, StoreTrees.Options("hostB", clock));
        var seen = new List<(PublishStep Step, int Layers, bool Changed)>();
        using LayerStore writer = LayerStore.Open(local, new LayerStoreOptions
        {
            HostId = "writer",
            PublishStepHook = step =>
            {
                using LayerStore fresh = LayerStore.Open(share.MountPoint, StoreTrees.Options("hostC"));
                Assert.That(fresh.Problems, Is.Empty, $"after {step}");
                seen.Add((step, fresh.Layers.Count, reader.Refresh()));
            },
        });
        StoreLayer layer = writer.PublishDirectory(source);
        writer.PublishImage("app", [layer.Digest]);

        Assert.That(seen.Select(s => s.Step), Is.EqualTo(Enum.GetValues<PublishStep>()));
        Assert.That(seen.Where(s => s.Step < PublishStep.Renamed).Select(s => s.Layers), Is.All.Zero, "nothing before the rename");
        Assert.That(seen.Where(s => s.Step >= PublishStep.Renamed).Select(s => s.Layers), Is.All.EqualTo(1), "the whole layer after it");
        Assert.That(seen.Single(s => s.Step == PublishStep.GenerationBumped).Changed, Is.True, "the first refresh after the bump sees it");

        // Through sshfs there are no extended attributes: the reader checks the portable digest, and the content.
        reader.Refresh();
        IReadOnlyList<string> lowers = reader.ResolveLowerDirectories("app");
        Assert.That(lowers, Is.EqualTo(new[] { Path.Combine(share.MountPoint, "layers", "sha256-" + layer.Digest[7..], "tree") }));
        Assert.That(File.ReadAllText(Path.Combine(lowers[0], "file.txt")), Is.EqualTo("hello from a layer"));
        Assert.That(new FileInfo(Path.Combine(lowers[0], "abs-link")).LinkTarget, Is.EqualTo("/etc/passwd"));

        // A lease taken through the share protects the layer from a collection on the writer, long after the image
        // was deleted.
        clock.Advance(TimeSpan.FromHours(2));
        using StoreLease lease = reader.LeaseImage("app", renew: false);
        writer.DeleteName("app");
        using LayerStore collector = LayerStore.Open(local, StoreTrees.Options("writer", clock));
        StoreCollectionResult result = collector.CollectGarbage();
        Assert.That(result.KeptForLeases, Is.EqualTo(new[] { layer.Digest }));
        Assert.That(result.RemovedLayers, Is.Empty);
    }

    [Test]
    public void AReaderWaitingThroughSshfsWakesForAPublicationOnAnotherHost()
    {
        using var temp = new TempDir();
        string local = temp.File("store");
        using LayerStore writer = LayerStore.Create(local, StoreTrees.Options("writer"));
        using SshfsStore share = SshfsStore.Start(local);
        using LayerStore reader = LayerStore.Open(share.MountPoint, StoreTrees.Options("hostB"));
        Task waiting = reader.WaitForChangeAsync();
        Assert.That(waiting.IsCompleted, Is.False);
        var clock = Stopwatch.StartNew();
        StoreLayer layer = writer.PublishDirectory(StoreTrees.MakePlain(temp.File("a"), "a"));
        Assert.That(waiting.Wait(TimeSpan.FromSeconds(60)), Is.True);
        TestContext.Out.WriteLine($"seen through sshfs {clock.ElapsedMilliseconds} ms after the publication returned (refresh interval 2 s)");
        Assert.That(reader.FindLayer(layer.Digest), Is.Not.Null);
        reader.VerifyLayer(layer.Digest);
    }

    [Test]
    public void AHostInAMountNamespaceOfItsOwnMountsTheShareItselfAndResolvesAndVerifiesTheImage()
    {
        using var temp = new TempDir();
        string local = temp.File("store");
        string digest;
        using (LayerStore writer = LayerStore.Create(local, StoreTrees.Options("writer")))
        {
            StoreLayer layer = writer.PublishDirectory(StoreTrees.MakePlain(temp.File("a"), "read on host B"));
            writer.PublishImage("app", [layer.Digest]);
            digest = layer.Digest;
        }
        using SshfsStore share = SshfsStore.Start(local);
        if (Which("unshare") is null)
        {
            Assert.Ignore("unshare (util-linux) is not installed");
        }
        // Host B: its own mount namespace (private propagation), its own sshfs mount of the share, and bcow reading the
        // store through it; the mount is gone with the namespace.
        string hostMount = temp.File("hostB-mnt");
        Directory.CreateDirectory(hostMount);
        string bcow = $"'{Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") ?? "dotnet"}' '{typeof(BAOverlay.Tool.BcowCli).Assembly.Location}'";
        string sshfs = "sshfs " + string.Join(' ', share.MountArguments(hostMount).Select(a => $"'{a}'"));
        string script = $"""
            set -e
            {sshfs}
            trap 'fusermount3 -u {hostMount}' EXIT
            grep -q ' {hostMount} ' /proc/self/mountinfo
            lower=$({bcow} store resolve --host hostB {hostMount} app)
            cat "$lower/d/f"; echo
            {bcow} store verify --host hostB {hostMount}
            """;
        var start = new ProcessStartInfo("unshare") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (string arg in new[] { "--mount", "--propagation", "private", "sh", "-c", script })
        {
            start.ArgumentList.Add(arg);
        }
        using Process process = Process.Start(start)!;
        Task<string> output = process.StandardOutput.ReadToEndAsync();
        Task<string> error = process.StandardError.ReadToEndAsync();
        Assert.That(process.WaitForExit(120_000), Is.True, "host B finished");
        Assert.That(process.ExitCode, Is.Zero, $"{output.Result}\n{error.Result}");
        Assert.That(output.Result, Does.Contain("read on host B").And.Contain($"{digest} ok"));
        Assert.That(File.ReadLines("/proc/self/mountinfo").Any(l => l.Contains(" " + hostMount + " ")), Is.False,
            "host B's mount is in its namespace only");
    }

    private static string? Which(string tool) =>
        (Environment.GetEnvironmentVariable("PATH") ?? "/usr/bin:/bin").Split(':').Select(d => Path.Combine(d, tool)).FirstOrDefault(File.Exists);
}
