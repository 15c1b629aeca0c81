using BAOverlay.Storage;

namespace BAOverlay.Tool.Images;

/// <summary>
/// An image a verb reads, of either kind: a B-CoW file (read as its merged content, through its lower file) or a plain
/// file (raw). Told apart by the B-CoW magic, as qemu-img probes a format, so users never name the format.
/// </summary>
internal sealed class InputImage : IDisposable
{
    // "BCoW\r\n\x1a\n" at the start of either header slot (docs/bcow-format.md). The library keeps its copy internal; a
    // file just created has only slot 1 written (generation 1 lands in slot 1), so both slots are probed, as the
    // library does when it refuses a B-CoW lower file.
    private static ReadOnlySpan<byte> Magic => "BCoW\r\n\u001a\n"u8;
    private const int HeaderSlotSize = 4096;

    private readonly BCowFile? _bcow;
    private readonly FileStorage? _raw;

    private InputImage(string path, BCowFile? bcow, FileStorage? raw)
    {
        Path = path;
        _bcow = bcow;
        _raw = raw;
        Length = bcow?.Length ?? raw!.Length;
    }

    /// <summary>The path as the user typed it.</summary>
    public string Path { get; }

    /// <summary>"bcow" or "raw", the names <c>-O</c> takes.</summary>
    public string Format => _bcow is null ? "raw" : "bcow";

    /// <summary>The B-CoW file, when the image is one.</summary>
    public BCowFile? BCow => _bcow;

    /// <summary>The virtual size: a B-CoW file's logical size, a plain file's length.</summary>
    public long Length { get; }

    /// <summary>
    /// Opens <paramref name="path"/> read-only. A B-CoW file is opened as every reading verb opens one (shared lock,
    /// lower identity checked), so one in use by a writer or over a changed lower file is refused, not read.
    /// </summary>
    public static InputImage Open(string path)
    {
        if (Directory.Exists(path))
        {
            throw new IOException($"{System.IO.Path.GetFullPath(path)}: Is a directory");
        }
        var raw = new FileStorage(path, FileMode.Open, FileAccess.Read);
        try
        {
            if (!IsBCow(raw))
            {
                return new InputImage(path, null, raw);
            }
        }
        catch
        {
            raw.Dispose();
            throw;
        }
        raw.Dispose();
        return new InputImage(path, BCowFile.Open(path, new BCowOpenOptions { ReadOnly = true }), null);
    }

    /// <summary>True when <paramref name="file"/> starts as a B-CoW file does: what the verbs that write (resize) ask first.</summary>
    public static bool IsBCow(FileStorage file)
    {
        Span<byte> magic = stackalloc byte[Magic.Length];
        for (long slot = 0; slot < 2; slot++)
        {
            if (file.ReadAt(magic, slot * HeaderSlotSize) == magic.Length && magic.SequenceEqual(Magic))
            {
                return true;
            }
        }
        return false;
    }

    /// <summary>
    /// Fills <paramref name="buffer"/> from <paramref name="offset"/>, which must lie within <see cref="Length"/>. A
    /// short read means the file shrank under us: that is an error, never zeros passed off as content.
    /// </summary>
    public void ReadExactly(Span<byte> buffer, long offset)
    {
        int read = _bcow is not null ? _bcow.ReadAt(buffer, offset) : _raw!.ReadAt(buffer, offset);
        if (read < buffer.Length)
        {
            throw new IOException($"{Path}: ended at {offset + read} while reading up to {offset + buffer.Length}; was it truncated meanwhile?");
        }
    }

    /// <summary>
    /// The ranges that may hold a non-zero byte, in order; everything else reads as zeros for certain. For a plain file,
    /// its data as SEEK_DATA/SEEK_HOLE report it (a file system that cannot tell reports all of it). For a B-CoW file,
    /// its upper extents, and its lower extents where the lower file holds data: a big sparse lower file (a disk image)
    /// then costs no reads of its holes, and measure does not count them.
    /// </summary>
    public DataCursor Data()
    {
        if (_bcow is null)
        {
            return new DataCursor(_raw!.GetDataRanges(0, Length).ToList());
        }
        IReadOnlyList<BCowExtent> extents = _bcow.GetExtents();
        List<(long Offset, long Length)>? lowerData = extents.Any(e => e.Source == ExtentSource.Lower) ? LowerDataRanges(_bcow) : null;
        var ranges = new List<(long Offset, long Length)>();
        int next = 0;
        foreach (BCowExtent extent in extents)
        {
            if (extent.Source == ExtentSource.Upper || (extent.Source == ExtentSource.Lower && lowerData is null))
            {
                Add(ranges, extent.Offset, extent.Offset + extent.Length);
            }
            else if (extent.Source == ExtentSource.Lower)
            {
                // Both lists are in order: the lower ranges wholly before this extent are never needed again.
                long end = extent.Offset + extent.Length;
                while (next < lowerData!.Count && lowerData[next].Offset + lowerData[next].Length <= extent.Offset)
                {
                    next++;
                }
                for (int i = next; i < lowerData.Count && lowerData[i].Offset < end; i++)
                {
                    Add(ranges, Math.Max(extent.Offset, lowerData[i].Offset), Math.Min(end, lowerData[i].Offset + lowerData[i].Length));
                }
            }
        }
        return new DataCursor(ranges);
    }

    /// <summary>Appends [start, end), merged with the last range when they touch.</summary>
    private static void Add(List<(long Offset, long Length)> ranges, long start, long end)
    {
        if (ranges.Count > 0 && ranges[^1].Offset + ranges[^1].Length == start)
        {
            ranges[^1] = (ranges[^1].Offset, end - ranges[^1].Offset);
        }
        else
        {
            ranges.Add((start, end - start));
        }
    }

    /// <summary>
    /// Where the lower file of <paramref name="file"/> holds data, or null when that cannot be asked (then every lower
    /// extent counts as data, which is only slower). The file was opened through its lower file a moment ago, with the
    /// lower identity checked, so this is the same file.
    /// </summary>
    private List<(long Offset, long Length)>? LowerDataRanges(BCowFile file)
    {
        string? recorded = file.GetInfo().LowerPath;
        if (recorded is not { Length: > 0 })
        {
            return null;
        }
        // Relative lower paths are recorded relative to the B-CoW file's folder.
        string lower = System.IO.Path.GetFullPath(recorded, System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(Path))!);
        try
        {
            using var storage = new FileStorage(lower, FileMode.Open, FileAccess.Read);
            return storage.GetDataRanges(0, storage.Length).ToList();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    public void Dispose()
    {
        _bcow?.Dispose();
        _raw?.Dispose();
    }

    /// <summary>Answers "may [start, end) hold data?" for ranges asked in increasing order, in amortised constant time.</summary>
    internal sealed class DataCursor(List<(long Offset, long Length)> ranges)
    {
        private int _next;

        public IReadOnlyList<(long Offset, long Length)> Ranges => ranges;

        public bool MayHoldData(long start, long end)
        {
            while (_next < ranges.Count && ranges[_next].Offset + ranges[_next].Length <= start)
            {
                _next++;
            }
            return _next < ranges.Count && ranges[_next].Offset < end;
        }
    }
}
