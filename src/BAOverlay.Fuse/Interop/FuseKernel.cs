using System.Runtime.InteropServices;

namespace BAOverlay.Fuse.Interop;

// The FUSE wire protocol as the kernel speaks it on /dev/fuse: include/uapi/linux/fuse.h. Every struct keeps the
// header's name and field names (a test compiles offsetof/sizeof of each against /usr/include/linux/fuse.h), every
// constant its macro's name. Fields newer than the installed header are marked with the protocol minor that added
// them; the kernel only sends or reads them once both sides have agreed on that minor.

/// <summary>enum fuse_opcode.</summary>
internal enum FuseOpcode : uint
{
    FUSE_LOOKUP = 1,
    FUSE_FORGET = 2,
    FUSE_GETATTR = 3,
    FUSE_SETATTR = 4,
    FUSE_READLINK = 5,
    FUSE_SYMLINK = 6,
    FUSE_MKNOD = 8,
    FUSE_MKDIR = 9,
    FUSE_UNLINK = 10,
    FUSE_RMDIR = 11,
    FUSE_RENAME = 12,
    FUSE_LINK = 13,
    FUSE_OPEN = 14,
    FUSE_READ = 15,
    FUSE_WRITE = 16,
    FUSE_STATFS = 17,
    FUSE_RELEASE = 18,
    FUSE_FSYNC = 20,
    FUSE_SETXATTR = 21,
    FUSE_GETXATTR = 22,
    FUSE_LISTXATTR = 23,
    FUSE_REMOVEXATTR = 24,
    FUSE_FLUSH = 25,
    FUSE_INIT = 26,
    FUSE_OPENDIR = 27,
    FUSE_READDIR = 28,
    FUSE_RELEASEDIR = 29,
    FUSE_FSYNCDIR = 30,
    FUSE_GETLK = 31,
    FUSE_SETLK = 32,
    FUSE_SETLKW = 33,
    FUSE_ACCESS = 34,
    FUSE_CREATE = 35,
    FUSE_INTERRUPT = 36,
    FUSE_BMAP = 37,
    FUSE_DESTROY = 38,
    FUSE_IOCTL = 39,
    FUSE_POLL = 40,
    FUSE_NOTIFY_REPLY = 41,
    FUSE_BATCH_FORGET = 42,
    FUSE_FALLOCATE = 43,
    FUSE_READDIRPLUS = 44,
    FUSE_RENAME2 = 45,
    FUSE_LSEEK = 46,
    FUSE_COPY_FILE_RANGE = 47,
    FUSE_SYNCFS = 50,
    FUSE_TMPFILE = 51,
    FUSE_STATX = 52,
}

/// <summary>The protocol version, INIT flags and other constants of linux/fuse.h that the channel uses.</summary>
internal static class FuseKernel
{
    /// <summary>FUSE_KERNEL_VERSION: the major version this channel speaks.</summary>
    public const uint FUSE_KERNEL_VERSION = 7;

    /// <summary>The minor version this channel offers: 7.42 (Linux 6.14: FUSE over io_uring), the newest whose every
    /// message this code handles (7.39's STATX is answered ENOSYS, which the kernel remembers; 7.41 and 7.42 add only
    /// INIT flags, FUSE_ALLOW_IDMAP, not asked for, and FUSE_OVER_IO_URING). The kernel answers with the lower of its
    /// own and this.</summary>
    public const uint FUSE_KERNEL_MINOR_VERSION = 42;

    /// <summary>The first minor with FUSE_PASSTHROUGH, fuse_open_out.backing_id and fuse_init_out.max_stack_depth.</summary>
    public const uint PassthroughMinor = 40;

    /// <summary>The oldest minor this channel accepts: 7.31 (Linux 5.4, max_pages and the 64-byte init reply).</summary>
    public const uint MinimumMinor = 31;

    /// <summary>FUSE_MIN_READ_BUFFER: the smallest buffer a read of /dev/fuse may use.</summary>
    public const int FUSE_MIN_READ_BUFFER = 8192;

