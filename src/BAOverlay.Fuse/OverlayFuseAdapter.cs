using System.Collections.Concurrent;
using BAOverlay.FileSystem;

namespace BAOverlay.Fuse;

/// <summary>
/// Serves an <see cref="OverlayFileSystem"/> to FUSE: each request maps to one overlay operation. Open files and
/// directory snapshots (taken at opendir, so readdir offsets stay valid) live in handle tables keyed by the FUSE
/// <c>fh</c>. The caller (uid, gid, umask, groups) is passed to the overlay for permission checks only when the mount
/// does not use <c>default_permissions</c>; with it the kernel has already checked, and the caller is still used for
/// the owner and umask of new objects.
/// <para>Open files keep the kernel's page cache from one open to the next (<see cref="KeepCache"/>): every change
/// through the mount passes through the kernel, which keeps its cache right itself. A change made to the overlay in
/// any other way (through the library, while mounted) is forwarded to the kernel as an invalidation once
/// <see cref="Attach"/> has connected the adapter to its session.</para>
/// </summary>
public sealed class OverlayFuseAdapter : IFuseLowLevelHandler
{
    private const int O_ACCMODE = 3;
    private const int O_RDONLY = 0;
    private const int O_TRUNC = 0x200;

    /// <summary>O_DIRECT (x86_64): an open that asks for it is served without the page cache (FOPEN_DIRECT_IO), which
    /// also lets the kernel send its writes in parallel (see <see cref="FuseMountOptions.ParallelDirectWrites"/>):
    /// an open through the page cache puts the inode in cached mode, where direct writes take the inode lock.</summary>
    private const int O_DIRECT = 0x4000;
    private const int XATTR_CREATE = 1;
    private const int XATTR_REPLACE = 2;
    private const int FALLOC_FL_KEEP_SIZE = 0x01;
    private const int FALLOC_FL_PUNCH_HOLE = 0x02;
    private const int FALLOC_FL_ZERO_RANGE = 0x10;
    private const int SEEK_DATA = 3;
    private const int SEEK_HOLE = 4;
    private const uint RENAME_NOREPLACE = 1;
    private const uint RENAME_EXCHANGE = 2;

    private readonly OverlayFileSystem _fileSystem;
    private readonly bool _checkPermissions;
    private readonly ConcurrentDictionary<ulong, OverlayHandle> _files = new();
    private readonly ConcurrentDictionary<ulong, IReadOnlyList<OverlayDirEntry>> _directories = new();
    private long _nextHandle;
    private FuseSession? _session;

    /// <summary>The adapter serving a request on this thread: changes it makes come from the kernel, which keeps its
    /// own cache right, so they are not sent back to it as invalidations.</summary>
    [ThreadStatic]
    private static OverlayFuseAdapter? t_serving;

    /// <summary>Creates the adapter.</summary>
    /// <param name="fileSystem">The overlay to serve.</param>
    /// <param name="defaultPermissions">True when the mount uses <c>default_permissions</c> (see
    /// <see cref="FuseMountOptions.DefaultPermissions"/>): the overlay then does not check permissions again.</param>
    public OverlayFuseAdapter(OverlayFileSystem fileSystem, bool defaultPermissions = true)
    {
        ArgumentNullException.ThrowIfNull(fileSystem);
        _fileSystem = fileSystem;
        _checkPermissions = !defaultPermissions;
    }

    /// <summary>The default of <see cref="EntryTimeout"/>, <see cref="AttributeTimeout"/> and
    /// <see cref="NegativeTimeout"/>: a day. The kernel sees every change made through the mount, and
    /// <see cref="Attach"/> forwards the changes made through the library, so what it caches stays right for as long
    /// as it keeps it; only edits of the layer directories behind the mount's back (unsupported, as with kernel
    /// overlayfs) go unseen.</summary>
    public const double DefaultTimeout = 86400;

    /// <inheritdoc/>
    public double EntryTimeout { get; init; } = DefaultTimeout;

