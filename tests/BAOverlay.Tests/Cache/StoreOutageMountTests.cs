using System.Diagnostics;
using BAOverlay.Cache;
using BAOverlay.FileSystem;
using BAOverlay.Fuse;
using BAOverlay.Store;
using BAOverlay.Tests.Fuse;
using BAOverlay.Tests.Store;
using Microsoft.Win32.SafeHandles;
using Mono.Unix.Native;

namespace BAOverlay.Tests.Cache;

/// <summary>
/// The degraded state end to end: an image published in a layer store, the store served by a real sshd on
/// 127.0.0.1 and mounted with sshfs, the image mounted through FUSE with its lower files read through a hot-zone
/// cache; then the server stopped (SIGSTOP) and, later, killed. Cached reads answer with the right bytes, reads that
/// need the store fail with EIO and return (never a hang), a copy-up or a write that needs lower data fails and leaves
/// nothing half-made, the mount's status says so, and everything works again, unaided, once the server is back.
/// </summary>
/// <remarks>
/// No timing is asserted beyond "it returned" (30 s, far above any deadline involved); the measured times are
/// printed. sshfs is mounted with <see cref="SshfsStore.BoundedConnectionOptions"/>, which bound the calls the cache
/// does not (lookups, stats, opens): measured here, with the server stopped, about 4.5 s for the first call (the
/// connection declared dead, one reconnection attempt) and about 2 s for each later one (a reconnection attempt);
/// with the server killed, at once.
/// </remarks>
[TestFixture]
public class StoreOutageMountTests
{
    private const int MiB = 1 << 20;
    private static readonly TimeSpan NoHang = TimeSpan.FromSeconds(30);

