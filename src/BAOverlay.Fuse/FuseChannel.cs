using System.Buffers;
using System.Runtime.InteropServices;
using System.Text;
using BAOverlay.FileSystem;
using BAOverlay.Fuse.Interop;
using static BAOverlay.Fuse.Interop.FuseKernel;
using static BAOverlay.Fuse.Interop.UringAbi;

namespace BAOverlay.Fuse;

/// <summary>
/// The FUSE protocol spoken on a <c>/dev/fuse</c> descriptor without libfuse: worker threads read requests
/// (<c>include/uapi/linux/fuse.h</c>), call the <see cref="IFuseLowLevelHandler"/> and write the replies.
/// </summary>
/// <remarks>
/// <para>Threads: each worker blocks in <c>read(2)</c> on the descriptor (the kernel hands each request to one
/// reader). A worker that takes a request while no other one is waiting starts another, up to
/// <see cref="FuseMountOptions.MaxThreads"/>, so a slow request (a copy-up, an fsync) never holds back the others;
/// a mount that is only ever asked one thing at a time keeps two threads.</para>
/// <para>Memory: each worker owns a request buffer (the largest write plus headers) and a reply buffer (the largest
/// read plus a header), allocated once; a read is answered from the reply buffer the handler filled, a write hands
/// the handler the request buffer itself.</para>
/// <para>Errors: every request is answered (but FORGET, BATCH_FORGET and INTERRUPT, which have no reply); an
/// exception from the handler becomes the errno of <see cref="OverlayException.ErrnoOf"/>, with a log line for
/// corruption, bugs and I/O errors. The loop ends when the kernel ends the connection (<c>ENODEV</c>: unmounted or
/// aborted) or after <see cref="RequestExit"/>, at the next request.</para>
/// </remarks>
internal sealed unsafe class FuseChannel
{
    private const int ENOENT = 2;
    private const int EIO = 5;
    private const int ENOSYS = 38;
    private const int EPROTO = 71;
    private const int ERANGE = 34;
    private const int ENODATA = 61;
    private const int HeaderRoom = 4096; // room for the request headers before a write's data, as libfuse's FUSE_BUFFER_HEADER_SIZE
    private const uint DefaultMaxWrite = 1 << 20; // libfuse 3's: FUSE_MAX_MAX_PAGES (256) pages

    private readonly FuseSession _session;
    private readonly IFuseLowLevelHandler _handler;
    private readonly FuseMountOptions _options;
    private readonly int _fd;
    private readonly int _maxThreads;
    private readonly uint _maxWrite;
    private readonly int _requestBufferSize;
    private readonly int _replyBufferSize;
    private readonly bool _inline;
    private readonly object _threadsGate = new();
    private readonly List<Thread> _threads = [];
    private int _idle;
    private int _exit;
    private int _result;
    private volatile bool _initialized;
    private FusePassthrough? _passthrough;
    private bool _killPrivilegesV2;
    private long _splicedReads;
    private long _ringRequests;
    private FuseRingQueue[]? _rings;
    private readonly Queue<FuseRingEntry> _handedOff = new();
    private int _handOffThreads;
    private int _handOffIdle;
    private bool _handOffStop;

    /// <summary>The ring entry whose request this thread serves (FUSE over io_uring), or null: the request came
    /// through read(2) and the reply goes out by writev(2).</summary>
    [ThreadStatic]
    private static FuseRingEntry? t_entry;

    /// <summary>Reads smaller than this are copied: a splice costs three system calls to pread's one, and copying a
    /// few pages costs less than that.</summary>
    private const int SpliceThreshold = 32 * 1024;

    /// <summary>This worker's pipe for spliced read replies (<see cref="FuseSplice"/>), made at its first large read.</summary>
    [ThreadStatic]
    private static FuseSplice? t_splice;

    /// <summary>The system refused this worker a pipe: its reads are copied.</summary>
    [ThreadStatic]
    private static bool t_spliceRefused;

    public FuseChannel(FuseSession session, int fd)
    {
        _session = session;
        _handler = session.Handler;
        _options = session.Options;
        _fd = fd;
        _maxThreads = Math.Max(1, _options.MaxThreads);
        _inline = _options.InlineRequests;
        _maxWrite = Math.Max(4096u, Math.Min(_options.MaxWrite ?? DefaultMaxWrite, DefaultMaxWrite));
        _requestBufferSize = (int)_maxWrite + HeaderRoom;
        _replyBufferSize = (int)DefaultMaxWrite + sizeof(fuse_out_header);
    }

    /// <summary>Serves requests on the calling thread and the workers it starts until the connection ends or
    /// <see cref="RequestExit"/>; returns 0 after a clean end, else a negative errno.</summary>
    public int Run()
    {
        Worker();
        Thread[] others;
        lock (_threadsGate)
        {
            others = [.. _threads];
        }
        foreach (Thread t in others)
        {
            t.Join();
        }
        lock (_handedOff)
        {
            _handOffStop = true;
            Monitor.PulseAll(_handedOff);
        }
        if (_rings is { } rings)
        {
            foreach (FuseRingQueue q in rings)
            {
                q.Dispose(); // its owner thread has ended: the kernel has let go of every entry
            }
        }
        return _result;
    }

    /// <summary>Asks every worker to stop after the request it is reading (the workers blocked in <c>read(2)</c>
    /// wake when the mount goes).</summary>
    public void RequestExit()
    {
        Volatile.Write(ref _exit, 1);
        lock (_parkGate)
        {
            Monitor.PulseAll(_parkGate); // parked workers leave too
        }
    }

    private bool Exiting => Volatile.Read(ref _exit) != 0;

    /// <summary>Opens the kernel serves from a backing file now (passthrough; for tests and diagnostics).</summary>
    public int PassthroughOpens => _passthrough?.PassthroughOpens ?? 0;

    /// <summary>Opens the daemon serves now, counted while passthrough is in use (for tests and diagnostics).</summary>
    public int ServedOpens => _passthrough?.ServedOpens ?? 0;

    /// <summary>Worker threads started besides the one that called <see cref="Run"/> (for tests and diagnostics).</summary>
    public int StartedWorkers
    {
        get
        {
            lock (_threadsGate)
            {
                return _threads.Count;
            }
        }
    }

    /// <summary>Read replies spliced from the file so far (for tests and diagnostics).</summary>
    public long SplicedReads => Interlocked.Read(ref _splicedReads);

    /// <summary>Requests taken through io_uring so far (for tests and diagnostics).</summary>
    public long RingRequests => Interlocked.Read(ref _ringRequests);

    /// <summary>
    /// Whether a request is served by the worker that read it with no other worker waiting for the next one meanwhile
    /// (the next request then waits in the kernel's queue, and this worker takes it without going to sleep, as a
    /// single-threaded daemon does): requests that change or read the overlay's names and attributes, which hold its
    /// lock (so that another worker could not serve anything meanwhile either) and do no data I/O. A request that may
    /// wait for data (reads, writes, syncs, opens that copy up, releases that commit, truncates) gets a spare worker
    /// first, so a slow one never holds back the others. Each wake-up of a sleeping worker is two context switches;
    /// a tar -x made twice as many as fuse-overlayfs's single thread.
    /// </summary>
    private bool ServedInline(fuse_in_header* h) => (FuseOpcode)h->opcode switch
    {
        FuseOpcode.FUSE_LOOKUP or FuseOpcode.FUSE_FORGET or FuseOpcode.FUSE_BATCH_FORGET or FuseOpcode.FUSE_GETATTR
            or FuseOpcode.FUSE_READLINK or FuseOpcode.FUSE_SYMLINK or FuseOpcode.FUSE_MKNOD or FuseOpcode.FUSE_MKDIR
            or FuseOpcode.FUSE_UNLINK or FuseOpcode.FUSE_RMDIR or FuseOpcode.FUSE_LINK or FuseOpcode.FUSE_CREATE
            or FuseOpcode.FUSE_GETXATTR or FuseOpcode.FUSE_LISTXATTR or FuseOpcode.FUSE_SETXATTR or FuseOpcode.FUSE_REMOVEXATTR
            or FuseOpcode.FUSE_RELEASEDIR or FuseOpcode.FUSE_FLUSH or FuseOpcode.FUSE_INTERRUPT or FuseOpcode.FUSE_ACCESS
            or FuseOpcode.FUSE_STATFS => true,
        FuseOpcode.FUSE_SETATTR => h->len >= sizeof(fuse_in_header) + sizeof(fuse_setattr_in)
            && (((fuse_setattr_in*)(h + 1))->valid & FATTR_SIZE) == 0, // a truncate may copy up
        FuseOpcode.FUSE_OPEN => h->len >= sizeof(fuse_in_header) + sizeof(fuse_open_in)
            && (((fuse_open_in*)(h + 1))->flags & LibC.O_ACCMODE) == LibC.O_RDONLY
            && (((fuse_open_in*)(h + 1))->flags & LibC.O_TRUNC) == 0, // an open for writing may copy up
        FuseOpcode.FUSE_RELEASE => _handler.QuickRelease,
        FuseOpcode.FUSE_READ => h->len >= sizeof(fuse_in_header) + sizeof(fuse_read_in)
            && _handler.QuickIo(h->nodeid, ((fuse_read_in*)(h + 1))->fh),
        FuseOpcode.FUSE_WRITE => h->len >= sizeof(fuse_in_header) + sizeof(fuse_write_in)
            && _handler.QuickIo(h->nodeid, ((fuse_write_in*)(h + 1))->fh),
        _ => false,
    };

