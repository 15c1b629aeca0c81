namespace BAOverlay.Format;

/// <summary>
/// Where a lower file's fingerprint samples its content: <see cref="SampleCount"/> chunks of <see cref="ChunkSize"/>
/// bytes, the first at offset 0, the last ending at the end of the file, the others spread evenly between (each at a
/// 4 KiB-aligned offset, so a cold read costs one page). A file of at most 64 chunks (256 KiB) is read whole. A fixed
/// count keeps the cost of an open the same for any size (64 reads); the spread catches a change anywhere with the
/// chance of hitting a sample, and always a change of size, of the first or last 4 KiB, or of any 4 KiB-aligned
/// sampled page.
/// </summary>
internal static class LowerSampling
{
    public const int SampleCount = 64;
    public const int ChunkSize = 4096;

    /// <summary>How many chunks a file of <paramref name="size"/> bytes has sampled.</summary>
    public static int Count(long size) =>
        size <= (long)SampleCount * ChunkSize ? (int)((size + ChunkSize - 1) / ChunkSize) : SampleCount;

    /// <summary>Where chunk <paramref name="index"/> (0 ≤ index &lt; <see cref="Count"/>) of a file of
    /// <paramref name="size"/> bytes starts.</summary>
    /// <remarks>Plain arithmetic, no iterator and no 128-bit type: this runs on the first write through a fresh mount,
    /// where code the ahead-of-time compiled image lacks (generic instantiations over framework value types, Int128)
    /// costs a JIT compilation each.</remarks>
    public static long Offset(long size, int index)
    {
        if (size <= (long)SampleCount * ChunkSize)
        {
            return (long)index * ChunkSize;
        }
        long last = size - ChunkSize;
        if (index == SampleCount - 1)
        {
            return last;
        }
        // floor(index × last / 63), 4 KiB aligned. index × last fits a long below 2^57 bytes (any real file); above,
        // the same value is computed in two parts: (q × 63 + r) × index / 63 = q × index + r × index / 63.
        long spread = last <= long.MaxValue / (SampleCount - 1)
            ? index * last / (SampleCount - 1)
            : (last / (SampleCount - 1) * index) + (last % (SampleCount - 1) * index / (SampleCount - 1));
        return spread & ~(long)(ChunkSize - 1);
    }

    /// <summary>How many bytes chunk <paramref name="index"/> of a file of <paramref name="size"/> bytes holds.</summary>
    public static int Length(long size, int index) => (int)Math.Min(ChunkSize, size - Offset(size, index));

    /// <summary>The sampled chunks of a file of <paramref name="size"/> bytes, in increasing offset, not overlapping.</summary>
    public static IEnumerable<(long Offset, int Length)> Chunks(long size)
    {
        for (int i = 0; i < Count(size); i++)
        {
            yield return (Offset(size, i), Length(size, i));
        }
    }
}
