using System.Buffers;
using BAOverlay.Engine;
using BAOverlay.Storage;

namespace BAOverlay.Cache;

/// <summary>
/// A remote file read through a <see cref="ZoneCache"/> (one per open of the file: a reader): read-only; each read is
/// split at zone boundaries, and each zone is read from the cache file when cached, else from the store under the
/// deadline, or, when the reader's touch made it hot enough, fetched whole and admitted.
/// </summary>
/// <remarks>
/// A reader adds heat to a zone once (its first read there), so a single scan, however many reads it makes, is one
/// touch. A read of a cached zone that fails on the local disk is answered from the store (the cache file is set
/// aside for the rest of the run): the cache may make a read slower, never wrong.
/// </remarks>
internal sealed class CachedLowerStorage : IBlockStorage
{
    private readonly ZoneCache _cache;
    private readonly CachedFile? _file;
    private readonly IBlockStorage _remote;
    private readonly bool _ownsRemote;
    private readonly ulong _inode;
    private readonly HashSet<int> _touched = new();
    private int _disposed;
    private int _remoteUsers = 1; // this reader, and each admission queued with its remote file
    private readonly object _recentGate = new();
    private byte[]? _recent; // the last zone this reader fetched whole and queued for admission (pooled), or null
    private int _recentZone = -1;
    private volatile bool _countsHeat = true;
    private readonly FirstFetchCheck? _check;

    /// <summary>A reader of <paramref name="remote"/>; <paramref name="check"/> is the file's content check when it is
    /// not verified yet (<see cref="FirstFetchCheck"/>): its first read of the store reads and checks the whole file
    /// first.</summary>
    public CachedLowerStorage(ZoneCache cache, CachedFile? file, IBlockStorage remote, bool ownsRemote, ulong inode = 0, FirstFetchCheck? check = null)
    {
        _check = check;
        _inode = inode;
        _cache = cache;
        _file = file;
        _remote = remote;
        _ownsRemote = ownsRemote;
    }

    public string Name => _remote.Name;

    public bool CanWrite => false;

    /// <summary>
    /// False while the reads are not a reader's (the sampled identity check a B-CoW file makes of its lower file at
    /// creation and at every open: 64 chunks spread over the file, which would otherwise count 64 zones hot per open).
    /// Such reads add no heat; they are still served from cached zones, and from the store under the deadline.
    /// </summary>
    public bool CountsHeat
    {
        get => _countsHeat;
        set => _countsHeat = value;
    }

    /// <summary>The size the remote file had when it was wrapped (files in the store do not change).</summary>
    public long Length => _file?.Size ?? _remote.Length;

    public unsafe int ReadAt(Span<byte> buffer, long offset)
    {
        fixed (byte* pointer = buffer)
        {
            PointerMemoryManager memory = PointerMemoryManager.Rent(pointer, buffer.Length);
            try
            {
                return ReadCoreAsync(memory.Memory, offset, useAsync: false, CancellationToken.None).GetAwaiter().GetResult();
            }
            finally
            {
                PointerMemoryManager.Return(memory);
            }
        }
    }

    public ValueTask<int> ReadAtAsync(Memory<byte> buffer, long offset, CancellationToken cancellationToken = default) =>
        ReadCoreAsync(buffer, offset, useAsync: true, cancellationToken);

    private async ValueTask<int> ReadCoreAsync(Memory<byte> buffer, long offset, bool useAsync, CancellationToken cancellationToken)
    {
        ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
        ArgumentOutOfRangeException.ThrowIfNegative(offset);
        if (_file is not { } file)
        {
            int n = await ReadRemoteAsync(buffer, offset, useAsync, cancellationToken).ConfigureAwait(false);
            _cache.CountMiss(n);
            return n;
        }
        if (offset >= file.Size || buffer.IsEmpty)
        {
            return 0;
        }
        int count = (int)Math.Min(buffer.Length, file.Size - offset);
        int done = 0;
        while (done < count)
        {
            long position = offset + done;
            int zone = (int)(position >> file.ZoneLog2);
            long zoneEnd = Math.Min(file.Size, (long)(zone + 1) << file.ZoneLog2);
            int n = (int)Math.Min(count - done, zoneEnd - position);
            Memory<byte> part = buffer.Slice(done, n);
            if (TryReadRecent(file, zone, part.Span, position))
            {
                _cache.CountMiss(n);
                done += n;
                continue;
            }
            switch (_cache.PlanRead(file, zone, FirstTouch(zone), out BCowFile? cacheFile))
            {
                case ZoneCache.Plan.Cached:
                    if (!await TryReadCachedAsync(file, zone, cacheFile!, part, position, useAsync, cancellationToken).ConfigureAwait(false))
                    {
                        await ReadExactlyAsync(part, position, useAsync, cancellationToken).ConfigureAwait(false);
                        _cache.CountMiss(n);
                    }
                    break;
                case ZoneCache.Plan.Admit:
                    await FetchAndAdmitAsync(file, zone, part, position, useAsync, cancellationToken).ConfigureAwait(false);
                    _cache.CountMiss(n);
                    break;
                default:
                    await ReadExactlyAsync(part, position, useAsync, cancellationToken).ConfigureAwait(false);
                    _cache.CountMiss(n);
                    break;
            }
            done += n;
        }
        return count;
    }

