using BAOverlay.Fuse;
using BAOverlay.Tests.FileSystem;
using static BAOverlay.Tests.Fuse.FuseMountTests;

namespace BAOverlay.Tests.Fuse;

/// <summary>
/// FuseMountOptions.InlineRequests: requests on names and attributes are served by the worker that read them while
/// the next one waits in the kernel's queue (no second worker sleeping in read(2) to be woken for it), and a request
/// that may wait for the disk first makes sure another worker reads on.
/// </summary>
[TestFixture]
[Platform("Linux")]
[NonParallelizable]
public sealed class WorkerPolicyTests
{
    /// <summary>One process making, stating, reading the link of and removing names one after the other needs no
    /// second worker; with the option off a worker taking a request while no other waited started one.</summary>
    [TestCase(true, TestName = "NameRequestsFromOneProcessNeedNoSecondWorker")]
    [TestCase(false, TestName = "WithoutInlineRequestsEveryRequestKeepsASpareWorker")]
    public void NameRequests(bool inline)
    {
        using var fixture = new OverlayFixture(lowers: 1);
        using Mounted mounted = Mounted.Start(fixture, out string mnt, options: new FuseMountOptions { InlineRequests = inline });
        string dir = Path.Combine(mnt, "d");
        Directory.CreateDirectory(dir);
        for (int i = 0; i < 200; i++)
        {
            string path = Path.Combine(dir, $"n{i}");
            Directory.CreateDirectory(path);
            Assert.That(Directory.Exists(path), Is.True);
            File.CreateSymbolicLink(path + ".link", path);
            Assert.That(new FileInfo(path + ".link").LinkTarget, Is.EqualTo(path));
            File.Delete(path + ".link");
            Directory.Delete(path);
        }
        int started = mounted.Session.StartedWorkers;
        TestContext.Out.WriteLine($"workers started: {started}");
        Assert.That(Directory.GetFileSystemEntries(dir), Is.Empty);
        if (inline)
        {
            Assert.That(started, Is.Zero, "workers started for 1 400 name requests from one process");
        }
        else
        {
            Assert.That(started, Is.GreaterThan(0), "libfuse's policy: a spare worker waits beside the one serving");
        }
        Assert.That(mounted.Log, Is.Empty);
    }

    /// <summary>A request that waits (an fsync held by the handler) does not hold back the name requests of another
    /// process: another worker reads them while it waits.</summary>
    [Test]
    public void ARequestThatWaitsDoesNotHoldBackTheOthers()
    {
        using var fixture = new OverlayFixture(lowers: 1);
        using var entered = new ManualResetEventSlim();
        using var held = new ManualResetEventSlim();
        using Mounted mounted = Mounted.Start(fixture, out string mnt, fs => new HoldingFsync(new OverlayFuseAdapter(fs), entered, held));
        string file = Path.Combine(mnt, "f");
        File.WriteAllBytes(file, [1, 2, 3]);
        var syncer = new Thread(() =>
        {
            using var stream = new FileStream(file, FileMode.Open, FileAccess.ReadWrite);
            stream.Flush(flushToDisk: true); // FSYNC, held in the handler
        });
        syncer.Start();
        Assert.That(entered.Wait(TimeSpan.FromSeconds(20)), Is.True, "the fsync reached the handler");
        bool done = false;
        var other = new Thread(() =>
        {
            for (int i = 0; i < 20; i++)
            {
                File.WriteAllText(Path.Combine(mnt, $"meanwhile-{i}"), "x");
                _ = File.Exists(Path.Combine(mnt, $"absent-{i}"));
            }
            done = true;
        });
        other.Start();
        bool finished = other.Join(TimeSpan.FromSeconds(20));
        held.Set();
        syncer.Join();
        Assert.That(finished && done, Is.True, "the other process's requests were answered while the fsync was held");
        Assert.That(Directory.GetFiles(mnt, "meanwhile-*"), Has.Length.EqualTo(20));
        Assert.That(mounted.Log, Is.Empty);
    }
}

/// <summary>Holds each fsync in the handler (up to 30 s) until the test lets it go, and says when one arrived.</summary>
internal sealed class HoldingFsync(IFuseLowLevelHandler inner, ManualResetEventSlim entered, ManualResetEventSlim held) : DelegatingFuseHandler(inner)
{
    public override void Fsync(ulong ino, ulong handle, bool dataOnly)
    {
        entered.Set();
        held.Wait(TimeSpan.FromSeconds(30));
        base.Fsync(ino, handle, dataOnly);
    }
}
