using BAOverlay.Engine;
using BAOverlay.Format;
using BAOverlay.Storage;

namespace BAOverlay;

/// <summary>
/// How a B-CoW file comes to record another lower file (<c>bcow rebase</c>, <c>bcow commit</c>) so that a crash at any
/// moment leaves a header whose lower file and map give the same merged content. Every change here is an ordinary
/// commit with a header edit: data and map pages first, flush, header last, flush (<see cref="CommitAsync"/>), so the
/// previous header stays whole until the new one is durable.
/// </summary>
public sealed partial class BCowFile
{
    /// <summary>A change to the next committed header, taken (once) by <see cref="CommitAsync"/>.</summary>
    private Func<BCowHeader, BCowHeader>? _headerEdit;

    /// <summary>The header of the last commit.</summary>
    internal BCowHeader CommittedHeader => _committed;

    /// <summary>The lower file this object reads (null without one, or opened without it).</summary>
    internal IBlockStorage? LowerStorage => _lower;

    /// <summary>
    /// The last act of this object: a durable commit that records <paramref name="identity"/> and
    /// <paramref name="recordedPath"/> as the lower file, lower bytes visible below <paramref name="lowerLimit"/>, any
    /// commit-in-progress state cleared, and, with <paramref name="dropBlocks"/>, every block back in state lower (their
    /// space is freed only once this header is durable). The caller has made the merged content right for the new lower
    /// file (rebase: copied the blocks where the two differ; commit: written this file's blocks into it) and has no
    /// other call in flight. Afterwards every call but Dispose fails: this object still reads the old lower file.
    /// </summary>
    internal void SwitchLower(LowerIdentity identity, string recordedPath, long lowerLimit, bool dropBlocks)
    {
        ThrowIfNotWritable();
        if (dropBlocks)
        {
            foreach (var (block, entry) in _map.EnumeratePopulated().Where(e => e.Entry.State != BlockState.Lower).ToList())
            {
                _map.Set(block, BlockEntry.Lower);
                if (entry.IsAllocated)
                {
                    FreeBlock(entry.Offset);
                }
            }
        }
        _headerEdit = header => header with
        {
            HasLower = true,
            Lower = identity,
            LowerPath = recordedPath,
            LowerLimit = Math.Min(lowerLimit, header.VirtualSize),
            PendingLower = null,
        };
        CommitAsync(dirty: false, durable: true, useAsync: false, CancellationToken.None).GetAwaiter().GetResult();
        TrimTail(); // as at close: dropped blocks leave free space at the end
        _fault = new InvalidOperationException("the file now records another lower file; reopen it");
    }

    /// <summary>
    /// Durably records that a commit into the lower file starts, and what the lower file will be once every block is
    /// written (<paramref name="pending"/>): from then until <see cref="SwitchLower"/>, an open accepts the lower file
    /// as recorded, as pending, or (resuming the commit) partly written.
    /// </summary>
    internal void BeginLowerCommit(LowerIdentity pending)
    {
        ThrowIfNotWritable();
        _headerEdit = header => header with { PendingLower = pending };
        Flush();
    }
}
