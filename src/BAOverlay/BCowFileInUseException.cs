namespace BAOverlay;

/// <summary>
/// A B-CoW file could not be opened because another process has it open in a conflicting way: a writer excludes every
/// other open, a reader excludes writers (open file description locks, as qemu takes on its images). Raised at once,
/// never after waiting. Within one process, readers may open a file that process has open for writing, but a second
/// writer is refused the same way. The message names the file and says it is in use; nothing was written to it.
/// </summary>
/// <remarks>To read a file in use anyway (for inspection; the result may be inconsistent), open it read-only with
/// <see cref="BCowOpenOptions.ForceShare"/>.</remarks>
public sealed class BCowFileInUseException : IOException
{
    /// <summary>Makes the exception for <paramref name="filePath"/> and a one-line <paramref name="problem"/>.</summary>
    public BCowFileInUseException(string filePath, string problem)
        : base($"{filePath}: {problem}")
    {
        FilePath = filePath;
        Problem = problem;
    }

    /// <summary>The B-CoW file that is in use.</summary>
    public string FilePath { get; }

    /// <summary>The problem, without the file name.</summary>
    public string Problem { get; }
}
