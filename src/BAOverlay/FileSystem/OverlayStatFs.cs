namespace BAOverlay.FileSystem;

/// <summary>File system statistics, as <c>statvfs</c> reports them (<see cref="OverlayFileSystem.StatFs"/>): the
/// fields of <c>struct statvfs</c>, in its order, under .NET names.</summary>
/// <param name="BlockSize">Preferred I/O block size (<c>f_bsize</c>).</param>
/// <param name="FragmentSize">The unit the block counts are in (<c>f_frsize</c>).</param>
/// <param name="Blocks">Size of the file system in <paramref name="FragmentSize"/> units (<c>f_blocks</c>).</param>
/// <param name="BlocksFree">Free blocks (<c>f_bfree</c>).</param>
/// <param name="BlocksAvailable">Free blocks an unprivileged user may use (<c>f_bavail</c>).</param>
/// <param name="Files">Inodes (<c>f_files</c>).</param>
/// <param name="FilesFree">Free inodes (<c>f_ffree</c>).</param>
/// <param name="FilesAvailable">Free inodes an unprivileged user may use (<c>f_favail</c>).</param>
/// <param name="FileSystemId">File system id (<c>f_fsid</c>).</param>
/// <param name="Flags">Mount flags, Linux's <c>ST_*</c> bits (<c>ST_RDONLY</c> = 1, <c>ST_NOSUID</c> = 2, ...;
/// <c>f_flag</c>).</param>
/// <param name="MaxNameLength">Longest file name (<c>f_namemax</c>).</param>
public readonly record struct OverlayStatFs(
    ulong BlockSize,
    ulong FragmentSize,
    ulong Blocks,
    ulong BlocksFree,
    ulong BlocksAvailable,
    ulong Files,
    ulong FilesFree,
    ulong FilesAvailable,
    ulong FileSystemId,
    ulong Flags,
    ulong MaxNameLength);