    /// <inheritdoc/>
    public double AttributeTimeout { get; init; } = DefaultTimeout;

    /// <inheritdoc/>
    public double NegativeTimeout { get; init; } = DefaultTimeout;

    /// <inheritdoc/>
    public bool WantsGroups => _checkPermissions;

    /// <summary>
    /// Keep the kernel's cached data of a file when it is opened again (FUSE <c>keep_cache</c>); default true. Safe
    /// because the kernel sees every change made through the mount, and <see cref="Attach"/> forwards the others; the
    /// kernel also drops the cache when a file's size or mtime moves under it (FUSE_CAP_AUTO_INVAL_DATA).
    /// </summary>
    public bool KeepCache { get; init; } = true;

    /// <summary>
    /// Connects the adapter to the session serving it: from now on a change the overlay reports
    /// (<see cref="OverlayFileSystem.Changed"/>) that did not come through this mount is forwarded to the kernel as a
    /// cache invalidation (<see cref="FuseSession.InvalidateInode"/>), on a thread-pool thread, never on the thread
    /// that made the change. Call it once, before the session runs.
    /// </summary>
    public void Attach(FuseSession session)
    {
        ArgumentNullException.ThrowIfNull(session);
        if (Interlocked.CompareExchange(ref _session, session, null) is not null)
        {
            throw new InvalidOperationException("the adapter is attached to a session already");
        }
        _fileSystem.Changed += OnOverlayChanged;
        _fileSystem.NameChanged += OnOverlayNameChanged;
        _fileSystem.AttributesChangedAside += OnOverlayChangedAside;
    }

    /// <summary>Dropped from the kernel's cache even while serving: the request that caused it was for another
    /// object, whose reply tells the kernel nothing of this one. At once, before that request is answered (an
    /// invalidation of attributes only takes no lock a waiting request could hold): queued for later, a stat right
    /// after the write that copied the directory up could still be answered from the kernel's cache.</summary>
    private void OnOverlayChangedAside(ulong ino) => Invalidate(ino, -1, 0);

    private void OnOverlayNameChanged(ulong parent, string name)
    {
        if (t_serving == this)
        {
            return;
        }
        ThreadPool.UnsafeQueueUserWorkItem(static state => state.Adapter.InvalidateName(state.Parent, state.Name),
            (Adapter: this, Parent: parent, Name: name), preferLocal: false);
    }

    private void InvalidateName(ulong parent, string name)
    {
        try
        {
            _session?.InvalidateEntry(parent, name);
            _session?.InvalidateInode(parent, 0, 0); // its times and link count moved, and the listing the kernel keeps (cache_readdir) is stale
        }
        catch (IOException e)
        {
            _session?.LogLine(e.Message);
        }
    }

    private void OnOverlayChanged(ulong ino, long offset, long length)
    {
        if (t_serving == this)
        {
            return;
        }
        ThreadPool.UnsafeQueueUserWorkItem(static state => state.Adapter.Invalidate(state.Ino, state.Offset, state.Length),
            (Adapter: this, Ino: ino, Offset: offset, Length: length), preferLocal: false);
    }

    private void Invalidate(ulong ino, long offset, long length)
    {
        try
        {
            _session?.InvalidateInode(ino, offset, length);
        }
        catch (IOException e)
        {
            _session?.LogLine(e.Message);
        }
    }

    /// <summary>Marks the calling thread as serving a kernel request until disposed.</summary>
    private Serving Serve() => new(this);

    private readonly struct Serving : IDisposable
    {
        private readonly OverlayFuseAdapter? _previous;

        public Serving(OverlayFuseAdapter adapter)
        {
            _previous = t_serving;
            t_serving = adapter;
        }

        public void Dispose() => t_serving = _previous;
    }

    /// <summary>Open files (for tests and diagnostics).</summary>
    public int OpenFiles => _files.Count;

