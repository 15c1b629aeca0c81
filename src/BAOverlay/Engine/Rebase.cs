using BAOverlay.Format;
using BAOverlay.Storage;

namespace BAOverlay.Engine;

/// <summary>
/// <c>bcow rebase</c>, as qemu-img rebase: makes a B-CoW file record another lower file. Unsafe (<c>-u</c>) only records
/// it: for a lower file that was copied, moved or touched, whose content the user vouches for. Safe first copies into
/// the B-CoW file every block it does not hold wholly where the old and the new lower file read differently, so the
/// merged content does not change; that needs the old lower file, unchanged.
/// </summary>
/// <remarks>
/// Crash order (safe): the copied blocks are written and committed (flush, then a header that still records the old
/// lower file) before a second commit records the new one. A crash before that second header is durable leaves the old
/// lower file recorded and the copies as blocks of the same content: the file is as before, and the rebase can be run
/// again. Lower bytes visible after: below min(old lower limit, new size); for a file that had no lower file, below
/// min(virtual size, new size).
/// </remarks>
internal static class Rebase
{
    /// <summary>Rebases <paramref name="path"/> onto <paramref name="newLower"/>.</summary>
    /// <param name="path">The B-CoW file; opened for writing (refused while another process has it open).</param>
    /// <param name="newLower">The new lower file, recorded relative to the B-CoW file's folder when given relative.</param>
    /// <param name="safe">Copy the blocks where old and new differ first.</param>
    /// <param name="progress">Called with (bytes compared, virtual size) as a safe rebase proceeds.</param>
    /// <param name="cancellation">Stops a safe rebase between blocks; the file keeps its old lower file.</param>
    /// <exception cref="BCowFileInUseException">Another process has the file open.</exception>
    /// <exception cref="BCowFormatException">Not a usable B-CoW file, or the new lower file is a B-CoW file.</exception>
    /// <exception cref="IOException">A file cannot be read or written; or (safe) the old lower file is missing or changed.</exception>
    /// <exception cref="ArgumentException">The new lower file is the B-CoW file itself, or its path is too long to record.</exception>
    public static void Run(string path, string newLower, bool safe, Action<long, long>? progress, CancellationToken cancellation)
    {
        string fullPath = Path.GetFullPath(path);
        string newFull = Path.GetFullPath(newLower);
        if (newFull == fullPath)
        {
            throw new ArgumentException($"{path}: a B-CoW file cannot be its own lower file.");
        }
        string recorded = Path.IsPathRooted(newLower) ? newFull : Path.GetRelativePath(Path.GetDirectoryName(fullPath)!, newFull);
        if (System.Text.Encoding.UTF8.GetByteCount(recorded) > Layout.MaxLowerPathBytes)
        {
            throw new ArgumentException($"{path}: the lower path is longer than {Layout.MaxLowerPathBytes} bytes: {recorded}");
        }
        using BCowFile file = safe ? OpenForSafeRebase(path, newLower) : BCowFile.Open(path, new BCowOpenOptions { WithoutLower = true, CopyUpMode = CopyUpMode.Synchronous });
        // A B-CoW NEW is read as a backing chain below FILE (a chain through FILE is a loop, refused).
        using IBlockStorage lower = OpenNewLower(newFull, ChainMember.Of(path));
        BCowHeader header = file.CommittedHeader;
        long newLimit = header.HasLower ? Math.Min(header.LowerLimit, lower.Length) : Math.Min(header.VirtualSize, lower.Length);
        if (safe)
        {
            long oldVisible = header.HasLower ? Math.Min(header.LowerLimit, header.Lower.Size) : 0;
            CopyWhereLowersDiffer(file, file.LowerStorage, oldVisible, lower, newLimit, progress, cancellation);
            file.Flush(); // the copies are durable, under a header that still records the old lower file
        }
        file.SwitchLower(LowerIdentities.IdentityOf(lower), recorded, newLimit, dropBlocks: false);
    }

    private static BCowFile OpenForSafeRebase(string path, string newLower)
    {
        const string advice = "a safe rebase reads the old lower file, as recorded; if {0} has the same content, use 'bcow rebase -u'";
        try
        {
            return BCowFile.Open(path, new BCowOpenOptions { CopyUpMode = CopyUpMode.Synchronous });
        }
        catch (BCowFormatException e) when (e.Problem.StartsWith("lower file ", StringComparison.Ordinal) || e.Problem.Contains("commit into lower file", StringComparison.Ordinal))
        {
            throw new IOException($"{path}: {e.Problem}; {string.Format(null, advice, newLower)}", e);
        }
        catch (FileNotFoundException e)
        {
            throw new IOException($"{path}: cannot read its old lower file ({e.Message}); {string.Format(null, advice, newLower)}", e);
        }
    }

    private static IBlockStorage OpenNewLower(string path, ChainMember file)
    {
        try
        {
            return BCowFile.OpenLower(path, [file]);
        }
        catch (FileNotFoundException e)
        {
            throw new FileNotFoundException($"{path}: new lower file not found", path, e);
        }
    }

    /// <summary>
    /// For every block not wholly in the file (state lower or partial): when the old and the new lower file differ in
    /// it (each read as zeros from its visible limit on), the block's merged content is written into the file (or the
    /// block made a zero block, when it reads as zeros). Three block buffers for the whole run.
    /// </summary>
    private static void CopyWhereLowersDiffer(BCowFile file, IBlockStorage? oldLower, long oldVisible, IBlockStorage newLower, long newVisible,
        Action<long, long>? progress, CancellationToken cancellation)
    {
        int blockSize = file.BlockSize;
        long size = file.Length;
        byte[] before = new byte[blockSize];
        byte[] after = new byte[blockSize];
        byte[] merged = new byte[blockSize];
        for (long start = 0; start < size; start += blockSize)
        {
            cancellation.ThrowIfCancellationRequested();
            int length = (int)Math.Min(blockSize, size - start);
            BlockState state = file.GetBlockState(start);
            if (state is BlockState.Lower or BlockState.Partial && (start < oldVisible || start < newVisible))
            {
                ReadVisible(oldLower, oldVisible, before.AsSpan(0, length), start);
                ReadVisible(newLower, newVisible, after.AsSpan(0, length), start);
                if (!before.AsSpan(0, length).SequenceEqual(after.AsSpan(0, length)))
                {
                    file.ReadAt(merged.AsSpan(0, length), start);
                    if (merged.AsSpan(0, length).IndexOfAnyExcept((byte)0) < 0)
                    {
                        file.PunchHole(start, length);
                    }
                    else
                    {
                        file.WriteAt(merged.AsSpan(0, length), start);
                    }
                }
            }
            progress?.Invoke(start + length, size);
        }
    }

    private static void ReadVisible(IBlockStorage? lower, long visible, Span<byte> destination, long position)
    {
        int n = (int)Math.Clamp(visible - position, 0, destination.Length);
        if (n > 0)
        {
            int read = lower!.ReadAt(destination[..n], position);
            if (read < n)
            {
                throw new IOException($"{lower.Name}: the file ends at {position + read}, before {position + n}; it was truncated while in use");
            }
        }
        destination[n..].Clear();
    }
}
