namespace BAOverlay;

/// <summary>A summary of a B-CoW file, as <c>bcow info</c> prints it.</summary>
/// <param name="VirtualSize">Logical size in bytes.</param>
/// <param name="BlockSize">Block size in bytes.</param>
/// <param name="LowerPath">The lower file as recorded, or null.</param>
/// <param name="LowerSize">The lower file's size as recorded.</param>
/// <param name="LowerLimit">Lower bytes at or beyond this offset read as zeros (a shrink hid them).</param>
/// <param name="BlocksLower">Blocks still read from lower (or zeros beyond it).</param>
/// <param name="BlocksZero">Blocks that read as zeros.</param>
/// <param name="BlocksPresent">Blocks wholly in upper.</param>
/// <param name="BlocksPartial">Blocks partly in upper, waiting for or without a fill.</param>
/// <param name="DataBytes">Upper space referenced by blocks.</param>
/// <param name="FileLength">The upper file's length.</param>
/// <param name="AllocatedBytes">Upper file bytes actually allocated on disk (holes excluded).</param>
/// <param name="Dirty">The file was not closed cleanly before this open.</param>
/// <param name="Generation">Commit generation.</param>
/// <param name="PendingCopyUps">Blocks queued for or being filled by the background copier.</param>
public sealed record BCowInfo(
    long VirtualSize,
    int BlockSize,
    string? LowerPath,
    long LowerSize,
    long LowerLimit,
    long BlocksLower,
    long BlocksZero,
    long BlocksPresent,
    long BlocksPartial,
    long DataBytes,
    long FileLength,
    long AllocatedBytes,
    bool Dirty,
    ulong Generation,
    int PendingCopyUps);

/// <summary>Where a range of the merged file is read from.</summary>
public enum ExtentSource
{
    /// <summary>The lower file.</summary>
    Lower,

    /// <summary>Zeros (no data anywhere).</summary>
    Zero,

    /// <summary>The upper (B-CoW) file, at <see cref="BCowExtent.UpperOffset"/>.</summary>
    Upper,
}

/// <summary>A range of the merged file and where it is read from.</summary>
/// <param name="Offset">Start in the merged file.</param>
/// <param name="Length">Bytes.</param>
/// <param name="Source">Where the bytes come from.</param>
/// <param name="UpperOffset">For <see cref="ExtentSource.Upper"/>, the offset in the upper file; otherwise 0.</param>
public readonly record struct BCowExtent(long Offset, long Length, ExtentSource Source, long UpperOffset);
