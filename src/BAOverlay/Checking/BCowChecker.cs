using BAOverlay.Engine;
using BAOverlay.Format;
using BAOverlay.Storage;

namespace BAOverlay.Checking;

/// <summary>
/// Checks a B-CoW file the way <c>qemu-img check</c> checks a qcow2 image: both header slots, the root table, every
/// map page and entry (checksums, states, ranges, overlaps), and space that holds data but is referenced by nothing
/// (leaks). Uses the same validation as <see cref="BCowFile.Open(IBlockStorage, IBlockStorage?, BCowOpenOptions?, bool)"/>,
/// but collects every problem instead of stopping at the first.
/// </summary>
public static class BCowChecker
{
    /// <summary>Checks the file at <paramref name="path"/>; with <paramref name="repair"/>, reclaims leaks and clears
    /// the dirty flag when there is no corruption. Never throws for a bad file: see <see cref="BCowCheckResult.Failure"/>.</summary>
    /// <remarks>
    /// The file is locked as <see cref="BCowFile.Open(string, BCowOpenOptions?)"/> locks it: a check takes a shared
    /// lock, a repair an exclusive one, so a file another process writes is not checked (its uncommitted blocks would
    /// look like leaks, and a repair would free them under the writer): <see cref="BCowCheckResult.Failure"/> then says
    /// the file is in use. With <paramref name="forceShare"/> a check (never a repair) reads it without a lock, and a
    /// note says the result may be inconsistent.
    /// </remarks>
    public static BCowCheckResult Check(string path, bool repair = false, bool forceShare = false)
    {
        if (repair && forceShare)
        {
            return new BCowCheckResult { Failure = $"{path}: a repair needs the file to itself: it cannot run without the lock (force-share)" };
        }
        FileStorage storage;
        try
        {
            storage = new FileStorage(path, FileMode.Open, repair ? FileAccess.ReadWrite : FileAccess.Read,
                forceShare ? FileLockMode.None : repair ? FileLockMode.Exclusive : FileLockMode.Shared);
        }
        catch (BCowFileInUseException e)
        {
            return new BCowCheckResult { Failure = e.Message };
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return new BCowCheckResult { Failure = e.Message.StartsWith(path + ":", StringComparison.Ordinal) ? e.Message : $"{path}: {e.Message}" };
        }
        using (storage)
        {
            BCowCheckResult result = Check(storage, repair);
            return forceShare
                ? result with { Notes = [UnlockedNote, .. result.Notes] }
                : result;
        }
    }

    /// <summary>The note on a check made without the lock.</summary>
    internal const string UnlockedNote = "checked without the lock (force-share): if another process is writing the file, what was found may be inconsistent";

    /// <summary>Checks a B-CoW file held in <paramref name="upper"/> (not disposed).</summary>
    public static BCowCheckResult Check(IBlockStorage upper, bool repair = false)
    {
        var corruptions = new List<string>();
        var notes = new List<string>();
        BCowHeader header;
        try
        {
            header = BCowFile.ReadHeader(upper);
        }
        catch (BCowFormatException e)
        {
            return new BCowCheckResult { Corruptions = [$"header: {e.Problem}"] };
        }
        catch (IOException e)
        {
            return new BCowCheckResult { Failure = e.Message };
        }
        try
        {
            NoteSlots(upper, header, notes);
            if (header.Dirty)
            {
                notes.Add("the dirty flag is set: the file was not closed cleanly (or is open now); leaks are expected");
            }
            var used = new List<UsedExtent>();
            BlockMap.Load(upper, header, corruptions.Add, used);
            long fileLength = upper.Length;
            var leaks = new List<(long Offset, long Length)>();
            long position = Layout.DataStart;
            var unreferenced = new List<(long Offset, long End)>();
            foreach (UsedExtent extent in used)
            {
                if (extent.Offset > position)
                {
                    unreferenced.Add((position, extent.Offset));
                }
                position = Math.Max(position, extent.Offset + extent.Length);
            }
            long usedEnd = position;
            if (fileLength > position)
            {
                unreferenced.Add((position, fileLength));
            }
            foreach (var (start, end) in unreferenced)
            {
                leaks.AddRange(upper.GetDataRanges(start, end));
            }
            if (!repair || corruptions.Count > 0 || (leaks.Count == 0 && !header.Dirty))
            {
                if (repair && corruptions.Count > 0)
                {
                    notes.Add("not repaired: repair reclaims leaks only, and this file is corrupt");
                }
                return new BCowCheckResult { Corruptions = corruptions, Leaks = leaks, Notes = notes };
            }
            foreach (var (offset, length) in leaks)
            {
                upper.PunchHole(offset, length);
            }
            if (fileLength > usedEnd)
            {
                upper.SetLength(usedEnd);
            }
            upper.Flush();
            BCowHeader clean = header with { Generation = header.Generation + 1, Dirty = false };
            byte[] slot = new byte[Layout.HeaderSlotSize];
            clean.Write(slot);
            upper.WriteAt(slot, (long)(clean.Generation % Layout.HeaderSlotCount) * Layout.HeaderSlotSize);
            upper.Flush();
            return new BCowCheckResult { Leaks = leaks, Notes = notes, Repaired = true };
        }
        catch (IOException e)
        {
            return new BCowCheckResult { Corruptions = corruptions, Notes = notes, Failure = e.Message };
        }
    }

    private static void NoteSlots(IBlockStorage upper, BCowHeader current, List<string> notes)
    {
        byte[] slot = new byte[Layout.HeaderSlotSize];
        int other = (int)((current.Generation + 1) % Layout.HeaderSlotCount);
        int n = upper.ReadAt(slot, (long)other * Layout.HeaderSlotSize);
        BCowHeader? older = BCowHeader.TryRead(slot.AsSpan(0, n), out string? problem);
        if (older is null && current.Generation > 1)
        {
            notes.Add($"header slot {other} (the older generation) is not valid ({problem}); expected after a crash during a commit");
        }
    }
}
