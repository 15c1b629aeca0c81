namespace BAOverlay.FileSystem;

/// <summary>
/// An open regular file of the overlay (FUSE's <c>fh</c>). Reads and writes go to the object's current data, so a
/// handle opened read-only before another handle copies the file up sees the new bytes. Thread-safe; positional.
/// Dispose it to release (FUSE <c>release</c>).
/// </summary>
public sealed class OverlayHandle : IDisposable
{
    private readonly OverlayFileSystem _fileSystem;
    private int _released;

    internal OverlayHandle(OverlayFileSystem fileSystem, OverlayNode node, bool canWrite)
    {
        _fileSystem = fileSystem;
        Node = node;
        CanWrite = canWrite;
    }

    internal OverlayNode Node { get; }

    /// <summary>The overlay inode number of the open file.</summary>
    public ulong Ino => Node.Ino;

    /// <summary>True when opened for writing.</summary>
    public bool CanWrite { get; }

    /// <summary>Reads at <paramref name="offset"/>; fewer bytes only at the end of the file.</summary>
    public int Read(Span<byte> buffer, long offset) => _fileSystem.DataOf(this).Read(buffer, offset);

    /// <inheritdoc cref="Read"/>
    public ValueTask<int> ReadAsync(Memory<byte> buffer, long offset, CancellationToken cancellationToken = default) =>
        _fileSystem.DataOf(this).ReadAsync(buffer, offset, cancellationToken);

    /// <summary>Writes at <paramref name="offset"/>.</summary>
    /// <exception cref="OverlayException">EBADF when the handle is read-only.</exception>
    public void Write(ReadOnlySpan<byte> data, long offset)
    {
        try
        {
            _fileSystem.WritableDataOf(this).Write(data, offset);
        }
        catch (Exception e)
        {
            _fileSystem.CheckUpperAfter(e); // a failing upper file system turns the overlay read-only
            throw;
        }
        _fileSystem.OnChanged(Ino, offset, data.Length);
    }

    /// <inheritdoc cref="Write"/>
    public ValueTask WriteAsync(ReadOnlyMemory<byte> data, long offset, CancellationToken cancellationToken = default)
    {
        ValueTask write = _fileSystem.WritableDataOf(this).WriteAsync(data, offset, cancellationToken);
        return _fileSystem.HasChangedHandlers ? Notified(write, offset, data.Length) : write;

        async ValueTask Notified(ValueTask pending, long at, int count)
        {
            await pending.ConfigureAwait(false);
            _fileSystem.OnChanged(Ino, at, count);
        }
    }

    /// <summary>
    /// For a kernel that can serve a file's reads and writes itself (FUSE passthrough): the file holding this open
    /// file's bytes, opened again, when that is a whole regular file of the upper layer with neither set-user-ID nor
    /// set-group-ID (opened for reading and writing), or, with <paramref name="includeLowerFiles"/>, an untouched
    /// regular file of a lower layer that is not read through the hot-zone cache (opened read-only); null otherwise (a
    /// B-CoW file, a removed one), and the overlay must serve it. Writes made through an upper file are the file's
    /// writes: the overlay sees them, as the kernel sees the overlay's. A lower file is not the file a copy-up makes:
    /// whoever reads through it must pass through opens for reading only, and keep the file's bytes from changing
    /// (refuse opens for writing and truncates) while it does. The caller owns the handle.
    /// </summary>
    public Microsoft.Win32.SafeHandles.SafeFileHandle? OpenPassthroughFile(bool includeLowerFiles = false) =>
        _fileSystem.OpenPassthroughFile(this, includeLowerFiles);

    /// <summary>
    /// The open file that holds this open file's bytes at the same offsets, when the overlay reads them from it as they
    /// are: a plain regular file of the upper or a lower layer, read directly (not a B-CoW file, not a layer read
    /// through the hot-zone cache); null otherwise. For a server that moves the bytes without copying them
    /// (<c>splice(2)</c>) instead of calling <see cref="Read"/>. The overlay owns it and may close it at any moment (a
    /// copy-up replaces it, the last release closes it): take a reference
    /// (<see cref="System.Runtime.InteropServices.SafeHandle.DangerousAddRef"/>) for as long as it is used, treat one
    /// that cannot be referenced as null, and never write through it.
    /// </summary>
    public Microsoft.Win32.SafeHandles.SafeFileHandle? DirectReadFile => Node.Data is NodeData.Plain plain ? plain.DirectFile : null;

    /// <summary>Makes every write through any handle of this file durable (<c>fsync</c>).</summary>
    public void Fsync()
    {
        try
        {
            _fileSystem.DataOf(this).Flush();
        }
        catch (Exception e)
        {
            _fileSystem.CheckUpperAfter(e);
            throw;
        }
    }

