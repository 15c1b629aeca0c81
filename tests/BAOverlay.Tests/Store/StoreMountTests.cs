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
            Assert.That(Assert.Throws<UsageException>(() => CommandLine.Parse(["-o", "lowerdir=/l,verify=always", "/m"]))!.Message, Is.EqualTo("verify= needs store="));
            Assert.That(Assert.Throws<UsageException>(() => CommandLine.Parse(["-o", "store=/s,image=x,verify=sometimes", "/m"]))!.Message, Does.Contain("verify=always or verify=once"));
            Assert.That(CommandLine.Parse(["-o", "store=/s,image=x,verify=always", "/m"]).VerifyAlways, Is.True);
            Assert.That(CommandLine.Parse(["-o", "store=/s,image=x,verify=once", "/m"]).VerifyAlways, Is.False);
            Assert.That(CommandLine.Parse(["-o", "store=/s,image=x", "/m"]).VerifyAlways, Is.False);
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
            Stop(process);
        }
        Assert.That(Directory.EnumerateFiles(Path.Combine(store, "leases")), Is.Empty, "the lease is released at unmount");
        using LayerStore reader = LayerStore.Open(store, StoreTrees.Options("r"));
        foreach (StoreLayer layer in reader.Layers)
        {
            reader.VerifyLayer(layer.Digest); // the mount never wrote into the store
        }
    }

    [Test]
    public void AMountTrustsThisHostsRecordOfTheVerificationAndVerifyAlwaysHashesAgain()
    {
        // A layer file rewritten on the share with the same size and its times restored (a change no lookup can see)
        // stands for "content read or not": a mount that hashes the layer refuses it, one that trusts this host's
        // record (the index in the cache from the first mount) does not read it. Before the record, every mount hashed
        // every layer, and the second mount below failed.
        string program = RequireMounting();
        using var temp = new TempDir();
        string store = temp.File("store");
        string file;
        using (LayerStore writer = LayerStore.Create(store, StoreTrees.Options("writer")))
        {
            Directory.CreateDirectory(temp.File("layer"));
            File.WriteAllText(temp.File("layer/f"), "original");
            StoreLayer layer = writer.PublishDirectory(temp.File("layer"));
            writer.PublishImage("app", [layer.Digest]);
            file = Path.Combine(layer.Directory, "f");
        }
        string options = $"store={store},image=app,upperdir={temp.File("upper")},workdir={temp.File("work")},cache={temp.File("cache")}";
        (int status, string error) = MountAndRead(program, temp, options, "f", out string? read);
        Assert.That((status, read), Is.EqualTo((0, "original")), error);
        Assert.That(Directory.GetFiles(temp.File("cache/index"), "*.index"), Has.Length.EqualTo(1), "the record");

        RewriteKeepingTimes(file, "tampered");

        (status, error) = MountAndRead(program, temp, options, null, out _);
        Assert.That(status, Is.Zero, $"the record is trusted, the content not read: {error}");

        (status, error) = MountAndRead(program, temp, options + ",verify=always", null, out _);
        Assert.That(status, Is.Not.Zero, "verify=always hashes the layer");
        Assert.That(error, Does.Contain("does not match"));
    }

    [Test]
    public void TheFirstMountWithACacheVerifiesEachFileAtItsFirstReadAndRefusesOneThatChanged()
    {
        // The first mount with cache= checks the layer's metadata against its tree list and reads no content; a file
        // changed on the share (size and times kept) is then refused at its first read with EIO, the others read. Before,
        // that mount hashed the whole layer and refused to mount at all.
        string program = RequireMounting();
        using var temp = new TempDir();
        string store = temp.File("store");
        string file;
        using (LayerStore writer = LayerStore.Create(store, StoreTrees.Options("writer")))
        {
            Directory.CreateDirectory(temp.File("layer"));
            File.WriteAllText(temp.File("layer/f"), "original");
            File.WriteAllText(temp.File("layer/g"), "good");
            StoreLayer layer = writer.PublishDirectory(temp.File("layer"));
            writer.PublishImage("app", [layer.Digest]);
            file = Path.Combine(layer.Directory, "f");
        }
        RewriteKeepingTimes(file, "tampered");

        string options = $"store={store},image=app,upperdir={temp.File("upper")},workdir={temp.File("work")},cache={temp.File("cache")}";
        (int status, string error) = MountAndRead(program, temp, options, "g", out string? read);
        Assert.That((status, read), Is.EqualTo((0, "good")), error);
        Assert.That(Directory.GetFiles(temp.File("cache/index"), "*.index"), Has.Length.EqualTo(1), "the record of the metadata check");
        IOException refused = Assert.Catch<IOException>(() => MountAndRead(program, temp, options, "f", out _))!;
        Assert.That(refused.Message, Does.Contain("Input/output error"), "EIO");
        (status, error) = MountAndRead(program, temp, options + ",verify=always", null, out _);
        Assert.That(status, Is.Not.Zero, "verify=always hashes the layer");
        Assert.That(error, Does.Contain("does not match"));
    }

    /// <summary>Rewrites <paramref name="file"/> (same size as before in these tests) and puts its access and
    /// modification times back: a change no lookup can see.</summary>
    private static void RewriteKeepingTimes(string file, string content)
    {
        Assert.That(Syscall.lstat(file, out Stat before), Is.Zero);
        File.WriteAllText(file, content);
        Assert.That(Syscall.utimensat(Syscall.AT_FDCWD, file,
            [new Timespec { tv_sec = before.st_atime, tv_nsec = before.st_atime_nsec }, new Timespec { tv_sec = before.st_mtime, tv_nsec = before.st_mtime_nsec }], 0), Is.Zero);
    }

    private static string RequireMounting()
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
        return program;
    }

    /// <summary>Mounts with <paramref name="options"/> (in the foreground), reads <paramref name="name"/> when the
    /// mount is up, unmounts; the exit status and standard error. A mount that fails exits by itself.</summary>
    private static (int Status, string Error) MountAndRead(string program, TempDir temp, string options, string? name, out string? read)
    {
        read = null;
        foreach (string directory in new[] { "upper", "work", "mnt" })
        {
            Directory.CreateDirectory(temp.File(directory));
        }
        string mnt = temp.File("mnt");
        var start = new ProcessStartInfo(program) { RedirectStandardError = true, RedirectStandardOutput = true, WorkingDirectory = "/" };
        foreach (string arg in new[] { "-f", "-o", options, mnt })
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
                if (process.HasExited)
                {
                    return (process.ExitCode, error.Result);
                }
                Assert.That(waited.Elapsed, Is.LessThan(TimeSpan.FromSeconds(60)), "mounted within 60 s");
                Thread.Sleep(20);
            }
            if (name is not null)
            {
                read = File.ReadAllText(Path.Combine(mnt, name));
            }
        }
        finally
        {
            Stop(process);
        }
        return (process.ExitCode, error.Result);
    }

    /// <summary>Stops a foreground baoverlayfs as a service manager does (SIGTERM: it unmounts and leaves), killing it
    /// only when it has not left within 30 s; returns once it has exited.</summary>
    private static void Stop(Process process)
    {
        if (!process.HasExited)
        {
            Syscall.kill(process.Id, Signum.SIGTERM);
            if (!process.WaitForExit(30_000))
            {
                process.Kill();
            }
        }
        process.WaitForExit();
    }
}