    [Test]
    public void AStoreThatStopsAnsweringGivesCachedReadsPromptEioAndRecoversWhenItReturns()
    {
        StoreTrees.RequireRoot();
        FuseMountTests.Mounted.RequireFuse();
        using var temp = new TempDir();
        string source = temp.File("src");
        Directory.CreateDirectory(source);
        byte[] hot = Content(MiB, 1), cold = Content(MiB, 2), big = Content(2 * MiB, 3), held = Content(2 * MiB, 4);
        File.WriteAllBytes(Path.Combine(source, "hot.bin"), hot);
        File.WriteAllBytes(Path.Combine(source, "cold.bin"), cold);
        File.WriteAllBytes(Path.Combine(source, "big.bin"), big);
        File.WriteAllBytes(Path.Combine(source, "held.bin"), held);
        File.WriteAllText(Path.Combine(source, "small.txt"), "a small file, copied up whole");
        string local = temp.File("store");
        using (LayerStore writer = LayerStore.Create(local, StoreTrees.Options("writer")))
        {
            writer.PublishImage("app", [writer.PublishDirectory(source).Digest]);
        }
        using SshfsStore share = SshfsStore.Start(local, SshfsStore.BoundedConnectionOptions);
        IReadOnlyList<string> lowers;
        using (LayerStore reader = LayerStore.Open(share.MountPoint, StoreTrees.Options("hostB")))
        {
            lowers = reader.ResolveLowerDirectories("app"); // verified through the network file system
        }
        var cacheLog = new List<string>();
        using var cache = new ZoneCache(new ZoneCacheOptions
        {
            Directory = temp.File("cache"),
            RemoteTimeout = TimeSpan.FromSeconds(2),
            Log = line =>
            {
                lock (cacheLog)
                {
                    cacheLog.Add(line);
                }
                TestContext.Progress.WriteLine("cache: " + line);
            },
        });
        Directory.CreateDirectory(temp.File("upper"));
        Directory.CreateDirectory(temp.File("work"));
        OverlayFuseAdapter? adapter = null;
        string mnt = temp.File("mnt");
        using (FuseMountTests.Mounted mounted = FuseMountTests.Mounted.Start(
            () => OverlayFileSystem.Open(new OverlayOptions
            {
                LowerDirectories = lowers,
                UpperDirectory = temp.File("upper"),
                WorkDirectory = temp.File("work"),
                LowerCache = cache,
            }),
            mnt,
            fs => adapter = new OverlayFuseAdapter(fs, defaultPermissions: true) { KeepCache = false },
            new FuseMountOptions { WritebackCache = false })) // writes reach the overlay as they are made
        {
            string Status() => System.Text.Encoding.UTF8.GetString(Syscall.getxattr(mnt, OverlayFuseAdapter.StatusXattr, out byte[] value) >= 0 ? value : []).Trim();

            // Healthy: hot.bin read by two readers one after the other, so its zones are admitted.
            Assert.That(File.ReadAllBytes(Path.Combine(mnt, "hot.bin")), Is.EqualTo(hot));
            Assert.That(File.ReadAllBytes(Path.Combine(mnt, "hot.bin")), Is.EqualTo(hot));
            Assert.That(cache.Status.CachedZones, Is.EqualTo(MiB / cache.ZoneSize), "every zone of hot.bin admitted by its second reader");
            Assert.That(Status(), Is.EqualTo("healthy"));
            // A copy-up made while the store answers: held.bin becomes a B-CoW file over its lower file in the store.
            SafeFileHandle heldFile = File.OpenHandle(Path.Combine(mnt, "held.bin"), FileMode.Open, FileAccess.ReadWrite);
            RandomAccess.Write(heldFile, "written before"u8, 0);
            // Looked up before the outage, so that what fails below is the copy-up, not the lookup.
            Assert.That(new FileInfo(Path.Combine(mnt, "big.bin")).Length, Is.EqualTo(big.Length));
            Assert.That(new FileInfo(Path.Combine(mnt, "small.txt")).Length, Is.GreaterThan(0));

            // ---- The server stops answering (SIGSTOP), with files open, as a running container holds them.
            SafeFileHandle hotFile = File.OpenHandle(Path.Combine(mnt, "hot.bin"));
            SafeFileHandle coldFile = File.OpenHandle(Path.Combine(mnt, "cold.bin"));
            IReadOnlyList<int> server = share.ServerProcessIds();
            foreach (int id in server)
            {
                Assert.That(Syscall.kill(id, Signum.SIGSTOP), Is.Zero);
            }
            try
            {
                // Reads of cached zones answer, with the store's bytes, as before.
                var timer = Stopwatch.StartNew();
                foreach (int offset in new[] { 0, 300_000, MiB - 4096 })
                {
                    Assert.That(ReadDirect(hotFile, offset, 4096), Is.EqualTo(hot[offset..(offset + 4096)]), $"cached hot.bin at {offset}");
                }
                TestContext.Out.WriteLine($"SIGSTOP: three cached 4 KiB reads: {timer.Elapsed.TotalMilliseconds:F1} ms");

                // A read that needs the store fails with EIO once the deadline has passed.
                (Exception? coldError, TimeSpan coldTime) = Timed(() => ReadDirect(coldFile, 512 * 1024, 4096));
                TestContext.Out.WriteLine($"SIGSTOP: uncached read: {coldError?.GetType().Name} after {coldTime.TotalSeconds:F2} s");
                Assert.That(coldError, Is.InstanceOf<IOException>().With.Property(nameof(IOException.HResult)).EqualTo((int)Errno.EIO), "an uncached read fails with EIO");
                Assert.That(Status(), Does.StartWith("store unreachable since "), "the status says so");
                TestContext.Out.WriteLine($"status: {Status()}");
                lock (cacheLog)
                {
                    Assert.That(cacheLog, Has.Some.Contains("the store is unreachable"), "a log line at the transition");
                }
                // Cached reads go on while the store is known to be unreachable.
                Assert.That(ReadDirect(hotFile, 700_000, 4096), Is.EqualTo(hot[700_000..704_096]));

                // A write into a copied-up file that needs lower data (part of a sub-block) fails; so do copy-ups.
                (Exception? partialError, TimeSpan partialTime) = Timed(() => RandomAccess.Write(heldFile, new byte[100], 1_500_007));
                TestContext.Out.WriteLine($"SIGSTOP: partial write needing lower data: {partialError?.GetType().Name} after {partialTime.TotalSeconds:F2} s");
                Assert.That(partialError, Is.InstanceOf<IOException>(), "a write that needs lower data fails");
                (Exception? bigError, TimeSpan bigTime) = Timed(() => File.OpenHandle(Path.Combine(mnt, "big.bin"), FileMode.Open, FileAccess.Write).Dispose());
                TestContext.Out.WriteLine($"SIGSTOP: block-level copy-up of big.bin: {bigError?.GetType().Name} after {bigTime.TotalSeconds:F2} s: {bigError?.Message}");
                (Exception? smallError, TimeSpan smallTime) = Timed(() => File.AppendAllText(Path.Combine(mnt, "small.txt"), "more"));
                TestContext.Out.WriteLine($"SIGSTOP: whole copy-up of small.txt: {smallError?.GetType().Name} after {smallTime.TotalSeconds:F2} s: {smallError?.Message}");
                Assert.Multiple(() =>
                {
                    Assert.That(bigError, Is.InstanceOf<IOException>(), "the block-level copy-up fails");
                    Assert.That(smallError, Is.InstanceOf<IOException>(), "the whole copy-up fails");
                    Assert.That(File.Exists(temp.File("upper/big.bin")) || File.Exists(temp.File("upper/small.txt")), Is.False, "nothing copied up");
                    Assert.That(Directory.EnumerateFileSystemEntries(temp.File("work")).Where(e => Path.GetFileName(e).StartsWith("tmp-", StringComparison.Ordinal)),
                        Is.Empty, "no half-made copy left in the work directory");
                });

                // A file never looked up: the lookup goes to sshfs, whose options bound it.
                (Exception? freshError, TimeSpan freshTime) = Timed(() => File.ReadAllBytes(Path.Combine(mnt, "never-seen")));
                TestContext.Out.WriteLine($"SIGSTOP: lookup of a name never seen: {freshError?.GetType().Name} after {freshTime.TotalSeconds:F2} s");
            }
            finally
            {
                foreach (int id in server)
                {
                    Syscall.kill(id, Signum.SIGCONT);
                }
            }
            // The descriptors sshfs handed out before it reconnected are dead: files held open across the outage are
            // opened again (their cached zones kept answering meanwhile).
            hotFile.Dispose();
            coldFile.Dispose();
            heldFile.Dispose();
            TimeSpan recovered = WaitForRecovery(mnt, cold, Status);
            TestContext.Out.WriteLine($"SIGCONT: reads and status healthy again after {recovered.TotalSeconds:F2} s");
            Assert.Multiple(() =>
            {
                byte[] expected = (byte[])held.Clone();
                "written before"u8.CopyTo(expected);
                Assert.That(File.ReadAllBytes(Path.Combine(mnt, "held.bin")), Is.EqualTo(expected), "the write made before is kept; the failed one left no trace");
                Assert.That(File.ReadAllBytes(Path.Combine(mnt, "big.bin")), Is.EqualTo(big));
            });
            // A copy-up works again.
            File.AppendAllText(Path.Combine(mnt, "small.txt"), " and more");
            Assert.That(File.ReadAllText(Path.Combine(mnt, "small.txt")), Is.EqualTo("a small file, copied up whole and more"));

            // ---- The server killed: the connection drops; then it is started again on the same port.
            hotFile = File.OpenHandle(Path.Combine(mnt, "hot.bin"));
            coldFile = File.OpenHandle(Path.Combine(mnt, "cold.bin"));
            share.KillServer();
            try
            {
                Assert.That(ReadDirect(hotFile, 4096, 4096), Is.EqualTo(hot[4096..8192]), "cached read with the server gone");
                (Exception? goneError, TimeSpan goneTime) = Timed(() => ReadDirect(coldFile, 768 * 1024, 4096));
                TestContext.Out.WriteLine($"killed: uncached read: {goneError?.GetType().Name} after {goneTime.TotalSeconds:F2} s");
                Assert.That(goneError, Is.InstanceOf<IOException>().With.Property(nameof(IOException.HResult)).EqualTo((int)Errno.EIO));
                Assert.That(Status(), Does.StartWith("store unreachable since "));
            }
            finally
            {
                share.RestartServer();
            }
            hotFile.Dispose();
            coldFile.Dispose();
            recovered = WaitForRecovery(mnt, cold, Status);
            TestContext.Out.WriteLine($"restarted: reads and status healthy again after {recovered.TotalSeconds:F2} s");
            Assert.That(adapter!.Status, Is.EqualTo("healthy"));
        }
        Assert.That(cache.Check(), Is.Empty, "the cache is clean");
    }

