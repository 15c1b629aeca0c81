using BAOverlay.Engine;
using BAOverlay.Format;

namespace BAOverlay;

/// <summary>
/// How blocks go back to reading from the lower file: what the hot-zone cache (<c>Cache/ZoneCache</c>) does to evict,
/// where every block it holds is a clean copy of the lower file, so dropping one changes no byte of the merged file.
/// </summary>
public sealed partial class BCowFile
{
    /// <summary>
    /// Puts every whole block in [<paramref name="offset"/>, +<paramref name="length"/>) back in state lower and frees
    /// its space. Only for blocks that hold exactly the lower file's bytes (the merged content then does not change).
    /// Crash order as <see cref="ZeroBlockAsync"/>: the entry stops referencing the space before it is freed, and
    /// space the durable header still references is freed only after the next durable commit. A concurrent reader of
    /// such a block retries (the block's stripe version moves) and reads the lower file.
    /// </summary>
    /// <returns>The blocks released (those that held data).</returns>
    internal int ReleaseToLower(long offset, long length)
    {
        ThrowIfNotWritable();
        int released = 0;
        _sizeGate.EnterSharedAsync(useAsync: false, CancellationToken.None).GetAwaiter().GetResult();
        try
        {
            long end = Math.Min(Length, offset + length);
            for (long block = (offset + _blockMask) >> _log2; (block << _log2) < end; block++)
            {
                if ((block << _log2) + _blockSize > end && (block << _log2) + _blockSize <= Length)
                {
                    break; // a block the range covers only in part (the file's last block counts as whole)
                }
                BlockLocks.Stripe stripe = _locks.For(block);
                stripe.EnterAsync(useAsync: false, CancellationToken.None).GetAwaiter().GetResult();
                try
                {
                    BlockEntry entry = _map.Get(block);
                    if (entry.State == BlockState.Lower)
                    {
                        continue;
                    }
                    _map.Set(block, BlockEntry.Lower);
                    if (entry.IsAllocated)
                    {
                        FreeBlock(entry.Offset);
                        released++;
                    }
                }
                finally
                {
                    stripe.Exit();
                }
            }
        }
        finally
        {
            _sizeGate.ExitShared();
        }
        return released;
    }

    /// <summary>True when every block of [<paramref name="offset"/>, +<paramref name="length"/>) within the file is
    /// present (holds all its bytes in this file).</summary>
    internal bool AllPresent(long offset, long length)
    {
        long end = Math.Min(Length, offset + length);
        for (long block = offset >> _log2; (block << _log2) < end; block++)
        {
            if (_map.Get(block).State != BlockState.Present)
            {
                return false;
            }
        }
        return true;
    }

    /// <summary>True when some block of the range holds data in this file (present or partial).</summary>
    internal bool AnyAllocated(long offset, long length)
    {
        long end = Math.Min(Length, offset + length);
        for (long block = offset >> _log2; (block << _log2) < end; block++)
        {
            if (_map.Get(block).IsAllocated)
            {
                return true;
            }
        }
        return false;
    }

    /// <summary>The blocks that hold data in this file (present or partial), in order.</summary>
    internal IEnumerable<long> AllocatedBlocks() =>
        _map.EnumeratePopulated().Where(e => e.Entry.IsAllocated).Select(e => e.Block).ToList();

    /// <summary>The upper storage (for the cache's checker, which checks the file it keeps open between commits).</summary>
    internal Storage.IBlockStorage UpperStorage => _upper;
}
