using BAOverlay.FileSystem.Export;

namespace BAOverlay.FileSystem;

/// <summary>
/// Exports the upper layer of an overlay (its upper directory) for container tooling: as a plain kernel overlayfs
/// upper directory, or as an OCI image layer tar. B-CoW files are written out with their merged content; whiteouts
/// and opaque directories are written in the form of the destination; the overlay's private extended attributes
/// (<c>user.baoverlay.*</c>) are left out. See <c>docs/overlay-export.md</c>.
/// </summary>
/// <remarks>
/// <para>The export reads the upper directory itself, not a live overlay: the directory must not change during the
/// export (unmount the overlay or keep it idle). Symbolic links are never followed. Each B-CoW file is opened
/// read-only, over the lower file its header names, which must still be there and unchanged.</para>
/// <para>The upper directory is scanned first (every object stat-ed, every directory listed, every file opened for
/// reading, every B-CoW file opened and checked), so an unreadable path or a corrupt B-CoW file fails the export
/// before anything is written.</para>
/// <para>Errors: <see cref="IOException"/> whose message names the path concerned (a
/// <see cref="BCowFormatException"/>, which is one, for a B-CoW file that cannot be used);
/// <see cref="OperationCanceledException"/> when cancelled.</para>
/// </remarks>
public static class UpperExport
{
    /// <summary>
    /// Writes <paramref name="upperDirectory"/> to the directory <paramref name="destination"/> as a plain overlayfs
    /// upper directory, usable as <c>upperdir=</c> of a kernel overlayfs mount over the same lower directories.
    /// </summary>
    /// <remarks>
    /// <para>What is written: directories, files, symbolic links, hard links (as hard links), device nodes, fifos and
    /// sockets with their mode, owner, access and modification times and extended attributes; B-CoW files as regular
    /// files with the merged content, holes kept where the B-CoW file reads zeros and where a plain file has holes;
    /// whiteouts (0/0 character devices or <c>.wh.NAME</c> files) as 0/0 character devices; opaque directories (any
    /// of the opaque xattrs or a <c>.wh..wh..opq</c> file) with <c>trusted.overlay.opaque=y</c>. The
    /// <c>user.baoverlay.*</c>, <c>user.overlay.*</c>, <c>user.fuseoverlayfs.*</c> and <c>trusted.overlay.*</c>
    /// attributes of the source are left out.</para>
    /// <para>Without root: whiteouts that cannot be device nodes stay <c>.wh.NAME</c> files, opaque directories get
    /// <c>user.overlay.opaque=y</c>, ownership is not kept; each is reported in
    /// <see cref="UpperExportResult.Warnings"/>.</para>
    /// <para>On failure: the export is built under <c>DESTINATION.tmp-XXXXXXXX</c> beside the destination and renamed
    /// to <paramref name="destination"/> only when complete and flushed to disk; on any failure or cancellation the
    /// temporary tree is removed, and nothing (or, with <see cref="UpperExportOptions.Overwrite"/>, the old destination
    /// unchanged) is left under the final name.</para>
    /// </remarks>
    /// <param name="upperDirectory">The overlay's upper directory.</param>
    /// <param name="destination">The directory to create. Its parent must exist; it must not be inside <paramref name="upperDirectory"/>.</param>
    /// <param name="options">Progress, cancellation, overwrite.</param>
    /// <returns>Counts and warnings.</returns>
    /// <exception cref="ArgumentException">The destination is the upper directory or lies inside it.</exception>
    /// <exception cref="DirectoryNotFoundException">The destination's parent folder does not exist.</exception>
    /// <exception cref="IOException">The destination exists (without <see cref="UpperExportOptions.Overwrite"/>),
    /// a path of the upper directory cannot be read, a B-CoW file is corrupt or its lower file is missing or changed,
    /// or writing failed. The message names the path.</exception>
    /// <exception cref="OperationCanceledException">The export was cancelled.</exception>
    public static UpperExportResult ToDirectory(string upperDirectory, string destination, UpperExportOptions? options = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(upperDirectory);
        return DirectoryExporter.Export(upperDirectory, destination, options ?? new UpperExportOptions());
    }

