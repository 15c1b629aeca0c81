using System.Runtime.CompilerServices;
using BAOverlay.Interop;
using Microsoft.Win32.SafeHandles;
using Mono.Unix.Native;

namespace BAOverlay.Storage;

/// <summary>
/// <see cref="IBlockStorage"/> over a file: <see cref="RandomAccess"/> on a <see cref="SafeFileHandle"/>, explicit offsets only.
/// </summary>
public sealed class FileStorage : IBlockStorage
{
    private readonly SafeFileHandle _handle;
    private readonly bool _ownsHandle;
    private readonly FileLocks.Holder? _lock;
    private int _disposed;

    /// <summary>Opens <paramref name="path"/> with the given mode and access. Takes no lock: B-CoW files are opened
    /// through <see cref="BCowFile"/> and the checker, which lock them.</summary>
    /// <exception cref="IOException">The file cannot be opened; the message names it.</exception>
    public FileStorage(string path, FileMode mode, FileAccess access)
        : this(path, mode, access, FileLockMode.None)
    {
    }

    /// <summary>Opens <paramref name="path"/> and locks it as <paramref name="locking"/> says (<see cref="FileLocks"/>).
    /// <paramref name="mode"/> must not truncate: the file is only ours once the lock is held.</summary>
    /// <exception cref="BCowFileInUseException">The lock is held elsewhere; the file is closed again, untouched.</exception>
    internal FileStorage(string path, FileMode mode, FileAccess access, FileLockMode locking)
    {
        if (locking != FileLockMode.None && mode is FileMode.Create or FileMode.Truncate)
        {
            throw new ArgumentException("a locked open may not truncate before it holds the lock", nameof(mode));
        }
        Name = path;
        CanWrite = (access & FileAccess.Write) != 0;
        try
        {
            _handle = File.OpenHandle(path, mode, access, CanWrite ? FileShare.Read : FileShare.ReadWrite);
        }
        catch (Exception e) when (e is UnauthorizedAccessException or IOException && Directory.Exists(path))
        {
            // .NET reports EISDIR as "Access to the path is denied" (or, creating, "already exists"): say what it is.
            throw new IOException($"{path}: Is a directory", e);
        }
        _ownsHandle = true;
        try
        {
            _lock = FileLocks.Acquire(_handle, path, locking);
        }
        catch
        {
            _handle.Dispose();
            throw;
        }
    }

    /// <summary>Wraps an open handle. The storage disposes it only when <paramref name="ownsHandle"/> is true.</summary>
    public FileStorage(SafeFileHandle handle, string name, bool canWrite, bool ownsHandle)
    {
        _handle = handle;
        Name = name;
        CanWrite = canWrite;
        _ownsHandle = ownsHandle;
    }

    /// <summary>Wraps an open handle that it then owns, and locks the file as <paramref name="locking"/> says.</summary>
    /// <exception cref="BCowFileInUseException">The lock is held elsewhere; the handle is closed.</exception>
    internal FileStorage(SafeFileHandle handle, string name, bool canWrite, FileLockMode locking)
        : this(handle, name, canWrite, ownsHandle: true)
    {
        try
        {
            _lock = FileLocks.Acquire(_handle, name, locking);
        }
        catch
        {
            _handle.Dispose();
            throw;
        }
    }

    /// <inheritdoc/>
    public string Name { get; }

    /// <inheritdoc/>
    public bool CanWrite { get; }

    /// <summary>The open file (for a server that splices its bytes; this object owns it).</summary>
    internal SafeFileHandle Handle => _handle;

    /// <inheritdoc/>
    public long Length => RandomAccess.GetLength(_handle);

    /// <inheritdoc/>
    public int ReadAt(Span<byte> buffer, long offset)
    {
        int total = 0;
        while (total < buffer.Length)
        {
            int n = RandomAccess.Read(_handle, buffer[total..], offset + total);
            if (n == 0)
            {
                break;
            }
            total += n;
        }
        return total;
    }

    /// <inheritdoc/>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    public async ValueTask<int> ReadAtAsync(Memory<byte> buffer, long offset, CancellationToken cancellationToken = default)
    {
        int total = 0;
        while (total < buffer.Length)
        {
            int n = await RandomAccess.ReadAsync(_handle, buffer[total..], offset + total, cancellationToken).ConfigureAwait(false);
            if (n == 0)
            {
                break;
            }
            total += n;
        }
        return total;
    }

    /// <inheritdoc/>
    public void WriteAt(ReadOnlySpan<byte> data, long offset) => RandomAccess.Write(_handle, data, offset);

    /// <inheritdoc/>
    public ValueTask WriteAtAsync(ReadOnlyMemory<byte> data, long offset, CancellationToken cancellationToken = default) =>
        RandomAccess.WriteAsync(_handle, data, offset, cancellationToken);

    /// <inheritdoc/>
    public void Flush() => RandomAccess.FlushToDisk(_handle);

    /// <inheritdoc/>
    public void SetLength(long length) => RandomAccess.SetLength(_handle, length);

