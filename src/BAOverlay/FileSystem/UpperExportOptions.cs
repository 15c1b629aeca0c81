namespace BAOverlay.FileSystem;

/// <summary>Options for <see cref="UpperExport"/>.</summary>
public sealed record UpperExportOptions
{
    /// <summary>
    /// Receives progress: once after the upper directory is scanned (totals known, nothing done), during the copy of
    /// large files, after every entry, and once at the end (done equals total). Called on the exporting thread; a
    /// <see cref="Progress{T}"/> posts to its synchronization context as usual.
    /// </summary>
    public IProgress<UpperExportProgress>? Progress { get; init; }

    /// <summary>
    /// Stops the export between entries and between chunks of a file: <see cref="OperationCanceledException"/> is
    /// raised and the destination is left as on any other failure (nothing under the final name).
    /// </summary>
    public CancellationToken CancellationToken { get; init; }

    /// <summary>
    /// Replace a destination that exists. Default false: an existing destination fails the export before anything is
    /// read or written. With true, the old destination is replaced only once the new one is complete (an atomic
    /// exchange), so a failed export leaves the old destination as it was.
    /// </summary>
    public bool Overwrite { get; init; }

    /// <summary>
    /// The overlay's lower directories, highest first. Needed only when the upper directory holds a directory renamed
    /// out of a lower layer (its content lives in the lower layers under its old path): it is then written out whole,
    /// as an opaque directory. Without them such a directory fails the export with a message saying so.
    /// </summary>
    public IReadOnlyList<string>? LowerDirectories { get; init; }
}

/// <summary>How far an export is.</summary>
/// <param name="BytesDone">File content bytes written so far (logical bytes: a hole counts as written).</param>
/// <param name="BytesTotal">File content bytes of the whole export (logical sizes of the regular files, each hard-linked file once).</param>
/// <param name="FilesDone">Entries written so far: files, directories, links, devices, whiteouts and (in a tar) opaque markers; in the directory form the root directory counts as one.</param>
/// <param name="FilesTotal">Entries of the whole export.</param>
/// <param name="CurrentPath">The entry being written, relative to the upper directory ("" before the first and at the end).</param>
public readonly record struct UpperExportProgress(long BytesDone, long BytesTotal, int FilesDone, int FilesTotal, string CurrentPath);

/// <summary>What an export wrote.</summary>
/// <param name="Files">Entries written: files, directories, links, devices, whiteouts and (in a tar) opaque markers; the final <see cref="UpperExportProgress.FilesDone"/>.</param>
/// <param name="Bytes">File content bytes written (logical).</param>
/// <param name="MaterializedBCowFiles">B-CoW files written out as plain files with their merged content.</param>
/// <param name="Whiteouts">Whiteouts written (in the form of the export).</param>
/// <param name="OpaqueDirectories">Opaque directories written.</param>
/// <param name="Warnings">
/// Things the export could not carry and left out, one line each naming the path: an extended attribute the
/// destination refused, ownership that could not be set without root, a whiteout kept
/// as a <c>.wh.</c> file because device nodes cannot be made (then the directory is not a kernel overlayfs upper
/// directory), a socket in a tar. Empty when the export is exact.
/// </param>
public sealed record UpperExportResult(int Files, long Bytes, int MaterializedBCowFiles, int Whiteouts, int OpaqueDirectories, IReadOnlyList<string> Warnings);