    /// <summary>Open directory snapshots (for tests and diagnostics).</summary>
    public int OpenDirectories => _directories.Count;

    /// <summary>The caller, marked as already checked when the kernel checks permissions: creation still needs its ids
    /// for the owner of the new object.</summary>
    private OverlayCaller Caller(FuseContext context) =>
        new(context.Uid, context.Gid, context.Umask) { Groups = context.Groups, AccessChecked = !_checkPermissions };

    /// <summary>The caller to check, or null (trusted) when the kernel checks permissions.</summary>
    private OverlayCaller? Checked(FuseContext context) => _checkPermissions ? Caller(context) : null;

    /// <inheritdoc/>
    public OverlayStat Lookup(ulong parent, string name, FuseContext context) => _fileSystem.Lookup(parent, name, Checked(context));

    /// <inheritdoc/>
    public OverlayStat? TryLookup(ulong parent, string name, FuseContext context) => _fileSystem.TryLookup(parent, name, Checked(context));

    /// <summary>
    /// A READDIRPLUS entry's lookup, skipped (null) for a name whose object the kernel already holds references to
    /// (<see cref="OverlayFileSystem.IsReferenced"/>): a second listing of a directory, or a listing of files just
    /// made through the mount, then costs no lookups, and the kernel's entries for those names stay as they are.
    /// </summary>
    public OverlayStat? LookupForListing(ulong parent, string name, FuseContext context) =>
        _fileSystem.IsReferenced(parent, name) ? null : Lookup(parent, name, context);

    /// <inheritdoc/>
    public void Forget(ulong ino, ulong count) => _fileSystem.Forget(ino, count);

    /// <inheritdoc/>
    public OverlayStat GetAttr(ulong ino, ulong? handle, FuseContext context) => _fileSystem.GetAttr(ino);

    /// <inheritdoc/>
    public OverlayStat SetAttr(ulong ino, OverlaySetAttr change, ulong? handle, FuseContext context)
    {
        // SetAttr always takes a caller; with default_permissions the kernel has checked already (including an
        // ftruncate through a descriptor opened for writing), so the overlay is told the caller is root.
        OverlayCaller caller = _checkPermissions ? Caller(context) : OverlayCaller.Root;
        if (change.Mode is uint mode)
        {
            change = change with { Mode = mode & 0xFFF };
        }
        using Serving serving = Serve();
        return _fileSystem.SetAttr(ino, change, caller);
    }

    /// <inheritdoc/>
    public string ReadLink(ulong ino, FuseContext context) => _fileSystem.ReadLink(ino);

    /// <inheritdoc/>
    public OverlayStat MakeNode(ulong parent, string name, uint mode, ulong rdev, FuseContext context)
    {
        using Serving serving = Serve();
        return _fileSystem.MakeNode(parent, name, mode, rdev, Caller(context));
    }

    /// <inheritdoc/>
    public OverlayStat MakeDirectory(ulong parent, string name, uint mode, FuseContext context)
    {
        using Serving serving = Serve();
        return _fileSystem.MakeDirectory(parent, name, mode, Caller(context));
    }

    /// <inheritdoc/>
    public void Unlink(ulong parent, string name, FuseContext context)
    {
        using Serving serving = Serve();
        _fileSystem.Unlink(parent, name, Checked(context));
    }

    /// <inheritdoc/>
    public void RemoveDirectory(ulong parent, string name, FuseContext context)
    {
        using Serving serving = Serve();
        _fileSystem.RemoveDirectory(parent, name, Checked(context));
    }

    /// <inheritdoc/>
    public OverlayStat MakeSymbolicLink(string target, ulong parent, string name, FuseContext context)
    {
        using Serving serving = Serve();
        return _fileSystem.MakeSymbolicLink(parent, name, target, Caller(context));
    }

