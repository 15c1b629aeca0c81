using System.Runtime.InteropServices;
using BAOverlay.Fuse.Interop;
using static BAOverlay.Fuse.Interop.FuseKernel;
using static BAOverlay.Fuse.Interop.UringAbi;

namespace BAOverlay.Fuse;

/// <summary>
/// One queue of FUSE over io_uring (protocol 7.42): an io_uring with 128-byte submission entries, the queue's ring
/// entries (a header and a payload buffer each, registered once with <c>FUSE_IO_URING_CMD_REGISTER</c>), and the
/// thread that owns them. The kernel makes one queue per possible CPU and puts a request on the queue of the CPU
/// that issued it; each answer is a <c>COMMIT_AND_FETCH</c> that hands the reply back and waits for the next request
/// in one submission.
/// </summary>
/// <remarks>
/// <para>Only the owner thread touches the submission ring: the kernel delivers the next request into an entry as task
/// work of the task that submitted the entry's last command, so that task must be the one waiting on the ring. A
/// request the owner hands to a worker (<see cref="FuseChannel"/> decides which) comes back through
/// <see cref="Answered"/>: the worker queues the entry and writes an eventfd the ring polls, and the owner commits it.</para>
/// <para>The owner takes the completions one at a time and serves each request itself unless it is of a kind that may
/// take long (those go to workers). When the owner has served one request for longer than 200 µs, a standby thread
/// takes every completion still in the ring or arriving meanwhile (the kernel still copies a request in, as task work
/// the owner runs between two instructions or system calls) and hands its request to a worker: a request the owner
/// serves holds back the ones after it by about a millisecond at most. Completions that are not requests the standby
/// leaves to the owner.</para>
/// <para>Memory order: the kernel reads the SQ tail and writes the CQ tail concurrently, so the SQ tail is published
/// with a release store after the entries are written, and the CQ tail is read with an acquire load before the
/// entries are; the CQ head is released after an entry has been consumed.</para>
/// <para>The buffers are not pinned by the kernel: it keeps their addresses and copies into them at each request, so
/// they are freed only after the ring's descriptor is closed (<see cref="Dispose"/>, once the owner thread ended).</para>
/// </remarks>
internal sealed unsafe class FuseRingQueue : IDisposable
{
    private const int SqeSize = 128;
    private const int HeaderStride = 512; // fuse_uring_req_header is 288 bytes
    private const ulong WakeTag = ulong.MaxValue;

    private readonly FuseChannel _channel;
    private readonly FuseSession _session;
    private readonly int _ringFd;
    private readonly int _eventFd;
    private readonly byte* _ringMap;
    private readonly nuint _ringMapSize;
    private readonly byte* _cqMap;
    private readonly nuint _cqMapSize;
    private readonly byte* _sqes;
    private readonly nuint _sqesSize;
    private readonly uint* _sqHead;
    private readonly uint* _sqTail;
    private readonly uint _sqMask;
    private readonly uint* _sqArray;
    private readonly uint* _cqHead;
    private readonly uint* _cqTail;
    private readonly uint _cqMask;
    private readonly io_uring_cqe* _cqes;
    private readonly byte* _headers;
    private readonly IoVec* _iovs;
    private readonly FuseRingEntry[] _entries;
    private readonly Queue<FuseRingEntry> _answered;
    private readonly object _cqGate = new();
    private readonly List<io_uring_cqe> _deferred = [];
    private readonly SemaphoreSlim _standbyWake = new(0);
    private bool _ownerServing; // written under _cqGate
    private long _servingSince; // Stopwatch timestamp of the request the owner serves
    private int _standbyParked = 1;
    private volatile bool _stopping;

    /// <summary>How long the owner may serve a request before the standby takes what arrives meanwhile.</summary>
    private static readonly long s_standbyAfter = System.Diagnostics.Stopwatch.Frequency / 5000; // 200 µs
    private uint _sqTailLocal;
    private uint _toSubmit;
    private bool _disposed;

    /// <summary>The queue's number (the CPU whose requests it takes).</summary>
    public int Qid { get; }

