using System.Runtime.InteropServices;
using BAOverlay.Fuse.Interop;
using BAOverlay.UringBench.Interop;
using static BAOverlay.Fuse.Interop.FuseKernel;
using static BAOverlay.Fuse.Interop.UringAbi;

namespace BAOverlay.UringBench;

/// <summary>How requests travel between the kernel and the server.</summary>
internal enum Transport
{
    /// <summary>read(2) of /dev/fuse for each request, writev(2) for each reply: one thread per CPU.</summary>
    Classic,

    /// <summary>FUSE over io_uring: a ring and a thread per CPU queue, each entry registered once and then answered
    /// with COMMIT_AND_FETCH (reply and take the next request in one submission).</summary>
    Uring,
}

/// <summary>
/// Serves a <see cref="TrivialFs"/> on a mounted /dev/fuse descriptor over either transport.
/// </summary>
/// <remarks>
/// <para>INIT always comes through read(2): the kernel accepts ring registrations only once it has the INIT reply
/// (REGISTER fails with EAGAIN before), and it queues requests on the rings only when every queue (one per possible
/// CPU) has an entry registered; until then, and for FORGET and INTERRUPT always, requests come through read(2), so
/// one classic reader stays on the io_uring transport too.</para>
/// <para>Fallback: the rings are created before INIT is answered and FUSE_OVER_IO_URING is asked for only when the
/// kernel offered it (module parameter enable_uring=Y, CONFIG_FUSE_IO_URING, Linux 6.14+) and every ring could be made:
/// once asked for, the kernel holds requests until the rings are ready, so a ring that failed after that would hang
/// the mount. Otherwise the server says why and serves the classic way with one thread per CPU.</para>
/// </remarks>
internal sealed unsafe class Server
{
    private const uint MaxWrite = 1 << 20;
    private const ushort MaxPages = 256;
    private const uint OfferedMinor = 42; // 7.42: FUSE over io_uring
    private const int RequestBufferSize = (int)MaxWrite + 4096;
    private const int ReplyPayloadSize = (int)MaxWrite;

    /// <summary>The payload buffer of a ring entry: the kernel requires at least max(FUSE_MIN_READ_BUFFER, max_write,
    /// max_pages * page size).</summary>
    public const int EntryPayloadSize = (int)MaxWrite;

    private readonly TrivialFs _fs;
    private readonly int _fd;
    private readonly Transport _wanted;
    private readonly int _queues;
    private readonly int _depth;
    private readonly bool _pin;
    private readonly List<Thread> _threads = [];
    private readonly List<(bool Ring, long[] Counts)> _counts = [];
    private Ring[]? _rings;
    private int _ringErrors;

    public Server(TrivialFs fs, int fd, Transport transport, int queueDepth, bool pin)
    {
        _fs = fs;
        _fd = fd;
        _wanted = transport;
        _queues = PossibleCpus();
        _depth = queueDepth;
        _pin = pin;
    }

    /// <summary>The transport serving after INIT.</summary>
    public Transport Serving { get; private set; } = Transport.Classic;

    /// <summary>Called once the mount answers requests (after INIT, and on io_uring once the entries are registered).</summary>
    public Action? Ready { get; init; }

    /// <summary>Serves until the mount goes; returns the requests served per opcode through read(2) and through the rings.</summary>
    public (long[] Classic, long[] Ring) Run()
    {
        int classic = _wanted == Transport.Classic ? _queues : 1;
        for (int i = 1; i < classic; i++)
        {
            Start(() => ClassicWorker(), $"classic-{i}");
        }
        ClassicWorker();
        Thread[] all;
        lock (_threads)
        {
            all = [.. _threads];
        }
        foreach (Thread t in all)
        {
            t.Join(TimeSpan.FromSeconds(5));
        }
        long[] classicTotal = new long[64];
        long[] ringTotal = new long[64];
        lock (_counts)
        {
            foreach ((bool ring, long[] c) in _counts)
            {
                long[] total = ring ? ringTotal : classicTotal;
                for (int i = 0; i < total.Length; i++)
                {
                    total[i] += c[i];
                }
            }
        }
        if (_ringErrors > 0)
        {
            Console.Error.WriteLine($"uringbench: {_ringErrors} ring completions failed (see above)");
        }
        return (classicTotal, ringTotal);
    }

    private void Start(ThreadStart body, string name)
    {
        var t = new Thread(body) { IsBackground = true, Name = name };
        lock (_threads)
        {
            _threads.Add(t);
        }
        t.Start();
    }

