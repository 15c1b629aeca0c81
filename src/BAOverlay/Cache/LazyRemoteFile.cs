using BAOverlay.Storage;
using Microsoft.Win32.SafeHandles;

namespace BAOverlay.Cache;

/// <summary>
/// A remote file known by the attributes its lookup found (size, modification time, inode number), opened only at
/// its first read: wrapped by a <see cref="ZoneCache"/>, a file whose reads are all answered by cached zones never
/// opens (nor closes) the store's file, which on a network file system is two round trips per file.
/// </summary>
/// <remarks>
/// <para>The open runs where the first read runs: inside the cache's guarded read (<see cref="RemoteGuard"/>), so
/// under the store's deadline, and a store that does not answer the open gives EIO within it as a read would.</para>
/// <para>The opened file is checked against the attributes it was wrapped with (a regular file of the same size and
/// modification time, the cache's identity of it): a file changed between its lookup and its first uncached read
/// is refused with EIO, never read as the file the cache knows.</para>
/// <para>An open that fails with an error about the file itself (ENOENT, EACCES, ELOOP...) is thrown as a
/// <see cref="RemoteOpenException"/> carrying that errno: what the open would have answered had it been made
/// eagerly, and not a failure of the store. Any other error (EIO, ENOTCONN, a timeout...) is the store's.</para>
/// <para>Thread-safe: two first reads at once may both open; one descriptor is kept, the other closed.</para>
/// </remarks>
internal sealed class LazyRemoteFile : IBlockStorage
{
    private readonly string _name;
    private readonly long _size;
    private readonly long _mtimeNs;
    private readonly ulong _inode;
    private readonly Func<SafeFileHandle> _open;
    private readonly Action? _opened;
    private FileStorage? _file;
    private int _disposed;

    /// <param name="name">The file, for messages.</param>
    /// <param name="size">Its size when looked up.</param>
    /// <param name="mtimeNs">Its modification time when looked up (ns since the epoch).</param>
    /// <param name="inode">Its inode number when looked up (reported by <see cref="GetIdentity"/>; not compared: a
    /// network file system may number a file differently after a reconnection).</param>
    /// <param name="open">Opens the file for reading (no symbolic link followed); throws an <see cref="IOException"/>
    /// whose <see cref="Exception.HResult"/> is the errno when it fails.</param>
    /// <param name="opened">Called after each successful open (the cache counts them: <see cref="ZoneCacheStatus.StoreOpens"/>).</param>
    public LazyRemoteFile(string name, long size, long mtimeNs, ulong inode, Func<SafeFileHandle> open, Action? opened = null)
    {
        _opened = opened;
        ArgumentOutOfRangeException.ThrowIfNegative(size);
        _name = name;
        _size = size;
        _mtimeNs = mtimeNs;
        _inode = inode;
        _open = open;
    }

    /// <summary>Whether the store's file was opened (a read needed it).</summary>
    public bool IsOpen => Volatile.Read(ref _file) is not null;

    public string Name => _name;

    public bool CanWrite => false;

    /// <summary>The size the file had when looked up (files in the store do not change; a change is refused at open).</summary>
    public long Length => _size;

    public int ReadAt(Span<byte> buffer, long offset) => File().ReadAt(buffer, offset);

    public ValueTask<int> ReadAtAsync(Memory<byte> buffer, long offset, CancellationToken cancellationToken = default) =>
        File().ReadAtAsync(buffer, offset, cancellationToken);

    private FileStorage File()
    {
        ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
        return Volatile.Read(ref _file) ?? OpenNow();
    }

    private FileStorage OpenNow()
    {
        SafeFileHandle handle;
        try
        {
            handle = _open();
        }
        catch (IOException e) when (IsAboutTheFile(e.HResult))
        {
            throw new RemoteOpenException($"{_name}: open: {e.Message}", e.HResult, e);
        }
        _opened?.Invoke();
        var opened = new FileStorage(handle, _name, canWrite: false, ownsHandle: true);
        try
        {
            long size = opened.Length;
            (long mtimeNs, _) = opened.GetIdentity();
            if (size != _size || mtimeNs != _mtimeNs)
            {
                throw new RemoteOpenException(
                    $"{_name}: changed since it was looked up (size {size}, modification time {mtimeNs} ns; {_size}, {_mtimeNs} ns expected): refused, files in the store must not change", Eio);
            }
        }
        catch
        {
            opened.Dispose();
            throw;
        }
        FileStorage? other = Interlocked.CompareExchange(ref _file, opened, null);
        if (other is not null)
        {
            opened.Dispose(); // another first read opened it at the same time
            return other;
        }
        if (Volatile.Read(ref _disposed) != 0 && Interlocked.Exchange(ref _file, null) is { } late)
        {
            late.Dispose(); // disposed while opening: the descriptor is not kept
            throw new ObjectDisposedException(_name);
        }
        return opened;
    }

    private const int Eio = 5;

    /// <summary>Errors of an open that are about the file (its name, its permissions, its type), not about the store
    /// answering: ENOENT, EACCES, EPERM, ENOTDIR, ELOOP, EISDIR, ENXIO, ENAMETOOLONG, EMFILE, ENFILE.</summary>
    private static bool IsAboutTheFile(int errno) => errno is 2 or 13 or 1 or 20 or 40 or 21 or 6 or 36 or 24 or 23;

    public void WriteAt(ReadOnlySpan<byte> data, long offset) => throw ReadOnly();

    public ValueTask WriteAtAsync(ReadOnlyMemory<byte> data, long offset, CancellationToken cancellationToken = default) => throw ReadOnly();

    public void Flush()
    {
    }

    public void SetLength(long length) => throw ReadOnly();

    public void PunchHole(long offset, long length) => throw ReadOnly();

    /// <summary>The modification time and inode number the lookup found: no call to the store.</summary>
    public (long MTimeNs, ulong Inode) GetIdentity() => (_mtimeNs, _inode);

    /// <summary>All data: asking the store where its holes are would open the file.</summary>
    public IEnumerable<(long Offset, long Length)> GetDataRanges(long start, long end)
    {
        long stop = Math.Min(end, _size);
        return stop > start ? [(start, stop - start)] : [];
    }

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) == 0)
        {
            Interlocked.Exchange(ref _file, null)?.Dispose();
        }
    }

    private NotSupportedException ReadOnly() => new($"{_name}: a file of the store is read-only");
}

/// <summary>
/// The open of a lazily opened remote file (<see cref="LazyRemoteFile"/>) failed for a reason of the file's own (its
/// errno in <see cref="Exception.HResult"/>), or the file changed since its lookup (EIO): the store answered, so this
/// is not a failure of the store, and the errno is what the caller gets.
/// </summary>
internal sealed class RemoteOpenException : IOException
{
    public RemoteOpenException(string message, int errno, Exception? inner = null)
        : base(message, inner)
    {
        HResult = errno;
    }
}
