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

    /// <summary>The sampled chunks of a file of <paramref name="size"/> bytes, in increasing offset, not overlapping.</summary>
    public static IEnumerable<(long Offset, int Length)> Chunks(long size)
    {
        if (size <= (long)SampleCount * ChunkSize)
        {
            for (long offset = 0; offset < size; offset += ChunkSize)
            {
                yield return (offset, (int)Math.Min(ChunkSize, size - offset));
            }
            yield break;
        }
        long last = size - ChunkSize;
        for (int i = 0; i < SampleCount - 1; i++)
        {
            // Int128: i × size overflows a long for sizes near 2^63.
            long offset = (long)((Int128)i * last / (SampleCount - 1)) & ~(long)(ChunkSize - 1);
            yield return (offset, ChunkSize);
        }
        yield return (last, ChunkSize);
    }
}