    private readonly object _parkGate = new();
    private int _parked;
    private int _unparks;

    /// <summary>While another worker waits in read(2), waits off the device until a worker is needed to read
    /// requests (<see cref="SpareReader"/>): a worker done with its request does not wait beside another one, where
    /// the kernel would wake it for the next request instead of letting the one reading take it. False when the
    /// channel is ending. (Counted as parked under the gate before it waits: a <see cref="SpareReader"/> that follows
    /// the reader's taking a request sees it.)</summary>
    private bool Park()
    {
        lock (_parkGate)
        {
            if (Volatile.Read(ref _idle) == 0)
            {
                return !Exiting; // nobody reads: this worker does
            }
            _parked++;
            try
            {
                while (_unparks == 0)
                {
                    if (Exiting)
                    {
                        return false;
                    }
                    Monitor.Wait(_parkGate);
                }
                _unparks--;
                return true;
            }
            finally
            {
                _parked--;
            }
        }
    }

    /// <summary>Makes sure another worker reads the next request: a parked one, else a new one (up to the limit).</summary>
    private void SpareReader()
    {
        if (_inline)
        {
            lock (_parkGate)
            {
                if (_parked > _unparks)
                {
                    _unparks++;
                    Monitor.Pulse(_parkGate);
                    return;
                }
            }
        }
        StartWorker();
    }

    private void StartWorker()
    {
        lock (_threadsGate)
        {
            if (_threads.Count + 1 >= _maxThreads || Exiting)
            {
                return;
            }
            var thread = new Thread(Worker) { IsBackground = true, Name = $"fuse-{_threads.Count + 1}" };
            _threads.Add(thread);
            thread.Start();
        }
    }

    private void Worker()
    {
        byte* request = (byte*)NativeMemory.AlignedAlloc((nuint)_requestBufferSize, 4096);
        byte* reply = (byte*)NativeMemory.AlignedAlloc((nuint)_replyBufferSize, 4096);
        try
        {
            while (!Exiting)
            {
                if (_inline && !Park())
                {
                    break; // exiting
                }
                Interlocked.Increment(ref _idle);
                nint n = LibC.read(_fd, request, (nuint)_requestBufferSize);
                int errno = n < 0 ? Marshal.GetLastPInvokeError() : 0;
                if (Interlocked.Decrement(ref _idle) == 0 && n > 0 && _initialized
                    && !(_inline && n >= sizeof(fuse_in_header) && ServedInline((fuse_in_header*)request)))
                {
                    SpareReader(); // nobody else is waiting for the next request, and this one may take a while
                }
                if (n < 0)
                {
                    if (errno is LibC.ENOENT or LibC.EINTR or LibC.EAGAIN)
                    {
                        continue; // the request was interrupted before we read it, or a signal: read again
                    }
                    if (errno != LibC.ENODEV)
                    {
                        _result = -errno;
                        _session.LogLine($"reading /dev/fuse: {Marshal.GetPInvokeErrorMessage(errno)}; stopping");
                    }
                    RequestExit(); // ENODEV: the connection is gone (unmounted or aborted)
                    return;
                }
                if (n < sizeof(fuse_in_header))
                {
                    _session.LogLine($"short request from the kernel ({n} bytes); ignored");
                    continue;
                }
                fuse_in_header* h = (fuse_in_header*)request;
                int end = (int)Math.Min(h->len, (uint)n);
                var args = new ReadOnlySpan<byte>(request + sizeof(fuse_in_header), Math.Max(0, end - sizeof(fuse_in_header)));
                int split = FirstArgumentSize((FuseOpcode)h->opcode, args.Length);
                Dispatch(h, args[..split], args[split..], reply + sizeof(fuse_out_header), (int)DefaultMaxWrite);
            }
        }
        finally
        {
            NativeMemory.AlignedFree(request);
            NativeMemory.AlignedFree(reply);
            t_splice?.Dispose();
            t_splice = null;
            t_spliceRefused = false;
        }
    }

    // ------------------------------------------------------------------ dispatch

    /// <summary>
    /// The size of an opcode's first argument, its fixed struct, as the kernel's <c>fuse_args</c> lay the request
    /// out (<c>in_args[0]</c>; empty for the requests that carry names only, LOOKUP, UNLINK, RMDIR, SYMLINK,
    /// REMOVEXATTR, and for those without arguments). Over io_uring the kernel puts that argument in the entry's
    /// <c>op_in</c> and the others in its payload; a request read from /dev/fuse is split here at the same place, so
    /// a handler sees the same two parts from either transport. INIT (never on a ring) keeps all its bytes in the
    /// first part: its size grew with the protocol.
    /// </summary>
    internal static int FirstArgumentSize(FuseOpcode op, int available) => Math.Min(available, op switch
    {
        FuseOpcode.FUSE_INIT => available,
        FuseOpcode.FUSE_FORGET => sizeof(fuse_forget_in),
        FuseOpcode.FUSE_BATCH_FORGET => sizeof(fuse_batch_forget_in),
        FuseOpcode.FUSE_GETATTR => sizeof(fuse_getattr_in),
        FuseOpcode.FUSE_SETATTR => sizeof(fuse_setattr_in),
        FuseOpcode.FUSE_MKNOD => sizeof(fuse_mknod_in),
        FuseOpcode.FUSE_MKDIR => sizeof(fuse_mkdir_in),
        FuseOpcode.FUSE_RENAME => sizeof(ulong), // struct fuse_rename_in { uint64_t newdir; }
        FuseOpcode.FUSE_RENAME2 => sizeof(fuse_rename2_in),
        FuseOpcode.FUSE_LINK => sizeof(fuse_link_in),
        FuseOpcode.FUSE_OPEN or FuseOpcode.FUSE_OPENDIR => sizeof(fuse_open_in),
        FuseOpcode.FUSE_CREATE => sizeof(fuse_create_in),
        FuseOpcode.FUSE_READ or FuseOpcode.FUSE_READDIR or FuseOpcode.FUSE_READDIRPLUS => sizeof(fuse_read_in),
        FuseOpcode.FUSE_WRITE => sizeof(fuse_write_in),
        FuseOpcode.FUSE_FLUSH => sizeof(fuse_flush_in),
        FuseOpcode.FUSE_RELEASE or FuseOpcode.FUSE_RELEASEDIR => sizeof(fuse_release_in),
        FuseOpcode.FUSE_FSYNC or FuseOpcode.FUSE_FSYNCDIR => sizeof(fuse_fsync_in),
        FuseOpcode.FUSE_SETXATTR => FUSE_COMPAT_SETXATTR_IN_SIZE, // FUSE_SETXATTR_EXT is not asked for
        FuseOpcode.FUSE_GETXATTR or FuseOpcode.FUSE_LISTXATTR => sizeof(fuse_getxattr_in),
        FuseOpcode.FUSE_FALLOCATE => sizeof(fuse_fallocate_in),
        FuseOpcode.FUSE_LSEEK => sizeof(fuse_lseek_in),
        FuseOpcode.FUSE_INTERRUPT => sizeof(ulong), // struct fuse_interrupt_in { uint64_t unique; }
        FuseOpcode.FUSE_ACCESS => 2 * sizeof(uint), // struct fuse_access_in { uint32_t mask; uint32_t padding; }
        _ => 0,
    });