    private FuseRingQueue(FuseChannel channel, FuseSession session, int qid, int ringFd, int eventFd, in io_uring_params p, int depth, int payloadSize)
    {
        _channel = channel;
        _session = session;
        Qid = qid;
        _ringFd = ringFd;
        _eventFd = eventFd;
        nuint sqSize = p.sq_off.array + p.sq_entries * sizeof(uint);
        nuint cqSize = p.cq_off.cqes + p.cq_entries * (uint)sizeof(io_uring_cqe);
        bool single = (p.features & IORING_FEAT_SINGLE_MMAP) != 0;
        _ringMapSize = single ? Math.Max(sqSize, cqSize) : sqSize;
        _ringMap = Map(_ringMapSize, IORING_OFF_SQ_RING);
        if (single)
        {
            _cqMap = _ringMap;
        }
        else
        {
            _cqMapSize = cqSize;
            _cqMap = Map(cqSize, IORING_OFF_CQ_RING);
        }
        _sqesSize = p.sq_entries * (nuint)SqeSize;
        _sqes = Map(_sqesSize, IORING_OFF_SQES);
        _sqHead = (uint*)(_ringMap + p.sq_off.head);
        _sqTail = (uint*)(_ringMap + p.sq_off.tail);
        _sqMask = *(uint*)(_ringMap + p.sq_off.ring_mask);
        _sqArray = (uint*)(_ringMap + p.sq_off.array);
        _cqHead = (uint*)(_cqMap + p.cq_off.head);
        _cqTail = (uint*)(_cqMap + p.cq_off.tail);
        _cqMask = *(uint*)(_cqMap + p.cq_off.ring_mask);
        _cqes = (io_uring_cqe*)(_cqMap + p.cq_off.cqes);
        _sqTailLocal = *_sqTail;

        _headers = (byte*)NativeMemory.AlignedAlloc((nuint)(depth * HeaderStride), 4096);
        new Span<byte>(_headers, depth * HeaderStride).Clear();
        _iovs = (IoVec*)NativeMemory.AlignedAlloc((nuint)(2 * depth * sizeof(IoVec)), 64);
        _entries = new FuseRingEntry[depth];
        _answered = new Queue<FuseRingEntry>(depth);
        for (int i = 0; i < depth; i++)
        {
            var header = (fuse_uring_req_header*)(_headers + i * HeaderStride);
            var entry = new FuseRingEntry(this, i, header, payloadSize);
            _entries[i] = entry;
            _iovs[2 * i] = new IoVec { iov_base = header, iov_len = (nuint)sizeof(fuse_uring_req_header) };
            _iovs[2 * i + 1] = new IoVec { iov_base = entry.Payload, iov_len = (nuint)payloadSize };
        }
    }

    /// <summary>Makes queue <paramref name="qid"/>'s io_uring (<paramref name="depth"/> entries of
    /// <paramref name="payloadSize"/> bytes) with <paramref name="fuseFd"/> as its fixed file 0; null with the reason
    /// when the system refuses (no io_uring, <c>/proc/sys/kernel/io_uring_disabled</c>, a seccomp profile, no memory).</summary>
    public static FuseRingQueue? TryCreate(FuseChannel channel, FuseSession session, int qid, int depth, int payloadSize, int fuseFd, out string? failure)
    {
        io_uring_params p = default;
        p.flags = IORING_SETUP_SQE128 | IORING_SETUP_CQSIZE;
        uint entries = (uint)(depth + 2); // each entry's command and the eventfd poll
        p.cq_entries = entries * 2;
        int ringFd = LibC.io_uring_setup(entries, &p);
        if (ringFd < 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            failure = $"io_uring_setup: {Marshal.GetPInvokeErrorMessage(errno)}"
                + (errno == LibC.EPERM ? " (see /proc/sys/kernel/io_uring_disabled, or the container's seccomp profile)" : "");
            return null;
        }
        int one = fuseFd;
        if (LibC.io_uring_register(ringFd, IORING_REGISTER_FILES, &one, 1) < 0)
        {
            failure = $"io_uring_register(FILES): {Marshal.GetPInvokeErrorMessage(Marshal.GetLastPInvokeError())}";
            LibC.close(ringFd);
            return null;
        }
        int eventFd = LibC.eventfd(0, LibC.EFD_CLOEXEC);
        if (eventFd < 0)
        {
            failure = $"eventfd: {Marshal.GetPInvokeErrorMessage(Marshal.GetLastPInvokeError())}";
            LibC.close(ringFd);
            return null;
        }
        try
        {
            failure = null;
            return new FuseRingQueue(channel, session, qid, ringFd, eventFd, p, depth, payloadSize);
        }
        catch (IOException e)
        {
            failure = e.Message;
            LibC.close(eventFd);
            LibC.close(ringFd);
            return null;
        }
    }

