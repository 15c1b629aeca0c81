using BAOverlay.Storage;

namespace BAOverlay.Cache;

/// <summary>
/// What a cache file's B-CoW engine sees as its lower file: the remote file, but never read behind the cache's back.
/// The engine reads its lower file only when the cache asks it to: while a zone is admitted (the sub-blocks of the
/// file's last block, served from the zone just fetched, <see cref="Pin"/>), and while a cache file is created (the
/// sampled identity, from the remote file given to <see cref="Attach"/>, under the store's deadline). Reads of cached
/// zones never reach it: a zone is pinned while read, and eviction waits for no pin (it skips the zone). Any other read
/// fails with EIO rather than return bytes that are not the remote file's.
/// </summary>
/// <remarks>Used under the cache file's maintenance lock only (pin and attach), so its fields need no lock of their own;
/// the reopen peek is <see cref="AnswerPeeksWithZeros"/>.</remarks>
internal sealed class CacheLowerView(string name, long size, long mtimeNs, RemoteGuard guard) : IBlockStorage
{
    private long _pinnedAt;
    private ReadOnlyMemory<byte> _pinned;
    private IBlockStorage? _remote;

    /// <summary>
    /// At the reopen of a cache file the engine peeks at its lower file's first bytes, to refuse a lower file that is
    /// itself a B-CoW file. A remote file that is one was refused when its cache file was to be created (the peek then
    /// read the remote file), so no cache file exists over one, and zeros ("not a B-CoW file") are the true answer.
    /// </summary>
    public bool AnswerPeeksWithZeros { get; set; }

    public string Name => name;

    public bool CanWrite => false;

    public long Length => size;

    public void Pin(long offset, ReadOnlyMemory<byte> zone)
    {
        _pinnedAt = offset;
        _pinned = zone;
    }

    public void Unpin() => _pinned = default;

    public void Attach(IBlockStorage? remote) => _remote = remote;

    public int ReadAt(Span<byte> buffer, long offset)
    {
        int n = (int)Math.Clamp(size - offset, 0, buffer.Length);
        if (n == 0)
        {
            return 0;
        }
        if (!_pinned.IsEmpty && offset >= _pinnedAt && offset + n <= _pinnedAt + _pinned.Length)
        {
            _pinned.Span.Slice((int)(offset - _pinnedAt), n).CopyTo(buffer);
            return n;
        }
        if (_remote is { } remote)
        {
            return guard.Read(remote, buffer[..n], offset);
        }
        if (AnswerPeeksWithZeros)
        {
            buffer[..n].Clear();
            return n;
        }
        throw new IOException($"{name}: the cache file read its remote file at {offset} (+{n}) outside an admission; refused", 5);
    }

    public ValueTask<int> ReadAtAsync(Memory<byte> buffer, long offset, CancellationToken cancellationToken = default) =>
        ValueTask.FromResult(ReadAt(buffer.Span, offset));

    public void WriteAt(ReadOnlySpan<byte> data, long offset) => throw ReadOnly();

    public ValueTask WriteAtAsync(ReadOnlyMemory<byte> data, long offset, CancellationToken cancellationToken = default) => throw ReadOnly();

    public void Flush()
    {
    }

    public void SetLength(long length) => throw ReadOnly();

    public void PunchHole(long offset, long length) => throw ReadOnly();

    public (long MTimeNs, ulong Inode) GetIdentity() => (mtimeNs, 0);

    public IEnumerable<(long Offset, long Length)> GetDataRanges(long start, long end) => [(start, Math.Min(end, size) - start)];

    public void Dispose()
    {
    }

    private NotSupportedException ReadOnly() => new($"{name}: a remote file is read-only");
}
