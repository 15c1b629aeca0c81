namespace BAOverlay.Fuse;

/// <summary>How a <see cref="FuseSession"/> is created and mounted.</summary>
public sealed record FuseMountOptions
{
    /// <summary>The mount's source, as <c>mount</c> and <c>/proc/mounts</c> show it (<c>-o fsname=</c>).</summary>
    public string FsName { get; init; } = "baoverlay";

    /// <summary>The file system subtype: the mount's type is <c>fuse.SUBTYPE</c> (<c>-o subtype=</c>).</summary>
    public string? Subtype { get; init; } = "baoverlay";

    /// <summary>Let users other than the mounting one use the mount (<c>-o allow_other</c>).</summary>
    public bool AllowOther { get; init; }

    /// <summary>Let the kernel check permissions from the mode bits (<c>-o default_permissions</c>); the handler then
    /// need not check them.</summary>
    public bool DefaultPermissions { get; init; } = true;

    /// <summary>Mount read-only (<c>-o ro</c>).</summary>
    public bool ReadOnly { get; init; }

    /// <summary>Honour set-user-ID and set-group-ID bits and file capabilities of programs run from the mount
    /// (<c>suid</c>; without it the mount is <c>nosuid</c>). A container image's <c>sudo</c> or <c>ping</c> needs it.</summary>
    public bool AllowSetuid { get; init; }

    /// <summary>Let device nodes on the mount be opened as devices (<c>dev</c>; without it the mount is <c>nodev</c>).
    /// Inside a user namespace the kernel forbids it whatever this says.</summary>
    public bool AllowDevices { get; init; }

    /// <summary>Forbid running programs from the mount (<c>noexec</c>).</summary>
    public bool NoExec { get; init; }

    /// <summary>Do not update access times (<c>noatime</c>).</summary>
    public bool NoAtime { get; init; }

    /// <summary>
    /// Ask the kernel for write-back caching (FUSE_CAP_WRITEBACK_CACHE) when it offers it: writes land in the page
    /// cache and reach the handler later, in larger pieces (at the latest at fsync, close or memory pressure), and the
    /// kernel keeps file sizes and mtimes itself. The handler may then get reads through handles opened write-only.
    /// </summary>
    public bool WritebackCache { get; init; }

    /// <summary>The most bytes the kernel reads ahead in a file (<c>max_readahead</c>), or null for the kernel's
    /// default. Capped by the kernel's own limit.</summary>
    public uint? MaxReadahead { get; init; }

    /// <summary>The largest write request the kernel sends (<c>max_write</c>), or null for libfuse's default (its
    /// buffer size, 1 MiB with 4 KiB pages on libfuse 3.14).</summary>
    public uint? MaxWrite { get; init; }

    /// <summary>
    /// Serve the mount through libfuse3 (<c>fuse_session_loop_mt</c>) instead of the session's own implementation of
    /// the FUSE protocol on <c>/dev/fuse</c> (the default, which needs no libfuse). Kept for comparison and as a
    /// fallback while the protocol layer is new.
    /// </summary>
    public bool UseLibFuse { get; init; }

    /// <summary>
    /// Offer READDIRPLUS (default on; the session's own protocol layer only): directory listings carry each entry's
    /// attributes, so listing with attributes (<c>ls -l</c>, <c>find</c>) needs no lookup request per name.
    /// </summary>
    public bool ReaddirPlus { get; init; } = true;

    /// <summary>
    /// Let the kernel keep directory listings (FOPEN_CACHE_DIR and FOPEN_KEEP_CACHE on every opendir; default on; the
    /// session's own protocol layer only): a directory listed again is served from the kernel's cache without a
    /// request, until a change through the mount, an invalidation from the handler, or a new directory mtime drops
    /// it.
    /// </summary>
    public bool CacheDirectories { get; init; } = true;

    /// <summary>
    /// Let direct writes into one file run in parallel (FOPEN_PARALLEL_DIRECT_WRITES on every open; default on; the
    /// session's own protocol layer only): without it the kernel holds the file's inode lock across each O_DIRECT
    /// write, so writers of one file take turns. The handler must take concurrent writes to one file.
    /// </summary>
    public bool ParallelDirectWrites { get; init; } = true;