    /// <inheritdoc/>
    public void Rename(ulong parent, string name, ulong newParent, string newName, uint flags, FuseContext context)
    {
        if ((flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE)) != 0)
        {
            throw new OverlayException(OverlayErrno.EINVAL, $"rename flags {flags:x} are not supported (RENAME_WHITEOUT is the overlay's own)");
        }
        var overlayFlags = OverlayRenameFlags.None;
        if ((flags & RENAME_NOREPLACE) != 0)
        {
            overlayFlags |= OverlayRenameFlags.NoReplace;
        }
        if ((flags & RENAME_EXCHANGE) != 0)
        {
            overlayFlags |= OverlayRenameFlags.Exchange;
        }
        using Serving serving = Serve();
        _fileSystem.Rename(parent, name, newParent, newName, overlayFlags, Checked(context));
    }

    /// <inheritdoc/>
    public OverlayStat Link(ulong ino, ulong newParent, string newName, FuseContext context)
    {
        using Serving serving = Serve();
        return _fileSystem.Link(ino, newParent, newName, Checked(context));
    }

    /// <inheritdoc/>
    public FuseOpenResult Open(ulong ino, int flags, FuseContext context)
    {
        bool write = (flags & O_ACCMODE) != O_RDONLY;
        bool truncate = (flags & O_TRUNC) != 0;
        using Serving serving = Serve();
        OverlayHandle handle = _fileSystem.Open(ino, write, truncate, Checked(context));
        return new FuseOpenResult(Register(handle), DirectIo: (flags & O_DIRECT) != 0, KeepCache: KeepCache);
    }

    /// <inheritdoc/>
    public (OverlayStat Stat, FuseOpenResult Open) Create(ulong parent, string name, uint mode, int flags, FuseContext context)
    {
        using Serving serving = Serve();
        (OverlayStat stat, OverlayHandle handle) = _fileSystem.Create(parent, name, mode, Caller(context));
        return (stat, new FuseOpenResult(Register(handle), DirectIo: (flags & O_DIRECT) != 0, KeepCache: KeepCache));
    }

    /// <inheritdoc/>
    public int Read(ulong ino, ulong handle, Span<byte> buffer, long offset) => File(handle).Read(buffer, offset);

    /// <summary>A plain file read as it is (<see cref="OverlayHandle.DirectReadFile"/>): read replies are spliced from
    /// it.</summary>
    public Microsoft.Win32.SafeHandles.SafeFileHandle? ReadFile(ulong ino, ulong handle) => File(handle).DirectReadFile;

    /// <summary>A plain local file read as it is (<see cref="ReadFile"/>): its reads are pread or splice of that file,
    /// its writes (an upper file: a handle open for writing has copied the file up) pwrite.</summary>
    public bool QuickIo(ulong ino, ulong handle) => _files.TryGetValue(handle, out OverlayHandle? file) && file.DirectReadFile is not null;

    /// <inheritdoc/>
    public int Write(ulong ino, ulong handle, ReadOnlySpan<byte> data, long offset)
    {
        using Serving serving = Serve();
        File(handle).Write(data, offset);
        return data.Length;
    }

    /// <inheritdoc/>
    public void Flush(ulong ino, ulong handle) => File(handle);

    /// <summary>
    /// False: a flush has nothing to do here (writes are made at WRITE, an open file's durability is promised at
    /// fsync and release; locks are the kernel's), so closes are not sent at all, as fuse-overlayfs's and kernel
    /// overlayfs's (an ext4 upper has no flush) cost nothing either; each close of a descriptor was a round trip.
    /// </summary>
    public bool HandlesFlush => false;

    /// <summary>True when the overlay defers the commits of written B-CoW files (<see cref="OverlayOptions.CloseDelay"/>):
    /// a release then closes a descriptor at most, and waits for no disk.</summary>
    public bool QuickRelease => _fileSystem.Options.CloseDelay > TimeSpan.Zero;

    /// <inheritdoc/>
    public void Release(ulong ino, ulong handle)
    {
        if (_files.TryRemove(handle, out OverlayHandle? file))
        {
            file.Dispose();
        }
    }

    /// <summary>Whole upper files pass through (see <see cref="OverlayHandle.OpenPassthroughFile"/>) unless
    /// <see cref="Passthrough"/> is off, and untouched lower files too with <see cref="PassthroughLowerFiles"/>.</summary>
    public Microsoft.Win32.SafeHandles.SafeFileHandle? OpenPassthroughFile(ulong ino, ulong handle) =>
        Passthrough ? File(handle).OpenPassthroughFile(PassthroughLowerFiles) : null;

    /// <summary>
    /// Let the kernel serve reads and writes of whole upper files itself (FUSE passthrough) when the session was
    /// granted it; default true. B-CoW files, lower files (unless <see cref="PassthroughLowerFiles"/>) and
    /// set-user-ID or set-group-ID files are served here either way.
    /// </summary>
    public bool Passthrough { get; init; } = true;

    /// <summary>
    /// With <see cref="Passthrough"/>, let the kernel also read untouched lower files itself, from the lower file (not
    /// those read through the hot-zone cache); default false. The price: while such a file is open for reading, an
    /// open of it for writing or a truncate fails with ETXTBSY (the reader would otherwise go on reading the lower
    /// file's bytes after the copy-up), as writing a running program does.
    /// </summary>
    public bool PassthroughLowerFiles { get; init; }

    /// <summary>
    /// A failed change (write, fsync, release, create, rename, ...) with EIO or EROFS may mean the upper layer's file
    /// system failed: the overlay probes it and turns read-only if so (<see cref="OverlayFileSystem.CheckUpperAfter"/>).
    /// Failed reads never probe: a lower layer on a network file system failing is no reason to stop writes.
    /// </summary>
    public void OnFailure(string operation, Exception exception)
    {
        if (operation is not ("read" or "lookup" or "getattr" or "readdir" or "readdirplus" or "opendir" or "readlink"
            or "getxattr" or "listxattr" or "statfs" or "lseek" or "flush" or "releasedir" or "forget" or "batch_forget"))
        {
            try
            {
                _fileSystem.CheckUpperAfter(exception);
            }
            catch (Exception e)
            {
                _session?.LogLine($"checking the upper file system after a failed {operation}: {e.Message}");
            }
        }
    }

    /// <summary>The name under which the mount root answers <c>getxattr</c> with the overlay's state:
    /// <c>getfattr -n user.baoverlay.status MOUNTPOINT</c> prints "healthy" or why it is read-only.</summary>
    public const string StatusXattr = "user.baoverlay.status";

    /// <inheritdoc/>
    public bool MayHavePrivileges(ulong ino) => _fileSystem.MayHavePrivileges(ino);

    /// <inheritdoc/>
    public bool DropPrivileges(ulong ino, FuseContext context)
    {
        using Serving serving = Serve();
        return _fileSystem.DropPrivileges(ino, Caller(context));
    }

    /// <inheritdoc/>
    public void Fsync(ulong ino, ulong handle, bool dataOnly) => File(handle).Fsync();

    /// <inheritdoc/>
    public ulong OpenDirectory(ulong ino, FuseContext context)
    {
        IReadOnlyList<OverlayDirEntry> entries = _fileSystem.ReadDirectory(ino, Checked(context));
        ulong handle = (ulong)Interlocked.Increment(ref _nextHandle);
        _directories[handle] = entries;
        return handle;
    }

    /// <inheritdoc/>
    public IReadOnlyList<OverlayDirEntry> ReadDirectory(ulong ino, ulong handle) =>
        _directories.TryGetValue(handle, out IReadOnlyList<OverlayDirEntry>? entries)
            ? entries
            : throw new OverlayException(OverlayErrno.EBADF, $"directory handle {handle} is not open");

    /// <inheritdoc/>
    public void ReleaseDirectory(ulong ino, ulong handle) => _directories.TryRemove(handle, out _);

    /// <inheritdoc/>
    public OverlayStatFs StatFs(ulong ino) => _fileSystem.StatFs();

    /// <inheritdoc/>
    public void SetXattr(ulong ino, string name, ReadOnlySpan<byte> value, int flags, FuseContext context)
    {
        OverlayXattrFlags overlayFlags = flags switch
        {
            0 => OverlayXattrFlags.None,
            XATTR_CREATE => OverlayXattrFlags.Create,
            XATTR_REPLACE => OverlayXattrFlags.Replace,
            _ => throw new OverlayException(OverlayErrno.EINVAL, $"setxattr flags {flags} are not supported"),
        };
        _fileSystem.SetXattr(ino, name, value, overlayFlags, Checked(context));
    }

    /// <inheritdoc/>
    public byte[]? GetXattr(ulong ino, string name, FuseContext context) =>
        ino == OverlayFileSystem.RootIno && name == StatusXattr
            ? System.Text.Encoding.UTF8.GetBytes(Status + "\n")
            : _fileSystem.TryGetXattr(ino, name, Checked(context));

    /// <summary>
    /// "healthy"; or why the overlay is read-only (its upper file system failed), and, when its lower files are read
    /// through a hot-zone cache whose store does not answer, since when and why ("store unreachable since T: ..."),
    /// the two joined by "; " (see <see cref="StatusXattr"/>).
    /// </summary>
    public string Status
    {
        get
        {
            string? upper = _fileSystem.UpperFailure is { } failure ? "read-only: " + failure : null;
            string? store = null;
            if (_fileSystem.LowerCache?.Status is { State: BAOverlay.Cache.StoreState.Unreachable } cache)
            {
                string since = cache.Since?.ToString("u", System.Globalization.CultureInfo.InvariantCulture) ?? "?";
                store = $"store unreachable since {since} (cached reads go on, others fail with EIO): {cache.LastError ?? "no answer"}";
            }
            return upper is null && store is null ? "healthy" : string.Join("; ", new[] { upper, store }.Where(s => s is not null));
        }
    }

    /// <inheritdoc/>
    public IReadOnlyList<string> ListXattrs(ulong ino, FuseContext context) => _fileSystem.ListXattrs(ino);

    /// <inheritdoc/>
    public void RemoveXattr(ulong ino, string name, FuseContext context) => _fileSystem.RemoveXattr(ino, name, Checked(context));

    /// <inheritdoc/>
    public void Allocate(ulong ino, ulong handle, int mode, long offset, long length)
    {
        bool keepSize = (mode & FALLOC_FL_KEEP_SIZE) != 0;
        OverlayAllocateMode overlayMode = (mode & ~FALLOC_FL_KEEP_SIZE) switch
        {
            0 => OverlayAllocateMode.Allocate,
            FALLOC_FL_PUNCH_HOLE => OverlayAllocateMode.PunchHole,
            FALLOC_FL_ZERO_RANGE => OverlayAllocateMode.ZeroRange,
            _ => throw new OverlayException(OverlayErrno.EOPNOTSUPP, $"fallocate mode {mode:x} is not supported"),
        };
        using Serving serving = Serve();
        File(handle).Allocate(offset, length, overlayMode, keepSize);
    }

    /// <inheritdoc/>
    public long Seek(ulong ino, ulong handle, long offset, int whence) => whence switch
    {
        SEEK_DATA => File(handle).Seek(offset, data: true),
        SEEK_HOLE => File(handle).Seek(offset, data: false),
        _ => throw new OverlayException(OverlayErrno.EINVAL, $"lseek whence {whence} is handled by the kernel"),
    };

    private ulong Register(OverlayHandle handle)
    {
        ulong fh = (ulong)Interlocked.Increment(ref _nextHandle);
        _files[fh] = handle;
        return fh;
    }

    private OverlayHandle File(ulong handle) =>
        _files.TryGetValue(handle, out OverlayHandle? file) ? file : throw new OverlayException(OverlayErrno.EBADF, $"file handle {handle} is not open");
}
