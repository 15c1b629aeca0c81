using System.Security.Cryptography;
using BAOverlay.Cache;
using BAOverlay.Storage;
using static BAOverlay.Tests.Cache.CacheTesting;

namespace BAOverlay.Tests.Cache;

/// <summary>
/// A file not verified yet (<see cref="FirstFetchCheck"/>, a file of a store layer verified lazily): its first read of
/// the store reads and hashes the whole file first; nothing of a file that does not match is handed out or admitted;
/// a long verification is not cut by the deadline while the store answers, and fails with EIO when it stops.
/// </summary>
public class FirstFetchCheckTests
{
    /// <summary>A remote whose reads wait <paramref name="delay"/> each, and from read number <paramref name="hangFrom"/>
    /// on wait for <see cref="Answer"/>.</summary>
    private sealed class SlowRemote(byte[] content, TimeSpan delay, int hangFrom = int.MaxValue) : ReadOnlyTestStorage
    {
        private readonly ManualResetEventSlim _answer = new(false);
        private int _reads;

        public int Reads => Volatile.Read(ref _reads);

        public void Answer() => _answer.Set();

        public override string Name => "slow";

        public override long Length => content.Length;

        public override int ReadAt(Span<byte> buffer, long offset)
        {
            if (Interlocked.Increment(ref _reads) >= hangFrom)
            {
                _answer.Wait();
            }
            Thread.Sleep(delay);
            int n = (int)Math.Clamp(content.Length - offset, 0, buffer.Length);
            content.AsSpan((int)offset, n).CopyTo(buffer);
            return n;
        }

        public override (long MTimeNs, ulong Inode) GetIdentity() => (1, 0);

        public override IEnumerable<(long Offset, long Length)> GetDataRanges(long start, long end) => [(start, end - start)];
    }

    private static ZoneCacheOptions Options(string directory, List<string> log, TimeSpan timeout) => new()
    {
        Directory = directory,
        ZoneSize = ZoneBytes,
        RemoteTimeout = timeout,
        ProbeInterval = TimeSpan.FromMilliseconds(1),
        CommitInterval = TimeSpan.FromHours(1),
        Log = line =>
        {
            lock (log)
            {
                log.Add(line);
            }
        },
    };

    private static IBlockStorage Reader(ZoneCache cache, IBlockStorage remote, FirstFetchCheck check) =>
        cache.Wrap(remote, "layer/file", remote.Length, remote.GetIdentity().MTimeNs, ownsRemote: false, inode: 0, check);

    [Test]
    public void TheFirstReadVerifiesTheWholeFileAndAnswersFromThoseBytes()
    {
        using var dir = new TempDir();
        var log = new List<string>();
        byte[] content = Bytes(5 * ZoneBytes + 100, 3);
        var remote = new FakeRemote(content);
        int recorded = 0;
        var check = new FirstFetchCheck("layer/file", content.Length, SHA256.HashData(content), _ => recorded++);
        using var cache = new ZoneCache(Options(dir.Path, log, TimeSpan.FromSeconds(30)));
        using (IBlockStorage reader = Reader(cache, remote, check))
        {
            byte[] buffer = new byte[300];
            Assert.That(reader.ReadAt(buffer, 2 * ZoneBytes), Is.EqualTo(300));
            Assert.That(buffer, Is.EqualTo(content.AsSpan(2 * ZoneBytes, 300).ToArray()));
        }
        Assert.Multiple(() =>
        {
            Assert.That(check.IsVerified, Is.True);
            Assert.That(recorded, Is.EqualTo(1));
            Assert.That(remote.BytesRead, Is.EqualTo(content.Length), "the whole file, once");
            Assert.That(log, Is.Empty);
        });
        // Verified: later readers read what they ask, as any file's; two of them admit the zone.
        ReadAndCheck(cache, remote, "layer/file", ZoneBytes, 100);
        using (IBlockStorage reader = Reader(cache, remote, check))
        {
            byte[] buffer = new byte[100];
            reader.ReadAt(buffer, ZoneBytes);
        }
        cache.Flush();
        Assert.That(cache.Status.CachedZones, Is.EqualTo(1));
        Assert.That(recorded, Is.EqualTo(1));
    }