    // INIT request/reply flags (fuse_init_in.flags, fuse_init_out.flags; bits 32-63 in flags2 with FUSE_INIT_EXT)
    public const ulong FUSE_ASYNC_READ = 1UL << 0;
    public const ulong FUSE_POSIX_LOCKS = 1UL << 1;
    public const ulong FUSE_ATOMIC_O_TRUNC = 1UL << 3;
    public const ulong FUSE_EXPORT_SUPPORT = 1UL << 4;
    public const ulong FUSE_BIG_WRITES = 1UL << 5;
    public const ulong FUSE_DONT_MASK = 1UL << 6;
    public const ulong FUSE_SPLICE_WRITE = 1UL << 7;
    public const ulong FUSE_SPLICE_MOVE = 1UL << 8;
    public const ulong FUSE_SPLICE_READ = 1UL << 9;
    public const ulong FUSE_FLOCK_LOCKS = 1UL << 10;
    public const ulong FUSE_HAS_IOCTL_DIR = 1UL << 11;
    public const ulong FUSE_AUTO_INVAL_DATA = 1UL << 12;
    public const ulong FUSE_DO_READDIRPLUS = 1UL << 13;
    public const ulong FUSE_READDIRPLUS_AUTO = 1UL << 14;
    public const ulong FUSE_ASYNC_DIO = 1UL << 15;
    public const ulong FUSE_WRITEBACK_CACHE = 1UL << 16;
    public const ulong FUSE_NO_OPEN_SUPPORT = 1UL << 17;
    public const ulong FUSE_PARALLEL_DIROPS = 1UL << 18;
    public const ulong FUSE_HANDLE_KILLPRIV = 1UL << 19;
    public const ulong FUSE_POSIX_ACL = 1UL << 20;
    public const ulong FUSE_ABORT_ERROR = 1UL << 21;
    public const ulong FUSE_MAX_PAGES = 1UL << 22;
    public const ulong FUSE_CACHE_SYMLINKS = 1UL << 23;
    public const ulong FUSE_NO_OPENDIR_SUPPORT = 1UL << 24;
    public const ulong FUSE_EXPLICIT_INVAL_DATA = 1UL << 25;
    public const ulong FUSE_MAP_ALIGNMENT = 1UL << 26;
    public const ulong FUSE_SUBMOUNTS = 1UL << 27;
    public const ulong FUSE_HANDLE_KILLPRIV_V2 = 1UL << 28;
    public const ulong FUSE_SETXATTR_EXT = 1UL << 29;
    public const ulong FUSE_INIT_EXT = 1UL << 30;
    public const ulong FUSE_INIT_RESERVED = 1UL << 31;
    public const ulong FUSE_SECURITY_CTX = 1UL << 32;
    public const ulong FUSE_HAS_INODE_DAX = 1UL << 33;
    public const ulong FUSE_CREATE_SUPP_GROUP = 1UL << 34;   // not in every 7.38 header
    public const ulong FUSE_HAS_EXPIRE_ONLY = 1UL << 35;
    public const ulong FUSE_DIRECT_IO_ALLOW_MMAP = 1UL << 36; // 7.39
    public const ulong FUSE_PASSTHROUGH = 1UL << 37;          // 7.40
    public const ulong FUSE_NO_EXPORT_SUPPORT = 1UL << 38;    // 7.40
    public const ulong FUSE_HAS_RESEND = 1UL << 39;           // 7.40

    // fuse_open_out.open_flags
    public const uint FOPEN_DIRECT_IO = 1 << 0;
    public const uint FOPEN_KEEP_CACHE = 1 << 1;
    public const uint FOPEN_NONSEEKABLE = 1 << 2;
    public const uint FOPEN_CACHE_DIR = 1 << 3;
    public const uint FOPEN_STREAM = 1 << 4;
    public const uint FOPEN_NOFLUSH = 1 << 5;
    public const uint FOPEN_PARALLEL_DIRECT_WRITES = 1 << 6;
    public const uint FOPEN_PASSTHROUGH = 1 << 7; // 7.40

    // ioctls on /dev/fuse (7.40): _IOW(FUSE_DEV_IOC_MAGIC = 229, 1, struct fuse_backing_map) and _IOW(229, 2, uint32_t)
    public const uint FUSE_DEV_IOC_BACKING_OPEN = (1u << 30) | (16u << 16) | (229u << 8) | 1;
    public const uint FUSE_DEV_IOC_BACKING_CLOSE = (1u << 30) | (4u << 16) | (229u << 8) | 2;

    // fuse_write_in.write_flags, fuse_open_in.open_flags (7.33, FUSE_HANDLE_KILLPRIV_V2)
    public const uint FUSE_WRITE_KILL_SUIDGID = 1 << 2;
    public const uint FUSE_OPEN_KILL_SUIDGID = 1 << 0;

    // fuse_setattr_in.valid
    public const uint FATTR_MODE = 1 << 0;
    public const uint FATTR_UID = 1 << 1;
    public const uint FATTR_GID = 1 << 2;
    public const uint FATTR_SIZE = 1 << 3;
    public const uint FATTR_ATIME = 1 << 4;
    public const uint FATTR_MTIME = 1 << 5;
    public const uint FATTR_FH = 1 << 6;
    public const uint FATTR_ATIME_NOW = 1 << 7;
    public const uint FATTR_MTIME_NOW = 1 << 8;
    public const uint FATTR_KILL_SUIDGID = 1 << 11; // 7.33

    /// <summary>FUSE_GETATTR_FH: fuse_getattr_in.fh is valid.</summary>
    public const uint FUSE_GETATTR_FH = 1 << 0;