    private byte* Map(nuint size, long offset)
    {
        void* m = LibC.mmap(null, size, LibC.PROT_READ | LibC.PROT_WRITE, LibC.MAP_SHARED | LibC.MAP_POPULATE, _ringFd, offset);
        if (m == (void*)-1)
        {
            throw new IOException($"mmap of io_uring offset 0x{offset:x}: {Marshal.GetPInvokeErrorMessage(Marshal.GetLastPInvokeError())}");
        }
        return (byte*)m;
    }

    // ------------------------------------------------------------------ the owner thread

    /// <summary>The owner thread's loop: registers every entry, then serves requests until the kernel ends every
    /// entry's command (ENOTCONN at unmount). Never throws.</summary>
    public void Run()
    {
        var standby = new Thread(Standby) { IsBackground = true, Name = $"fuse-ring-{Qid}-standby" };
        standby.Start();
        try
        {
            foreach (FuseRingEntry e in _entries)
            {
                Register(e);
            }
            ArmWake();
            int live = _entries.Length;
            while (live > 0)
            {
                if (!SubmitAndWait())
                {
                    continue;
                }
                // One completion at a time: those not taken yet stay in the ring, where the standby takes them if the
                // owner serves one request for long.
                while (live > 0)
                {
                    io_uring_cqe cqe;
                    lock (_cqGate)
                    {
                        if (!TryTake(out cqe))
                        {
                            break;
                        }
                    }
                    Handle(cqe, mayServe: true, ref live);
                }
                HandleDeferred(ref live);
                CommitAnswered();
            }
        }
        catch (Exception e)
        {
            _session.LogLine($"io_uring queue {Qid} stopped: {e.GetType().Name}: {e.Message}");
        }
        finally
        {
            StopStandby(standby);
        }
    }

    private void Handle(in io_uring_cqe cqe, bool mayServe, ref int live)
    {
        if (cqe.user_data == WakeTag)
        {
            ulong value;
            LibC.read(_eventFd, (byte*)&value, sizeof(ulong));
            ArmWake();
            return;
        }
        if (cqe.user_data >= (ulong)_entries.Length)
        {
            return; // the NOP that wakes the standby
        }
        FuseRingEntry entry = _entries[(int)cqe.user_data];
        if (cqe.res == 0)
        {
            // A request is in the entry: served here when it is of a quick kind and the batch has been quick so far,
            // else by a worker.
            entry.TakeRequest();
            if (mayServe && _channel.MayServeInline(entry))
            {
                ServeInline(entry);
                Commit(entry);
            }
            else
            {
                _channel.HandOff(entry);
            }
        }
        else if (cqe.res is -LibC.EAGAIN or -LibC.EINTR)
        {
            Resubmit(entry); // REGISTER before the kernel had processed the INIT reply, or a signal
        }
        else if (cqe.res == -LibC.ENOENT && entry.LastCommand == FUSE_IO_URING_CMD_COMMIT_AND_FETCH)
        {
            // The kernel no longer waited for that reply (the request was ended meanwhile): the entry is out of the
            // kernel's queue, so it is registered again.
            _session.LogLine($"io_uring queue {Qid}: reply to request {entry.CommitId} not taken (the request had ended)");
            Register(entry);
        }
        else
        {
            if (cqe.res is not (-LibC.ENOTCONN or -LibC.ECANCELED or -LibC.ENODEV))
            {
                _session.LogLine($"io_uring queue {Qid}: {(entry.LastCommand == FUSE_IO_URING_CMD_REGISTER ? "REGISTER" : "COMMIT_AND_FETCH")}: {Marshal.GetPInvokeErrorMessage(-cqe.res)}");
            }
            live--; // the connection is gone (unmounted or aborted)
        }
    }