    /// <summary>Dispatches one request to the handler and replies, whichever transport it came through:
    /// <paramref name="first"/> is its first argument (<see cref="FirstArgumentSize"/>), <paramref name="rest"/> the
    /// others; replies the handler fills in place (read, readdir, readlink, listxattr) are built in
    /// <paramref name="replyData"/> (<paramref name="replyCapacity"/> bytes), and every reply goes out through
    /// <see cref="Send"/>. Never throws.</summary>
    private void Dispatch(fuse_in_header* h, ReadOnlySpan<byte> first, ReadOnlySpan<byte> rest, byte* replyData, int replyCapacity)
    {
        var op = (FuseOpcode)h->opcode;
        if (_options.Debug)
        {
            _session.LogLine($"unique: {h->unique}, opcode: {op} ({h->opcode}), nodeid: {h->nodeid}, insize: {h->len}, pid: {h->pid}");
        }
        try
        {
            switch (op)
            {
                case FuseOpcode.FUSE_INIT: Init(h, first); break;
                case FuseOpcode.FUSE_LOOKUP: Lookup(h, rest); break;
                case FuseOpcode.FUSE_FORGET: Forget(h->nodeid, Read<fuse_forget_in>(first).nlookup); break;
                case FuseOpcode.FUSE_BATCH_FORGET: BatchForget(first, rest); break;
                case FuseOpcode.FUSE_GETATTR: GetAttr(h, first); break;
                case FuseOpcode.FUSE_SETATTR: SetAttr(h, first); break;
                case FuseOpcode.FUSE_READLINK: ReadLink(h, replyData, replyCapacity); break;
                case FuseOpcode.FUSE_SYMLINK: Symlink(h, rest); break;
                case FuseOpcode.FUSE_MKNOD: MkNod(h, first, rest); break;
                case FuseOpcode.FUSE_MKDIR: MkDir(h, first, rest); break;
                case FuseOpcode.FUSE_UNLINK: _handler.Unlink(h->nodeid, Name(rest), Context(h, 0)); ReplyOk(h); break;
                case FuseOpcode.FUSE_RMDIR: _handler.RemoveDirectory(h->nodeid, Name(rest), Context(h, 0)); ReplyOk(h); break;
                case FuseOpcode.FUSE_RENAME: Rename(h, first, rest, 0); break;
                case FuseOpcode.FUSE_RENAME2: Rename(h, first, rest, Read<fuse_rename2_in>(first).flags); break;
                case FuseOpcode.FUSE_LINK: Link(h, first, rest); break;
                case FuseOpcode.FUSE_OPEN: Open(h, first); break;
                case FuseOpcode.FUSE_CREATE: Create(h, first, rest); break;
                case FuseOpcode.FUSE_READ: ReadData(h, first, replyData, replyCapacity); break;
                case FuseOpcode.FUSE_WRITE: WriteData(h, first, rest); break;
                case FuseOpcode.FUSE_FLUSH when !_handler.HandlesFlush: ReplyError(h, ENOSYS); break; // no more flushes
                case FuseOpcode.FUSE_FLUSH: _handler.Flush(h->nodeid, Read<fuse_flush_in>(first).fh); ReplyOk(h); break;
                case FuseOpcode.FUSE_RELEASE: ReleaseFile(h->nodeid, Read<fuse_release_in>(first).fh); ReplyOk(h); break;
                case FuseOpcode.FUSE_FSYNC: Fsync(h, first); break;
                case FuseOpcode.FUSE_OPENDIR: OpenDir(h); break;
                case FuseOpcode.FUSE_READDIR: ReadDir(h, first, replyData, replyCapacity, plus: false); break;
                case FuseOpcode.FUSE_READDIRPLUS: ReadDir(h, first, replyData, replyCapacity, plus: true); break;
                case FuseOpcode.FUSE_RELEASEDIR: _handler.ReleaseDirectory(h->nodeid, Read<fuse_release_in>(first).fh); ReplyOk(h); break;
                case FuseOpcode.FUSE_STATFS: StatFs(h); break;
                case FuseOpcode.FUSE_SETXATTR: SetXattr(h, first, rest); break;
                case FuseOpcode.FUSE_GETXATTR: GetXattr(h, first, rest); break;
                case FuseOpcode.FUSE_LISTXATTR: ListXattr(h, first, replyData, replyCapacity); break;
                case FuseOpcode.FUSE_REMOVEXATTR: _handler.RemoveXattr(h->nodeid, Name(rest), Context(h, 0)); ReplyOk(h); break;
                case FuseOpcode.FUSE_FALLOCATE: Fallocate(h, first); break;
                case FuseOpcode.FUSE_LSEEK: Lseek(h, first); break;
                case FuseOpcode.FUSE_DESTROY: ReplyOk(h); break;
                case FuseOpcode.FUSE_INTERRUPT: break; // allowed to be ignored: the interrupted request is answered when done
                case FuseOpcode.FUSE_NOTIFY_REPLY: break;
                default: ReplyError(h, ENOSYS); break; // the kernel remembers ENOSYS for the optional ones (access, locks, ...)
            }
        }
        catch (Exception e)
        {
            Fail(h, e, op);
        }
    }

    /// <summary>The request's name as log lines give it: "lookup" for FUSE_LOOKUP (as libfuse's operation names).</summary>
    private static string OpName(FuseOpcode op) =>
        Enum.IsDefined(op) ? op.ToString()["FUSE_".Length..].ToLowerInvariant() : $"opcode {(uint)op}";

    /// <summary>The request struct at the start of <paramref name="args"/>. A pointer read, not MemoryMarshal.Read:
    /// a framework generic over our struct would be compiled at first use (ReadyToRun cannot hold it), on the first
    /// request of each kind.</summary>
    private static T Read<T>(ReadOnlySpan<byte> args) where T : unmanaged
    {
        if (args.Length < sizeof(T))
        {
            throw new OverlayException(OverlayErrno.EINVAL, $"request argument shorter than {typeof(T).Name}");
        }
        fixed (byte* p = args)
        {
            return *(T*)p;
        }
    }

    /// <summary>The NUL-terminated name at the start of <paramref name="bytes"/>.</summary>
    private static string Name(ReadOnlySpan<byte> bytes)
    {
        int nul = bytes.IndexOf((byte)0);
        return Encoding.UTF8.GetString(nul < 0 ? bytes : bytes[..nul]);
    }

    /// <summary>Two NUL-terminated names in a row.</summary>
    private static (string First, string Second) TwoNames(ReadOnlySpan<byte> bytes)
    {
        int nul = bytes.IndexOf((byte)0);
        if (nul < 0)
        {
            throw new OverlayException(OverlayErrno.EINVAL, "request without its second name");
        }
        return (Encoding.UTF8.GetString(bytes[..nul]), Name(bytes[(nul + 1)..]));
    }

    private FuseContext Context(fuse_in_header* h, uint umask)
    {
        var context = new FuseContext(h->uid, h->gid, (int)h->pid, umask);
        return _handler.WantsGroups ? context with { Groups = new ProcessGroups.OnDemand(h->pid) } : context;
    }

    /// <summary>HANDLE_KILLPRIV_V2's duty for a flagged request. The kernel flags every write of a caller without
    /// CAP_FSETID, so the handler is first asked, without I/O, whether the file may have anything to clear; only then
    /// are the caller's groups read from /proc (set-group-ID without group execute goes for callers outside the
    /// file's group).</summary>
    private bool DropPrivileges(fuse_in_header* h) =>
        _handler.MayHavePrivileges(h->nodeid)
        && _handler.DropPrivileges(h->nodeid, new FuseContext(h->uid, h->gid, (int)h->pid, 0) { Groups = new ProcessGroups.OnDemand(h->pid) });

    // ------------------------------------------------------------------ replies

    /// <summary>Writes the reply header and <paramref name="payload"/>; false when the kernel no longer waits for
    /// this request (it was interrupted: ENOENT), which matters for replies that hand out a handle.</summary>
    private bool Send(fuse_in_header* h, int error, void* payload, int payloadLength)
    {
        if (t_entry is { } entry)
        {
            // Over io_uring the reply goes into the request's ring entry, committed by the queue's owner thread. A reply
            // the kernel no longer waits for is known only at that commit (FuseRingQueue logs it): see docs.
            entry.Reply(h->unique, error, payload, payloadLength);
            return true;
        }
        fuse_out_header out_ = new() { len = (uint)(sizeof(fuse_out_header) + payloadLength), error = -error, unique = h->unique };
        IoVec* iov = stackalloc IoVec[2];
        iov[0] = new IoVec { iov_base = &out_, iov_len = (nuint)sizeof(fuse_out_header) };
        iov[1] = new IoVec { iov_base = payload, iov_len = (nuint)payloadLength };
        return Write(iov, payloadLength > 0 ? 2 : 1, h->unique);
    }

    private bool Write(IoVec* iov, int count, ulong unique)
    {
        while (true)
        {
            nint n = LibC.writev(_fd, iov, count);
            if (n >= 0)
            {
                return true;
            }
            int errno = Marshal.GetLastPInvokeError();
            if (errno == LibC.EINTR)
            {
                continue;
            }
            if (errno == LibC.ENOENT)
            {
                return false;
            }
            if (errno != LibC.ENODEV)
            {
                _session.LogLine($"reply to request {unique}: {Marshal.GetPInvokeErrorMessage(errno)}");
            }
            return false;
        }
    }