    private long[] NewCounts(bool ring)
    {
        long[] c = new long[64];
        lock (_counts)
        {
            _counts.Add((ring, c));
        }
        return c;
    }

    /// <summary>The kernel makes one queue per possible CPU (num_possible_cpus), not per online one.</summary>
    private static int PossibleCpus()
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
            return count;
        }
        catch (IOException)
        {
            return Environment.ProcessorCount;
        }
    }

    // ------------------------------------------------------------------ classic: read(2) and writev(2)

    private void ClassicWorker()
    {
        long[] counts = NewCounts(ring: false);
        byte* request = (byte*)NativeMemory.AlignedAlloc(RequestBufferSize, 4096);
        byte* reply = (byte*)NativeMemory.AlignedAlloc((nuint)(sizeof(fuse_out_header) + ReplyPayloadSize), 4096);
        try
        {
            while (true)
            {
                nint n = Native.read(_fd, request, RequestBufferSize);
                if (n < 0)
                {
                    int errno = Native.Errno;
                    if (errno is Native.ENOENT or Native.EINTR or Native.EAGAIN)
                    {
                        continue;
                    }
                    if (errno != Native.ENODEV)
                    {
                        Console.Error.WriteLine($"uringbench: reading /dev/fuse: {Native.Describe(errno)}");
                    }
                    return;
                }
                if (n < sizeof(fuse_in_header))
                {
                    continue;
                }
                fuse_in_header* h = (fuse_in_header*)request;
                var op = (FuseOpcode)h->opcode;
                counts[Math.Min(h->opcode, 63u)]++;
                int argsLength = (int)Math.Min(h->len, (uint)n) - sizeof(fuse_in_header);
                byte* args = request + sizeof(fuse_in_header);
                if (op == FuseOpcode.FUSE_INIT)
                {
                    Init(h, args, argsLength);
                    continue;
                }
                int fixedSize = Math.Min(TrivialFs.FixedArgSize(op), argsLength);
                int r = _fs.Handle(h, args, new ReadOnlySpan<byte>(args + fixedSize, argsLength - fixedSize),
                    reply + sizeof(fuse_out_header), ReplyPayloadSize);
                if (r == TrivialFs.NoReply)
                {
                    continue;
                }
                fuse_out_header* o = (fuse_out_header*)reply;
                o->unique = h->unique;
                o->error = Math.Min(r, 0);
                o->len = (uint)(sizeof(fuse_out_header) + Math.Max(r, 0));
                Write(reply, (int)o->len);
            }
        }
        finally
        {
            NativeMemory.AlignedFree(request);
            NativeMemory.AlignedFree(reply);
        }
    }

    private void Write(byte* buffer, int length)
    {
        Native.IoVec iov = new() { iov_base = buffer, iov_len = (nuint)length };
        if (Native.writev(_fd, &iov, 1) < 0)
        {
            int errno = Native.Errno;
            if (errno != Native.ENOENT) // ENOENT: the request was interrupted meanwhile
            {
                Console.Error.WriteLine($"uringbench: writing a reply to /dev/fuse: {Native.Describe(errno)}");
            }
        }
    }

    private void Init(fuse_in_header* h, byte* args, int length)
    {
        fuse_init_in init = default;
        Buffer.MemoryCopy(args, &init, sizeof(fuse_init_in), Math.Min(length, sizeof(fuse_init_in)));
        byte* buffer = stackalloc byte[sizeof(fuse_out_header) + sizeof(fuse_init_out)];
        new Span<byte>(buffer, sizeof(fuse_out_header) + sizeof(fuse_init_out)).Clear();
        fuse_out_header* o = (fuse_out_header*)buffer;
        fuse_init_out* out_ = (fuse_init_out*)(buffer + sizeof(fuse_out_header));
        o->unique = h->unique;
        o->len = (uint)(sizeof(fuse_out_header) + sizeof(fuse_init_out));
        out_->major = FUSE_KERNEL_VERSION;
        out_->minor = Math.Min(init.minor, OfferedMinor);
        if (init.major != FUSE_KERNEL_VERSION || init.minor < 31)
        {
            Console.Error.WriteLine($"uringbench: the kernel speaks FUSE {init.major}.{init.minor}; 7.31 or later needed");
            o->error = -71; // EPROTO
            o->len = (uint)sizeof(fuse_out_header);
            Write(buffer, (int)o->len);
            return;
        }
        ulong offered = init.flags | ((init.flags & FUSE_INIT_EXT) != 0 ? (ulong)init.flags2 << 32 : 0);
        ulong want = offered & (FUSE_ASYNC_READ | FUSE_PARALLEL_DIROPS | FUSE_MAX_PAGES | FUSE_BIG_WRITES | FUSE_INIT_EXT);
        if (_wanted == Transport.Uring && CreateRings(offered))
        {
            want |= FUSE_OVER_IO_URING;
            Serving = Transport.Uring;
        }
        out_->flags = (uint)want;
        out_->flags2 = (uint)(want >> 32);
        out_->max_readahead = init.max_readahead;
        out_->max_write = MaxWrite;
        out_->max_pages = MaxPages;
        out_->time_gran = 1;
        Write(buffer, (int)o->len);
        Console.Error.WriteLine($"uringbench: FUSE {init.major}.{out_->minor}, transport {Serving}"
            + (Serving == Transport.Uring
                ? $": {_queues} queues x {_depth} entries, {EntryPayloadSize >> 10} KiB payload + 4 KiB header each ({(long)_queues * _depth * (EntryPayloadSize + 4096) >> 20} MiB), threads {(_pin ? "pinned to their CPU" : "not pinned")}"
                : $": {_queues} reader threads"));
        if (Serving == Transport.Uring)
        {
            // The INIT reply has been processed when writev returns (the kernel handles it in the write), so the
            // queues may register now.
            using var registered = new CountdownEvent(_queues);
            for (int q = 0; q < _queues; q++)
            {
                int qid = q;
                Start(() => QueueWorker(qid, registered), $"ring-{qid}");
            }
            registered.Wait();
        }
        else
        {
            for (int i = 1; i < _queues; i++)
            {
                Start(() => ClassicWorker(), $"classic-{i}");
            }
        }
        Ready?.Invoke();
    }

    private bool CreateRings(ulong offered)
    {
        if ((offered & FUSE_OVER_IO_URING) == 0)
        {
            string parameter = "/sys/module/fuse/parameters/enable_uring";
            string why = !File.Exists(parameter)
                ? "this kernel has no FUSE over io_uring (Linux 6.14+ built with CONFIG_FUSE_IO_URING)"
                : File.ReadAllText(parameter).Trim() == "Y"
                    ? "although enable_uring is Y (the connection may predate the change)"
                    : $"the fuse module's enable_uring is N (as root: echo Y > {parameter})";
            Console.Error.WriteLine($"uringbench: the kernel did not offer FUSE_OVER_IO_URING: {why}; serving over read/writev");
            return false;
        }
        var rings = new Ring[_queues];
        for (int q = 0; q < _queues; q++)
        {
            Ring? ring = Ring.TryCreate((uint)_depth, out int errno);
            if (ring is null)
            {
                for (int i = 0; i < q; i++)
                {
                    rings[i].Dispose();
                }
                Console.Error.WriteLine($"uringbench: io_uring_setup failed ({Native.Describe(errno)}"
                    + (errno == 1 ? "; see /proc/sys/kernel/io_uring_disabled" : "") + "); serving over read/writev");
                return false;
            }
            ring.RegisterFile(_fd);
            rings[q] = ring;
        }
        _rings = rings;
        return true;
    }

    // ------------------------------------------------------------------ io_uring: one ring and thread per queue

    private void QueueWorker(int qid, CountdownEvent registered)
    {
        long[] counts = NewCounts(ring: true);
        Ring ring = _rings![qid];
        if (_pin)
        {
            ulong mask = 1UL << qid;
            if (Native.sched_setaffinity(0, sizeof(ulong), &mask) != 0)
            {
                Console.Error.WriteLine($"uringbench: pinning queue {qid}: {Native.Describe(Native.Errno)}");
            }
        }
        // Per entry: a header page (fuse_uring_req_header is 288 bytes) and a payload buffer, both page-aligned and
        // owned by this thread; the kernel keeps their addresses from REGISTER on and copies into them at each request.
        var headers = new fuse_uring_req_header*[_depth];
        var payloads = new byte*[_depth];
        var lastCommand = new uint[_depth];
        Native.IoVec* iovs = (Native.IoVec*)NativeMemory.AlignedAlloc((nuint)(2 * _depth * sizeof(Native.IoVec)), 64);
        for (int i = 0; i < _depth; i++)
        {
            headers[i] = (fuse_uring_req_header*)NativeMemory.AlignedAlloc(4096, 4096);
            payloads[i] = (byte*)NativeMemory.AlignedAlloc(EntryPayloadSize, 4096);
            new Span<byte>(headers[i], 4096).Clear();
            iovs[2 * i] = new Native.IoVec { iov_base = headers[i], iov_len = (nuint)sizeof(fuse_uring_req_header) };
            iovs[2 * i + 1] = new Native.IoVec { iov_base = payloads[i], iov_len = EntryPayloadSize };
            Register(ring, qid, i, iovs);
            lastCommand[i] = FUSE_IO_URING_CMD_REGISTER;
        }
        int live = _depth;
        bool signalled = false;
        try
        {
            while (live > 0)
            {
                if (!ring.SubmitAndWait(signalled ? 1u : 0u))
                {
                    continue;
                }
                if (!signalled)
                {
                    // The REGISTER commands are in the kernel (they complete only when a request comes).
                    signalled = true;
                    registered.Signal();
                }
                while (ring.TryTake(out io_uring_cqe cqe))
                {
                    int i = (int)cqe.user_data;
                    if (cqe.res == 0)
                    {
                        Serve(ring, qid, i, headers[i], payloads[i], counts);
                        lastCommand[i] = FUSE_IO_URING_CMD_COMMIT_AND_FETCH;
                    }
                    else if (cqe.res is -Native.EAGAIN or -Native.EINTR)
                    {
                        if (lastCommand[i] == FUSE_IO_URING_CMD_REGISTER)
                        {
                            Register(ring, qid, i, iovs);
                        }
                        else
                        {
                            Commit(ring, qid, i, headers[i]->ring_ent_in_out.commit_id);
                        }
                    }
                    else
                    {
                        if (cqe.res != -Native.ENOTCONN) // ENOTCONN: the mount went
                        {
                            Interlocked.Increment(ref _ringErrors);
                            Console.Error.WriteLine($"uringbench: queue {qid} entry {i}: {(lastCommand[i] == FUSE_IO_URING_CMD_REGISTER ? "REGISTER" : "COMMIT_AND_FETCH")} failed: {Native.Describe(-cqe.res)}");
                        }
                        live--;
                    }
                }
            }
        }
        finally
        {
            if (!signalled)
            {
                registered.Signal();
            }
        }
    }

    private static void Prepare(io_uring_sqe* sqe, int qid, int entry, uint command, ulong commitId)
    {
        sqe->opcode = IORING_OP_URING_CMD;
        sqe->flags = IOSQE_FIXED_FILE;
        sqe->fd = 0; // index of /dev/fuse in the ring's registered files
        sqe->cmd_op = command;
        sqe->user_data = (ulong)entry;
        fuse_uring_cmd_req* cmd = (fuse_uring_cmd_req*)sqe->cmd;
        cmd->qid = (ushort)qid;
        cmd->commit_id = commitId;
    }

    private static void Register(Ring ring, int qid, int entry, Native.IoVec* iovs)
    {
        io_uring_sqe* sqe = ring.NextSqe();
        Prepare(sqe, qid, entry, FUSE_IO_URING_CMD_REGISTER, 0);
        sqe->addr = (ulong)(iovs + 2 * entry);
        sqe->len = 2; // header and payload
    }

    private static void Commit(Ring ring, int qid, int entry, ulong commitId) =>
        Prepare(ring.NextSqe(), qid, entry, FUSE_IO_URING_CMD_COMMIT_AND_FETCH, commitId);

    /// <summary>Answers the request an entry holds and queues its COMMIT_AND_FETCH (submitted by the next wait).</summary>
    private void Serve(Ring ring, int qid, int entry, fuse_uring_req_header* header, byte* payload, long[] counts)
    {
        fuse_in_header* h = (fuse_in_header*)header->in_out;
        ulong commitId = header->ring_ent_in_out.commit_id;
        ulong unique = h->unique;
        int payloadLength = (int)Math.Min(header->ring_ent_in_out.payload_sz, (uint)EntryPayloadSize);
        counts[Math.Min(h->opcode, 63u)]++;
        int r = _fs.Handle(h, header->op_in, new ReadOnlySpan<byte>(payload, payloadLength), payload, EntryPayloadSize);
        if (r == TrivialFs.NoReply)
        {
            r = 0; // not sent over the ring (FORGET and INTERRUPT come through read), but an entry must be committed
        }
        fuse_out_header* o = (fuse_out_header*)header->in_out; // overwrites the request's header, read above
        o->unique = unique;
        o->error = Math.Min(r, 0);
        o->len = (uint)(sizeof(fuse_out_header) + Math.Max(r, 0));
        header->ring_ent_in_out.payload_sz = (uint)Math.Max(r, 0);
        Commit(ring, qid, entry, commitId);
    }
}
