using System.Runtime.InteropServices;
using BAOverlay.Fuse;
using BAOverlay.Tests.FileSystem;
using Microsoft.Win32.SafeHandles;
using static BAOverlay.Tests.Fuse.FuseMountTests;
using static BAOverlay.Tests.Fuse.PassthroughMountTests;

namespace BAOverlay.Tests.Fuse;

/// <summary>
/// FUSE over io_uring (<see cref="FuseMountOptions.IoUring"/>) through real mounts: granted when the kernel offers it
/// (the fuse module's <c>enable_uring</c> = Y; the requests then really come through the rings, counted by the
/// session), the classic read/writev transport when the option is off or the kernel does not offer it (N), each
/// serving a mix of every kind of request correctly; and a request the queue's owner thread hands to a worker (an
/// fsync held in the handler) does not hold back the requests that come after it on the same CPU queue. Each test sets
/// <c>enable_uring</c> and restores it. Needs root, /dev/fuse and a kernel with FUSE over io_uring (Linux 6.14+ with
/// CONFIG_FUSE_IO_URING; CI has them).
/// </summary>
[TestFixture]
[Platform("Linux")]
[NonParallelizable]
public sealed partial class RingTransportTests
{
    private const string Parameter = "/sys/module/fuse/parameters/enable_uring";

    /// <summary>Sets the fuse module's enable_uring for the test and puts the old value back.</summary>
    internal sealed class UringParameter : IDisposable
    {
        private readonly string _old;

        public UringParameter(bool enable)
        {
            Mounted.RequireFuse();
            if (!File.Exists(Parameter))
            {
                Assert.Ignore($"{Parameter} missing: this kernel has no FUSE over io_uring (Linux 6.14+ with CONFIG_FUSE_IO_URING)");
            }
            _old = File.ReadAllText(Parameter).Trim();
            File.WriteAllText(Parameter, enable ? "Y" : "N");
        }

        public void Dispose() => File.WriteAllText(Parameter, _old);
    }

    [Test]
    public void TheRingIsUsedWhenTheKernelOffersIt()
    {
        using var parameter = new UringParameter(enable: true);
        using var fixture = new OverlayFixture(lowers: 1);
        OverlayFixture.WriteFile(Path.Combine(fixture.Lowers[0], "lower"), Bytes(1, 300_000));
        using Mounted mounted = Mounted.Start(fixture, out string mnt, options: new FuseMountOptions { IoUring = true });

        Assert.That(Connection(mounted, mnt).IoUring, Is.True, "FUSE_OVER_IO_URING granted");
        Assert.That(Connection(mounted, mnt).Minor, Is.GreaterThanOrEqualTo(42u));
        long before = mounted.Session.RingRequests;
        Exercise(mnt);
        Assert.That(mounted.Session.RingRequests - before, Is.GreaterThan(50), "the requests came through the rings");
        Assert.That(mounted.Log, Is.Empty);
    }

    [Test]
    public void TheOptionIsOffByDefault() => Assert.That(new FuseMountOptions().IoUring, Is.False);

    [Test]
    public void TheClassicTransportServesWhenTheOptionIsOff()
    {
        using var parameter = new UringParameter(enable: true);
        using var fixture = new OverlayFixture(lowers: 1);
        OverlayFixture.WriteFile(Path.Combine(fixture.Lowers[0], "lower"), Bytes(1, 300_000));
        using Mounted mounted = Mounted.Start(fixture, out string mnt, options: new FuseMountOptions { IoUring = false });

        Assert.That(Connection(mounted, mnt).IoUring, Is.False);
        Exercise(mnt);
        Assert.That(mounted.Session.RingRequests, Is.Zero);
        Assert.That(mounted.Log, Is.Empty);
    }

