namespace BAOverlay.Storage;

/// <summary>
/// The narrow seam under the engine: positional reads and writes, a durability barrier, length, and hole punching.
/// Every call names its offset; implementations keep no position, so callers on many threads need no coordination
/// beyond not writing the same bytes at once.
/// </summary>
/// <remarks>
/// Implementations: <see cref="FileStorage"/> (a real file), <see cref="MemoryStorage"/> (tests and tools) and
/// <see cref="FaultInjectingStorage"/> (EIO, ENOSPC, torn writes and power cuts for tests).
/// Errors surface as <see cref="IOException"/>.
/// </remarks>
public interface IBlockStorage : IDisposable
{
    /// <summary>A name for messages: the file's path, or a description for in-memory storage.</summary>
    string Name { get; }

    /// <summary>False when the storage was opened read-only; writes then throw <see cref="NotSupportedException"/>.</summary>
    bool CanWrite { get; }

    /// <summary>The current length in bytes.</summary>
    long Length { get; }

    /// <summary>Reads up to <paramref name="buffer"/>.Length bytes at <paramref name="offset"/>; fewer only at the end.</summary>
    /// <returns>The bytes read: less than requested only where the storage ends.</returns>
    int ReadAt(Span<byte> buffer, long offset);

    /// <inheritdoc cref="ReadAt"/>
    ValueTask<int> ReadAtAsync(Memory<byte> buffer, long offset, CancellationToken cancellationToken = default);

    /// <summary>Writes all of <paramref name="data"/> at <paramref name="offset"/>, extending the storage if needed.
    /// Not durable until <see cref="Flush"/> returns.</summary>
    void WriteAt(ReadOnlySpan<byte> data, long offset);

    /// <inheritdoc cref="WriteAt"/>
    ValueTask WriteAtAsync(ReadOnlyMemory<byte> data, long offset, CancellationToken cancellationToken = default);

    /// <summary>Makes every completed write durable (fsync). The only durability promise of this interface.</summary>
    void Flush();

    /// <summary>Truncates or extends (with zeros).</summary>
    void SetLength(long length);

    /// <summary>Deallocates a range so that it reads zeros and returns its space to the file system; the length is unchanged.
    /// Where the file system cannot punch holes, the range is overwritten with zeros.</summary>
    void PunchHole(long offset, long length);

    /// <summary>Identity facts the storage has (modification time and inode); zeros where it has none.</summary>
    (long MTimeNs, ulong Inode) GetIdentity();

    /// <summary>
    /// The allocated (non-hole) ranges within [<paramref name="start"/>, <paramref name="end"/>), in order. Storage that
    /// cannot tell reports the whole range as data.
    /// </summary>
    IEnumerable<(long Offset, long Length)> GetDataRanges(long start, long end);
}