    /// <summary>
    /// Ask for FUSE passthrough (Linux 6.9+, protocol 7.40; the session's own protocol layer only; default on): the
    /// kernel then reads and writes the files the handler names (<see cref="IFuseLowLevelHandler.OpenPassthroughFile"/>)
    /// itself, at the speed of the file system below. Asked only where the kernel allows it: with CAP_SYS_ADMIN in the
    /// initial user namespace (not rootless) and without <see cref="WritebackCache"/>, which it excludes.
    /// </summary>
    public bool Passthrough { get; init; } = true;

    /// <summary>
    /// Reply to large reads of files the handler reads as they are (<see cref="IFuseLowLevelHandler.ReadFile"/>) by
    /// splicing the file's pages into <c>/dev/fuse</c> (default on; the session's own protocol layer only): the kernel
    /// copies them into the request once, where a read into the daemon's memory and a write out of it copy twice.
    /// </summary>
    public bool SpliceReads { get; init; } = true;

    /// <summary>
    /// Take requests through io_uring (FUSE over io_uring, Linux 6.14+, protocol 7.42; the session's own protocol
    /// layer only; default off, see docs/fuse-interop.md for why) when the kernel offers it, which it does only while the fuse module's
    /// <c>enable_uring</c> parameter is Y (<c>/sys/module/fuse/parameters/enable_uring</c>, root's choice for the
    /// whole system): one ring per CPU queue, each answer handing the reply back and taking the next request in one
    /// system call. Where the kernel does not offer it, or io_uring cannot be set up (<c>io_uring_disabled</c>, a
    /// seccomp profile), or with this off, requests come through <c>read(2)</c> and replies go by <c>writev(2)</c>.
    /// </summary>
    public bool IoUring { get; init; }

    /// <summary>Request tracing on standard error (libfuse's <c>-d</c>).</summary>
    public bool Debug { get; init; }

    /// <summary>The most worker threads the multi-threaded loop starts (libfuse 3.12+; ignored before).</summary>
    public int MaxThreads { get; init; } = 10;

    /// <summary>
    /// Requests on names and attributes (lookups, getattr, creates, chmod...) are served by the worker that read them
    /// while the next request waits in the kernel's queue, as in a single-threaded daemon: that worker takes it next
    /// without going to sleep, where another sleeping worker would have been woken for it (two context switches).
    /// Requests that may wait for the disk (reads, writes, syncs, opens, truncates, releases the handler does not
    /// call quick, reads and writes it does not call quick) still get a spare worker first, so none of them holds
    /// back the others. Default on; off: a worker always waits for the next request beside the one serving
    /// (libfuse's policy), which a handler needs if one of those requests may wait for another request to be served.
    /// Classic transport only.
    /// </summary>
    public bool InlineRequests { get; init; } = true;

    /// <summary>Where the session writes one line per unexpected failure (corruption, a bug, an I/O error; see <see cref="BAOverlay.FileSystem.OverlayException.ErrnoOf"/>). Default: standard error.</summary>
    public Action<string>? Log { get; init; }

    /// <summary>The <c>-o</c> option string passed to <c>fuse_session_new</c>.</summary>
    internal string OptionString()
    {
        var options = new List<string> { "fsname=" + Escape(FsName) };
        if (Subtype is not null)
        {
            options.Add("subtype=" + Escape(Subtype));
        }
        if (AllowOther)
        {
            options.Add("allow_other");
        }
        if (DefaultPermissions)
        {
            options.Add("default_permissions");
        }
        if (ReadOnly)
        {
            options.Add("ro");
        }
        return string.Join(',', options);
    }

    /// <summary>fuse_opt's escaping: a comma or backslash inside a value is preceded by a backslash.</summary>
    private static string Escape(string value) => value.Replace("\\", "\\\\", StringComparison.Ordinal).Replace(",", "\\,", StringComparison.Ordinal);
}