    [Test]
    public void AFileThatDoesNotMatchIsRefusedWithEioAndNothingOfItIsAdmitted()
    {
        using var dir = new TempDir();
        var log = new List<string>();
        byte[] content = Bytes(3 * ZoneBytes, 4);
        byte[] expected = SHA256.HashData(Bytes(3 * ZoneBytes, 5));
        var remote = new FakeRemote(content);
        var check = new FirstFetchCheck("sha256-ab/tree/usr/bin/tool", content.Length, expected);
        using var cache = new ZoneCache(Options(dir.Path, log, TimeSpan.FromSeconds(30)));
        for (int reader = 0; reader < 3; reader++)
        {
            // Three readers: the second would admit the zone, were any byte handed out.
            using IBlockStorage storage = Reader(cache, remote, check);
            IOException error = Assert.Throws<IOException>(() => storage.ReadAt(new byte[100], 0))!;
            Assert.That(error.HResult, Is.EqualTo(5), "EIO");
            Assert.That(error.Message, Does.Contain("sha256-ab/tree/usr/bin/tool"));
        }
        cache.Flush();
        Assert.Multiple(() =>
        {
            Assert.That(cache.Status.CachedZones, Is.Zero, "nothing admitted");
            Assert.That(cache.Status.Admissions, Is.Zero);
            Assert.That(remote.BytesRead, Is.EqualTo(content.Length), "read once: the failure is kept");
            Assert.That(log, Has.One.Contains("sha256-ab/tree/usr/bin/tool").And.Contains("refused"), "logged once, naming the file");
            Assert.That(cache.Status.State, Is.EqualTo(StoreState.Healthy), "the store answered: the file is wrong, not the store");
            Assert.That(check.IsVerified, Is.False);
        });
    }

    [Test]
    public void ALongVerificationIsNotCutByTheDeadlineWhileTheStoreAnswers()
    {
        // 3 pieces of 1 MiB, 0.8 s each: 2.4 s in all, past the 2 s deadline, which bounds each read of the store.
        using var dir = new TempDir();
        var log = new List<string>();
        byte[] content = Bytes((2 << 20) + 5, 6);
        var remote = new SlowRemote(content, TimeSpan.FromMilliseconds(800));
        var check = new FirstFetchCheck("layer/file", content.Length, SHA256.HashData(content));
        using var cache = new ZoneCache(Options(dir.Path, log, TimeSpan.FromSeconds(2)));
        using IBlockStorage reader = Reader(cache, remote, check);
        byte[] buffer = new byte[10];
        Assert.That(reader.ReadAt(buffer, content.Length - 5), Is.EqualTo(5));
        Assert.That(buffer[..5], Is.EqualTo(content[^5..]));
        Assert.That(check.IsVerified, Is.True);
        Assert.That(remote.Reads, Is.EqualTo(3), "the three pieces, the read answered from the last");
        Assert.That(cache.Status.State, Is.EqualTo(StoreState.Healthy));
    }

    [Test]
    public void AStoreThatStopsAnsweringDuringAVerificationFailsItWithEioAndALaterReadVerifiesAgain()
    {
        using var dir = new TempDir();
        var log = new List<string>();
        byte[] content = Bytes((2 << 20) + 5, 7);
        var remote = new SlowRemote(content, TimeSpan.Zero, hangFrom: 2);
        var check = new FirstFetchCheck("layer/file", content.Length, SHA256.HashData(content));
        using var cache = new ZoneCache(Options(dir.Path, log, TimeSpan.FromMilliseconds(300)));
        using (IBlockStorage reader = Reader(cache, remote, check))
        {
            IOException error = Assert.Throws<IOException>(() => reader.ReadAt(new byte[10], 0))!;
            Assert.That(error.HResult, Is.EqualTo(5), "EIO at the deadline of the piece the store did not answer");
        }
        Assert.Multiple(() =>
        {
            Assert.That(check.IsVerified, Is.False);
            Assert.That(check.Failure, Is.Null, "the store's failure, not the file's");
            Assert.That(cache.Status.State, Is.EqualTo(StoreState.Unreachable));
        });
        remote.Answer();
        for (int i = 0; i < 500 && cache.Status.StuckReads > 0; i++)
        {
            Thread.Sleep(10);
        }
        Thread.Sleep(5); // past the probe interval
        using (IBlockStorage reader = Reader(cache, remote, check))
        {
            byte[] buffer = new byte[10];
            Assert.That(reader.ReadAt(buffer, 0), Is.EqualTo(10));
            Assert.That(buffer, Is.EqualTo(content[..10]));
        }
        Assert.That(check.IsVerified, Is.True);
        Assert.That(cache.Status.State, Is.EqualTo(StoreState.Healthy));
    }
}
