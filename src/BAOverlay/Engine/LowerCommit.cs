using BAOverlay.Format;
using BAOverlay.Storage;

namespace BAOverlay.Engine;

/// <summary>
/// <c>bcow commit</c>, as qemu-img commit: writes what a B-CoW file holds into its lower file (the user's to change),
/// makes that durable, then empties the B-CoW file (every block back to lower, the lower file's new identity recorded),
/// or with <c>keep</c> only records the new identity.
/// </summary>
/// <remarks>
/// <para>Crash order. (1) A commit records, durably, that a commit into the lower file is under way and what the lower
/// file's identity will be once it is done (<see cref="BCowHeader.FlagCommitting"/>, the pending identity). (2) Every
/// range the merged content does not read from the lower file is written into the lower file (ranges read as zeros
/// are punched), and the lower file is flushed. (3) A second commit records the new identity, clears the flag and
/// (unless kept) drops every block.</para>
/// <para>At every moment the merged content is unchanged: the lower bytes (2) changes are exactly those the B-CoW file
/// hides (its own blocks and sub-blocks, or bytes beyond its lower limit), and the B-CoW file keeps them until (3) is
/// durable. So a crash leaves: before (1), nothing changed; between (1) and the end of (2), a lower file that is the
/// old one, the pending one or partly written, which an open accepts as old or pending and otherwise refuses with "run
/// bcow commit again" (which then finishes the job, since the B-CoW file still covers every byte it writes); after
/// (3), done. Bytes of the lower file beyond the virtual size are never touched, and the lower file never shrinks.</para>
/// </remarks>
internal static class LowerCommit
{
    private const int ChunkSize = 1 << 20;

    /// <summary>Commits <paramref name="path"/> into its lower file.</summary>
    /// <param name="path">The B-CoW file; opened for writing (refused while another process has it open).</param>
    /// <param name="keep">Keep the blocks in the B-CoW file (qemu-img commit -d).</param>
    /// <param name="progress">Called with (bytes written, bytes to write).</param>
    /// <param name="cancellation">Stops between chunks; the file is then in the commit-in-progress state, and running
    /// the commit again finishes it.</param>
    /// <returns>The lower file's path.</returns>
    /// <exception cref="BCowFileInUseException">Another process has the file open.</exception>
    /// <exception cref="BCowFormatException">Not a usable B-CoW file, or its lower file changed.</exception>
    /// <exception cref="IOException">The file has no lower file, or a file cannot be read or written.</exception>
    public static string Run(string path, bool keep, Action<long, long>? progress, CancellationToken cancellation)
    {
        using BCowFile file = BCowFile.Open(path, new BCowOpenOptions { CopyUpMode = CopyUpMode.Synchronous, ResumeCommit = true });
        BCowHeader header = file.CommittedHeader;
        if (!header.HasLower || file.LowerStorage is null)
        {
            throw new IOException($"{path}: has no lower file to commit into");
        }
        string lowerPath = file.LowerStorage.Name;
        // A B-CoW lower (a backing chain) is written through its own map, opened for writing: exclusive, so no other
        // process may have it open; this process's read-only view of it (FILE's) sees only ranges FILE never reads.
        using IBlockStorage lower = file.LowerStorage is BCowLowerStorage
            ? new BCowLowerStorage(BCowFile.Open(lowerPath, new BCowOpenOptions { CopyUpMode = CopyUpMode.Synchronous }))
            : new FileStorage(lowerPath, FileMode.Open, FileAccess.ReadWrite);
        long size = file.Length;
        long lowerLength = lower.Length;
        List<BCowExtent> ranges = file.GetExtents().Where(e => e.Source != ExtentSource.Lower).ToList();
        long total = ranges.Sum(e => e.Length);

        LowerIdentity pending = new(Math.Max(lowerLength, size), 0, 0, PendingFingerprint(file, lower, Math.Max(lowerLength, size)), Sampled: true);
        file.BeginLowerCommit(pending);

        byte[] buffer = new byte[ChunkSize];
        long done = 0;
        foreach (BCowExtent range in ranges)
        {
            if (range.Source == ExtentSource.Zero)
            {
                // Zeros beyond the lower file's end come from extending it below; inside it, a hole reads as zeros.
                long inside = Math.Min(range.Length, Math.Max(0, lowerLength - range.Offset));
                lower.PunchHole(range.Offset, inside);
                done += range.Length;
                progress?.Invoke(done, total);
                continue;
            }
            for (long position = range.Offset; position < range.Offset + range.Length;)
            {
                cancellation.ThrowIfCancellationRequested();
                int n = (int)Math.Min(ChunkSize, range.Offset + range.Length - position);
                if (file.ReadAt(buffer.AsSpan(0, n), position) != n)
                {
                    throw new IOException($"{path}: ended at {position} while committing; was it truncated?");
                }
                lower.WriteAt(buffer.AsSpan(0, n), position);
                position += n;
                done += n;
                progress?.Invoke(done, total);
            }
        }
        if (size > lowerLength)
        {
            lower.SetLength(size);
        }
        lower.Flush(); // the lower file's new content is durable before any header stops covering it

        LowerIdentity now = LowerIdentities.IdentityOf(lower);
        if (LowerIdentities.Difference(pending, now) is { } change)
        {
            throw new IOException($"{lowerPath}: after the commit {change}; was it written by someone else meanwhile? {path} still holds its blocks");
        }
        file.SwitchLower(now, header.LowerPath, size, dropBlocks: !keep);
        return lowerPath;
    }

    /// <summary>
    /// The sampled fingerprint the lower file will have once committed: below the virtual size its bytes are the merged
    /// content, beyond it they stay as they are.
    /// </summary>
    private static uint PendingFingerprint(BCowFile file, IBlockStorage lower, long newSize)
    {
        Span<byte> buffer = stackalloc byte[LowerSampling.ChunkSize];
        uint state = Crc32C.Start;
        long size = file.Length;
        foreach (var (offset, length) in LowerSampling.Chunks(newSize))
        {
            Span<byte> chunk = buffer[..length];
            int merged = offset < size ? file.ReadAt(chunk, offset) : 0;
            if (merged < length)
            {
                int n = lower.ReadAt(chunk[merged..], offset + merged);
                chunk[(merged + n)..].Clear();
            }
            state = Crc32C.Append(state, chunk);
        }
        return Crc32C.Finish(state);
    }
}
