using System.Globalization;
using System.Runtime.InteropServices;
using System.Text;
using BAOverlay.Fuse.Interop;
using BAOverlay.FileSystem;

namespace BAOverlay.Fuse;

/// <summary>
/// A FUSE session serving an <see cref="IFuseLowLevelHandler"/>: create it, <see cref="Mount"/> it on a
/// directory, then <see cref="Run"/> the multi-threaded request loop on a thread of your choice; <see cref="Unmount"/>
/// (from another thread) ends the loop, and <see cref="Dispose"/> unmounts and frees the session.
/// </summary>
/// <remarks>
/// <para>The session speaks the kernel's FUSE protocol on <c>/dev/fuse</c> itself (no libfuse needed); with
/// <see cref="FuseMountOptions.UseLibFuse"/> it serves through libfuse3's low-level API instead.</para>
/// <para>The mount is made with the <c>mount(2)</c> system call from this process, on a <c>/dev/fuse</c> descriptor
/// (handed to libfuse as <c>/dev/fd/N</c> when libfuse serves); unmounting is <c>umount2(2)</c> of this session's own mount,
/// identified by its device number and mount id (<see cref="Identity"/>), never of whatever the mount point path names
/// by then (see <see cref="Unmount"/>). So libfuse never runs
/// <c>fusermount3</c> or <c>/bin/mount</c>, and nothing forks the .NET process. The cost: mounting needs
/// CAP_SYS_ADMIN over the mount namespace, that is root, or root of a user namespace that owns its mount namespace
/// (rootless containers; Linux 4.18+), and read-write access to <c>/dev/fuse</c>. An unprivileged mount through
/// fusermount3 is not supported.</para>
/// <para>A mount program that backgrounds without forking can split the mount from the serving: one process opens
/// the device (<see cref="OpenDevice"/>) and mounts it (<see cref="MountDevice"/>), another, which inherited the
/// descriptor, serves it (<see cref="Adopt"/>).</para>
/// <para>No signal handlers are installed: the host process keeps its own.</para>
/// </remarks>
public sealed unsafe class FuseSession : IDisposable
{
    private readonly Action<string> _log;
    private readonly ManualResetEventSlim _loopEnded = new(true);
    private readonly ManualResetEventSlim _initOrEnd = new(false);
    private readonly object _gate = new();

    /// <summary>Held while <see cref="Unmount"/> uses the /dev/fuse descriptor, and while the session (which closes
    /// it) is destroyed: the descriptor number is never polled after it was closed and perhaps reused.</summary>
    private readonly object _unmountGate = new();
    private int _fd = -1;
    private GCHandle _self;
    private FuseLowLevelOps* _ops;
    private nint _session;
    private FuseChannel? _channel;
    private string? _mountPoint;
    private bool _running;
    private bool _disposed;

    /// <summary>Creates the session; with <see cref="FuseMountOptions.UseLibFuse"/>, loads libfuse3 and creates its
    /// session (<c>fuse_session_new</c>) with the options as <c>-o</c> arguments.</summary>
    /// <exception cref="FuseUnavailableException">libfuse3 is asked for but missing or too old (the message says what to install).</exception>
    /// <exception cref="IOException">libfuse refused the options.</exception>
    public FuseSession(IFuseLowLevelHandler handler, FuseMountOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(handler);
        Handler = handler;
        Options = options ?? new FuseMountOptions();
        _log = Options.Log ?? (line => Console.Error.WriteLine("baoverlay-fuse: " + line));
        if (!Options.UseLibFuse)
        {
            return; // the channel is made at mount, on the /dev/fuse descriptor
        }
        LibFuse.EnsureLoaded();

        _self = GCHandle.Alloc(this);
        _ops = (FuseLowLevelOps*)NativeMemory.AllocZeroed((nuint)sizeof(FuseLowLevelOps));
        *_ops = FuseCallbacks.Build(handler.HandlesFlush);

        var argv = new List<string> { "baoverlay", "-o", Options.OptionString() };
        if (Options.Debug)
        {
            argv.Add("-d");
        }
        // fuse_session_new parses (and may replace) the argument vector; ours is freed here, libfuse's copy by fuse_opt_free_args.
        byte** native = (byte**)NativeMemory.AllocZeroed((nuint)(argv.Count + 1), (nuint)sizeof(byte*));
        try
        {
            for (int i = 0; i < argv.Count; i++)
            {
                native[i] = (byte*)Marshal.StringToCoTaskMemUTF8(argv[i]);
            }
            FuseArgs args = new() { argc = argv.Count, argv = native, allocated = 0 };
            _session = LibFuse.fuse_session_new(&args, _ops, (nuint)sizeof(FuseLowLevelOps), GCHandle.ToIntPtr(_self));
            LibFuse.fuse_opt_free_args(&args);
        }
        finally
        {
            for (int i = 0; i < argv.Count; i++)
            {
                Marshal.ZeroFreeCoTaskMemUTF8((nint)native[i]);
            }
            NativeMemory.Free(native);
        }
        if (_session == 0)
        {
            FreeNative();
            throw new IOException($"fuse_session_new failed for options {string.Join(' ', argv.Skip(1))} (libfuse printed the reason on standard error)");
        }
    }

