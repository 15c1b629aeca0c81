using BAOverlay.Storage;

namespace BAOverlay.Tests.Engine;

/// <summary>
/// Passes everything to an inner storage, counting disposals, and delaying asynchronous reads (the background copier
/// reads lower asynchronously, so a delay there makes every fill slow while synchronous writers stay fast).
/// </summary>
internal sealed class WrappedStorage(IBlockStorage inner, TimeSpan asyncReadDelay = default) : IBlockStorage
{
    private int _disposals;
    private int _asyncReads;

    public IBlockStorage Inner => inner;

    public int Disposals => Volatile.Read(ref _disposals);

    /// <summary>Asynchronous reads started so far.</summary>
    public int AsyncReads => Volatile.Read(ref _asyncReads);

    public string Name => inner.Name;

    public bool CanWrite => inner.CanWrite;

    public long Length => inner.Length;

    public int ReadAt(Span<byte> buffer, long offset) => inner.ReadAt(buffer, offset);

    public async ValueTask<int> ReadAtAsync(Memory<byte> buffer, long offset, CancellationToken cancellationToken = default)
    {
        Interlocked.Increment(ref _asyncReads);
        if (asyncReadDelay > TimeSpan.Zero)
        {
            await Task.Delay(asyncReadDelay, cancellationToken);
        }
        return await inner.ReadAtAsync(buffer, offset, cancellationToken);
    }

    public void WriteAt(ReadOnlySpan<byte> data, long offset) => inner.WriteAt(data, offset);

    public ValueTask WriteAtAsync(ReadOnlyMemory<byte> data, long offset, CancellationToken cancellationToken = default) =>
        inner.WriteAtAsync(data, offset, cancellationToken);

    public void Flush() => inner.Flush();

    public void SetLength(long length) => inner.SetLength(length);

    public void PunchHole(long offset, long length) => inner.PunchHole(offset, length);

    public (long MTimeNs, ulong Inode) GetIdentity() => inner.GetIdentity();

    public IEnumerable<(long Offset, long Length)> GetDataRanges(long start, long end) => inner.GetDataRanges(start, end);

    public void Dispose()
    {
        Interlocked.Increment(ref _disposals);
        inner.Dispose();
    }
}
