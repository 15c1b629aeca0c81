using BAOverlay.Storage;

namespace BAOverlay.FileSystem;

/// <summary>The bytes of an open regular file: a plain file (lower or upper) or a B-CoW file over a lower one.</summary>
internal abstract class NodeData : IDisposable
{
    public abstract bool CanWrite { get; }

    public abstract long Length { get; }

    public abstract int Read(Span<byte> buffer, long offset);

    public abstract ValueTask<int> ReadAsync(Memory<byte> buffer, long offset, CancellationToken cancellationToken);

    public abstract void Write(ReadOnlySpan<byte> data, long offset);

    public abstract ValueTask WriteAsync(ReadOnlyMemory<byte> data, long offset, CancellationToken cancellationToken);

    public abstract void SetLength(long length);

    public abstract void Flush();

    /// <summary>Makes a range read zeros and frees its space; the length is unchanged.</summary>
    public abstract void PunchHole(long offset, long length);

    /// <summary>Ranges that hold data (the rest reads as zeros), in order, within [offset, end).</summary>
    public abstract IEnumerable<(long Offset, long Length)> DataRanges(long offset, long end);

    public abstract void Dispose();

    public sealed class Plain(IBlockStorage storage) : NodeData
    {
        public override bool CanWrite => storage.CanWrite;

        /// <summary>The file read, when the bytes are read from it as they are (not through the hot-zone cache or a
        /// lazily opened remote file).</summary>
        public Microsoft.Win32.SafeHandles.SafeFileHandle? DirectFile => (storage as FileStorage)?.Handle;

        public override long Length => storage.Length;

        public override int Read(Span<byte> buffer, long offset) => storage.ReadAt(buffer, offset);

        public override ValueTask<int> ReadAsync(Memory<byte> buffer, long offset, CancellationToken cancellationToken) =>
            storage.ReadAtAsync(buffer, offset, cancellationToken);

        public override void Write(ReadOnlySpan<byte> data, long offset) => storage.WriteAt(data, offset);

        public override ValueTask WriteAsync(ReadOnlyMemory<byte> data, long offset, CancellationToken cancellationToken) =>
            storage.WriteAtAsync(data, offset, cancellationToken);

        public override void SetLength(long length) => storage.SetLength(length);

        public override void Flush() => storage.Flush();

        public override void PunchHole(long offset, long length) => storage.PunchHole(offset, length);

        public override IEnumerable<(long Offset, long Length)> DataRanges(long offset, long end) => storage.GetDataRanges(offset, end);

        public override void Dispose() => storage.Dispose();
    }

    /// <param name="file">The open B-CoW file.</param>
    /// <param name="pendingMark">A descriptor of the same file when it carries <see cref="LayerPaths.PendingXattr"/>
    /// (a copy-up not yet made durable): the mark is removed once a durable commit has completed (a flush, or the
    /// closing commit), and the descriptor closed with this object.</param>
    /// <param name="log">Where a failure to remove the mark is said (it is harmless: the file then keeps it).</param>
    public sealed class BCow(BCowFile file, Microsoft.Win32.SafeHandles.SafeFileHandle? pendingMark = null, Action<string>? log = null) : NodeData
    {
        private Microsoft.Win32.SafeHandles.SafeFileHandle? _pendingMark = pendingMark;

        public BCowFile File => file;

        public override bool CanWrite => file.CanWrite;

        public override long Length => file.Length;

        public override int Read(Span<byte> buffer, long offset) => file.ReadAt(buffer, offset);

        public override ValueTask<int> ReadAsync(Memory<byte> buffer, long offset, CancellationToken cancellationToken) =>
            file.ReadAtAsync(buffer, offset, cancellationToken);

        public override void Write(ReadOnlySpan<byte> data, long offset)
        {
            CheckWithinLargestSize(offset, data.Length);
            file.WriteAt(data, offset);
        }

        public override ValueTask WriteAsync(ReadOnlyMemory<byte> data, long offset, CancellationToken cancellationToken)
        {
            CheckWithinLargestSize(offset, data.Length);
            return file.WriteAtAsync(data, offset, cancellationToken);
        }

        public override void SetLength(long length)
        {
            CheckWithinLargestSize(length, 0);
            file.SetLength(length);
        }

        public override void Flush()
        {
            file.Flush();
            ClearPendingMark();
        }

        /// <summary>Removes <see cref="LayerPaths.PendingXattr"/> once the file has a durable header; after that
        /// commit, never before, so a crash in between finds the mark on a file that opens (and it stays unused).</summary>
        private void ClearPendingMark()
        {
            if (Volatile.Read(ref _pendingMark) is null || !file.CommittedDurably
                || Interlocked.Exchange(ref _pendingMark, null) is not { } mark)
            {
                return;
            }
            using (mark)
            {
                if (Interop.LibC.fremovexattr(mark, LayerPaths.PendingXattr) != 0
                    && System.Runtime.InteropServices.Marshal.GetLastPInvokeError() != Interop.LibC.ENODATA)
                {
                    log?.Invoke($"{file.Name}: removing {LayerPaths.PendingXattr} after its first durable commit: "
                        + System.Runtime.InteropServices.Marshal.GetPInvokeErrorMessage(System.Runtime.InteropServices.Marshal.GetLastPInvokeError()));
                }
            }
        }

        public override void PunchHole(long offset, long length) => file.PunchHole(offset, length);

        /// <summary>EFBIG past the largest B-CoW file (the engine's own limit, not the upper file system's), which the
        /// engine reports as exceptions that carry no errno.</summary>
        private void CheckWithinLargestSize(long offset, int count)
        {
            if (offset > Format.Layout.MaxVirtualSize - count) // not offset + count: that overflows near 2^63
            {
                throw new OverlayException(Mono.Unix.Native.Errno.EFBIG,
                    $"{file.Name}: {offset} + {count} bytes would pass the largest size of a B-CoW file, {Format.Layout.MaxVirtualSize} bytes");
            }
        }

        public override IEnumerable<(long Offset, long Length)> DataRanges(long offset, long end) =>
            file.GetExtents()
                .Where(e => e.Source != ExtentSource.Zero && e.Offset + e.Length > offset && e.Offset < end)
                .Select(e => (Math.Max(e.Offset, offset), Math.Min(e.Offset + e.Length, end) - Math.Max(e.Offset, offset)));

        public override void Dispose()
        {
            try
            {
                file.Dispose();
                ClearPendingMark();
            }
            finally
            {
                Interlocked.Exchange(ref _pendingMark, null)?.Dispose();
            }
        }
    }
}
