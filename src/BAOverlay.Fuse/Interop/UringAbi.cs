using System.Runtime.InteropServices;

namespace BAOverlay.Fuse.Interop;

// The kernel ABI of io_uring (include/uapi/linux/io_uring.h) and of FUSE over io_uring (include/uapi/linux/fuse.h,
// protocol 7.42, Linux 6.14), with the headers' names. A test (tests/BAOverlay.Tests/Fuse/UringLayoutTests.cs)
// compiles offsetof/sizeof of every field and the value of every constant against the installed headers; the FUSE
// ring structs are newer than Debian 12's header, which the test then declares from the 7.42 text.

/// <summary>Constants of linux/io_uring.h, linux/fuse.h (7.42) and the x86_64 system call numbers the ring transport uses.</summary>
internal static class UringAbi
{
    // x86_64 system call numbers (<sys/syscall.h>; the same on every architecture that has io_uring since 5.1)
    public const long __NR_io_uring_setup = 425;
    public const long __NR_io_uring_enter = 426;
    public const long __NR_io_uring_register = 427;

    // io_uring_setup flags (io_uring_params.flags)
    public const uint IORING_SETUP_CQSIZE = 1u << 3;
    public const uint IORING_SETUP_SQE128 = 1u << 10;

    /// <summary>io_uring_params.features: one mmap gives the SQ and CQ rings (5.4+).</summary>
    public const uint IORING_FEAT_SINGLE_MMAP = 1u << 0;

    // mmap offsets of the rings
    public const long IORING_OFF_SQ_RING = 0;
    public const long IORING_OFF_CQ_RING = 0x8000000;
    public const long IORING_OFF_SQES = 0x10000000;

    /// <summary>io_uring_enter flags: wait for min_complete completions.</summary>
    public const uint IORING_ENTER_GETEVENTS = 1u << 0;

    /// <summary>io_uring_register opcode: a table of fixed files (an SQE then names the file by index).</summary>
    public const uint IORING_REGISTER_FILES = 2;

    /// <summary>io_uring_sqe.flags: fd is an index into the registered files.</summary>
    public const byte IOSQE_FIXED_FILE = 1 << 0;

    /// <summary>enum io_uring_op: a command passed to the file's uring_cmd handler (5.19+), here /dev/fuse's.</summary>
    public const byte IORING_OP_URING_CMD = 46;

    /// <summary>enum io_uring_op: wait until a descriptor polls ready (one completion per submission).</summary>
    public const byte IORING_OP_POLL_ADD = 6;

    /// <summary>enum io_uring_op: completes at once (used to wake a thread waiting on the ring).</summary>
    public const byte IORING_OP_NOP = 0;

    /// <summary>fuse_init_in/out flags: the server takes requests through io_uring (7.42; bit 9 of flags2).</summary>
    public const ulong FUSE_OVER_IO_URING = 1UL << 41;

    /// <summary>FUSE_URING_IN_OUT_HEADER_SZ: room for fuse_in_header / fuse_out_header at the start of an entry's header.</summary>
    public const int FUSE_URING_IN_OUT_HEADER_SZ = 128;

    /// <summary>FUSE_URING_OP_IN_OUT_SZ: room for the request's fixed per-opcode struct (its first in-argument).</summary>
    public const int FUSE_URING_OP_IN_OUT_SZ = 128;

    // enum fuse_uring_cmd: io_uring_sqe.cmd_op of an IORING_OP_URING_CMD on /dev/fuse
    public const uint FUSE_IO_URING_CMD_REGISTER = 1;
    public const uint FUSE_IO_URING_CMD_COMMIT_AND_FETCH = 2;
}

/// <summary>struct io_sqring_offsets: where the submission ring's fields are in its mapping.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct io_sqring_offsets
{
    public uint head;
    public uint tail;
    public uint ring_mask;
    public uint ring_entries;
    public uint flags;
    public uint dropped;
    public uint array;
    public uint resv1;
    public ulong user_addr; // resv2 before 6.5
}