    /// <summary>
    /// fallocate: <see cref="OverlayAllocateMode.PunchHole"/> and <see cref="OverlayAllocateMode.ZeroRange"/> make the
    /// range read zeros (freeing its blocks); <see cref="OverlayAllocateMode.Allocate"/> extends the file to cover the
    /// range unless <paramref name="keepSize"/> (space is allocated at first write, so nothing is reserved ahead).
    /// </summary>
    public void Allocate(long offset, long length, OverlayAllocateMode mode, bool keepSize)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(offset);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(length);
        NodeData data = _fileSystem.WritableDataOf(this);
        long end = offset + length;
        switch (mode)
        {
            case OverlayAllocateMode.PunchHole:
                if (!keepSize)
                {
                    throw new OverlayException(Mono.Unix.Native.Errno.EOPNOTSUPP, "punching a hole needs FALLOC_FL_KEEP_SIZE");
                }
                data.PunchHole(offset, Math.Min(length, Math.Max(0, data.Length - offset)));
                break;
            case OverlayAllocateMode.ZeroRange:
                data.PunchHole(offset, Math.Min(length, Math.Max(0, data.Length - offset)));
                if (!keepSize && end > data.Length)
                {
                    data.SetLength(end);
                }
                break;
            default:
                if (!keepSize && end > data.Length)
                {
                    data.SetLength(end);
                }
                break;
        }
        _fileSystem.OnChanged(Ino, offset, length);
    }

    /// <summary>lseek with SEEK_DATA or SEEK_HOLE: the first offset at or after <paramref name="offset"/> that holds
    /// data (or lies in a hole; the end of the file counts as a hole).</summary>
    /// <exception cref="OverlayException">ENXIO when <paramref name="offset"/> is at or beyond the end, or no data follows.</exception>
    public long Seek(long offset, bool data)
    {
        NodeData source = _fileSystem.DataOf(this);
        long length = source.Length;
        if (offset < 0 || offset >= length)
        {
            throw new OverlayException(Mono.Unix.Native.Errno.ENXIO, $"offset {offset} is beyond the end ({length})");
        }
        long position = offset;
        foreach (var (start, count) in source.DataRanges(offset, length))
        {
            if (data)
            {
                return Math.Max(start, offset);
            }
            if (start > position)
            {
                return position; // a hole before this data range
            }
            position = Math.Max(position, start + count);
        }
        if (data)
        {
            throw new OverlayException(Mono.Unix.Native.Errno.ENXIO, $"no data after offset {offset}");
        }
        return Math.Min(position, length);
    }

    /// <summary>copy_file_range: copies up to <paramref name="length"/> bytes between two open files; returns the bytes copied
    /// (fewer at the end of the source).</summary>
    public static long CopyRange(OverlayHandle source, long sourceOffset, OverlayHandle destination, long destinationOffset, long length)
    {
        byte[] buffer = System.Buffers.ArrayPool<byte>.Shared.Rent(1 << 20);
        try
        {
            long done = 0;
            while (done < length)
            {
                int n = source.Read(buffer.AsSpan(0, (int)Math.Min(buffer.Length, length - done)), sourceOffset + done);
                if (n == 0)
                {
                    break;
                }
                destination.Write(buffer.AsSpan(0, n), destinationOffset + done);
                done += n;
            }
            return done;
        }
        finally
        {
            System.Buffers.ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    /// <summary>Releases the handle; the file's data is closed with its last handle. Idempotent.</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _released, 1) == 0)
        {
            _fileSystem.Release(this);
        }
    }
}

/// <summary>fallocate modes.</summary>
public enum OverlayAllocateMode
{
    /// <summary>Mode 0: make sure the range is part of the file.</summary>
    Allocate,

    /// <summary>FALLOC_FL_PUNCH_HOLE (with FALLOC_FL_KEEP_SIZE).</summary>
    PunchHole,

    /// <summary>FALLOC_FL_ZERO_RANGE.</summary>
    ZeroRange,
}

/// <summary>The handler of <see cref="OverlayFileSystem.Changed"/>.</summary>
/// <param name="ino">The file that changed.</param>
/// <param name="offset">The first byte that changed, or -1 when only attributes changed (mode, owner, times). After a
/// truncate it is the new size.</param>
/// <param name="length">How many bytes changed from <paramref name="offset"/>; 0 for everything from there to the end.</param>
public delegate void OverlayChangedHandler(ulong ino, long offset, long length);

/// <summary>The handler of <see cref="OverlayFileSystem.NameChanged"/>.</summary>
/// <param name="parent">The directory whose entry changed.</param>
/// <param name="name">The name that was made, removed or now names another object.</param>
public delegate void OverlayNameChangedHandler(ulong parent, string name);