    /// <summary>Serves a request on the owner thread, with the standby taking what arrives meanwhile.</summary>
    private void ServeInline(FuseRingEntry entry)
    {
        Volatile.Write(ref _servingSince, System.Diagnostics.Stopwatch.GetTimestamp());
        lock (_cqGate)
        {
            _ownerServing = true;
        }
        if (Interlocked.Exchange(ref _standbyParked, 0) == 1)
        {
            _standbyWake.Release(); // once per busy period: the standby then watches by itself until the mount is quiet
        }
        try
        {
            _channel.ServeRing(entry);
        }
        finally
        {
            lock (_cqGate)
            {
                _ownerServing = false;
            }
        }
    }

    /// <summary>Completions the standby took while the owner served, other than requests (handed off already).</summary>
    private void HandleDeferred(ref int live)
    {
        while (true)
        {
            io_uring_cqe cqe;
            lock (_cqGate)
            {
                if (_deferred.Count == 0)
                {
                    return;
                }
                cqe = _deferred[0];
                _deferred.RemoveAt(0);
            }
            Handle(cqe, mayServe: false, ref live);
        }
    }

    /// <summary>
    /// The standby: when the owner has served one request for longer than 200 µs, waits on the ring and hands every
    /// request that arrives meanwhile to a worker; leaves every other completion to the owner, and touches no
    /// submission entry. It looks every millisecond while requests come and parks when none came for 100 ms, so a
    /// quiet mount costs nothing and a busy one no wake-up per request.
    /// </summary>
    private void Standby()
    {
        try
        {
            while (true)
            {
                _standbyWake.Wait();
                int quiet = 0;
                while (!_stopping)
                {
                    bool serving;
                    lock (_cqGate)
                    {
                        serving = _ownerServing;
                    }
                    if (serving && System.Diagnostics.Stopwatch.GetTimestamp() - Volatile.Read(ref _servingSince) > s_standbyAfter)
                    {
                        quiet = 0;
                        TakeWhileOwnerServes();
                        continue;
                    }
                    quiet = serving ? 0 : quiet + 1;
                    if (quiet > 100)
                    {
                        Interlocked.Exchange(ref _standbyParked, 1);
                        lock (_cqGate)
                        {
                            serving = _ownerServing;
                        }
                        if (!serving || Interlocked.Exchange(ref _standbyParked, 0) == 0)
                        {
                            break; // parked; the owner wakes it at its next request served on its own thread
                        }
                        quiet = 0;
                    }
                    Thread.Sleep(1);
                }
                if (_stopping)
                {
                    return;
                }
            }
        }
        catch (Exception e)
        {
            _session.LogLine($"io_uring queue {Qid} standby stopped: {e.GetType().Name}: {e.Message}");
        }
    }

    /// <summary>While the owner serves a request, takes every completion: requests to workers, the rest left to the owner.</summary>
    private void TakeWhileOwnerServes()
    {
        while (!_stopping)
        {
            lock (_cqGate)
            {
                if (!_ownerServing)
                {
                    return;
                }
                while (TryTake(out io_uring_cqe cqe))
                {
                    if (cqe.res == 0 && cqe.user_data < (ulong)_entries.Length)
                    {
                        FuseRingEntry entry = _entries[(int)cqe.user_data];
                        entry.TakeRequest();
                        _channel.HandOff(entry);
                    }
                    else
                    {
                        _deferred.Add(cqe);
                    }
                }
            }
            // Wait for the next completion (or the owner's wake-up NOP at the end): no submission from here.
            LibC.io_uring_enter(_ringFd, 0, 1, IORING_ENTER_GETEVENTS);
        }
    }

    /// <summary>Ends the standby: a NOP wakes it if it waits on the ring (else it would hold the ring open).</summary>
    private void StopStandby(Thread standby)
    {
        _stopping = true;
        _standbyWake.Release();
        try
        {
            io_uring_sqe* sqe = NextSqe();
            sqe->opcode = IORING_OP_NOP;
            sqe->user_data = WakeTag - 1;
            Volatile.Write(ref *_sqTail, _sqTailLocal);
            LibC.io_uring_enter(_ringFd, _toSubmit, 0, 0);
        }
        catch (InvalidOperationException)
        {
            // The submission ring is full (cannot happen after the loop): the standby wakes at the ring's close.
        }
        standby.Join();
    }