    // enum fuse_notify_code
    public const int FUSE_NOTIFY_INVAL_INODE = 2;
    public const int FUSE_NOTIFY_INVAL_ENTRY = 3;

    /// <summary>FUSE_COMPAT_SETXATTR_IN_SIZE: fuse_setxattr_in without the FUSE_SETXATTR_EXT fields.</summary>
    public const int FUSE_COMPAT_SETXATTR_IN_SIZE = 8;

    /// <summary>FUSE_NAME_OFFSET: offsetof(struct fuse_dirent, name).</summary>
    public const int FUSE_NAME_OFFSET = 24;

    /// <summary>FUSE_NAME_OFFSET_DIRENTPLUS: offsetof(struct fuse_direntplus, dirent.name).</summary>
    public const int FUSE_NAME_OFFSET_DIRENTPLUS = 152;

    /// <summary>FUSE_DIRENT_ALIGN: a dirent's size rounded up to 8 bytes.</summary>
    public static int FUSE_DIRENT_ALIGN(int x) => (x + 7) & ~7;
}

/// <summary>struct fuse_in_header: what precedes every request read from /dev/fuse.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct fuse_in_header
{
    public uint len;
    public uint opcode;
    public ulong unique;
    public ulong nodeid;
    public uint uid;
    public uint gid;
    public uint pid;
    public ushort total_extlen; // 7.37; in units of 8 bytes
    public ushort padding;
}

/// <summary>struct fuse_out_header: what precedes every reply and notification written to /dev/fuse.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct fuse_out_header
{
    public uint len;
    public int error;
    public ulong unique;
}

/// <summary>struct fuse_init_in.</summary>
[StructLayout(LayoutKind.Sequential)]
internal unsafe struct fuse_init_in
{
    public uint major;
    public uint minor;
    public uint max_readahead;
    public uint flags;
    public uint flags2; // 7.36
    public fixed uint unused[11];
}

/// <summary>struct fuse_init_out.</summary>
[StructLayout(LayoutKind.Sequential)]
internal unsafe struct fuse_init_out
{
    public uint major;
    public uint minor;
    public uint max_readahead;
    public uint flags;
    public ushort max_background;
    public ushort congestion_threshold;
    public uint max_write;
    public uint time_gran;
    public ushort max_pages;
    public ushort map_alignment;
    public uint flags2;
    public uint max_stack_depth; // 7.40 (FUSE_PASSTHROUGH); the first of 7.38's unused words
    public fixed uint unused[6];
}

/// <summary>struct fuse_attr.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct fuse_attr
{
    public ulong ino;
    public ulong size;
    public ulong blocks;
    public ulong atime;
    public ulong mtime;
    public ulong ctime;
    public uint atimensec;
    public uint mtimensec;
    public uint ctimensec;
    public uint mode;
    public uint nlink;
    public uint uid;
    public uint gid;
    public uint rdev;
    public uint blksize;
    public uint flags;
}

/// <summary>struct fuse_entry_out: the reply of lookup, mknod, mkdir, symlink, link (and the first part of create's).</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct fuse_entry_out
{
    public ulong nodeid;
    public ulong generation;
    public ulong entry_valid;
    public ulong attr_valid;
    public uint entry_valid_nsec;
    public uint attr_valid_nsec;
    public fuse_attr attr;
}

/// <summary>struct fuse_attr_out: the reply of getattr and setattr.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct fuse_attr_out
{
    public ulong attr_valid;
    public uint attr_valid_nsec;
    public uint dummy;
    public fuse_attr attr;
}

/// <summary>struct fuse_getattr_in.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct fuse_getattr_in
{
    public uint getattr_flags;
    public uint dummy;
    public ulong fh;
}

/// <summary>struct fuse_setattr_in.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct fuse_setattr_in
{
    public uint valid;
    public uint padding;
    public ulong fh;
    public ulong size;
    public ulong lock_owner;
    public ulong atime;
    public ulong mtime;
    public ulong ctime;
    public uint atimensec;
    public uint mtimensec;
    public uint ctimensec;
    public uint mode;
    public uint unused4;
    public uint uid;
    public uint gid;
    public uint unused5;
}

/// <summary>struct fuse_mknod_in (followed by the name).</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct fuse_mknod_in
{
    public uint mode;
    public uint rdev;
    public uint umask;
    public uint padding;
}

/// <summary>struct fuse_mkdir_in (followed by the name).</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct fuse_mkdir_in
{
    public uint mode;
    public uint umask;
}

/// <summary>struct fuse_rename2_in (followed by the old and the new name).</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct fuse_rename2_in
{
    public ulong newdir;
    public uint flags;
    public uint padding;
}

/// <summary>struct fuse_link_in (followed by the new name).</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct fuse_link_in
{
    public ulong oldnodeid;
}

