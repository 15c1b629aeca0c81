namespace BAOverlay.Engine;

/// <summary>
/// A B-CoW file serving as the lower file of another (a backing chain, as qcow2's): the upper file reads it through
/// its own map, as its merged content, so a chain reads recursively. Owns the file. Opened read-only by a chain's
/// reader; <c>bcow commit</c> wraps a writable open to write into it.
/// </summary>
internal sealed class BCowLowerStorage(BCowFile file) : Storage.IBlockStorage
{
    public BCowFile File => file;

    public string Name => file.Name;

    public bool CanWrite => file.CanWrite;

    /// <summary>The merged content's length: the virtual size.</summary>
    public long Length => file.Length;

    public int ReadAt(Span<byte> buffer, long offset) => file.ReadAt(buffer, offset);

    public ValueTask<int> ReadAtAsync(Memory<byte> buffer, long offset, CancellationToken cancellationToken = default) =>
        file.ReadAtAsync(buffer, offset, cancellationToken);

    public void WriteAt(ReadOnlySpan<byte> data, long offset) => file.WriteAt(data, offset);

    public ValueTask WriteAtAsync(ReadOnlyMemory<byte> data, long offset, CancellationToken cancellationToken = default) =>
        file.WriteAtAsync(data, offset, cancellationToken);

    public void Flush() => file.Flush();

    public void SetLength(long length) => file.SetLength(length);

    /// <summary>Zero blocks in the B-CoW file: they read as zeros and take no space.</summary>
    public void PunchHole(long offset, long length) => file.PunchHole(offset, length);

    /// <summary>The B-CoW file's own time and inode (recorded for information; the identity compares content).</summary>
    public (long MTimeNs, ulong Inode) GetIdentity() => file.UpperIdentity();

    /// <summary>Everything is reported as data: the merged content has no holes a caller could rely on.</summary>
    public IEnumerable<(long Offset, long Length)> GetDataRanges(long start, long end) => [(start, end - start)];

    public void Dispose() => file.Dispose();
}