    /// <summary>True when more completions are already there (other requests wait behind the one taken).</summary>
    private bool CompletionsWaiting() => *_cqHead != Volatile.Read(ref *_cqTail);

    /// <summary>A worker answered <paramref name="entry"/>: the owner thread commits it at its next wake-up.</summary>
    internal void Answered(FuseRingEntry entry)
    {
        lock (_answered)
        {
            _answered.Enqueue(entry);
        }
        ulong one = 1;
        LibC.write(_eventFd, &one, sizeof(ulong));
    }

    private void CommitAnswered()
    {
        while (true)
        {
            FuseRingEntry? entry;
            lock (_answered)
            {
                if (!_answered.TryDequeue(out entry))
                {
                    return;
                }
            }
            Commit(entry);
        }
    }

    private io_uring_sqe* Prepare(FuseRingEntry entry, uint command, ulong commitId)
    {
        io_uring_sqe* sqe = NextSqe();
        sqe->opcode = IORING_OP_URING_CMD;
        sqe->flags = IOSQE_FIXED_FILE;
        sqe->fd = 0; // index of /dev/fuse in the ring's registered files
        sqe->cmd_op = command;
        sqe->user_data = (ulong)entry.Index;
        fuse_uring_cmd_req* cmd = (fuse_uring_cmd_req*)sqe->cmd;
        cmd->qid = (ushort)Qid;
        cmd->commit_id = commitId;
        entry.LastCommand = command;
        return sqe;
    }

    private void Register(FuseRingEntry entry)
    {
        io_uring_sqe* sqe = Prepare(entry, FUSE_IO_URING_CMD_REGISTER, 0);
        sqe->addr = (ulong)(_iovs + 2 * entry.Index);
        sqe->len = 2; // header and payload
    }

    private void Commit(FuseRingEntry entry)
    {
        entry.BeforeCommit();
        Prepare(entry, FUSE_IO_URING_CMD_COMMIT_AND_FETCH, entry.CommitId);
    }

    private void Resubmit(FuseRingEntry entry)
    {
        if (entry.LastCommand == FUSE_IO_URING_CMD_REGISTER)
        {
            Register(entry);
        }
        else
        {
            Prepare(entry, FUSE_IO_URING_CMD_COMMIT_AND_FETCH, entry.CommitId);
        }
    }

    /// <summary>Polls the eventfd workers write when they have answered a request.</summary>
    private void ArmWake()
    {
        io_uring_sqe* sqe = NextSqe();
        sqe->opcode = IORING_OP_POLL_ADD;
        sqe->fd = _eventFd;
        sqe->poll32_events = (uint)LibC.POLLIN;
        sqe->user_data = WakeTag;
    }

    private io_uring_sqe* NextSqe()
    {
        if (_sqTailLocal - Volatile.Read(ref *_sqHead) > _sqMask)
        {
            throw new InvalidOperationException("io_uring submission ring full"); // cannot happen: one command per entry, one poll
        }
        uint index = _sqTailLocal & _sqMask;
        byte* sqe = _sqes + (nuint)index * SqeSize;
        new Span<byte>(sqe, SqeSize).Clear();
        _sqArray[index] = index;
        _sqTailLocal++;
        _toSubmit++;
        return (io_uring_sqe*)sqe;
    }

    /// <summary>Submits what was prepared and waits for a completion; false on EINTR (or a full completion ring, EBUSY:
    /// the completions there are taken first).</summary>
    private bool SubmitAndWait()
    {
        Volatile.Write(ref *_sqTail, _sqTailLocal);
        int n = LibC.io_uring_enter(_ringFd, _toSubmit, 1, IORING_ENTER_GETEVENTS);
        if (n < 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            if (errno is LibC.EINTR or LibC.EAGAIN)
            {
                return false;
            }
            if (errno == 16 && CompletionsWaiting()) // EBUSY
            {
                return true;
            }
            throw new IOException($"io_uring_enter: {Marshal.GetPInvokeErrorMessage(errno)}");
        }
        _toSubmit -= (uint)n;
        return true;
    }

    private bool TryTake(out io_uring_cqe cqe)
    {
        uint head = *_cqHead;
        if (head == Volatile.Read(ref *_cqTail))
        {
            cqe = default;
            return false;
        }
        cqe = _cqes[head & _cqMask];
        Volatile.Write(ref *_cqHead, head + 1);
        return true;
    }

