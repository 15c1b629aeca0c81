using BAOverlay.Cache;
using BAOverlay.Storage;

namespace BAOverlay.Tests.Cache;

/// <summary>What every read-only storage of these tests has in common: writes refused, async reads answered by the
/// synchronous one, nothing to flush.</summary>
internal abstract class ReadOnlyTestStorage : IBlockStorage
{
    public abstract string Name { get; }

    public bool CanWrite => false;

    public abstract long Length { get; }

    public abstract int ReadAt(Span<byte> buffer, long offset);

    public ValueTask<int> ReadAtAsync(Memory<byte> buffer, long offset, CancellationToken cancellationToken = default) =>
        ValueTask.FromResult(ReadAt(buffer.Span, offset));

    public void WriteAt(ReadOnlySpan<byte> data, long offset) => throw new NotSupportedException();

    public ValueTask WriteAtAsync(ReadOnlyMemory<byte> data, long offset, CancellationToken cancellationToken = default) => throw new NotSupportedException();

    public void Flush()
    {
    }

    public void SetLength(long length) => throw new NotSupportedException();

    public void PunchHole(long offset, long length) => throw new NotSupportedException();

    public abstract (long MTimeNs, ulong Inode) GetIdentity();

    public abstract IEnumerable<(long Offset, long Length)> GetDataRanges(long start, long end);

    public virtual void Dispose()
    {
    }
}

/// <summary>A remote file for tests: bytes in memory that count their reads, and can be made to hang (on a gate) or fail.</summary>
internal sealed class FakeRemote(byte[] content, string name = "remote", long mtimeNs = 1_700_000_000_000_000_000) : ReadOnlyTestStorage
{
    private readonly ManualResetEventSlim _open = new(true);
    private int _reads;
    private long _bytes;
    private volatile bool _failing;

    public byte[] Content => content;

    public int Reads => Volatile.Read(ref _reads);

    public long BytesRead => Interlocked.Read(ref _bytes);

    /// <summary>Reads wait until <see cref="Answer"/> (the store stops answering).</summary>
    public void Hang() => _open.Reset();

    public void Answer() => _open.Set();

    public bool Failing
    {
        get => _failing;
        set => _failing = value;
    }

    public override string Name => name;

    public override long Length => content.Length;

    public override int ReadAt(Span<byte> buffer, long offset)
    {
        Interlocked.Increment(ref _reads);
        _open.Wait();
        if (_failing)
        {
            throw new IOException($"{name}: connection lost", 107);
        }
        int n = (int)Math.Clamp(content.Length - offset, 0, buffer.Length);
        content.AsSpan((int)offset, n).CopyTo(buffer);
        Interlocked.Add(ref _bytes, n);
        return n;
    }

    public override (long MTimeNs, ulong Inode) GetIdentity() => (mtimeNs, 0);

    public override IEnumerable<(long Offset, long Length)> GetDataRanges(long start, long end) => [(start, end - start)];
}

internal static class CacheTesting
{
    public const int ZoneBytes = 16 << 10;

    public static ZoneCacheOptions Options(string directory, long budget = 1 << 30, ICacheStore? store = null, List<string>? log = null) => new()
    {
        Directory = directory,
        BudgetBytes = budget,
        ZoneSize = ZoneBytes,
        Store = store,
        CommitInterval = TimeSpan.FromHours(1), // commits happen when a test says (Flush, Dispose)
        Log = line =>
        {
            if (log is not null)
            {
                lock (log)
                {
                    log.Add(line);
                }
            }
            TestContext.Progress.WriteLine("cache: " + line);
        },
    };

    public static byte[] Bytes(int length, int seed)
    {
        var bytes = new byte[length];
        new Random(seed).NextBytes(bytes);
        return bytes;
    }

    /// <summary>Reads [offset, +length) through a new reader (one open of the file) and checks the bytes.</summary>
    public static void ReadAndCheck(ZoneCache cache, FakeRemote remote, string key, long offset, int length)
    {
        using IBlockStorage reader = cache.Wrap(remote, key, remote.Length, remote.GetIdentity().MTimeNs, ownsRemote: false);
        byte[] buffer = new byte[length];
        int n = reader.ReadAt(buffer, offset);
        int expected = (int)Math.Clamp(remote.Content.Length - offset, 0, length);
        Assert.That(n, Is.EqualTo(expected), $"{key} at {offset}");
        Assert.That(n == 0 || buffer.AsSpan(0, n).SequenceEqual(remote.Content.AsSpan((int)offset, n)), $"{key}: bytes at {offset} (+{length})");
    }

    public static void AssertCheckClean(ZoneCache cache) => Assert.That(cache.Check(), Is.Empty, "cache check");
}