    /// <summary>Reads a pinned cached zone; false (the cache file set aside) when the local read fails.</summary>
    private async ValueTask<bool> TryReadCachedAsync(CachedFile file, int zone, BCowFile cacheFile, Memory<byte> part, long position, bool useAsync, CancellationToken cancellationToken)
    {
        try
        {
            int read = useAsync
                ? await cacheFile.ReadAtAsync(part, position, cancellationToken).ConfigureAwait(false)
                : cacheFile.ReadAt(part.Span, position);
            if (read != part.Length)
            {
                throw new IOException($"{cacheFile.Name}: {read} bytes read at {position}, {part.Length} expected");
            }
            _cache.CountHit(read);
            return true;
        }
        catch (Exception e) when (e is IOException or BCowFormatException or ObjectDisposedException)
        {
            _cache.CacheReadFailed(file, e);
            return false;
        }
        finally
        {
            ZoneCache.Unpin(file, zone);
        }
    }

    /// <summary>Fetches the whole zone (one read of the store), answers the caller from it, and admits it (on the
    /// cache's admission thread when it has one, <see cref="ZoneCacheOptions.AdmitInBackground"/>).</summary>
    private async ValueTask FetchAndAdmitAsync(CachedFile file, int zone, Memory<byte> part, long position, bool useAsync, CancellationToken cancellationToken)
    {
        long start = file.ZoneStart(zone);
        int length = file.ZoneLength(zone);
        byte[]? zoneBytes = ArrayPool<byte>.Shared.Rent(length);
        try
        {
            try
            {
                Memory<byte> whole = zoneBytes.AsMemory(0, length);
                int n = await ReadRemoteAsync(whole, start, useAsync, cancellationToken).ConfigureAwait(false);
                if (n < length)
                {
                    throw Truncated(start + n);
                }
            }
            catch
            {
                ZoneCache.CancelAdmission(file, zone);
                throw;
            }
            zoneBytes.AsSpan((int)(position - start), part.Length).CopyTo(part.Span);
            // Queued only with a remote file this reader owns: it stays open until the admission is done with it.
            if (_ownsRemote && _cache.AdmitsInBackground)
            {
                Interlocked.Increment(ref _remoteUsers);
                byte[] recent = ArrayPool<byte>.Shared.Rent(length);
                zoneBytes.AsSpan(0, length).CopyTo(recent);
                if (_cache.TryAdmitLater(file, zone, zoneBytes, length, _remote, ReleaseRemote))
                {
                    zoneBytes = null; // the queue's now
                    KeepRecent(zone, recent);
                    return;
                }
                ArrayPool<byte>.Shared.Return(recent);
                Interlocked.Decrement(ref _remoteUsers);
            }
            _cache.Admit(file, zone, zoneBytes.AsMemory(0, length), _remote);
        }
        finally
        {
            if (zoneBytes is not null)
            {
                ArrayPool<byte>.Shared.Return(zoneBytes);
            }
        }
    }

    /// <summary>
    /// Keeps the zone this reader just fetched whole (its admission queued) to answer its next reads there: until the
    /// admission is made the zone is not cached, and a sequential reader (the kernel reads 128 KiB at a time) would
    /// otherwise read the rest of the zone from the store again.
    /// </summary>
    private void KeepRecent(int zone, byte[] bytes)
    {
        byte[]? dropped;
        lock (_recentGate)
        {
            if (Volatile.Read(ref _disposed) != 0)
            {
                dropped = bytes; // disposed meanwhile (Dispose empties the slot under this lock)
            }
            else
            {
                dropped = _recent;
                _recent = bytes;
                _recentZone = zone;
            }
        }
        if (dropped is not null)
        {
            ArrayPool<byte>.Shared.Return(dropped);
        }
    }

    /// <summary>Answers a read inside the zone kept by <see cref="KeepRecent"/>, if that is its zone.</summary>
    private bool TryReadRecent(CachedFile file, int zone, Span<byte> part, long position)
    {
        lock (_recentGate)
        {
            if (_recent is null || _recentZone != zone)
            {
                return false;
            }
            _recent.AsSpan((int)(position - file.ZoneStart(zone)), part.Length).CopyTo(part);
            return true;
        }
    }