    /// <summary>Closes the ring (which cancels what is left in it) and then frees the buffers; only once the owner
    /// thread has ended.</summary>
    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }
        _disposed = true;
        LibC.munmap(_sqes, _sqesSize);
        if (_cqMap != _ringMap)
        {
            LibC.munmap(_cqMap, _cqMapSize);
        }
        LibC.munmap(_ringMap, _ringMapSize);
        LibC.close(_ringFd);
        LibC.close(_eventFd);
        foreach (FuseRingEntry e in _entries)
        {
            e.Free();
        }
        NativeMemory.AlignedFree(_iovs);
        NativeMemory.AlignedFree(_headers);
    }
}

/// <summary>
/// One ring entry: its header (<c>struct fuse_uring_req_header</c>: the request's <c>fuse_in_header</c> and the
/// reply's <c>fuse_out_header</c> in <c>in_out</c>, the opcode's first argument in <c>op_in</c>, the payload size in
/// <c>ring_ent_in_out</c>) and its payload buffer (the request's other arguments, then the reply's payload). Owned by
/// one thread at a time: the queue's owner, or the worker it handed the request to.
/// </summary>
internal sealed unsafe class FuseRingEntry
{
    private readonly fuse_in_header* _in;

    public FuseRingEntry(FuseRingQueue queue, int index, fuse_uring_req_header* header, int payloadSize)
    {
        Queue = queue;
        Index = index;
        Header = header;
        PayloadSize = payloadSize;
        Payload = (byte*)NativeMemory.AlignedAlloc((nuint)payloadSize, 4096);
        _in = (fuse_in_header*)NativeMemory.AlignedAlloc((nuint)sizeof(fuse_in_header), 64);
    }

    public FuseRingQueue Queue { get; }

    public int Index { get; }

    public fuse_uring_req_header* Header { get; }

    public byte* Payload { get; }

    public int PayloadSize { get; }

    /// <summary>The request's header, copied out of <c>in_out</c> (which the reply overwrites).</summary>
    public fuse_in_header* In => _in;

    /// <summary>The request's unique as the kernel gave it for the commit.</summary>
    public ulong CommitId { get; private set; }

    /// <summary>The last command submitted for this entry (REGISTER or COMMIT_AND_FETCH).</summary>
    public uint LastCommand { get; set; }

    /// <summary>The reply has been written into the entry.</summary>
    public bool Replied { get; private set; }

    /// <summary>Takes the request the kernel put in the entry.</summary>
    public void TakeRequest()
    {
        *_in = *(fuse_in_header*)Header->in_out;
        CommitId = Header->ring_ent_in_out.commit_id;
        Replied = false;
    }

    /// <summary>The request's arguments after the first, in the payload buffer.</summary>
    public ReadOnlySpan<byte> Rest => new(Payload, (int)Math.Min(Header->ring_ent_in_out.payload_sz, (uint)PayloadSize));

    /// <summary>Writes a reply into the entry: the header into <c>in_out</c>, the payload into the payload buffer
    /// (no copy when the handler filled it in place), its size into <c>ring_ent_in_out</c>.</summary>
    public void Reply(ulong unique, int error, void* payload, int length)
    {
        if (length > PayloadSize || length < 0)
        {
            (error, length) = (LibC.EIO, 0);
        }
        if (length > 0 && payload != Payload)
        {
            Buffer.MemoryCopy(payload, Payload, PayloadSize, length);
        }
        fuse_out_header* o = (fuse_out_header*)Header->in_out;
        o->len = (uint)(sizeof(fuse_out_header) + length);
        o->error = -error;
        o->unique = unique;
        Header->ring_ent_in_out.payload_sz = (uint)length;
        Replied = true;
    }

    /// <summary>A request that got no reply (none should) is answered EIO: an entry must be committed to be used again.</summary>
    public void BeforeCommit()
    {
        if (!Replied)
        {
            Reply(CommitId, LibC.EIO, null, 0);
        }
    }

    public void Free()
    {
        NativeMemory.AlignedFree(Payload);
        NativeMemory.AlignedFree(_in);
    }
}