    private void ReplyOk(fuse_in_header* h) => Send(h, 0, null, 0);

    private void ReplyError(fuse_in_header* h, int errno)
    {
        if (_options.Debug)
        {
            _session.LogLine($"   unique: {h->unique}, error: -{errno}");
        }
        Send(h, errno <= 0 ? EIO : errno, null, 0);
    }

    private bool Reply<T>(fuse_in_header* h, in T payload) where T : unmanaged
    {
        fixed (T* p = &payload)
        {
            return Send(h, 0, p, sizeof(T));
        }
    }

    /// <summary>Answers a failed request with the errno <see cref="OverlayException.ErrnoOf"/> maps the exception to,
    /// logging the classes that are no POSIX condition of the request; never throws.</summary>
    private void Fail(fuse_in_header* h, Exception e, FuseOpcode op)
    {
        int errno = _session.ErrnoFor(e, OpName(op));
        if (op is FuseOpcode.FUSE_FORGET or FuseOpcode.FUSE_BATCH_FORGET or FuseOpcode.FUSE_INTERRUPT or FuseOpcode.FUSE_NOTIFY_REPLY)
        {
            return; // no reply to these
        }
        ReplyError(h, errno);
    }

    private static void Fill(fuse_attr* a, in OverlayStat s)
    {
        *a = default;
        a->ino = s.Ino;
        a->size = (ulong)s.Size;
        a->blocks = (ulong)s.Blocks;
        a->atime = Seconds(s.ATimeNs, out a->atimensec);
        a->mtime = Seconds(s.MTimeNs, out a->mtimensec);
        a->ctime = Seconds(s.CTimeNs, out a->ctimensec);
        a->mode = s.Mode;
        a->nlink = (uint)s.Nlink;
        a->uid = s.Uid;
        a->gid = s.Gid;
        a->rdev = (uint)s.Rdev; // the kernel decodes the low 32 bits of glibc's dev_t (new_decode_dev), as libfuse sends them
        a->blksize = 4096;
    }

    /// <summary>Nanoseconds since the epoch as seconds (returned) and nanoseconds (out), floored. Out parameters,
    /// not a tuple: a framework generic over (ulong, uint) would be compiled at first use.</summary>
    private static ulong Seconds(long ns, out uint nanoseconds)
    {
        long seconds = Math.DivRem(ns, 1_000_000_000L, out long rem);
        if (rem < 0)
        {
            seconds--;
            rem += 1_000_000_000L;
        }
        nanoseconds = (uint)rem;
        return (ulong)seconds;
    }

    /// <summary>A timeout in seconds as the kernel takes it: whole seconds (returned) and nanoseconds (out), as
    /// libfuse's calc_timeout_sec/calc_timeout_nsec.</summary>
    private static ulong Timeout(double t, out uint nanoseconds)
    {
        if (!(t > 0))
        {
            nanoseconds = 0;
            return 0;
        }
        if (t >= ulong.MaxValue)
        {
            nanoseconds = 999_999_999;
            return ulong.MaxValue;
        }
        ulong seconds = (ulong)t;
        nanoseconds = (uint)((t - seconds) * 1e9);
        return seconds;
    }

    private fuse_entry_out Entry(in OverlayStat stat)
    {
        fuse_entry_out e = default;
        e.nodeid = stat.Ino;
        e.entry_valid = Timeout(_handler.EntryTimeout, out e.entry_valid_nsec);
        e.attr_valid = Timeout(_handler.AttributeTimeout, out e.attr_valid_nsec);
        Fill(&e.attr, stat);
        return e;
    }

    private void ReplyEntry(fuse_in_header* h, in OverlayStat stat) => Reply(h, Entry(stat));

    private void ReplyAttr(fuse_in_header* h, in OverlayStat stat)
    {
        fuse_attr_out a = default;
        a.attr_valid = Timeout(_handler.AttributeTimeout, out a.attr_valid_nsec);
        Fill(&a.attr, stat);
        Reply(h, a);
    }

    /// <summary>Cleanup after a reply the kernel did not take (the request was interrupted): failures are logged.</summary>
    private void AfterLostReply(FuseOpcode op, Action cleanup)
    {
        try
        {
            cleanup();
        }
        catch (Exception e)
        {
            _session.LogLine($"{OpName(op)}: cleanup after an interrupted request: {e.GetType().Name}: {e.Message}");
        }
    }

    // ------------------------------------------------------------------ connection

    private void Init(fuse_in_header* h, ReadOnlySpan<byte> args)
    {
        fuse_init_in init = Read<fuse_init_in>(args.Length >= sizeof(fuse_init_in) ? args : Padded<fuse_init_in>(args));
        fuse_init_out out_ = default;
        out_.major = FUSE_KERNEL_VERSION;
        out_.minor = FUSE_KERNEL_MINOR_VERSION;
        if (init.major > FUSE_KERNEL_VERSION)
        {
            Reply(h, out_); // the kernel asks again with our major
            return;
        }
        if (init.major < FUSE_KERNEL_VERSION || init.minor < MinimumMinor)
        {
            _session.LogLine($"the kernel speaks FUSE {init.major}.{init.minor}; this needs {FUSE_KERNEL_VERSION}.{MinimumMinor} (Linux 5.4) or later");
            ReplyError(h, EPROTO);
            return;
        }
        ulong offered = init.flags | ((init.flags & FUSE_INIT_EXT) != 0 ? (ulong)init.flags2 << 32 : 0);
        ulong want = Want(offered, init.minor, _options,
            passthroughAllowed: (offered & FUSE_PASSTHROUGH) != 0 && _options.Passthrough && FusePassthrough.Allowed());
        out_.minor = Math.Min(init.minor, FUSE_KERNEL_MINOR_VERSION);
        if ((want & FUSE_PASSTHROUGH) != 0)
        {
            // Backing files may live on a file system stacked once (the kernel's FILESYSTEM_MAX_STACK_DEPTH is 2): this
            // mount then counts as stacked once itself, so it can still be a lower layer of kernel overlayfs. A
            // backing file on an overlayfs is refused (ELOOP) and served by the daemon.
            out_.max_stack_depth = 1;
            _passthrough = new FusePassthrough(_session, _fd);
        }
        _killPrivilegesV2 = (want & FUSE_HANDLE_KILLPRIV_V2) != 0;
        if ((offered & FUSE_OVER_IO_URING) != 0 && _options.IoUring && CreateRings())
        {
            want |= FUSE_OVER_IO_URING;
        }
        out_.flags = (uint)want;
        out_.flags2 = (uint)(want >> 32);
        out_.max_readahead = _options.MaxReadahead is uint readahead ? Math.Min(readahead, init.max_readahead) : init.max_readahead;
        out_.max_write = _maxWrite;
        // Requests may carry up to 1 MiB whatever max_write says: max_pages also bounds each READ, and reads of
        // 128 KiB (a max_write of 128 KiB made max_pages 32) took two round trips where fuse-overlayfs's mount, with
        // max_pages 256, takes one. Writes stay within max_write; every reply buffer here holds 1 MiB.
        out_.max_pages = (ushort)(DefaultMaxWrite / 4096);
        out_.time_gran = 1;
        _session.OnInit(new FuseConnection(FUSE_KERNEL_VERSION, out_.minor, (uint)offered, (uint)want, out_.max_write, out_.max_readahead)
        {
            Passthrough = _passthrough is not null,
            KillPrivilegesV2 = _killPrivilegesV2,
            IoUring = _rings is not null,
        });
        _initialized = true;
        Reply(h, out_);
        if (_rings is not null)
        {
            // The kernel has processed the INIT reply when writev returns: the entries may be registered now (before,
            // REGISTER fails with EAGAIN). Until every queue has one, requests still come through read(2).
            StartRingThreads();
        }
        // The thread pool starts its first threads when first used, on the caller's thread, which waits for them: a
        // B-CoW file's copier is its first user, so the first write of a fresh mount paid for it. Started now, once
        // the kernel has its answer.
        ThreadPool.UnsafeQueueUserWorkItem(static _ => { }, null);
    }

    /// <summary>The number of the kernel's FUSE-over-io_uring queues: one per possible CPU (num_possible_cpus), not per
    /// online one.</summary>
    internal static int PossibleCpus()
    {
        try
        {
            string text = File.ReadAllText("/sys/devices/system/cpu/possible").Trim();
            int count = 0;
            foreach (string part in text.Split(','))
            {
                string[] range = part.Split('-');
                int first = int.Parse(range[0], System.Globalization.CultureInfo.InvariantCulture);
                int last = range.Length > 1 ? int.Parse(range[1], System.Globalization.CultureInfo.InvariantCulture) : first;
                count = Math.Max(count, last + 1);
            }
            return count > 0 ? count : Environment.ProcessorCount;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException or OverflowException)
        {
            return Environment.ProcessorCount;
        }
    }