    /// <summary>Reads through the mount, past the kernel's page cache (dropped first), so the read reaches the overlay.</summary>
    private static byte[] ReadDirect(SafeFileHandle file, long offset, int length)
    {
        Syscall.posix_fadvise((int)file.DangerousGetHandle(), 0, 0, PosixFadviseAdvice.POSIX_FADV_DONTNEED);
        byte[] buffer = new byte[length];
        int n = RandomAccess.Read(file, buffer, offset);
        return buffer[..n];
    }

    /// <summary>Runs <paramref name="action"/> on a thread of its own and waits <see cref="NoHang"/> at most: what it
    /// threw (null: nothing) and how long it took. A call still running then fails the test as a hang.</summary>
    private static (Exception? Error, TimeSpan Time) Timed(Action action)
    {
        var timer = Stopwatch.StartNew();
        Task run = Task.Factory.StartNew(action, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);
        Assert.That(((IAsyncResult)run).AsyncWaitHandle.WaitOne(NoHang), Is.True, $"the call returned within {NoHang.TotalSeconds} s (no hang)");
        return (run.Exception?.InnerException, timer.Elapsed);
    }

    /// <summary>Opens and reads <c>cold.bin</c> until it reads right and the status is healthy (the cache's probe
    /// and sshfs's reconnection), for <see cref="NoHang"/> at most.</summary>
    private static TimeSpan WaitForRecovery(string mnt, byte[] cold, Func<string> status)
    {
        var timer = Stopwatch.StartNew();
        string last = "";
        while (timer.Elapsed < NoHang)
        {
            try
            {
                if (File.ReadAllBytes(Path.Combine(mnt, "cold.bin")).AsSpan().SequenceEqual(cold) && status() == "healthy")
                {
                    return timer.Elapsed;
                }
                last = status();
            }
            catch (IOException e)
            {
                last = e.Message;
            }
            Thread.Sleep(100);
        }
        Assert.Fail($"not recovered after {NoHang.TotalSeconds} s: {last}");
        return timer.Elapsed;
    }

    private static byte[] Content(int length, int seed)
    {
        byte[] bytes = new byte[length];
        new Random(seed).NextBytes(bytes);
        return bytes;
    }
}
