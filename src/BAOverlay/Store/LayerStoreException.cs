namespace BAOverlay.Store;

/// <summary>
/// A layer store operation failed: the store (or a file in it) is missing, malformed or hostile, an input (a
/// directory, a layer tar) cannot be stored, or a layer or image is not in the store. <see cref="Exception.Message"/>
/// is <c>FILE: problem</c>, naming the file concerned. An <see cref="IOException"/>, so callers that already handle
/// I/O errors handle these; system errors the store meets (ENOSPC, EIO, a share that went away) are raised as the
/// <see cref="IOException"/> .NET gives for them, or wrapped in this type with the file named.
/// </summary>
public sealed class LayerStoreException : IOException
{
    /// <summary>Makes the exception for a problem with <paramref name="path"/>.</summary>
    /// <param name="path">The file or directory concerned (or the layer or image name when there is no file).</param>
    /// <param name="problem">What is wrong, as a phrase without the path.</param>
    public LayerStoreException(string path, string problem)
        : base($"{path}: {problem}")
    {
        FilePath = path;
        Problem = problem;
    }

    /// <summary>Makes the exception for a problem with <paramref name="path"/> caused by <paramref name="inner"/>.</summary>
    /// <param name="path">The file or directory concerned.</param>
    /// <param name="problem">What is wrong, as a phrase without the path.</param>
    /// <param name="inner">The error met.</param>
    public LayerStoreException(string path, string problem, Exception inner)
        : base($"{path}: {problem}", inner)
    {
        FilePath = path;
        Problem = problem;
    }

    /// <summary>The file or directory concerned.</summary>
    public string FilePath { get; }

    /// <summary>What is wrong with it.</summary>
    public string Problem { get; }
}