    /// <summary>Entries per queue: 8 on a small machine, fewer where there are many queues (each entry's payload
    /// buffer is a 1 MiB reservation, touched only as large requests use it), at least 2.</summary>
    internal static int QueueDepth(int queues) => Math.Clamp(32 / Math.Max(1, queues), 2, 8);

    /// <summary>Makes every queue's io_uring before INIT is answered: once FUSE_OVER_IO_URING is granted the kernel
    /// holds each request until every queue has an entry registered, so a ring that failed afterwards would hang the
    /// mount. False (nothing kept, a log line) when the system refuses one: the mount is then served over read/writev.</summary>
    private bool CreateRings()
    {
        int queues = PossibleCpus();
        int depth = QueueDepth(queues);
        var rings = new FuseRingQueue[queues];
        for (int q = 0; q < queues; q++)
        {
            FuseRingQueue? ring = FuseRingQueue.TryCreate(this, _session, q, depth, (int)DefaultMaxWrite, _fd, out string? failure);
            if (ring is null)
            {
                for (int i = 0; i < q; i++)
                {
                    rings[i].Dispose();
                }
                _session.LogLine($"FUSE over io_uring offered by the kernel but not used: {failure}; serving over read/writev");
                return false;
            }
            rings[q] = ring;
        }
        _rings = rings;
        return true;
    }

    private void StartRingThreads()
    {
        lock (_threadsGate)
        {
            foreach (FuseRingQueue ring in _rings!)
            {
                var thread = new Thread(ring.Run) { IsBackground = true, Name = $"fuse-ring-{ring.Qid}" };
                _threads.Add(thread);
                thread.Start();
            }
        }
    }

    // ------------------------------------------------------------------ io_uring requests

    /// <summary>
    /// Whether the queue's owner thread may serve this request itself: not a kind that may take long (what may copy a
    /// file up or make it durable: opens, creates, changes of names and attributes, flush, release, fsync,
    /// fallocate), which a worker serves. (Whatever arrives on the queue while the owner serves goes to workers, see
    /// <see cref="FuseRingQueue"/>.)
    /// </summary>
    internal bool MayServeInline(FuseRingEntry entry) => !MayBeSlow((FuseOpcode)entry.In->opcode);

    /// <summary>Hands a ring entry's request to a worker, which serves it and gives the entry back to its queue's
    /// owner to commit (<see cref="FuseRingQueue.Answered"/>).</summary>
    internal void HandOff(FuseRingEntry entry)
    {
        lock (_handedOff)
        {
            _handedOff.Enqueue(entry);
            if (_handOffIdle == 0 && _handOffThreads < _maxThreads)
            {
                _handOffThreads++;
                var thread = new Thread(HandOffWorker) { IsBackground = true, Name = $"fuse-ring-worker-{_handOffThreads}" };
                thread.Start();
            }
            else
            {
                Monitor.Pulse(_handedOff);
            }
        }
    }

    private static bool MayBeSlow(FuseOpcode op) => op is FuseOpcode.FUSE_OPEN or FuseOpcode.FUSE_CREATE
        or FuseOpcode.FUSE_SETATTR or FuseOpcode.FUSE_FLUSH or FuseOpcode.FUSE_RELEASE or FuseOpcode.FUSE_FSYNC
        or FuseOpcode.FUSE_FSYNCDIR or FuseOpcode.FUSE_FALLOCATE or FuseOpcode.FUSE_RENAME or FuseOpcode.FUSE_RENAME2
        or FuseOpcode.FUSE_LINK or FuseOpcode.FUSE_UNLINK or FuseOpcode.FUSE_RMDIR or FuseOpcode.FUSE_MKDIR
        or FuseOpcode.FUSE_MKNOD or FuseOpcode.FUSE_SYMLINK or FuseOpcode.FUSE_SETXATTR or FuseOpcode.FUSE_REMOVEXATTR;

    private void HandOffWorker()
    {
        while (true)
        {
            FuseRingEntry entry;
            lock (_handedOff)
            {
                while (_handedOff.Count == 0)
                {
                    if (_handOffStop)
                    {
                        return;
                    }
                    _handOffIdle++;
                    Monitor.Wait(_handedOff);
                    _handOffIdle--;
                }
                entry = _handedOff.Dequeue();
            }
            ServeRing(entry);
            entry.Queue.Answered(entry);
        }
    }

    /// <summary>Serves the request in <paramref name="entry"/>: its first argument in the header's <c>op_in</c>, the
    /// others in the payload buffer, the reply written back into the entry (<see cref="Send"/>).</summary>
    internal void ServeRing(FuseRingEntry entry)
    {
        Interlocked.Increment(ref _ringRequests);
        fuse_in_header* h = entry.In;
        int first = FirstArgumentSize((FuseOpcode)h->opcode, FUSE_URING_OP_IN_OUT_SZ);
        t_entry = entry;
        try
        {
            Dispatch(h, new ReadOnlySpan<byte>(entry.Header->op_in, first), entry.Rest, entry.Payload, entry.PayloadSize);
        }
        finally
        {
            t_entry = null;
        }
    }

    /// <summary>
    /// The INIT flags to ask for, of those the kernel <paramref name="offered"/> at protocol minor
    /// <paramref name="minor"/>: libfuse 3's defaults (so behaviour is unchanged) and what the options ask for.
    /// READDIRPLUS always (not READDIRPLUS_AUTO, with which the kernel uses it for a directory's first chunk only,
    /// unless lookups came in between): a listing brings each entry's attributes, so <c>ls -l</c>, <c>find</c> and
    /// <c>tar c</c> need no LOOKUP per name. HANDLE_KILLPRIV_V2 where offered (Linux 5.11+; v1 before): the kernel
    /// then says when a write, truncate or chown must clear set-user-ID, set-group-ID and capabilities, instead of
    /// asking for security.capability before every write. Passthrough (7.40) where the kernel offers it and will let
    /// this process register backing files (<paramref name="passthroughAllowed"/>), and not with the write-back cache,
    /// which the kernel does not combine with it.
    /// </summary>
    internal static ulong Want(ulong offered, uint minor, FuseMountOptions options, bool passthroughAllowed)
    {
        ulong killPrivileges = (offered & FUSE_HANDLE_KILLPRIV_V2) != 0 ? FUSE_HANDLE_KILLPRIV_V2 : FUSE_HANDLE_KILLPRIV;
        bool passthrough = options.Passthrough && !options.WritebackCache && minor >= PassthroughMinor && passthroughAllowed;
        ulong wanted = FUSE_ASYNC_READ | FUSE_PARALLEL_DIROPS | FUSE_AUTO_INVAL_DATA | killPrivileges | FUSE_ASYNC_DIO
            | FUSE_ATOMIC_O_TRUNC | FUSE_BIG_WRITES | FUSE_MAX_PAGES | FUSE_INIT_EXT
            | (options.WritebackCache ? FUSE_WRITEBACK_CACHE : 0)
            | (options.ReaddirPlus ? FUSE_DO_READDIRPLUS : 0)
            | (passthrough ? FUSE_PASSTHROUGH : 0);
        return wanted & offered;
    }

    private static ReadOnlySpan<byte> Padded<T>(ReadOnlySpan<byte> args) where T : unmanaged
    {
        byte[] padded = new byte[sizeof(T)];
        args.CopyTo(padded);
        return padded;
    }

    // ------------------------------------------------------------------ names and attributes

    private void Lookup(fuse_in_header* h, ReadOnlySpan<byte> args)
    {
        if (_handler.TryLookup(h->nodeid, Name(args), Context(h, 0)) is { } stat)
        {
            ReplyEntry(h, stat);
        }
        else if (_handler.NegativeTimeout > 0)
        {
            // A negative entry: node 0, kept by the kernel for the negative timeout (a name made through the mount
            // replaces it; one made otherwise is invalidated by the handler).
            fuse_entry_out negative = default;
            negative.entry_valid = Timeout(_handler.NegativeTimeout, out negative.entry_valid_nsec);
            Reply(h, negative);
        }
        else
        {
            ReplyError(h, ENOENT);
        }
    }

    /// <summary><paramref name="handler"/>'s <see cref="IFuseLowLevelHandler.Lookup"/>, its ENOENT answered null: the
    /// <see cref="IFuseLowLevelHandler.TryLookup"/> of a handler that has no lookup of its own without an exception.</summary>
    internal static OverlayStat? LookupOrNull(IFuseLowLevelHandler handler, ulong parent, string name, FuseContext context)
    {
        try
        {
            return handler.Lookup(parent, name, context);
        }
        catch (Exception e) when (IsNoEntry(e))
        {
            return null;
        }
    }

