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
    public void Write(ReadOnlySpan<byte> data, long offset) => _fileSystem.WritableDataOf(this).Write(data, offset);

    /// <inheritdoc cref="Write"/>
    public ValueTask WriteAsync(ReadOnlyMemory<byte> data, long offset, CancellationToken cancellationToken = default) =>
        _fileSystem.WritableDataOf(this).WriteAsync(data, offset, cancellationToken);

    /// <summary>Makes every write through any handle of this file durable (<c>fsync</c>).</summary>
    public void Fsync() => _fileSystem.DataOf(this).Flush();

    /// <summary>Releases the handle; the file's data is closed with its last handle. Idempotent.</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _released, 1) == 0)
        {
            _fileSystem.Release(this);
        }
    }
}