    [Test]
    public void TheClassicTransportServesWhenTheKernelDoesNotOfferTheRing()
    {
        using var parameter = new UringParameter(enable: false);
        using var fixture = new OverlayFixture(lowers: 1);
        OverlayFixture.WriteFile(Path.Combine(fixture.Lowers[0], "lower"), Bytes(1, 300_000));
        using Mounted mounted = Mounted.Start(fixture, out string mnt, options: new FuseMountOptions { IoUring = true });

        Assert.That(Connection(mounted, mnt).IoUring, Is.False, "enable_uring = N: not offered, not used");
        Exercise(mnt);
        Assert.That(mounted.Session.RingRequests, Is.Zero);
        Assert.That(mounted.Log, Is.Empty);
    }

    [Test]
    public void AHeldRequestDoesNotHoldBackTheNextOnItsQueue()
    {
        using var parameter = new UringParameter(enable: true);
        using var fixture = new OverlayFixture(lowers: 1);
        using var held = new ManualResetEventSlim();
        using var entered = new ManualResetEventSlim();
        using Mounted mounted = Mounted.Start(fixture, out string mnt, handler: fs => new HoldingFsync(new OverlayFuseAdapter(fs), entered, held), options: new FuseMountOptions { IoUring = true });
        Assert.That(Connection(mounted, mnt).IoUring, Is.True);
        string file = Path.Combine(mnt, "f");
        File.WriteAllBytes(file, [1, 2, 3]);

        // Both callers on CPU 0: the kernel puts their requests on queue 0, served by one owner thread.
        var syncer = new Thread(() =>
        {
            PinToCpu0();
            using var stream = new FileStream(file, FileMode.Open, FileAccess.ReadWrite);
            stream.Flush(flushToDisk: true); // FSYNC, held in the handler
        });
        syncer.Start();
        Assert.That(entered.Wait(TimeSpan.FromSeconds(20)), Is.True, "the fsync reached the handler");
        bool? seen = null;
        var looker = new Thread(() =>
        {
            PinToCpu0();
            seen = File.Exists(Path.Combine(mnt, "g")); // a LOOKUP on the same queue, while the fsync is held
        });
        looker.Start();
        bool done = looker.Join(TimeSpan.FromSeconds(20));
        held.Set();
        syncer.Join();
        Assert.That(done, Is.True, "the lookup was answered while the fsync was held");
        Assert.That(seen, Is.False);
        Assert.That(mounted.Log, Is.Empty);
    }

    /// <summary>For a mount asked to use the ring: fails when it was not granted (the fuse module's enable_uring must be
    /// Y, as .ci/run sets it).</summary>
    internal static void AssertRingGranted(Mounted mounted, string mnt)
    {
        if (!Connection(mounted, mnt).IoUring)
        {
            string value = File.Exists(Parameter) ? File.ReadAllText(Parameter).Trim() : "missing";
            Assert.Fail($"FUSE over io_uring not granted ({Parameter} is {value}; as root: echo Y > {Parameter}, as .ci/run does)");
        }
    }

    [Test]
    public void PassthroughWorksOverTheRing()
    {
        using var parameter = new UringParameter(enable: true);
        using var fixture = new OverlayFixture(lowers: 1);
        using Mounted mounted = Mounted.Start(fixture, out string mnt, options: new FuseMountOptions { IoUring = true, WritebackCache = false });
        AssertRingGranted(mounted, mnt);
        Assert.That(Connection(mounted, mnt).Passthrough, Is.True, "passthrough granted along with the ring");
        string file = Path.Combine(mnt, "up");
        byte[] data = Bytes(5, 200_000);
        File.WriteAllBytes(file, data);
        using (var stream = new FileStream(file, FileMode.Open, FileAccess.ReadWrite))
        {
            Assert.That(mounted.Session.PassthroughOpens, Is.GreaterThan(0), "the open's reply (over the ring) carried a backing id");
            stream.Position = 1000;
            stream.Write([9, 9, 9]);
            stream.Flush();
            data[1000] = data[1001] = data[1002] = 9;
        }
        Assert.That(File.ReadAllBytes(file), Is.EqualTo(data));
        Assert.That(mounted.Log, Is.Empty);
    }

    /// <summary>What was agreed at INIT, which the kernel sends once the mount is first used.</summary>
    private static FuseConnection Connection(Mounted mounted, string mnt)
    {
        _ = Directory.Exists(Path.Combine(mnt, "."));
        return mounted.Session.Connection ?? throw new AssertionException("no INIT after the first request");
    }

