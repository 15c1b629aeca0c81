namespace BAOverlay;

/// <summary>
/// The one exception for a B-CoW file that cannot be used as it is: not a B-CoW file, truncated, corrupted
/// (checksum mismatch, map entries out of range or overlapping), written by a newer version (unknown incompatible
/// feature), or over a lower file that was changed or replaced since. The message names the file and the problem.
/// Nothing is written to a file that raised it.
/// </summary>
public sealed class BCowFormatException : IOException
{
    /// <summary>Makes the exception for <paramref name="filePath"/> and a one-line <paramref name="problem"/>.</summary>
    public BCowFormatException(string filePath, string problem)
        : base($"{filePath}: {problem}")
    {
        FilePath = filePath;
        Problem = problem;
    }

    /// <summary>The B-CoW file (or lower file) concerned.</summary>
    public string FilePath { get; }

    /// <summary>The problem, without the file name.</summary>
    public string Problem { get; }
}
