using System.Diagnostics;
using BAOverlay.Cache;
using BAOverlay.FileSystem;
using BAOverlay.Store;
using BAOverlay.Tests.Store;
using Mono.Unix.Native;

namespace BAOverlay.Tests.Cache;

/// <summary>
/// A store layer behind sshfs with its metadata index and the cache: while the server does not answer (SIGSTOP), a
/// file never looked up before is found, opened and read whole from the index and the cached zones, without a call
/// to the share; a name the layer does not hold is answered at once; a file whose zones are not cached fails with EIO
/// within the deadline (its lazy open runs under it), never hangs.
/// </summary>
[TestFixture]
public class IndexedStoreOutageTests
{
    private const int MiB = 1 << 20;
    private static readonly TimeSpan NoHang = TimeSpan.FromSeconds(30);

    [Test]
    public void WithItsIndexACachedFileIsFoundOpenedAndReadWhileTheStoreDoesNotAnswer()
    {
        using var temp = new TempDir();
        string source = temp.File("layer");
        Directory.CreateDirectory(Path.Combine(source, "usr", "lib"));
        byte[] hot = Content(MiB, 1), cold = Content(MiB, 2);
        File.WriteAllBytes(Path.Combine(source, "usr", "lib", "hot.so"), hot);
        File.WriteAllBytes(Path.Combine(source, "usr", "lib", "cold.so"), cold);
        string local = temp.File("store");
        using (LayerStore writer = LayerStore.Create(local, StoreTrees.Options("writer")))
        {
            writer.PublishImage("app", [writer.PublishDirectory(source).Digest]);
        }
        using SshfsStore share = SshfsStore.Start(local, SshfsStore.BoundedConnectionOptions);
        IReadOnlyList<string> lowers;
        IReadOnlyList<LayerIndex> indexes;
        using (LayerStore reader = LayerStore.Open(share.MountPoint, StoreTrees.Options("hostB")))
        {
            indexes = reader.OpenIndexes("app", temp.File("cache/index"));
            lowers = reader.ResolveLowerDirectories("app");
        }
        using var cache = new ZoneCache(new ZoneCacheOptions
        {
            Directory = temp.File("cache"),
            RemoteTimeout = TimeSpan.FromSeconds(1),
            Log = line => TestContext.Progress.WriteLine("cache: " + line),
        });
        OverlayFileSystem Open() => OverlayFileSystem.Open(new OverlayOptions { LowerDirectories = lowers, LowerIndexes = indexes, LowerCache = cache });

        // One "container" reads hot.so twice: every zone admitted.
        using (OverlayFileSystem first = Open())
        {
            for (int i = 0; i < 2; i++)
            {
                Assert.That(ReadWhole(first, "usr/lib/hot.so"), Is.EqualTo(hot));
            }
        }
        Assert.That(cache.Status.CachedZones, Is.EqualTo(MiB / cache.ZoneSize));
        long opens = cache.Status.StoreOpens;

        // Another one starts (its layers opened while the store answers), and then the server stops.
        using OverlayFileSystem second = Open();
        IReadOnlyList<int> server = share.ServerProcessIds();
        foreach (int id in server)
        {
            Assert.That(Syscall.kill(id, Signum.SIGSTOP), Is.Zero);
        }
        try
        {
            (Exception? hotError, TimeSpan hotTime, byte[]? read) = Timed(() => ReadWhole(second, "usr/lib/hot.so"));
            TestContext.Out.WriteLine($"SIGSTOP: lookup, open and read of a cached file never looked up: {hotError?.GetType().Name ?? "read"} after {hotTime.TotalMilliseconds:F1} ms");
            Assert.That(hotError, Is.Null);
            Assert.That(read, Is.EqualTo(hot));
            Assert.That(cache.Status.StoreOpens, Is.EqualTo(opens), "the share's file was not opened");

            (Exception? missingError, TimeSpan missingTime, _) = Timed(() => ReadWhole(second, "usr/lib/missing.so"));
            TestContext.Out.WriteLine($"SIGSTOP: lookup of a name the layer does not hold: {missingError?.GetType().Name} after {missingTime.TotalMilliseconds:F1} ms");
            Assert.That(missingError, Is.InstanceOf<OverlayException>().With.Property(nameof(OverlayException.Errno)).EqualTo(OverlayErrno.ENOENT));

            (Exception? coldError, TimeSpan coldTime, _) = Timed(() => ReadWhole(second, "usr/lib/cold.so"));
            TestContext.Out.WriteLine($"SIGSTOP: uncached file: {coldError?.GetType().Name} after {coldTime.TotalSeconds:F2} s: {coldError?.Message}");
            Assert.That(coldError, Is.InstanceOf<IOException>());
            Assert.That(OverlayException.ErrnoOf(coldError!, out _), Is.EqualTo(OverlayErrno.EIO));
        }
        finally
        {
            foreach (int id in server)
            {
                Syscall.kill(id, Signum.SIGCONT);
            }
        }
    }

    private static byte[] Content(int length, int seed)
    {
        byte[] bytes = new byte[length];
        new Random(seed).NextBytes(bytes);
        return bytes;
    }

    /// <summary>The bytes of <paramref name="path"/> (names separated by '/') read through the overlay's own API.</summary>
    internal static byte[] ReadWhole(OverlayFileSystem fs, string path)
    {
        ulong ino = OverlayFileSystem.RootIno;
        OverlayStat st = default;
        foreach (string part in path.Split('/'))
        {
            st = fs.Lookup(ino, part);
            ino = st.Ino;
        }
        using OverlayHandle handle = fs.Open(ino, write: false, truncate: false);
        byte[] bytes = new byte[st.Size];
        for (int done = 0; done < bytes.Length;)
        {
            int n = handle.Read(bytes.AsSpan(done), done);
            if (n == 0)
            {
                break;
            }
            done += n;
        }
        return bytes;
    }

    /// <summary>Runs <paramref name="action"/> on a thread of its own, waiting <see cref="NoHang"/> at most.</summary>
    private static (Exception? Error, TimeSpan Time, T? Result) Timed<T>(Func<T> action)
    {
        var timer = Stopwatch.StartNew();
        Task<T> run = Task.Factory.StartNew(action, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);
        Assert.That(((IAsyncResult)run).AsyncWaitHandle.WaitOne(NoHang), Is.True, $"the call returned within {NoHang.TotalSeconds} s (no hang)");
        return (run.Exception?.InnerException, timer.Elapsed, run.IsCompletedSuccessfully ? run.Result : default);
    }
}