    private async ValueTask ReadExactlyAsync(Memory<byte> part, long position, bool useAsync, CancellationToken cancellationToken)
    {
        int n = await ReadRemoteAsync(part, position, useAsync, cancellationToken).ConfigureAwait(false);
        if (n < part.Length)
        {
            throw Truncated(position + n);
        }
    }

    private async ValueTask<int> ReadRemoteAsync(Memory<byte> destination, long position, bool useAsync, CancellationToken cancellationToken)
    {
        if (TryReadVerifiedCopy(destination.Span, position, out int copied))
        {
            return copied;
        }
        if (_check is { IsVerified: false } check)
        {
            return await VerifyAndReadAsync(check, destination, position, useAsync, cancellationToken).ConfigureAwait(false);
        }
        int n = useAsync
            ? await _cache.Guard.ReadAsync(_remote, destination, position, cancellationToken).ConfigureAwait(false)
            : _cache.Guard.Read(_remote, destination.Span, position);
        _cache.CountFetched(n);
        return n;
    }

    /// <summary>The size of the pieces a verification reads the file in: each is one read of the store under the
    /// deadline, so a long file read from a store that answers is never cut by the deadline, and one that stops
    /// answering fails within it.</summary>
    private const int VerifyChunk = 1 << 20;

    /// <summary>
    /// The first read of the store of a file not verified yet: reads the whole file from the store, piece by piece
    /// (each under the store's deadline), hashes it and compares it with its verified hash; answers
    /// <paramref name="destination"/> from those same bytes (so what a reader gets, and what is admitted from it, is
    /// what was hashed); records the success. A mismatch fails this read and every later one that needs the store with
    /// EIO, and is logged naming the file. Nothing read is handed out or admitted before the hash is checked.
    /// </summary>
    private async ValueTask<int> VerifyAndReadAsync(FirstFetchCheck check, Memory<byte> destination, long position, bool useAsync, CancellationToken cancellationToken)
    {
        if (check.Failure is { } failure)
        {
            throw new IOException(failure, Eio);
        }
        long size = check.Size;
        if (Length != size)
        {
            throw Refused(check, $"{Length} bytes where its verified size is {size}");
        }
        // A file small enough is read into one buffer, kept after the check to answer this reader's later reads of
        // the store (a start reads its files whole: each is fetched once, and read as it was hashed).
        byte[]? whole = size <= KeepVerifiedBytes ? ArrayPool<byte>.Shared.Rent((int)Math.Max(1, size)) : null;
        byte[] chunk = whole ?? ArrayPool<byte>.Shared.Rent(VerifyChunk);
        byte[]? answer = destination.Length == 0 || whole is not null ? null : ArrayPool<byte>.Shared.Rent(destination.Length);
        bool kept = false;
        try
        {
            using var hash = System.Security.Cryptography.IncrementalHash.CreateHash(System.Security.Cryptography.HashAlgorithmName.SHA256);
            long end = position + destination.Length;
            for (long offset = 0; offset < size;)
            {
                int want = (int)Math.Min(VerifyChunk, size - offset);
                int at = whole is null ? 0 : (int)offset;
                Memory<byte> piece = chunk.AsMemory(at, want);
                int n = useAsync
                    ? await _cache.Guard.ReadAsync(_remote, piece, offset, cancellationToken).ConfigureAwait(false)
                    : _cache.Guard.Read(_remote, piece.Span, offset);
                _cache.CountFetched(n);
                if (n < want)
                {
                    throw Refused(check, $"it ends at {offset + n}, before its verified size {size}");
                }
                hash.AppendData(chunk, at, n);
                long from = Math.Max(offset, position);
                long to = Math.Min(offset + n, end);
                if (to > from && answer is not null)
                {
                    chunk.AsSpan(at + (int)(from - offset), (int)(to - from)).CopyTo(answer.AsSpan((int)(from - position)));
                }
                offset += n;
            }
            Span<byte> found = stackalloc byte[32];
            hash.GetHashAndReset(found);
            if (!found.SequenceEqual(check.Sha256))
            {
                throw Refused(check, $"its content hashes to {Convert.ToHexStringLower(found)}, its layer's list says {Convert.ToHexStringLower(check.Sha256)}");
            }
            int count = (int)Math.Clamp(size - position, 0, destination.Length);
            (whole is null ? answer.AsSpan(0, count) : whole.AsSpan((int)Math.Min(position, size), count)).CopyTo(destination.Span);
            check.Succeeded();
            if (whole is not null)
            {
                kept = true;
                KeepVerifiedCopy(whole, size, count);
            }
            return count;
        }
        finally
        {
            if (!kept)
            {
                ArrayPool<byte>.Shared.Return(chunk);
            }
            if (answer is not null)
            {
                ArrayPool<byte>.Shared.Return(answer);
            }
        }
    }

