namespace BAOverlay.FileSystem;

/// <summary>How an <see cref="OverlayFileSystem"/> is assembled from layer directories.</summary>
public sealed record OverlayOptions
{
    /// <summary>Read-only lower directories, highest (topmost) first. At least one.</summary>
    public required IReadOnlyList<string> LowerDirectories { get; init; }

    /// <summary>The writable upper directory; null makes the overlay read-only (writes fail with EROFS).</summary>
    public string? UpperDirectory { get; init; }

    /// <summary>
    /// A scratch directory on the same file system as the upper directory, used to make copy-ups atomic (an object is
    /// built there and renamed into place). Required with an upper directory; emptied of leftovers at open.
    /// </summary>
    public string? WorkDirectory { get; init; }

    /// <summary>
    /// Lower regular files at least this large are copied up as B-CoW files over the lower file (only written blocks
    /// are copied); smaller ones are copied whole. Default 1 MiB, from measurement (docs/overlay-semantics.md): below it
    /// a whole copy costs at most 1 MiB and one fsync, and is faster than a B-CoW file (three fsyncs); above it the
    /// B-CoW file saves over 90 % of the space and its cost stays flat while a whole copy's grows with the file.
    /// </summary>
    public long BlockCopyUpThreshold { get; init; } = 1 << 20;

    /// <summary>
    /// How long a B-CoW file written through the overlay stays open after its last handle is released, before it is
    /// committed durably and closed. Zero (the default) closes it at the release, as a caller that inspects the upper
    /// layer right after expects; a mount sets a few seconds (baoverlayfs: 5 s), so that <c>close(2)</c> costs no
    /// fsync, as on other file systems, and a file opened again soon finds its B-CoW file still open. Durability is
    /// promised at <see cref="OverlayHandle.Fsync"/>, <see cref="OverlayFileSystem.CloseIdleFiles()"/> and
    /// <see cref="OverlayFileSystem.Dispose"/>; a crash before the delayed close loses what was written since the
    /// last of those, never the file's consistency (the B-CoW file is consistent at every write).
    /// </summary>
    public TimeSpan CloseDelay { get; init; }

    /// <summary>Block size of the B-CoW files made by copy-up. Default 64 KiB.</summary>
    public int BlockSize { get; init; } = 1 << Format.Layout.DefaultBlockSizeLog2;

    /// <summary>
    /// A host's hot-zone cache for lower layers kept in a remote store (docs/layer-store.md): reads of lower regular
    /// files opened as they are go through it (keyed by the file's full path), so hot zones come from local media and a
    /// store that stops answering fails reads promptly with EIO instead of hanging. The overlay does not dispose it.
    /// Null (the default): no cache. Not yet applied to the lower file under a B-CoW file (copied-up files).
    /// </summary>
    public Cache.ZoneCache? LowerCache { get; init; }

    /// <summary>Which lower directories (indexes into <see cref="LowerDirectories"/>) read through
    /// <see cref="LowerCache"/>; null (the default): all of them.</summary>
    public IReadOnlyList<int>? LowerCacheLayers { get; init; }

    /// <summary>
    /// Metadata indexes of immutable lower layers (<see cref="Store.LayerStore.OpenIndexes"/>), one per entry of
    /// <see cref="LowerDirectories"/> (null for a layer without one), or null (the default): lookups, attributes and
    /// listings of an indexed layer are answered from its index, not from its directory; only the data of its files is
    /// read from the directory (through <see cref="LowerCache"/> when set, opened at the first read the cache cannot
    /// answer). The caller vouches that each index is that of the layer at the same position.
    /// </summary>
    public IReadOnlyList<Store.LayerIndex?>? LowerIndexes { get; init; }

    /// <summary>Where to write one line per problem with a layer tree (a path that cannot be read, a corrupt B-CoW file). Default: standard error.</summary>
    public Action<string>? Log { get; init; }
}

/// <summary>Who is calling: the uid, gid and umask the kernel passes with each FUSE request.</summary>
/// <param name="Uid">The caller's user id.</param>
/// <param name="Gid">The caller's group id.</param>
/// <param name="Umask">The caller's umask, applied to the mode of objects it creates.</param>
public readonly record struct OverlayCaller(uint Uid, uint Gid, uint Umask = 0)
{
    /// <summary>Supplementary groups (FUSE's <c>fuse_req_getgroups</c>), for group permission checks.</summary>
    public IReadOnlyList<uint>? Groups { get; init; }

    /// <summary>
    /// True when the kernel has already checked this caller's access (a FUSE mount with <c>default_permissions</c>):
    /// the overlay then uses the caller only as the owner and umask of what it creates, and checks nothing again. The
    /// kernel checked with the owners the mount shows and the caller's capabilities, which a mount with id mappings
    /// (<c>uidmapping=</c>) cannot be judged by afterwards: container root is not uid 0 in the layers.
    /// </summary>
    public bool AccessChecked { get; init; }

    /// <summary>root, umask 0.</summary>
    public static OverlayCaller Root => new(0, 0, 0);
}

/// <summary>Attributes of an overlay object, as <c>stat</c> reports them.</summary>
/// <param name="Ino">Overlay inode number: stable across copy-up and remount, unique across layers.</param>
/// <param name="Mode">File type and permission bits (<c>st_mode</c>).</param>
/// <param name="Nlink">Hard links.</param>
/// <param name="Uid">Owner.</param>
/// <param name="Gid">Group.</param>
/// <param name="Rdev">Device number of a device node.</param>
/// <param name="Size">Logical size (a B-CoW file reports its virtual size).</param>
/// <param name="Blocks">512-byte blocks really allocated (a B-CoW file reports its upper file's).</param>
/// <param name="ATimeNs">Access time, ns since the epoch.</param>
/// <param name="MTimeNs">Modification time, ns since the epoch.</param>
/// <param name="CTimeNs">Status change time, ns since the epoch.</param>
public readonly record struct OverlayStat(ulong Ino, uint Mode, ulong Nlink, uint Uid, uint Gid, ulong Rdev, long Size, long Blocks, long ATimeNs, long MTimeNs, long CTimeNs)
{
    /// <summary>The file type bits of <see cref="Mode"/>.</summary>
    public uint Type => Mode & 0xF000;

    /// <summary>True for a directory.</summary>
    public bool IsDirectory => Type == 0x4000;

    /// <summary>True for a regular file.</summary>
    public bool IsRegularFile => Type == 0x8000;

    /// <summary>True for a symbolic link.</summary>
    public bool IsSymbolicLink => Type == 0xA000;
}

/// <summary>A directory entry of the merged view.</summary>
/// <param name="Name">The name.</param>
/// <param name="Ino">Its overlay inode number.</param>
/// <param name="Type">File type bits (as in <see cref="OverlayStat.Mode"/>).</param>
/// <param name="NextOffset">The offset to pass to continue after this entry; stable for the open directory.</param>
public readonly record struct OverlayDirEntry(string Name, ulong Ino, uint Type, long NextOffset);