/// <summary>struct fuse_open_in: open and opendir.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct fuse_open_in
{
    public uint flags;
    public uint open_flags; // 7.38: FUSE_OPEN_KILL_SUIDGID
}

/// <summary>struct fuse_create_in (followed by the name).</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct fuse_create_in
{
    public uint flags;
    public uint mode;
    public uint umask;
    public uint open_flags;
}

/// <summary>struct fuse_open_out: the reply of open and opendir (and the second part of create's).</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct fuse_open_out
{
    public ulong fh;
    public uint open_flags;
    public int backing_id; // 7.40 (FUSE_PASSTHROUGH); "padding" before
}

/// <summary>struct fuse_backing_map (7.40): the argument of FUSE_DEV_IOC_BACKING_OPEN.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct fuse_backing_map
{
    public int fd;
    public uint flags;
    public ulong padding;
}

/// <summary>struct fuse_release_in: release and releasedir.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct fuse_release_in
{
    public ulong fh;
    public uint flags;
    public uint release_flags;
    public ulong lock_owner;
}

/// <summary>struct fuse_flush_in.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct fuse_flush_in
{
    public ulong fh;
    public uint unused;
    public uint padding;
    public ulong lock_owner;
}

/// <summary>struct fuse_read_in: read and readdir.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct fuse_read_in
{
    public ulong fh;
    public ulong offset;
    public uint size;
    public uint read_flags;
    public ulong lock_owner;
    public uint flags;
    public uint padding;
}

/// <summary>struct fuse_write_in (followed by the data).</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct fuse_write_in
{
    public ulong fh;
    public ulong offset;
    public uint size;
    public uint write_flags;
    public ulong lock_owner;
    public uint flags;
    public uint padding;
}

/// <summary>struct fuse_write_out.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct fuse_write_out
{
    public uint size;
    public uint padding;
}

/// <summary>struct fuse_fsync_in: fsync and fsyncdir.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct fuse_fsync_in
{
    public ulong fh;
    public uint fsync_flags;
    public uint padding;
}

/// <summary>struct fuse_kstatfs.</summary>
[StructLayout(LayoutKind.Sequential)]
internal unsafe struct fuse_kstatfs
{
    public ulong blocks;
    public ulong bfree;
    public ulong bavail;
    public ulong files;
    public ulong ffree;
    public uint bsize;
    public uint namelen;
    public uint frsize;
    public uint padding;
    public fixed uint spare[6];
}

/// <summary>struct fuse_setxattr_in, with the FUSE_SETXATTR_EXT fields (followed by the name and the value).</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct fuse_setxattr_in
{
    public uint size;
    public uint flags;
    public uint setxattr_flags;
    public uint padding;
}

/// <summary>struct fuse_getxattr_in: getxattr (followed by the name) and listxattr.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct fuse_getxattr_in
{
    public uint size;
    public uint padding;
}

/// <summary>struct fuse_getxattr_out: the size, when the request asked with size 0.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct fuse_getxattr_out
{
    public uint size;
    public uint padding;
}

/// <summary>struct fuse_forget_in.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct fuse_forget_in
{
    public ulong nlookup;
}

/// <summary>struct fuse_batch_forget_in (followed by count fuse_forget_one).</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct fuse_batch_forget_in
{
    public uint count;
    public uint dummy;
}

/// <summary>struct fuse_forget_one.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct fuse_forget_one
{
    public ulong nodeid;
    public ulong nlookup;
}

/// <summary>struct fuse_fallocate_in.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct fuse_fallocate_in
{
    public ulong fh;
    public ulong offset;
    public ulong length;
    public uint mode;
    public uint padding;
}

/// <summary>struct fuse_lseek_in.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct fuse_lseek_in
{
    public ulong fh;
    public ulong offset;
    public uint whence;
    public uint padding;
}

/// <summary>struct fuse_lseek_out.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct fuse_lseek_out
{
    public ulong offset;
}

/// <summary>struct fuse_dirent (followed by the name, the whole padded to 8 bytes).</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct fuse_dirent
{
    public ulong ino;
    public ulong off;
    public uint namelen;
    public uint type;
}

/// <summary>struct fuse_direntplus (followed by the name, the whole padded to 8 bytes): an entry of READDIRPLUS.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct fuse_direntplus
{
    public fuse_entry_out entry_out;
    public fuse_dirent dirent;
}

/// <summary>struct fuse_notify_inval_inode_out.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct fuse_notify_inval_inode_out
{
    public ulong ino;
    public long off;
    public long len;
}

/// <summary>struct fuse_notify_inval_entry_out (followed by the name and a NUL).</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct fuse_notify_inval_entry_out
{
    public ulong parent;
    public uint namelen;
    public uint flags;
}
