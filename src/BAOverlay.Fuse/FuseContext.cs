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