    /// <summary>True for what answers ENOENT without a log line.</summary>
    internal static bool IsNoEntry(Exception e)
    {
        OverlayErrno errno = OverlayException.ErrnoOf(e, out bool unexpected);
        return errno == OverlayErrno.ENOENT && !unexpected;
    }

    private void Forget(ulong ino, ulong nlookup)
    {
        try
        {
            _handler.Forget(ino, nlookup);
        }
        catch (Exception e)
        {
            _session.LogLine($"forget: {e.GetType().Name}: {e.Message}");
        }
    }

    private void BatchForget(ReadOnlySpan<byte> first, ReadOnlySpan<byte> rest)
    {
        fuse_batch_forget_in batch = Read<fuse_batch_forget_in>(first);
        int count = (int)Math.Min(batch.count, (uint)(rest.Length / sizeof(fuse_forget_one)));
        fixed (byte* p = rest)
        {
            for (int i = 0; i < count; i++)
            {
                fuse_forget_one* one = (fuse_forget_one*)p + i;
                Forget(one->nodeid, one->nlookup);
            }
        }
    }

    private void GetAttr(fuse_in_header* h, ReadOnlySpan<byte> args)
    {
        fuse_getattr_in a = Read<fuse_getattr_in>(args);
        ulong? fh = (a.getattr_flags & FUSE_GETATTR_FH) != 0 ? a.fh : null;
        ReplyAttr(h, _handler.GetAttr(h->nodeid, fh, Context(h, 0)));
    }

    private void SetAttr(fuse_in_header* h, ReadOnlySpan<byte> args)
    {
        fuse_setattr_in a = Read<fuse_setattr_in>(args);
        uint v = a.valid;
        var change = new OverlaySetAttr
        {
            Mode = (v & FATTR_MODE) != 0 ? a.mode : null,
            Uid = (v & FATTR_UID) != 0 ? a.uid : null,
            Gid = (v & FATTR_GID) != 0 ? a.gid : null,
            Size = (v & FATTR_SIZE) != 0 ? (long)a.size : null,
            ATimeNs = (v & FATTR_ATIME_NOW) != 0 ? OverlaySetAttr.Now
                : (v & FATTR_ATIME) != 0 ? (long)a.atime * 1_000_000_000L + a.atimensec : null,
            MTimeNs = (v & FATTR_MTIME_NOW) != 0 ? OverlaySetAttr.Now
                : (v & FATTR_MTIME) != 0 ? (long)a.mtime * 1_000_000_000L + a.mtimensec : null,
        };
        ulong? fh = (v & FATTR_FH) != 0 ? a.fh : null;
        bool truncate = _passthrough is not null && change.Size is not null;
        BeginChange(h->nodeid, truncate, "truncate");
        try
        {
            if ((v & FATTR_KILL_SUIDGID) != 0)
            {
                DropPrivileges(h); // a truncate by a caller without CAP_FSETID, or a chown
            }
            ReplyAttr(h, _handler.SetAttr(h->nodeid, change, fh, Context(h, 0)));
        }
        finally
        {
            if (truncate)
            {
                _passthrough!.EndChange(h->nodeid);
            }
        }
    }

    private void ReadLink(fuse_in_header* h, byte* reply, int capacity)
    {
        string target = _handler.ReadLink(h->nodeid, Context(h, 0));
        int count = Encoding.UTF8.GetByteCount(target);
        if (count > capacity)
        {
            throw new OverlayException(OverlayErrno.ENAMETOOLONG, "symbolic link target longer than a reply");
        }
        Encoding.UTF8.GetBytes(target, new Span<byte>(reply, capacity));
        Send(h, 0, reply, count); // no NUL: the reply's length is the target's
    }

    private void Symlink(fuse_in_header* h, ReadOnlySpan<byte> args)
    {
        (string name, string target) = TwoNames(args);
        ReplyEntry(h, _handler.MakeSymbolicLink(target, h->nodeid, name, Context(h, 0)));
    }

    private void MkNod(fuse_in_header* h, ReadOnlySpan<byte> first, ReadOnlySpan<byte> rest)
    {
        fuse_mknod_in a = Read<fuse_mknod_in>(first);
        ReplyEntry(h, _handler.MakeNode(h->nodeid, Name(rest), a.mode, a.rdev, Context(h, a.umask)));
    }

    private void MkDir(fuse_in_header* h, ReadOnlySpan<byte> first, ReadOnlySpan<byte> rest)
    {
        fuse_mkdir_in a = Read<fuse_mkdir_in>(first);
        ReplyEntry(h, _handler.MakeDirectory(h->nodeid, Name(rest), a.mode, Context(h, a.umask)));
    }

    private void Rename(fuse_in_header* h, ReadOnlySpan<byte> first, ReadOnlySpan<byte> rest, uint flags)
    {
        ulong newDir = Read<ulong>(first);
        (string name, string newName) = TwoNames(rest);
        _handler.Rename(h->nodeid, name, newDir, newName, flags, Context(h, 0));
        ReplyOk(h);
    }

    private void Link(fuse_in_header* h, ReadOnlySpan<byte> first, ReadOnlySpan<byte> rest)
    {
        fuse_link_in a = Read<fuse_link_in>(first);
        ReplyEntry(h, _handler.Link(a.oldnodeid, h->nodeid, Name(rest), Context(h, 0)));
    }

    // ------------------------------------------------------------------ files

    /// <summary>The open reply's flags. FOPEN_PARALLEL_DIRECT_WRITES always: direct writes (O_DIRECT) into one file
    /// from several threads or processes reach the handler together instead of one by one under the inode lock (the
    /// kernel still serializes a write that extends the file); the overlay's files take concurrent writes (B-CoW files
    /// lock per block). A passthrough open carries FOPEN_PASSTHROUGH alone: the kernel refuses the cache flags with it.</summary>
    private uint OpenFlags(FuseOpenResult result, int backingId) =>
        backingId > 0 ? FOPEN_PASSTHROUGH
        : (result.DirectIo ? FOPEN_DIRECT_IO : 0) | (result.KeepCache ? FOPEN_KEEP_CACHE : 0)
            | (_options.ParallelDirectWrites ? FOPEN_PARALLEL_DIRECT_WRITES : 0);

    /// <summary>Whether the kernel serves this open from a backing file (its id), or the handler does (0).</summary>
    private int Backing(ulong ino, ulong fh, int flags) =>
        _passthrough?.Opened(ino, fh, (flags & LibC.O_ACCMODE) != LibC.O_RDONLY, () => _handler.OpenPassthroughFile(ino, fh)) ?? 0;

    private void Open(fuse_in_header* h, ReadOnlySpan<byte> args)
    {
        fuse_open_in a = Read<fuse_open_in>(args);
        ulong ino = h->nodeid;
        bool change = _passthrough is not null && ((a.flags & LibC.O_ACCMODE) != LibC.O_RDONLY || (a.flags & LibC.O_TRUNC) != 0);
        BeginChange(ino, change, "open for writing");
        try
        {
            if ((a.open_flags & FUSE_OPEN_KILL_SUIDGID) != 0)
            {
                DropPrivileges(h); // an O_TRUNC open by a caller without CAP_FSETID
            }
            FuseOpenResult result = _handler.Open(ino, (int)a.flags, Context(h, 0));
            int backing = Backing(ino, result.Handle, (int)a.flags);
            if (!Reply(h, new fuse_open_out { fh = result.Handle, open_flags = OpenFlags(result, backing), backing_id = backing }))
            {
                // The open was interrupted: the kernel will never release this handle.
                AfterLostReply(FuseOpcode.FUSE_OPEN, () => ReleaseFile(ino, result.Handle));
            }
        }
        finally
        {
            if (change)
            {
                _passthrough!.EndChange(ino);
            }
        }
    }

    /// <summary>Before a change of a file's bytes that does not go through an open for writing of it (a truncate) or
    /// that makes one: refused with ETXTBSY while the kernel reads the file from a read-only backing file (a lower
    /// file passed through), see <see cref="FusePassthrough"/>.</summary>
    private void BeginChange(ulong ino, bool change, string what)
    {
        if (change && !_passthrough!.BeginChange(ino))
        {
            throw new OverlayException(OverlayErrno.ETXTBSY,
                $"{what} of node {ino}: it is open for reading and read by the kernel from its lower file; try again once those opens are closed");
        }
    }