/// <summary>struct io_cqring_offsets: where the completion ring's fields are in its mapping.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct io_cqring_offsets
{
    public uint head;
    public uint tail;
    public uint ring_mask;
    public uint ring_entries;
    public uint overflow;
    public uint cqes;
    public uint flags;
    public uint resv1;
    public ulong user_addr; // resv2 before 6.5
}

/// <summary>struct io_uring_params: the argument and answer of io_uring_setup.</summary>
[StructLayout(LayoutKind.Sequential)]
internal unsafe struct io_uring_params
{
    public uint sq_entries;
    public uint cq_entries;
    public uint flags;
    public uint sq_thread_cpu;
    public uint sq_thread_idle;
    public uint features;
    public uint wq_fd;
    public fixed uint resv[3];
    public io_sqring_offsets sq_off;
    public io_cqring_offsets cq_off;
}

/// <summary>struct io_uring_sqe: a submission entry (64 bytes; 128 with IORING_SETUP_SQE128, whose extra 64 bytes
/// continue <see cref="cmd"/> to 80 bytes of command data).</summary>
[StructLayout(LayoutKind.Explicit, Size = 64)]
internal unsafe struct io_uring_sqe
{
    [FieldOffset(0)] public byte opcode;
    [FieldOffset(1)] public byte flags;
    [FieldOffset(2)] public ushort ioprio;
    [FieldOffset(4)] public int fd;
    [FieldOffset(8)] public ulong off;
    [FieldOffset(8)] public uint cmd_op;
    [FieldOffset(12)] public uint __pad1;
    [FieldOffset(16)] public ulong addr;
    [FieldOffset(24)] public uint len;
    [FieldOffset(28)] public uint uring_cmd_flags;
    [FieldOffset(28)] public uint poll32_events;
    [FieldOffset(32)] public ulong user_data;
    [FieldOffset(40)] public ushort buf_index;
    [FieldOffset(42)] public ushort personality;
    [FieldOffset(44)] public uint file_index;
    [FieldOffset(48)] public ulong addr3;
    [FieldOffset(48)] public fixed byte cmd[16];
}

/// <summary>struct io_uring_cqe: a completion entry (16 bytes without IORING_SETUP_CQE32).</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct io_uring_cqe
{
    public ulong user_data;
    public int res;
    public uint flags;
}

/// <summary>struct fuse_uring_ent_in_out (7.42): the last part of an entry's header, written by the kernel when it
/// hands a request over and by the server when it commits the reply.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct fuse_uring_ent_in_out
{
    public ulong flags;

    /// <summary>The request's unique, to echo in <see cref="fuse_uring_cmd_req.commit_id"/>.</summary>
    public ulong commit_id;

    /// <summary>Bytes used in the payload buffer: the request's arguments after the first, or the reply's.</summary>
    public uint payload_sz;
    public uint padding;
    public ulong reserved;
}

/// <summary>struct fuse_uring_req_header (7.42): the first buffer of a ring entry (iov[0] of its REGISTER).</summary>
[StructLayout(LayoutKind.Sequential)]
internal unsafe struct fuse_uring_req_header
{
    /// <summary>fuse_in_header of a request; the server writes fuse_out_header here to reply.</summary>
    public fixed byte in_out[UringAbi.FUSE_URING_IN_OUT_HEADER_SZ];

    /// <summary>The request's first in-argument, its fixed per-opcode struct (fuse_read_in, fuse_getattr_in...).</summary>
    public fixed byte op_in[UringAbi.FUSE_URING_OP_IN_OUT_SZ];

    public fuse_uring_ent_in_out ring_ent_in_out;
}

/// <summary>struct fuse_uring_cmd_req (7.42): what a FUSE ring command carries in the SQE's command area.</summary>
[StructLayout(LayoutKind.Sequential)]
internal unsafe struct fuse_uring_cmd_req
{
    public ulong flags;

    /// <summary>COMMIT_AND_FETCH: the commit_id of the request answered; 0 for REGISTER.</summary>
    public ulong commit_id;

    /// <summary>The queue (CPU number) the entry belongs to.</summary>
    public ushort qid;
    public fixed byte padding[6];
}