    /// <summary>
    /// Writes <paramref name="upperDirectory"/> to <paramref name="destination"/> as an OCI image layer: an
    /// uncompressed PAX tar that <c>docker load</c>-style tools, containerd and podman apply over the lower layers.
    /// </summary>
    /// <remarks>
    /// <para>Entries, depth first with each directory before its content and names in ordinal order, so the same tree
    /// gives the same bytes: paths relative to the layer root without a leading <c>/</c>, directories with a trailing
    /// <c>/</c> (the root itself has no entry); regular files with their content (B-CoW files with the merged content;
    /// holes are written as zeros); symbolic links; hard links (a second name of an inode is a hard-link entry to the
    /// first); character and block devices and fifos. Mode (with setuid, setgid, sticky), uid, gid and modification
    /// time are kept; owner names are not written. Extended attributes other than the overlay's private ones are PAX
    /// <c>SCHILY.xattr.NAME</c> records holding the value byte for byte, binary ones (<c>security.capability</c>)
    /// included. Sockets are left out with a warning.</para>
    /// <para>Whiteouts become empty files <c>DIR/.wh.NAME</c> (mode 0600); an opaque directory is its directory entry
    /// directly followed by an empty <c>DIR/.wh..wh..opq</c> file.</para>
    /// <para>On failure: problems found by the scan (unreadable path, corrupt B-CoW file) are raised before anything
    /// is written to the stream. A failure or cancellation while writing leaves a partial tar in the stream, without
    /// the end-of-archive blocks (so it never passes for a complete one with a strict reader): use
    /// <see cref="ToOciTarFile"/> to get a file that exists only when complete. The stream is flushed, not closed.</para>
    /// </remarks>
    /// <param name="upperDirectory">The overlay's upper directory.</param>
    /// <param name="destination">A writable stream (need not be seekable, e.g. standard output or a compressor).</param>
    /// <param name="options">Progress and cancellation (<see cref="UpperExportOptions.Overwrite"/> does not apply).</param>
    /// <returns>Counts and warnings.</returns>
    /// <exception cref="ArgumentException">The stream is not writable.</exception>
    /// <exception cref="IOException">A path of the upper directory cannot be read, a B-CoW file is corrupt or its
    /// lower file is missing or changed, or writing failed. The message names the path.</exception>
    /// <exception cref="OperationCanceledException">The export was cancelled.</exception>
    public static UpperExportResult ToOciTar(string upperDirectory, Stream destination, UpperExportOptions? options = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(upperDirectory);
        return OciTarExporter.Export(upperDirectory, destination, options ?? new UpperExportOptions());
    }