    /// <summary>The largest file whose verified bytes a reader keeps (<see cref="KeepVerifiedCopy"/>).</summary>
    private const long KeepVerifiedBytes = 4 << 20;

    private byte[]? _verified; // the whole file as verified (pooled), answering this reader's reads of the store
    private long _verifiedSize;
    private long _verifiedServed;

    /// <summary>Keeps the file's verified bytes for this reader's next reads of the store, until it has been answered
    /// as many bytes as the file holds (a whole read) or is disposed: a start that reads a file whole fetches it once.</summary>
    private void KeepVerifiedCopy(byte[] whole, long size, int served)
    {
        byte[]? dropped = whole;
        lock (_recentGate)
        {
            if (Volatile.Read(ref _disposed) == 0 && _verified is null && served < size)
            {
                _verified = whole;
                _verifiedSize = size;
                _verifiedServed = served;
                dropped = null;
            }
        }
        if (dropped is not null)
        {
            ArrayPool<byte>.Shared.Return(dropped);
        }
    }

    /// <summary>Answers a read of the store from the kept verified bytes, if any.</summary>
    private bool TryReadVerifiedCopy(Span<byte> destination, long position, out int count)
    {
        byte[]? dropped = null;
        lock (_recentGate)
        {
            if (_verified is null)
            {
                count = 0;
                return false;
            }
            count = (int)Math.Clamp(_verifiedSize - position, 0, destination.Length);
            _verified.AsSpan((int)Math.Min(position, _verifiedSize), count).CopyTo(destination);
            _verifiedServed += count;
            if (_verifiedServed >= _verifiedSize)
            {
                dropped = _verified;
                _verified = null;
            }
        }
        if (dropped is not null)
        {
            ArrayPool<byte>.Shared.Return(dropped);
        }
        return true;
    }

    private const int Eio = 5;

    /// <summary>The file's content is not the verified one: kept as its failure, logged, and thrown as EIO.</summary>
    private IOException Refused(FirstFetchCheck check, string why)
    {
        string message = $"{check.Name}: refused, the file in the store is not the verified layer's ({why})";
        if (check.Failure is null)
        {
            _cache.Log(message);
        }
        check.Failed(message);
        return new IOException(message, Eio);
    }

    private IOException Truncated(long at) =>
        new($"{_remote.Name}: the file in the store ends at {at}, before its size when opened ({_file!.Size}); files in the store must not change", 5);

    /// <summary>True the first time this reader reads in <paramref name="zone"/>.</summary>
    private bool FirstTouch(int zone)
    {
        if (!_countsHeat)
        {
            return false;
        }
        lock (_touched)
        {
            return _touched.Add(zone);
        }
    }

    public void WriteAt(ReadOnlySpan<byte> data, long offset) => throw ReadOnly();

    public ValueTask WriteAtAsync(ReadOnlyMemory<byte> data, long offset, CancellationToken cancellationToken = default) => throw ReadOnly();

    public void Flush()
    {
    }

    public void SetLength(long length) => throw ReadOnly();

    public void PunchHole(long offset, long length) => throw ReadOnly();

    /// <summary>The modification time the cache knows the file by, and its inode number when it was wrapped; no call to
    /// the store (which may not answer).</summary>
    public (long MTimeNs, ulong Inode) GetIdentity() => _file is { } file ? (file.MTimeNs, _inode) : _remote.GetIdentity();

    /// <summary>All data: asking the store where its holes are could hang.</summary>
    public IEnumerable<(long Offset, long Length)> GetDataRanges(long start, long end)
    {
        long stop = Math.Min(end, Length);
        return stop > start ? [(start, stop - start)] : [];
    }

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) == 0)
        {
            byte[]? recent;
            byte[]? verified;
            lock (_recentGate)
            {
                recent = _recent;
                _recent = null;
                verified = _verified;
                _verified = null;
            }
            if (recent is not null)
            {
                ArrayPool<byte>.Shared.Return(recent);
            }
            if (verified is not null)
            {
                ArrayPool<byte>.Shared.Return(verified);
            }
            ReleaseRemote();
        }
    }

    /// <summary>One user of the remote file is done with it (this reader at its disposal, or a queued admission); the
    /// last one disposes it if this reader owns it.</summary>
    private void ReleaseRemote()
    {
        if (Interlocked.Decrement(ref _remoteUsers) == 0 && _ownsRemote)
        {
            _remote.Dispose();
        }
    }

    private NotSupportedException ReadOnly() => new($"{_remote.Name}: a file of the store is read-only");
}
