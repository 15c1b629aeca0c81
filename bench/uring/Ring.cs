using BAOverlay.Fuse.Interop;
using BAOverlay.UringBench.Interop;
using static BAOverlay.Fuse.Interop.UringAbi;

namespace BAOverlay.UringBench;

/// <summary>
/// One io_uring with 128-byte submission entries (what /dev/fuse's uring_cmd requires), driven from one thread:
/// io_uring_setup, the rings mapped once, io_uring_enter to submit and wait.
/// </summary>
/// <remarks>
/// Memory order: the kernel reads the SQ tail and writes the CQ tail concurrently, so the SQ tail is published with a
/// release store after the entries are written, and the CQ tail is read with an acquire load before the entries are;
/// the CQ head is released after an entry has been consumed.
/// </remarks>
internal sealed unsafe class Ring : IDisposable
{
    private const int SqeSize = 128;

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
    private uint _sqTailLocal;
    private uint _toSubmit;

    /// <summary>The ring's descriptor.</summary>
    public int Fd { get; }

    /// <summary>Submission entries.</summary>
    public uint Entries { get; }

    private Ring(int fd, in io_uring_params p)
    {
        Fd = fd;
        Entries = p.sq_entries;
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
    }

    private byte* Map(nuint size, long offset)
    {
        void* m = Native.mmap(null, size, Native.PROT_READ | Native.PROT_WRITE, Native.MAP_SHARED | Native.MAP_POPULATE, Fd, offset);
        if (m == (void*)-1)
        {
            throw new IOException($"mmap of io_uring offset 0x{offset:x}: {Native.Describe(Native.Errno)}");
        }
        return (byte*)m;
    }

    /// <summary>Creates a ring of <paramref name="entries"/> 128-byte submission entries and twice as many
    /// completion entries; null with the errno when the kernel refuses (no io_uring, or io_uring_disabled).</summary>
    public static Ring? TryCreate(uint entries, out int errno)
    {
        io_uring_params p = default;
        p.flags = IORING_SETUP_SQE128 | IORING_SETUP_CQSIZE;
        p.cq_entries = entries * 2;
        int fd = Native.io_uring_setup(entries, &p);
        if (fd < 0)
        {
            errno = Native.Errno;
            return null;
        }
        errno = 0;
        return new Ring(fd, p);
    }

    /// <summary>Registers <paramref name="fd"/> as fixed file 0, so an SQE names it by index (no file lookup per
    /// submission).</summary>
    public void RegisterFile(int fd)
    {
        int one = fd;
        if (Native.io_uring_register(Fd, IORING_REGISTER_FILES, &one, 1) < 0)
        {
            throw new IOException($"io_uring_register(FILES): {Native.Describe(Native.Errno)}");
        }
    }

    /// <summary>The next free submission entry, zeroed (all 128 bytes); it is submitted by the next
    /// <see cref="SubmitAndWait"/>. The caller keeps at most <see cref="Entries"/> in flight.</summary>
    public io_uring_sqe* NextSqe()
    {
        uint index = _sqTailLocal & _sqMask;
        if (_sqTailLocal - Volatile.Read(ref *_sqHead) > _sqMask)
        {
            throw new InvalidOperationException("submission ring full");
        }
        byte* sqe = _sqes + (nuint)index * SqeSize;
        new Span<byte>(sqe, SqeSize).Clear();
        _sqArray[index] = index;
        _sqTailLocal++;
        _toSubmit++;
        return (io_uring_sqe*)sqe;
    }

    /// <summary>Submits the entries prepared since the last call and waits until at least
    /// <paramref name="minComplete"/> completions are there; returns false on EINTR.</summary>
    public bool SubmitAndWait(uint minComplete)
    {
        Volatile.Write(ref *_sqTail, _sqTailLocal);
        int n = Native.io_uring_enter(Fd, _toSubmit, minComplete, IORING_ENTER_GETEVENTS);
        if (n < 0)
        {
            int errno = Native.Errno;
            if (errno is Native.EINTR or Native.EAGAIN)
            {
                return false;
            }
            throw new IOException($"io_uring_enter: {Native.Describe(errno)}");
        }
        _toSubmit -= (uint)n;
        return true;
    }

    /// <summary>Takes the oldest completion, if any.</summary>
    public bool TryTake(out io_uring_cqe cqe)
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

    public void Dispose()
    {
        Native.munmap(_sqes, _sqesSize);
        if (_cqMap != _ringMap)
        {
            Native.munmap(_cqMap, _cqMapSize);
        }
        Native.munmap(_ringMap, _ringMapSize);
        Native.close(Fd);
    }
}