    /// <inheritdoc/>
    public void PunchHole(long offset, long length)
    {
        if (length <= 0)
        {
            return;
        }
        bool added = false;
        try
        {
            _handle.DangerousAddRef(ref added);
            int fd = (int)_handle.DangerousGetHandle();
            if (LibC.fallocate(fd, LibC.FALLOC_FL_PUNCH_HOLE | LibC.FALLOC_FL_KEEP_SIZE, offset, length) == 0)
            {
                return;
            }
            int errno = System.Runtime.InteropServices.Marshal.GetLastPInvokeError();
            if (errno != LibC.EOPNOTSUPP)
            {
                throw new IOException($"{Name}: cannot punch a hole at {offset} (+{length}): {Stdlib.strerror((Errno)NativeConvert.ToErrno(errno))}", errno);
            }
        }
        finally
        {
            if (added)
            {
                _handle.DangerousRelease();
            }
        }
        // The file system cannot punch: zeros keep the promise that the range reads as zeros.
        byte[] zeros = new byte[Math.Min(length, 1 << 20)];
        for (long done = 0; done < length; done += zeros.Length)
        {
            RandomAccess.Write(_handle, zeros.AsSpan(0, (int)Math.Min(zeros.Length, length - done)), offset + done);
        }
    }

    /// <inheritdoc/>
    /// <summary>
    /// Tells the kernel the fingerprint's sampled chunks of a file of this size will be read soon (<c>posix_fadvise(POSIX_FADV_WILLNEED)</c>, which starts reading
    /// them in the background): scattered reads that follow then wait for the device once, not once each. Advice only;
    /// failures are ignored.
    /// </summary>
    internal void WillNeedSamples(long size)
    {
        bool added = false;
        try
        {
            _handle.DangerousAddRef(ref added);
            int fd = (int)_handle.DangerousGetHandle();
            for (int i = 0, count = Format.LowerSampling.Count(size); i < count; i++)
            {
                Syscall.posix_fadvise(fd, Format.LowerSampling.Offset(size, i), Format.LowerSampling.Length(size, i), PosixFadviseAdvice.POSIX_FADV_WILLNEED);
            }
        }
        finally
        {
            if (added)
            {
                _handle.DangerousRelease();
            }
        }
    }

    /// <summary>
    /// What names this file's content for as long as this process runs: device, inode, size, modification and change
    /// times. Any change of the content moves the change time (ctime, which no system call sets to a chosen value),
    /// so a content fingerprint taken with the same key still holds; false when fstat fails.
    /// </summary>
    internal bool TryGetContentKey(out Engine.LowerContentKey key)
    {
        bool added = false;
        try
        {
            _handle.DangerousAddRef(ref added);
            if (Syscall.fstat((int)_handle.DangerousGetHandle(), out Stat st) != 0)
            {
                key = default;
                return false;
            }
            key = new Engine.LowerContentKey(st.st_dev, st.st_ino, st.st_size, (st.st_mtime * 1_000_000_000L) + st.st_mtime_nsec,
                (st.st_ctime * 1_000_000_000L) + st.st_ctime_nsec);
            return true;
        }
        finally
        {
            if (added)
            {
                _handle.DangerousRelease();
            }
        }
    }

    /// <inheritdoc/>
    public (long MTimeNs, ulong Inode) GetIdentity()
    {
        bool added = false;
        try
        {
            _handle.DangerousAddRef(ref added);
            if (Syscall.fstat((int)_handle.DangerousGetHandle(), out Stat st) != 0)
            {
                throw new IOException($"{Name}: fstat failed: {Stdlib.GetLastError()}");
            }
            return ((st.st_mtime * 1_000_000_000L) + st.st_mtime_nsec, st.st_ino);
        }
        finally
        {
            if (added)
            {
                _handle.DangerousRelease();
            }
        }
    }

    /// <inheritdoc/>
    public IEnumerable<(long Offset, long Length)> GetDataRanges(long start, long end)
    {
        var ranges = new List<(long, long)>();
        bool added = false;
        try
        {
            _handle.DangerousAddRef(ref added);
            int fd = (int)_handle.DangerousGetHandle();
            long position = start;
            while (position < end)
            {
                long data = LibC.lseek(fd, position, LibC.SEEK_DATA);
                if (data < 0)
                {
                    int errno = System.Runtime.InteropServices.Marshal.GetLastPInvokeError();
                    if (errno == LibC.ENXIO)
                    {
                        break; // no data after position
                    }
                    ranges.Clear();
                    ranges.Add((start, end - start)); // cannot tell: everything is data
                    return ranges;
                }
                if (data >= end)
                {
                    break;
                }
                long hole = LibC.lseek(fd, data, LibC.SEEK_HOLE);
                if (hole < 0)
                {
                    hole = end;
                }
                hole = Math.Min(hole, end);
                ranges.Add((data, hole - data));
                position = hole;
            }
        }
        finally
        {
            if (added)
            {
                _handle.DangerousRelease();
            }
        }
        return ranges;
    }

    /// <summary>Closes the handle if this storage owns it. Idempotent.</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) == 0 && _ownsHandle)
        {
            if (_lock is not null)
            {
                FileLocks.Release(_lock); // before the close, which would drop the kernel lock another open may carry
            }
            _handle.Dispose();
        }
    }
}