    private void Create(fuse_in_header* h, ReadOnlySpan<byte> first, ReadOnlySpan<byte> rest)
    {
        fuse_create_in a = Read<fuse_create_in>(first);
        (OverlayStat stat, FuseOpenResult result) = _handler.Create(h->nodeid, Name(rest), a.mode, (int)a.flags, Context(h, a.umask));
        int backing = Backing(stat.Ino, result.Handle, (int)a.flags);
        var pair = new CreateOut
        {
            entry = Entry(stat),
            open = new fuse_open_out { fh = result.Handle, open_flags = OpenFlags(result, backing), backing_id = backing },
        };
        if (!Reply(h, pair))
        {
            AfterLostReply(FuseOpcode.FUSE_CREATE, () =>
            {
                ReleaseFile(stat.Ino, result.Handle);
                _handler.Forget(stat.Ino, 1);
            });
        }
    }

    private void ReleaseFile(ulong ino, ulong fh)
    {
        try
        {
            _handler.Release(ino, fh);
        }
        finally
        {
            _passthrough?.Released(ino, fh);
        }
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct CreateOut
    {
        public fuse_entry_out entry;
        public fuse_open_out open;
    }

    private void ReadData(fuse_in_header* h, ReadOnlySpan<byte> first, byte* data, int capacity)
    {
        fuse_read_in a = Read<fuse_read_in>(first);
        int length = (int)Math.Min(a.size, (uint)capacity);
        // Spliced only on the classic transport: over io_uring the reply is the entry's payload buffer, which the
        // handler fills directly (the kernel copies out of it once, as it would out of the pipe).
        if (length >= SpliceThreshold && _options.SpliceReads && t_entry is null && Splice(h, a, length, data))
        {
            return;
        }
        int n = _handler.Read(h->nodeid, a.fh, new Span<byte>(data, length), (long)a.offset);
        Send(h, 0, data, n);
    }

    /// <summary>Replies to a read by splicing the file's pages (<see cref="FuseSplice"/>) when the handler names the
    /// file that holds the bytes; false when the read must be served the copying way (nothing was sent).</summary>
    private bool Splice(fuse_in_header* h, in fuse_read_in a, int length, byte* data)
    {
        FuseSplice? pipe = t_splice;
        if (pipe is null)
        {
            if (t_spliceRefused)
            {
                return false;
            }
            pipe = t_splice = FuseSplice.TryCreate();
            if (pipe is null)
            {
                t_spliceRefused = true;
                return false;
            }
        }
        if (length > pipe.MaxData || _handler.ReadFile(h->nodeid, a.fh) is not { } file)
        {
            return false;
        }
        bool referenced = false;
        try
        {
            file.DangerousAddRef(ref referenced);
        }
        catch (ObjectDisposedException)
        {
            return false; // closed by a copy-up or release meanwhile: the handler's read says what is right now
        }
        try
        {
            long fileLength;
            try
            {
                fileLength = RandomAccess.GetLength(file);
            }
            catch (IOException)
            {
                return false; // the handler's read says what is wrong
            }
            if ((long)a.offset + length > fileLength)
            {
                // The file's end is in the request (a file's last read, rounded up to whole pages by the kernel): the
                // reply is short, and a spliced one would have to be read back out of the pipe and copied anyway.
                return false;
            }
            switch (pipe.TrySend(_fd, h->unique, file, (long)a.offset, length, data, out int n, out int errno))
            {
                case FuseSplice.Outcome.Sent:
                    if (errno is not (0 or LibC.ENOENT or LibC.ENODEV))
                    {
                        _session.LogLine($"reply to request {h->unique}: {Marshal.GetPInvokeErrorMessage(errno)}");
                    }
                    if (!pipe.Usable)
                    {
                        t_splice = null;
                    }
                    Interlocked.Increment(ref _splicedReads);
                    return true;
                case FuseSplice.Outcome.Short when n >= 0:
                    Send(h, 0, data, n); // the file's end: the bytes it gave, copied back out of the pipe
                    return true;
                case FuseSplice.Outcome.Short:
                    return false; // the file cannot be spliced, or failed: the handler's read gives the answer
                default:
                    t_splice = null;
                    return false;
            }
        }
        finally
        {
            if (referenced)
            {
                file.DangerousRelease();
            }
        }
    }

    private void WriteData(fuse_in_header* h, ReadOnlySpan<byte> first, ReadOnlySpan<byte> data)
    {
        fuse_write_in a = Read<fuse_write_in>(first);
        if ((uint)data.Length < a.size)
        {
            throw new OverlayException(OverlayErrno.EINVAL, $"write of {a.size} bytes with {data.Length} in the request");
        }
        if ((a.write_flags & FUSE_WRITE_KILL_SUIDGID) != 0 && DropPrivileges(h))
        {
            _session.InvalidateInode(h->nodeid, -1, 0); // the mode the kernel holds lost its set-id bits
        }
        int n = _handler.Write(h->nodeid, a.fh, data[..(int)a.size], (long)a.offset);
        Reply(h, new fuse_write_out { size = (uint)n });
    }

    private void Fsync(fuse_in_header* h, ReadOnlySpan<byte> args)
    {
        fuse_fsync_in a = Read<fuse_fsync_in>(args);
        _handler.Fsync(h->nodeid, a.fh, (a.fsync_flags & 1) != 0); // FUSE_FSYNC_FDATASYNC
        ReplyOk(h);
    }

    private void Fallocate(fuse_in_header* h, ReadOnlySpan<byte> args)
    {
        fuse_fallocate_in a = Read<fuse_fallocate_in>(args);
        _handler.Allocate(h->nodeid, a.fh, (int)a.mode, (long)a.offset, (long)a.length);
        ReplyOk(h);
    }

    private void Lseek(fuse_in_header* h, ReadOnlySpan<byte> args)
    {
        fuse_lseek_in a = Read<fuse_lseek_in>(args);
        long result = _handler.Seek(h->nodeid, a.fh, (long)a.offset, (int)a.whence);
        Reply(h, new fuse_lseek_out { offset = (ulong)result });
    }

    // ------------------------------------------------------------------ directories

    private void OpenDir(fuse_in_header* h)
    {
        ulong handle = _handler.OpenDirectory(h->nodeid, Context(h, 0));
        ulong ino = h->nodeid;
        uint flags = _options.CacheDirectories ? FOPEN_CACHE_DIR | FOPEN_KEEP_CACHE : 0;
        if (!Reply(h, new fuse_open_out { fh = handle, open_flags = flags }))
        {
            AfterLostReply(FuseOpcode.FUSE_OPENDIR, () => _handler.ReleaseDirectory(ino, handle));
        }
    }

    /// <summary>READDIR, or READDIRPLUS with <paramref name="plus"/>: then each entry (but "." and "..") also carries
    /// its lookup, which the kernel counts as one reference, as a LOOKUP reply; an entry that vanished since the
    /// listing was taken is sent without (node 0), which the kernel takes as "no attributes", not as ENOENT.</summary>
    private void ReadDir(fuse_in_header* h, ReadOnlySpan<byte> first, byte* buffer, int bufferSize, bool plus)
    {
        fuse_read_in a = Read<fuse_read_in>(first);
        IReadOnlyList<OverlayDirEntry> entries = _handler.ReadDirectory(h->nodeid, a.fh);
        int capacity = (int)Math.Min(a.size, (uint)bufferSize);
        int nameOffset = plus ? FUSE_NAME_OFFSET_DIRENTPLUS : FUSE_NAME_OFFSET;
        FuseContext context = plus ? Context(h, 0) : default;
        int used = 0;
        for (int i = FuseDirectoryOffsets.StartIndex(entries, (long)a.offset); i < entries.Count; i++)
        {
            OverlayDirEntry entry = entries[i];
            int nameLength = Encoding.UTF8.GetByteCount(entry.Name);
            int size = FUSE_DIRENT_ALIGN(nameOffset + nameLength);
            if (size > capacity - used)
            {
                break; // did not fit; the kernel asks again from its offset (checked before the lookup it would count)
            }
            fuse_dirent* d;
            if (plus)
            {
                fuse_direntplus* p = (fuse_direntplus*)(buffer + used);
                p->entry_out = entry.Name is "." or ".." ? default : LookupForListing(h->nodeid, entry.Name, context);
                d = &p->dirent;
            }
            else
            {
                d = (fuse_dirent*)(buffer + used);
            }
            d->ino = entry.Ino;
            d->off = (ulong)entry.NextOffset;
            d->namelen = (uint)nameLength;
            d->type = (entry.Type & 0xF000) >> 12;
            var name = new Span<byte>(buffer + used + nameOffset, size - nameOffset);
            Encoding.UTF8.GetBytes(entry.Name, name);
            name[nameLength..].Clear();
            used += size;
        }
        if (!Send(h, 0, buffer, used) && plus)
        {
            // Interrupted: the kernel took none of the lookups this reply carried.
            for (int at = 0; at < used;)
            {
                fuse_direntplus* p = (fuse_direntplus*)(buffer + at);
                if (p->entry_out.nodeid != 0)
                {
                    Forget(p->entry_out.nodeid, 1);
                }
                at += FUSE_DIRENT_ALIGN(nameOffset + (int)p->dirent.namelen);
            }
        }
    }

    private fuse_entry_out LookupForListing(ulong parent, string name, FuseContext context)
    {
        try
        {
            return _handler.LookupForListing(parent, name, context) is OverlayStat stat ? Entry(stat) : default;
        }
        catch (Exception e) when (IsNoEntry(e) || e is OverlayException)
        {
            return default; // gone since the listing, or not to be shown: the kernel looks it up itself if asked
        }
    }

    private void StatFs(fuse_in_header* h)
    {
        OverlayStatFs v = _handler.StatFs(h->nodeid);
        fuse_kstatfs k = default;
        k.blocks = v.Blocks;
        k.bfree = v.BlocksFree;
        k.bavail = v.BlocksAvailable;
        k.files = v.Files;
        k.ffree = v.FilesFree;
        k.bsize = (uint)v.BlockSize;
        k.frsize = (uint)v.FragmentSize;
        k.namelen = (uint)v.MaxNameLength;
        Reply(h, k);
    }

    // ------------------------------------------------------------------ extended attributes

    private void SetXattr(fuse_in_header* h, ReadOnlySpan<byte> first, ReadOnlySpan<byte> rest)
    {
        // Without FUSE_SETXATTR_EXT (not asked for) the kernel sends the compat form: fuse_setxattr_in's first
        // FUSE_COMPAT_SETXATTR_IN_SIZE bytes, size and flags.
        if (first.Length < FUSE_COMPAT_SETXATTR_IN_SIZE)
        {
            throw new OverlayException(OverlayErrno.EINVAL, "setxattr request shorter than its header");
        }
        uint size = MemoryMarshal.Read<uint>(first);
        uint flags = MemoryMarshal.Read<uint>(first[sizeof(uint)..]);
        int nul = rest.IndexOf((byte)0);
        if (nul < 0 || rest.Length - nul - 1 < size)
        {
            throw new OverlayException(OverlayErrno.EINVAL, "setxattr request shorter than its value");
        }
        string name = Encoding.UTF8.GetString(rest[..nul]);
        _handler.SetXattr(h->nodeid, name, rest.Slice(nul + 1, (int)size), (int)flags, Context(h, 0));
        ReplyOk(h);
    }

    private void GetXattr(fuse_in_header* h, ReadOnlySpan<byte> first, ReadOnlySpan<byte> rest)
    {
        fuse_getxattr_in a = Read<fuse_getxattr_in>(first);
        byte[]? value = _handler.GetXattr(h->nodeid, Name(rest), Context(h, 0));
        if (value is null)
        {
            ReplyError(h, ENODATA);
        }
        else if (a.size == 0)
        {
            Reply(h, new fuse_getxattr_out { size = (uint)value.Length });
        }
        else if ((uint)value.Length > a.size)
        {
            ReplyError(h, ERANGE);
        }
        else
        {
            fixed (byte* p = value)
            {
                Send(h, 0, p, value.Length);
            }
        }
    }

    private void ListXattr(fuse_in_header* h, ReadOnlySpan<byte> first, byte* reply, int capacity)
    {
        fuse_getxattr_in a = Read<fuse_getxattr_in>(first);
        IReadOnlyList<string> names = _handler.ListXattrs(h->nodeid, Context(h, 0));
        int total = 0;
        foreach (string n in names)
        {
            total += Encoding.UTF8.GetByteCount(n) + 1;
        }
        if (a.size == 0)
        {
            Reply(h, new fuse_getxattr_out { size = (uint)total });
            return;
        }
        if ((uint)total > a.size || total > capacity)
        {
            ReplyError(h, ERANGE);
            return;
        }
        var buffer = new Span<byte>(reply, capacity);
        int at = 0;
        foreach (string n in names)
        {
            at += Encoding.UTF8.GetBytes(n, buffer[at..]);
            buffer[at++] = 0;
        }
        Send(h, 0, reply, total);
    }

    // ------------------------------------------------------------------ notifications

    /// <summary>FUSE_NOTIFY_INVAL_INODE: 0 when done, else the errno (ENOENT: not cached).</summary>
    public int InvalidateInode(ulong ino, long offset, long length)
    {
        var body = new fuse_notify_inval_inode_out { ino = ino, off = offset, len = length };
        return Notify(FUSE_NOTIFY_INVAL_INODE, &body, sizeof(fuse_notify_inval_inode_out), default);
    }

    /// <summary>FUSE_NOTIFY_INVAL_ENTRY: 0 when done, else the errno (ENOENT: not cached).</summary>
    public int InvalidateEntry(ulong parent, ReadOnlySpan<byte> nameWithNul)
    {
        var body = new fuse_notify_inval_entry_out { parent = parent, namelen = (uint)(nameWithNul.Length - 1) };
        return Notify(FUSE_NOTIFY_INVAL_ENTRY, &body, sizeof(fuse_notify_inval_entry_out), nameWithNul);
    }

    private int Notify(int code, void* body, int bodyLength, ReadOnlySpan<byte> tail)
    {
        fuse_out_header out_ = new() { len = (uint)(sizeof(fuse_out_header) + bodyLength + tail.Length), error = code, unique = 0 };
        fixed (byte* t = tail)
        {
            IoVec* iov = stackalloc IoVec[3];
            iov[0] = new IoVec { iov_base = &out_, iov_len = (nuint)sizeof(fuse_out_header) };
            iov[1] = new IoVec { iov_base = body, iov_len = (nuint)bodyLength };
            iov[2] = new IoVec { iov_base = t, iov_len = (nuint)tail.Length };
            while (true)
            {
                if (LibC.writev(_fd, iov, tail.Length > 0 ? 3 : 2) >= 0)
                {
                    return 0;
                }
                int errno = Marshal.GetLastPInvokeError();
                if (errno != LibC.EINTR)
                {
                    return errno;
                }
            }
        }
    }
}

/// <summary>Which directory entry answers a readdir at a given offset (shared by both transports).</summary>
internal static class FuseDirectoryOffsets
{
    /// <summary>The first entry to send for the kernel's offset: the first whose NextOffset is beyond it.</summary>
    public static int StartIndex(IReadOnlyList<OverlayDirEntry> entries, long off)
    {
        int i = (int)Math.Clamp(off, 0, entries.Count);
        while (i > 0 && entries[i - 1].NextOffset > off)
        {
            i--;
        }
        while (i < entries.Count && entries[i].NextOffset <= off)
        {
            i++;
        }
        return i;
    }
}

/// <summary>A process's supplementary groups, from <c>/proc/PID/task/PID/status</c> as libfuse's fuse_req_getgroups reads them.</summary>
internal static class ProcessGroups
{
    /// <summary>A process's groups read at their first use: a privilege check needs them only for a set-group-ID file
    /// without group execute whose group is not the caller's own, and reading /proc at every chown cost more than
    /// the rest of the request.</summary>
    public sealed class OnDemand(uint pid) : IReadOnlyList<uint>
    {
        private IReadOnlyList<uint>? _groups;