    /// <summary>The handler the requests go to.</summary>
    public IFuseLowLevelHandler Handler { get; }

    /// <summary>The options the session was made with.</summary>
    public FuseMountOptions Options { get; }

    /// <summary>The mount point, while mounted.</summary>
    public string? MountPoint => _mountPoint;

    /// <summary>Which mount on <see cref="MountPoint"/> is this session's (read right after mount(2)); null before
    /// <see cref="Mount"/>. An auto-unmount watcher in another process passes it to
    /// <see cref="FuseMountIdentity.DetachIfSame"/>.</summary>
    public FuseMountIdentity? Identity { get; private set; }

    /// <summary>What the kernel and the session agreed at init (protocol, capabilities, limits), once the kernel has sent it.</summary>
    public FuseConnection? Connection { get; private set; }

    /// <summary>The FUSE protocol version the session's own protocol layer offers the kernel ("7.40").</summary>
    public static string ProtocolVersion => $"{Interop.FuseKernel.FUSE_KERNEL_VERSION}.{Interop.FuseKernel.FUSE_KERNEL_MINOR_VERSION}";

    /// <summary>Opens the kernel now serves from a backing file (FUSE passthrough); for tests and diagnostics.</summary>
    internal int PassthroughOpens => _channel?.PassthroughOpens ?? 0;

    /// <summary>Read replies spliced from the file so far (own protocol layer; for tests and diagnostics).</summary>
    internal long SplicedReads => _channel?.SplicedReads ?? 0;

    /// <summary>Worker threads the protocol layer started besides the serving one (tests).</summary>
    internal int StartedWorkers => _channel?.StartedWorkers ?? 0;

    /// <summary>Requests taken through io_uring so far (own protocol layer; for tests and diagnostics).</summary>
    internal long RingRequests => _channel?.RingRequests ?? 0;

    /// <summary>Opens the daemon serves now, counted while passthrough is in use; for tests and diagnostics.</summary>
    internal int ServedOpens => _channel?.ServedOpens ?? 0;

    /// <summary>The libfuse library opened and every <c>symbol@version</c> resolved, for diagnostics.</summary>
    public static IReadOnlyList<string> ResolvedSymbols
    {
        get
        {
            LibFuse.EnsureLoaded();
            return [LibFuse.LoadedLibrary, .. LibFuse.Resolved];
        }
    }

    /// <summary>Loads libfuse3 now, so that a missing library is reported before anything else is set up.</summary>
    /// <exception cref="FuseUnavailableException">libfuse3 is missing or too old (the message says what to install).</exception>
    public static void EnsureAvailable() => LibFuse.EnsureLoaded();