    private static void PinToCpu0()
    {
        ulong mask = 1;
        Assert.That(sched_setaffinity(0, sizeof(ulong), ref mask), Is.Zero, "sched_setaffinity");
    }

    // int sched_setaffinity(pid_t pid, size_t cpusetsize, const cpu_set_t *mask);  (pid 0: the calling thread)
    [LibraryImport("libc", EntryPoint = "sched_setaffinity", SetLastError = true)]
    private static partial int sched_setaffinity(int pid, nuint cpusetsize, ref ulong mask);

    /// <summary>One request of most kinds through the mount, each checked: lookups, reads of a lower file (small and
    /// large), creates, writes, renames, links, symbolic links, directories, listings, extended attributes, truncation,
    /// fsync, removal.</summary>
    private static void Exercise(string mnt)
    {
        byte[] lower = Bytes(1, 300_000);
        Assert.That(File.ReadAllBytes(Path.Combine(mnt, "lower")), Is.EqualTo(lower), "a lower file's bytes");
        using (SafeFileHandle h = File.OpenHandle(Path.Combine(mnt, "lower")))
        {
            byte[] buffer = new byte[200_000];
            Assert.That(RandomAccess.Read(h, buffer, 50_000), Is.EqualTo(200_000));
            Assert.That(buffer.AsSpan().SequenceEqual(lower.AsSpan(50_000, 200_000)), Is.True, "a large read");
        }
        string dir = Path.Combine(mnt, "d");
        Directory.CreateDirectory(dir);
        byte[] data = Bytes(2, 70_000);
        string a = Path.Combine(dir, "a");
        using (var stream = new FileStream(a, FileMode.CreateNew, FileAccess.ReadWrite))
        {
            stream.Write(data);
            stream.Flush(flushToDisk: true);
        }
        Assert.That(File.ReadAllBytes(a), Is.EqualTo(data), "written bytes");
        File.Move(a, Path.Combine(dir, "b"));
        File.CreateSymbolicLink(Path.Combine(dir, "s"), "b");
        Assert.That(new FileInfo(Path.Combine(dir, "s")).LinkTarget, Is.EqualTo("b"));
        Assert.That(Mono.Unix.Native.Syscall.link(Path.Combine(dir, "b"), Path.Combine(dir, "c")), Is.Zero, "link");
        Assert.That(Directory.GetFileSystemEntries(dir).Select(Path.GetFileName).Order(), Is.EqualTo(new[] { "b", "c", "s" }));
        byte[] value = [1, 2, 3, 4];
        Assert.That(Mono.Unix.Native.Syscall.setxattr(Path.Combine(dir, "b"), "user.x", value), Is.Zero, "setxattr");
        byte[] back = new byte[16];
        Assert.That(Mono.Unix.Native.Syscall.getxattr(Path.Combine(dir, "b"), "user.x", back), Is.EqualTo(4L), "getxattr");
        Assert.That(Mono.Unix.Native.Syscall.listxattr(Path.Combine(dir, "b"), out string[] names), Is.GreaterThanOrEqualTo(0L));
        Assert.That(names, Does.Contain("user.x"));
        Assert.That(Mono.Unix.Native.Syscall.removexattr(Path.Combine(dir, "b"), "user.x"), Is.Zero, "removexattr");
        Assert.That(Mono.Unix.Native.Syscall.truncate(Path.Combine(dir, "b"), 1000), Is.Zero, "truncate");
        Assert.That(new FileInfo(Path.Combine(dir, "c")).Length, Is.EqualTo(1000), "the link sees the truncation");
        File.Delete(Path.Combine(dir, "b"));
        File.Delete(Path.Combine(dir, "c"));
        File.Delete(Path.Combine(dir, "s"));
        Directory.Delete(dir);
        Assert.That(Directory.Exists(dir), Is.False);
        Assert.That(new DriveInfo(mnt).TotalSize, Is.GreaterThan(0), "statfs");
    }
}