    /// <summary>
    /// Writes <paramref name="upperDirectory"/> as an OCI image layer tar (as <see cref="ToOciTar"/>) to the file
    /// <paramref name="destination"/>, which exists only once the export is complete.
    /// </summary>
    /// <remarks>
    /// The tar is written to <c>DESTINATION.tmp-XXXXXXXX</c> beside the destination, flushed to disk and renamed into
    /// place; on any failure or cancellation the temporary file is removed and nothing (or, with
    /// <see cref="UpperExportOptions.Overwrite"/>, the old file unchanged) is left under the final name.
    /// </remarks>
    /// <param name="upperDirectory">The overlay's upper directory.</param>
    /// <param name="destination">The tar file to create. Its folder must exist; it must not be inside <paramref name="upperDirectory"/>.</param>
    /// <param name="options">Progress, cancellation, overwrite.</param>
    /// <returns>Counts and warnings.</returns>
    /// <exception cref="ArgumentException">The destination is inside the upper directory.</exception>
    /// <exception cref="DirectoryNotFoundException">The destination's folder does not exist.</exception>
    /// <exception cref="IOException">The destination exists (without <see cref="UpperExportOptions.Overwrite"/>),
    /// a path of the upper directory cannot be read, a B-CoW file is corrupt or its lower file is missing or changed,
    /// or writing failed. The message names the path.</exception>
    /// <exception cref="OperationCanceledException">The export was cancelled.</exception>
    public static UpperExportResult ToOciTarFile(string upperDirectory, string destination, UpperExportOptions? options = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(upperDirectory);
        return OciTarExporter.ExportToFile(upperDirectory, destination, options ?? new UpperExportOptions());
    }
    /// <summary>
    /// Turns <paramref name="upperDirectory"/> into a plain overlayfs upper directory where it is, for switching to
    /// kernel overlayfs or fuse-overlayfs over the same lower directories: every B-CoW file is replaced by a plain
    /// (sparse) file holding its merged content, read through the overlay over <paramref name="lowerDirectories"/>,
    /// with its owner, mode, access and modification times and extended attributes other than the overlay's own.
    /// </summary>
    /// <remarks>
    /// <para>Also, as root: a directory renamed out of a lower layer gets <c>trusted.overlay.redirect</c> (read by a
    /// kernel overlayfs mounted with <c>redirect_dir=on</c>) where it has only <c>user.baoverlay.redirect</c>;
    /// <c>.wh.NAME</c> whiteouts become 0/0 character devices and opaque directories get
    /// <c>trusted.overlay.opaque=y</c> (without root they are left as they are, each with a warning). The overlay's
    /// private attributes (<c>user.baoverlay.*</c>, <c>trusted.baoverlay.*</c>, the marks that stop other overlays from
    /// reading B-CoW files) are removed everywhere. Hard links to a B-CoW file stay hard links.</para>
    /// <para>Crash-safe and resumable: each plain file is built in <c>WORK/baoverlay/plain-upper/</c>, flushed to disk,
    /// and renamed over its name, so after a kill every name is either the B-CoW file or the complete plain file; a
    /// second call finishes the job (plain files are skipped). Progress is reported per B-CoW name.</para>
    /// <para>Refused (IOException, nothing changed) while the upper directory is in use: named by a mounted kernel
    /// overlayfs, held open by another process (a baoverlayfs or fuse-overlayfs mount keeps its layer roots open), or
    /// with a B-CoW file locked by another process; and, without root, when a renamed directory needs the kernel's
    /// redirect. Each B-CoW file is opened through the overlay, which checks its header, map and lower file; a bad
    /// one stops the call there (the files before it stay converted).</para>
    /// </remarks>
    /// <param name="upperDirectory">The overlay's upper directory; the overlay must not be mounted.</param>
    /// <param name="lowerDirectories">The overlay's lower directories, highest first, as when it was mounted.</param>
    /// <param name="workDirectory">A directory on the upper directory's file system, not inside it (the overlay's work
    /// directory is the natural choice).</param>
    /// <param name="options">Progress and cancellation (<see cref="UpperExportOptions.Overwrite"/> and
    /// <see cref="UpperExportOptions.LowerDirectories"/> do not apply).</param>
    /// <returns><see cref="UpperExportResult.Files"/>: B-CoW names replaced; <see cref="UpperExportResult.Bytes"/>:
    /// their logical content bytes; <see cref="UpperExportResult.MaterializedBCowFiles"/>: B-CoW inodes replaced;
    /// <see cref="UpperExportResult.Whiteouts"/> and <see cref="UpperExportResult.OpaqueDirectories"/>: those turned
    /// into the kernel's form; warnings for what could not be.</returns>
    /// <exception cref="ArgumentException">The work directory is, holds, or lies inside the upper directory.</exception>
    /// <exception cref="DirectoryNotFoundException">A directory given does not exist.</exception>
    /// <exception cref="IOException">In use, not convertible without root, a B-CoW file or its lower file unusable, or
    /// writing failed; the message names the path.</exception>
    /// <exception cref="OperationCanceledException">Cancelled; a later call finishes the job.</exception>
    public static UpperExportResult ToPlainInPlace(string upperDirectory, IReadOnlyList<string> lowerDirectories, string workDirectory, UpperExportOptions? options = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(upperDirectory);
        ArgumentNullException.ThrowIfNull(lowerDirectories);
        return InPlaceConverter.Convert(upperDirectory, lowerDirectories, workDirectory, options ?? new UpperExportOptions());
    }
}
