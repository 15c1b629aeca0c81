using System.Diagnostics;
using BAOverlay.Store;
using BAOverlayFs;
using Mono.Unix.Native;

namespace BAOverlay.Tests.Store;

/// <summary>baoverlayfs mounting an image of a layer store: <c>-o store=DIR,image=NAME,upperdir=...,workdir=...</c>.</summary>
[TestFixture]
public class StoreMountTests
{
    [Test]
    public void TheStoreOptionsReplaceLowerdirAndAreCheckedTogether()
    {
        CommandLine line = CommandLine.Parse(["-o", "store=/s,image=example.org/app:1,upperdir=/u,workdir=/w", "/m"]);
        Assert.That((line.Store, line.Image, line.LowerDirectories.Count), Is.EqualTo(("/s", "example.org/app:1", 0)));
        Assert.Multiple(() =>
        {
            Assert.That(Assert.Throws<UsageException>(() => CommandLine.Parse(["-o", "store=/s", "/m"]))!.Message, Is.EqualTo("store= needs image="));
            Assert.That(Assert.Throws<UsageException>(() => CommandLine.Parse(["-o", "image=x", "/m"]))!.Message, Is.EqualTo("image= needs store="));
            Assert.That(Assert.Throws<UsageException>(() => CommandLine.Parse(["-o", "store=/s,image=x,lowerdir=/l", "/m"]))!.Message, Does.Contain("exclude each other"));
        });
    }

    [Test]
    public void BaoverlayfsMountsAnImageOfTheStoreAndLeasesItWhileMounted()
    {
        if (!File.Exists("/dev/fuse") || Syscall.geteuid() != 0)
        {
            Assert.Ignore("mounting needs /dev/fuse and root (CAP_SYS_ADMIN)");
        }
        string program = Path.Combine(AppContext.BaseDirectory, "baoverlayfs");
        if (!File.Exists(program))
        {
            Assert.Ignore($"{program} is missing (the test project references samples/BAOverlayFs, which builds it)");
        }
        using var temp = new TempDir();
        string store = temp.File("store");
        using (LayerStore writer = LayerStore.Create(store, StoreTrees.Options("writer")))
        {
            StoreLayer bottom = writer.PublishDirectory(StoreTrees.MakePlain(temp.File("base"), "base"));
            Directory.CreateDirectory(temp.File("top"));
            File.WriteAllText(temp.File("top/top.txt"), "from the top layer");
            StoreLayer top = writer.PublishDirectory(temp.File("top"));
            writer.PublishImage("example.org/app:1", [bottom.Digest, top.Digest]);
        }
        foreach (string directory in new[] { "upper", "work", "mnt" })
        {
            Directory.CreateDirectory(temp.File(directory));
        }
        string mnt = temp.File("mnt");
        var start = new ProcessStartInfo(program) { RedirectStandardError = true, RedirectStandardOutput = true, WorkingDirectory = "/" };
        foreach (string arg in new[] { "-f", "-o", $"store={store},image=example.org/app:1,upperdir={temp.File("upper")},workdir={temp.File("work")}", mnt })
        {
            start.ArgumentList.Add(arg);
        }
        using Process process = Process.Start(start)!;
        Task<string> error = process.StandardError.ReadToEndAsync();
        try
        {
            var waited = Stopwatch.StartNew();
            while (!File.ReadLines("/proc/self/mountinfo").Any(l => l.Split(' ')[4] == mnt))
            {
                Assert.That(process.HasExited, Is.False, () => $"baoverlayfs exited: {error.Result}");
                Assert.That(waited.Elapsed, Is.LessThan(TimeSpan.FromSeconds(60)), "mounted within 60 s");
                Thread.Sleep(20);
            }
            Assert.Multiple(() =>
            {
                Assert.That(File.ReadAllText(Path.Combine(mnt, "top.txt")), Is.EqualTo("from the top layer"));
                Assert.That(File.ReadAllText(Path.Combine(mnt, "d", "f")), Is.EqualTo("base"));
                Assert.That(Directory.EnumerateFiles(Path.Combine(store, "leases")).Count(), Is.EqualTo(1), "the mount holds a lease");
            });
            File.WriteAllText(Path.Combine(mnt, "written"), "into the upper");
            Assert.That(File.ReadAllText(temp.File("upper/written")), Is.EqualTo("into the upper"));
        }
        finally
        {
            if (!process.HasExited)
            {
                Syscall.kill(process.Id, Signum.SIGTERM);
                if (!process.WaitForExit(30_000))
                {
                    process.Kill();
                    process.WaitForExit();
                }
            }
        }
        Assert.That(Directory.EnumerateFiles(Path.Combine(store, "leases")), Is.Empty, "the lease is released at unmount");
        using LayerStore reader = LayerStore.Open(store, StoreTrees.Options("r"));
        foreach (StoreLayer layer in reader.Layers)
        {
            reader.VerifyLayer(layer.Digest); // the mount never wrote into the store
        }
    }
}