        /// <summary>How many times the groups were read (tests).</summary>
        internal static long Reads;

        private IReadOnlyList<uint> Groups
        {
            get
            {
                if (_groups is null)
                {
                    Interlocked.Increment(ref Reads);
                    _groups = Of(pid);
                }
                return _groups;
            }
        }

        public uint this[int index] => Groups[index];

        public int Count => Groups.Count;

        public IEnumerator<uint> GetEnumerator() => Groups.GetEnumerator();

        System.Collections.IEnumerator System.Collections.IEnumerable.GetEnumerator() => GetEnumerator();
    }

    public static IReadOnlyList<uint> Of(uint pid)
    {
        try
        {
            foreach (string line in File.ReadLines($"/proc/{pid}/task/{pid}/status"))
            {
                if (!line.StartsWith("Groups:", StringComparison.Ordinal))
                {
                    continue;
                }
                var groups = new List<uint>();
                foreach (string part in line[7..].Split([' ', '\t'], StringSplitOptions.RemoveEmptyEntries))
                {
                    if (uint.TryParse(part, out uint g))
                    {
                        groups.Add(g);
                    }
                }
                return groups;
            }
        }
        catch (IOException)
        {
            // The caller is gone: no groups, as libfuse answers then.
        }
        catch (UnauthorizedAccessException)
        {
        }
        return [];
    }
}
