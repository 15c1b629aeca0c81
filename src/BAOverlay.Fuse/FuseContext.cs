namespace BAOverlay.Fuse;

/// <summary>Who made a FUSE request (libfuse's <c>struct fuse_ctx</c>).</summary>
/// <param name="Uid">The caller's user id.</param>
/// <param name="Gid">The caller's group id.</param>
/// <param name="Pid">The caller's thread id.</param>
/// <param name="Umask">The caller's umask (0 when the kernel already applied it).</param>
public readonly record struct FuseContext(uint Uid, uint Gid, int Pid, uint Umask)
{
    /// <summary>The caller's supplementary groups, when the handler asked for them (see
    /// <see cref="IFuseLowLevelHandler.WantsGroups"/>); null otherwise.</summary>
    public IReadOnlyList<uint>? Groups { get; init; }
}

/// <summary>What an open or create returns to the kernel (the <c>fh</c> and the cache flags of <c>struct fuse_file_info</c>).</summary>
/// <param name="Handle">The handle number passed back with every request on the open file.</param>
/// <param name="DirectIo">Bypass the page cache for this open file.</param>
/// <param name="KeepCache">Keep the cached data from an earlier open.</param>
public readonly record struct FuseOpenResult(ulong Handle, bool DirectIo = false, bool KeepCache = false);

/// <summary>What a FUSE session and the kernel agreed at init (<c>struct fuse_conn_info</c> after the init callback).</summary>
/// <param name="Major">FUSE protocol major version.</param>
/// <param name="Minor">FUSE protocol minor version.</param>
/// <param name="Capable">The FUSE_CAP_* flags the kernel offered.</param>
/// <param name="Want">The FUSE_CAP_* flags in use (libfuse's defaults and the session's choices).</param>
/// <param name="MaxWrite">The largest write request, in bytes.</param>
/// <param name="MaxReadahead">The most bytes read ahead, in bytes.</param>
public sealed record FuseConnection(uint Major, uint Minor, uint Capable, uint Want, uint MaxWrite, uint MaxReadahead)
{
    /// <summary>FUSE_CAP_WRITEBACK_CACHE is in use.</summary>
    public bool WritebackCache => (Want & Interop.FuseCallbacks.FUSE_CAP_WRITEBACK_CACHE) != 0;

    /// <summary>FUSE passthrough was granted: files the handler names are read and written by the kernel itself
    /// (<see cref="IFuseLowLevelHandler.OpenPassthroughFile"/>).</summary>
    public bool Passthrough { get; init; }

    /// <summary>FUSE_HANDLE_KILLPRIV_V2 is in use: the kernel asks the handler to clear set-user-ID, set-group-ID and
    /// capabilities (<see cref="IFuseLowLevelHandler.DropPrivileges"/>) instead of asking for
    /// <c>security.capability</c> before every write.</summary>
    public bool KillPrivilegesV2 { get; init; }

    /// <summary>FUSE over io_uring was granted (protocol 7.42, <see cref="FuseMountOptions.IoUring"/>): requests come
    /// through one io_uring per CPU queue instead of <c>read(2)</c> on <c>/dev/fuse</c>.</summary>
    public bool IoUring { get; init; }

    /// <summary>FUSE_CAP_AUTO_INVAL_DATA is in use: the kernel drops cached data when a file's size or mtime changes.</summary>
    public bool AutoInvalidateData => (Want & Interop.FuseCallbacks.FUSE_CAP_AUTO_INVAL_DATA) != 0;
}