    /// <summary>
    /// Mounts the session on <paramref name="mountPoint"/> (an existing directory): opens <c>/dev/fuse</c>, calls
    /// <c>mount(2)</c> with type <c>fuse.SUBTYPE</c>, and hands the descriptor to <c>fuse_session_mount</c>.
    /// </summary>
    /// <exception cref="UnauthorizedAccessException">The process may not mount (needs CAP_SYS_ADMIN over its mount
    /// namespace); the message says why and what to do.</exception>
    /// <exception cref="FuseUnavailableException"><c>/dev/fuse</c> cannot be opened; the message says what to do.</exception>
    /// <exception cref="IOException">The mount failed.</exception>
    public void Mount(string mountPoint)
    {
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (_mountPoint is not null)
            {
                throw new InvalidOperationException($"already mounted on {_mountPoint}");
            }
            string target = MountTarget(mountPoint);
            int fd = OpenDevice();
            FuseMountIdentity identity;
            try
            {
                identity = MountDevice(fd, target, Options);
            }
            catch
            {
                LibC.close(fd); // after a mount, ends the connection: what is left on the path is a dead mount
                throw;
            }
            if (!Options.UseLibFuse)
            {
                _channel = new FuseChannel(this, fd);
                _fd = fd;
                Identity = identity;
                _mountPoint = target;
                return;
            }
            byte[] fdPath = Encoding.ASCII.GetBytes($"/dev/fd/{fd}\0");
            int rc;
            fixed (byte* p = fdPath)
            {
                rc = LibFuse.fuse_session_mount(_session, p);
            }
            if (rc != 0)
            {
                FuseMountIdentity.DetachIfSame(target, identity);
                LibC.close(fd);
                throw new IOException($"fuse_session_mount /dev/fd/{fd} failed for {target}");
            }
            _fd = fd;
            Identity = identity;
            _mountPoint = target;
        }
    }

    /// <summary>
    /// Serves a mount another process made (<see cref="OpenDevice"/> and <see cref="MountDevice"/> there, the
    /// descriptor inherited here): the session takes <paramref name="fd"/> over, as <see cref="Mount"/> would have
    /// made it, and closes it when disposed. For a mount program whose first process mounts and whose second, started
    /// beside it, serves. Not with <see cref="FuseMountOptions.UseLibFuse"/>.
    /// </summary>
    /// <param name="fd">A <c>/dev/fuse</c> descriptor mounted on <paramref name="mountPoint"/>.</param>
    /// <param name="mountPoint">The path it was mounted on (made absolute, as <see cref="Mount"/> does).</param>
    /// <param name="identity">The mount's identity, as <see cref="MountDevice"/> returned it in the mounting process.</param>
    public void Adopt(int fd, string mountPoint, FuseMountIdentity identity)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(fd);
        ArgumentNullException.ThrowIfNull(mountPoint);
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (_mountPoint is not null)
            {
                throw new InvalidOperationException($"already mounted on {_mountPoint}");
            }
            if (Options.UseLibFuse)
            {
                throw new InvalidOperationException("a mount made elsewhere is served by the session's own protocol layer, not libfuse");
            }
            _channel = new FuseChannel(this, fd);
            _fd = fd;
            Identity = identity;
            _mountPoint = Path.GetFullPath(mountPoint);
        }
    }

    /// <summary>The absolute path of <paramref name="mountPoint"/>, which must be an existing directory.</summary>
    /// <exception cref="DirectoryNotFoundException">It is not.</exception>
    public static string MountTarget(string mountPoint)
    {
        ArgumentNullException.ThrowIfNull(mountPoint);
        string target = Path.GetFullPath(mountPoint);
        if (!Directory.Exists(target))
        {
            throw new DirectoryNotFoundException($"{target}: the mount point must be an existing directory");
        }
        return target;
    }

    /// <summary>Opens <c>/dev/fuse</c> for a mount (read-write, close-on-exec): the first half of <see cref="Mount"/>.</summary>
    /// <returns>The descriptor; the caller closes it.</returns>
    /// <exception cref="FuseUnavailableException">It cannot be opened; the message says why and what to do.</exception>
    public static int OpenDevice()
    {
        int fd = LibC.open("/dev/fuse", LibC.O_RDWR | LibC.O_CLOEXEC);
        if (fd < 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            throw new FuseUnavailableException(errno is LibC.EACCES or LibC.EPERM
                ? $"/dev/fuse: {Marshal.GetPInvokeErrorMessage(errno)}; {MountPrivilege.DevFuseDenied(errno)}"
                : $"/dev/fuse: {Marshal.GetPInvokeErrorMessage(errno)}; load the fuse module (modprobe fuse) and install fuse3: apt-get install fuse3 (Debian/Ubuntu), dnf install fuse3 (Fedora)");
        }
        return fd;
    }

    /// <summary>
    /// Mounts the <c>/dev/fuse</c> descriptor <paramref name="fd"/> on <paramref name="target"/> with
    /// <c>mount(2)</c> (type <c>fuse.SUBTYPE</c>, the flags and options of <paramref name="options"/>), the second half
    /// of <see cref="Mount"/>, and reads the new mount's identity at once, before anyone is told it exists. The kernel
    /// queues its INIT request on the descriptor; requests to the mount wait until whoever reads the descriptor has
    /// answered it. The descriptor stays the caller's: after a failure that left a mount (the identity could not be
    /// read), closing it ends the connection.
    /// </summary>
    /// <param name="fd">From <see cref="OpenDevice"/>.</param>
    /// <param name="target">An existing directory, absolute (<see cref="MountTarget"/>).</param>
    /// <param name="options">The mount's options (source, type, flags, allow_other, default_permissions).</param>
    /// <returns>The mount's identity, for <see cref="Adopt"/> and <see cref="FuseMountIdentity.DetachIfSame"/>.</returns>
    /// <exception cref="UnauthorizedAccessException">The process may not mount; the message says why and what to do.</exception>
    /// <exception cref="IOException">The mount failed, or the mount point changed while mounting.</exception>
    public static FuseMountIdentity MountDevice(int fd, string target, FuseMountOptions options)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(fd);
        ArgumentNullException.ThrowIfNull(target);
        ArgumentNullException.ThrowIfNull(options);
        string data = string.Create(CultureInfo.InvariantCulture, $"fd={fd},rootmode=40000,user_id={LibC.getuid()},group_id={LibC.getgid()}");
        if (options.AllowOther)
        {
            data += ",allow_other";
        }
        if (options.DefaultPermissions)
        {
            data += ",default_permissions";
        }
        ulong flags = (options.ReadOnly ? LibC.MS_RDONLY : 0) | (options.AllowSetuid ? 0 : LibC.MS_NOSUID) |
            (options.AllowDevices ? 0 : LibC.MS_NODEV) | (options.NoExec ? LibC.MS_NOEXEC : 0) | (options.NoAtime ? LibC.MS_NOATIME : 0);
        string type = options.Subtype is null ? "fuse" : "fuse." + options.Subtype;
        if (LibC.mount(options.FsName, target, type, flags, data) != 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            string why = Marshal.GetPInvokeErrorMessage(errno);
            if (errno is LibC.EPERM or LibC.EACCES)
            {
                throw new UnauthorizedAccessException($"mount {target}: {why}; {MountPrivilege.MountDenied()}");
            }
            throw new IOException($"mount {target} (type {type}): {why}");
        }
        // Read at once, before anyone is told the mount exists. Residual window: a file system another process
        // mounts on the same path between our mount(2) and this statx (microseconds) would be taken for ours.
        FuseMountIdentity? identity = FuseMountIdentity.Of(target);
        if (identity is not { DeviceMajor: 0 })
        {
            // the caller closes the descriptor, which ends the connection: what is left on the path is a dead mount,
            // which umount -l removes
            throw new IOException($"mount {target}: the mount point changed while mounting (another mount on top of it?); not serving");
        }
        return identity.Value;
    }

    /// <summary>
    /// Runs the multi-threaded request loop (the session's own, or libfuse's <c>fuse_session_loop_mt</c>) on the
    /// calling thread and the workers it starts until the file system is unmounted (<see cref="Unmount"/>, <c>umount</c>, <c>fusermount3 -u</c>) or <see cref="Exit"/> is called.
    /// </summary>
    /// <returns>The loop's result: 0 after a clean unmount, otherwise a negative errno or 1 (after a signal or exit).</returns>
    public int Run()
    {
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (_mountPoint is null)
            {
                throw new InvalidOperationException("mount the session before running it");
            }
            if (_running)
            {
                throw new InvalidOperationException("the loop is already running");
            }
            _running = true;
            _loopEnded.Reset();
        }
        try
        {
            if (_channel is not null)
            {
                return _channel.Run();
            }
            if (LibFuse.LoopConfig312)
            {
                nint config = LibFuse.fuse_loop_cfg_create();
                if (config == 0)
                {
                    throw new OutOfMemoryException("fuse_loop_cfg_create failed");
                }
                try
                {
                    LibFuse.fuse_loop_cfg_set_clone_fd(config, 0);
                    LibFuse.fuse_loop_cfg_set_max_threads(config, (uint)Math.Max(1, Options.MaxThreads));
                    LibFuse.fuse_loop_cfg_set_idle_threads(config, (uint)Math.Max(1, Math.Min(Options.MaxThreads, 10)));
                    return LibFuse.fuse_session_loop_mt(_session, config);
                }
                finally
                {
                    LibFuse.fuse_loop_cfg_destroy(config);
                }
            }
            FuseLoopConfigV1 v1 = new() { clone_fd = 0, max_idle_threads = 10 };
            return LibFuse.fuse_session_loop_mt(_session, (nint)(&v1));
        }
        finally
        {
            lock (_gate)
            {
                _running = false;
            }
            _loopEnded.Set();
            _initOrEnd.Set();
        }
    }

    /// <summary>
    /// Tells the kernel to drop what it caches of inode <paramref name="ino"/>: its attributes, and its page-cache data
    /// from <paramref name="offset"/> for <paramref name="length"/> bytes (0: to the end; a negative offset drops the
    /// attributes only). For changes the kernel did not make itself; it blocks until the kernel has done it, so never
    /// call it from a request handler or with a lock a request handler may need.
    /// </summary>
    /// <returns>True when the kernel dropped it; false when there was nothing to drop (the kernel does not know the
    /// inode) or the session is not connected (not mounted yet, or unmounted).</returns>
    /// <exception cref="IOException">The kernel refused the notification.</exception>
    public bool InvalidateInode(ulong ino, long offset, long length)
    {
        lock (_gate)
        {
            if (_disposed || (_session == 0 && _channel is null) || _mountPoint is null)
            {
                return false;
            }
            if (_channel is not null)
            {
                return NotifyResult(-_channel.InvalidateInode(ino, offset, length), $"inode {ino}");
            }
            return NotifyResult(LibFuse.fuse_lowlevel_notify_inval_inode(_session, ino, offset, length), $"inode {ino}");
        }
    }

    /// <summary>
    /// Tells the kernel to forget the name <paramref name="name"/> in directory <paramref name="parent"/> (for a name
    /// created, removed or renamed other than through the mount). Same rules as <see cref="InvalidateInode"/>.
    /// </summary>
    /// <returns>True when the kernel dropped the name; false when it did not know it or the session is not connected.</returns>
    /// <exception cref="IOException">The kernel refused the notification.</exception>
    public bool InvalidateEntry(ulong parent, string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        byte[] bytes = Encoding.UTF8.GetBytes(name + "\0");
        lock (_gate)
        {
            if (_disposed || (_session == 0 && _channel is null) || _mountPoint is null)
            {
                return false;
            }
            if (_channel is not null)
            {
                return NotifyResult(-_channel.InvalidateEntry(parent, bytes), $"{parent}/{name}");
            }
            fixed (byte* p = bytes)
            {
                return NotifyResult(LibFuse.fuse_lowlevel_notify_inval_entry(_session, parent, p, (nuint)(bytes.Length - 1)), $"{parent}/{name}");
            }
        }
    }

    private static bool NotifyResult(int rc, string what) => rc switch
    {
        0 => true,
        -2 or -19 or -107 => false, // ENOENT: not cached; ENODEV, ENOTCONN: no init yet, or the connection is gone
        _ => throw new IOException($"FUSE invalidation of {what}: {Marshal.GetPInvokeErrorMessage(-rc)}"),
    };

    /// <summary>Waits for <see cref="Run"/> to return.</summary>
    public bool WaitForExit(TimeSpan timeout) => _loopEnded.Wait(timeout);

    /// <summary>Waits until the kernel's INIT request has been answered, that is <see cref="Connection"/> is set (the
    /// mount serves requests from then on), or the loop has ended without it. No polling: a mount program reports
    /// "mounted" the moment it is.</summary>
    /// <returns>True once the connection is initialised; false after <paramref name="timeout"/>, or when the loop ended
    /// first (a failure, a signal, an unmount).</returns>
    public bool WaitForInit(TimeSpan timeout) => _initOrEnd.Wait(timeout) && Connection is not null;

    /// <summary>Asks the loop to stop (<c>fuse_session_exit</c>) and unmounts this session's own mount
    /// (<see cref="Unmount"/>), which wakes the workers blocked on <c>/dev/fuse</c>; when the mount was detached from
    /// outside and is still in use, the loop ends at its next request. Call it from any thread but a request handler.</summary>
    public void Exit()
    {
        lock (_gate)
        {
            if (_session != 0)
            {
                LibFuse.fuse_session_exit(_session);
            }
            _channel?.RequestExit();
        }
        Unmount();
    }

    /// <summary>
    /// Unmounts this session's own mount, and no other: the loop ends once the kernel drops the connection, at once
    /// when nothing holds the mount open, else when its last user lets go. Idempotent.
    /// <list type="bullet">
    /// <item>When the kernel has ended the connection already (<c>/dev/fuse</c> polls POLLERR: unmounted from outside,
    /// or aborted), nothing is unmounted: the mount is gone, and the path may name someone else's by now.</item>
    /// <item>Otherwise the mount on the path is unmounted only if it is this session's (<see cref="Identity"/>,
    /// checked and detached through one <c>O_PATH</c> descriptor: <see cref="FuseMountIdentity.DetachIfSame"/>); the
    /// detach is lazy (<c>MNT_DETACH</c>), which ends the connection at once when the mount is not busy.</item>
    /// <item>When the path holds another mount (ours was lazily detached from outside, <c>umount -l</c>, and something
    /// mounted there since), that mount is left alone and a line is logged: our detached mount is served until its
    /// last user lets go, or until the loop stops (after <see cref="Exit"/>, at its next request) and the session is
    /// disposed, which ends the connection (its users then see ENOTCONN).</item>
    /// </list>
    /// </summary>
    /// <exception cref="IOException">The mount is ours and the kernel refused to unmount it.</exception>
    public void Unmount()
    {
        string? target;
        FuseMountIdentity? identity;
        lock (_gate)
        {
            target = _mountPoint;
            identity = Identity;
            _mountPoint = null;
        }
        if (target is null || identity is null)
        {
            return;
        }
        lock (_unmountGate)
        {
            if (_fd < 0 || ConnectionEnded())
            {
                return;
            }
            // The connection alive after the identity matched means our superblock, and with it its device number,
            // was alive when the path was opened: the match is not a number reused by a newer mount.
            if (!FuseMountIdentity.DetachIfStillSame(target, identity.Value, stillOurs: () => !ConnectionEnded()) && !ConnectionEnded())
            {
                LogLine($"{target}: left mounted: the mount there is not this session's (ours was detached from outside and "
                    + "something else is mounted there since); our detached mount ends with the session or its last user");
            }
        }
    }

    /// <summary>True when the kernel has ended this session's connection (the mount is gone or the connection was
    /// aborted): <c>/dev/fuse</c> then polls POLLERR, as libfuse's own unmount checks.</summary>
    private bool ConnectionEnded()
    {
        var poll = new PollFd { fd = _fd, events = 0 };
        return LibC.poll(&poll, 1, 0) == 1 && (poll.revents & LibC.POLLERR) != 0;
    }

    /// <summary>Unmounts, waits (up to 30 s) for the loop to end, and destroys the session. A session whose loop does
    /// not end is left allocated (with a log line) rather than freed under it.</summary>
    public void Dispose()
    {
        lock (_gate)
        {
            if (_disposed)
            {
                return;
            }
            _disposed = true;
        }
        try
        {
            Unmount();
        }
        catch (IOException e)
        {
            LogLine(e.Message);
        }
        if (!_loopEnded.Wait(TimeSpan.FromSeconds(30)))
        {
            LogLine("the FUSE loop did not end after unmount; the session is left allocated");
            return;
        }
        lock (_unmountGate)
        {
            if (_session != 0)
            {
                LibFuse.fuse_session_destroy(_session); // closes the /dev/fuse descriptor
            }
            else if (_fd >= 0)
            {
                LibC.close(_fd);
            }
            _session = 0;
            _fd = -1;
        }
        FreeNative();
        _loopEnded.Dispose();
        _initOrEnd.Dispose();
    }

    internal void LogLine(string line)
    {
        try
        {
            _log(line);
        }
        catch
        {
            // A failing log must not fail a request.
        }
    }

    internal void OnInit(FuseConnection connection)
    {
        Connection = connection;
        _initOrEnd.Set();
    }

    /// <summary>The errno a failed request of <paramref name="operation"/> is answered with
    /// (<see cref="OverlayException.ErrnoOf"/>), with a log line for the classes that are no POSIX condition of the
    /// request (corruption, a bug, an I/O error); EIO if even that fails. Never throws; both transports use it.</summary>
    internal int ErrnoFor(Exception e, string operation)
    {
        try
        {
            OverlayErrno mapped = OverlayException.ErrnoOf(e, out bool unexpected);
            Handler.OnFailure(operation, e);
            if (unexpected)
            {
                LogLine($"{operation}: {e.GetType().Name}: {e.Message} (answered {mapped}){Environment.NewLine}{e.StackTrace}");
            }
            return (int)mapped > 0 ? (int)mapped : (int)OverlayErrno.EIO;
        }
        catch
        {
            return (int)OverlayErrno.EIO; // logging must not fail a reply
        }
    }

    private void FreeNative()
    {
        if (_ops != null)
        {
            NativeMemory.Free(_ops);
            _ops = null;
        }
        if (_self.IsAllocated)
        {
            _self.Free();
        }
    }
}
