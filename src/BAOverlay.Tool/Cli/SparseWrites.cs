namespace BAOverlay.Tool.Cli;

/// <summary>Writing a plain output file sparsely: the pages that hold only zeros are left as holes.</summary>
internal static class SparseWrites
{
    /// <summary>The granularity of the holes left: a page, the smallest hole ext4 and xfs keep.</summary>
    public const int ZeroPage = 4096;

    /// <summary>Writes only the pages of <paramref name="data"/> that hold a non-zero byte, at <paramref name="offset"/>,
    /// coalescing neighbours into one write; the file's length is the caller's to set.</summary>
    public static void WriteNonZeroRuns(FileStream destination, ReadOnlySpan<byte> data, long offset)
    {
        int runStart = -1;
        for (int page = 0; page < data.Length; page += ZeroPage)
        {
            bool zero = data.Slice(page, Math.Min(ZeroPage, data.Length - page)).IndexOfAnyExcept((byte)0) < 0;
            if (!zero && runStart < 0)
            {
                runStart = page;
            }
            else if (zero && runStart >= 0)
            {
                RandomAccess.Write(destination.SafeFileHandle, data[runStart..page], offset + runStart);
                runStart = -1;
            }
        }
        if (runStart >= 0)
        {
            RandomAccess.Write(destination.SafeFileHandle, data[runStart..], offset + runStart);
        }
    }
}
