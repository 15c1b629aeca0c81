using System.Runtime.InteropServices;

namespace BAOverlay.Fuse.Interop;

// The C structures the binding passes to and from libfuse3, laid out for x86_64 Linux (glibc, LP64,
// _FILE_OFFSET_BITS=64). Other architectures are NOT done: aarch64 has a different struct stat (st_nlink is 32-bit,
// st_blksize is int, one more padding word), so FuseSession refuses to start on anything but x86_64 until their
// layouts are added and checked. Every size and offset here is compared with the C compiler's by
// tests/BAOverlay.Tests/Fuse/StructLayoutTests.cs.

/// <summary>
/// <code>
/// struct fuse_args { int argc; char **argv; int allocated; };
/// </code>
/// </summary>
[StructLayout(LayoutKind.Sequential)]
internal unsafe struct FuseArgs
{
    public int argc;
    public byte** argv;
    public int allocated;
}

/// <summary>
/// <code>
/// struct fuse_file_info {
///     int flags;
///     unsigned int writepage : 1; unsigned int direct_io : 1; unsigned int keep_cache : 1; unsigned int flush : 1;
///     unsigned int nonseekable : 1; unsigned int flock_release : 1; unsigned int cache_readdir : 1;
///     unsigned int noflush : 1; unsigned int padding : 24; unsigned int padding2 : 32;
///     uint64_t fh; uint64_t lock_owner; uint32_t poll_events;
/// };
/// </code>
/// The bitfields fill two 32-bit allocation units right after <c>flags</c> (bytes 4..11); they are modelled as one
/// 64-bit word at offset 4, bit 0 = writepage (GCC allocates bitfields from the least significant bit on x86_64; the
/// layout test checks each bit against the compiler).
/// </summary>
[StructLayout(LayoutKind.Explicit, Size = 40)]
internal struct FuseFileInfo
{
    [FieldOffset(0)] public int flags;
    [FieldOffset(4)] public ulong bits;
    [FieldOffset(16)] public ulong fh;
    [FieldOffset(24)] public ulong lock_owner;
    [FieldOffset(32)] public uint poll_events;

    public const ulong WritePageBit = 1 << 0;
    public const ulong DirectIoBit = 1 << 1;
    public const ulong KeepCacheBit = 1 << 2;
    public const ulong FlushBit = 1 << 3;
    public const ulong NonSeekableBit = 1 << 4;
    public const ulong FlockReleaseBit = 1 << 5;
    public const ulong CacheReaddirBit = 1 << 6;
    public const ulong NoFlushBit = 1 << 7;

    public bool WritePage { readonly get => Get(WritePageBit); set => Set(WritePageBit, value); }

    public bool DirectIo { readonly get => Get(DirectIoBit); set => Set(DirectIoBit, value); }

    public bool KeepCache { readonly get => Get(KeepCacheBit); set => Set(KeepCacheBit, value); }

    public bool Flush { readonly get => Get(FlushBit); set => Set(FlushBit, value); }

    public bool NonSeekable { readonly get => Get(NonSeekableBit); set => Set(NonSeekableBit, value); }

    public bool FlockRelease { readonly get => Get(FlockReleaseBit); set => Set(FlockReleaseBit, value); }

    public bool CacheReaddir { readonly get => Get(CacheReaddirBit); set => Set(CacheReaddirBit, value); }

    public bool NoFlush { readonly get => Get(NoFlushBit); set => Set(NoFlushBit, value); }

    private readonly bool Get(ulong bit) => (bits & bit) != 0;

    private void Set(ulong bit, bool value) => bits = value ? bits | bit : bits & ~bit;
}

/// <summary>
/// <code>
/// struct timespec { time_t tv_sec; long tv_nsec; };
/// </code>
/// </summary>
[StructLayout(LayoutKind.Sequential)]
internal struct NativeTimespec
{
    public long tv_sec;
    public long tv_nsec;
}

/// <summary>
/// x86_64 glibc <c>struct stat</c> (asm/stat.h order):
/// <code>
/// struct stat {
///     dev_t st_dev; ino_t st_ino; nlink_t st_nlink; mode_t st_mode; uid_t st_uid; gid_t st_gid; int __pad0;
///     dev_t st_rdev; off_t st_size; blksize_t st_blksize; blkcnt_t st_blocks;
///     struct timespec st_atim, st_mtim, st_ctim; long __glibc_reserved[3];
/// };
/// </code>
/// </summary>
[StructLayout(LayoutKind.Sequential)]
internal unsafe struct NativeStat
{
    public ulong st_dev;
    public ulong st_ino;
    public ulong st_nlink;
    public uint st_mode;
    public uint st_uid;
    public uint st_gid;
    public int __pad0;
    public ulong st_rdev;
    public long st_size;
    public long st_blksize;
    public long st_blocks;
    public NativeTimespec st_atim;
    public NativeTimespec st_mtim;
    public NativeTimespec st_ctim;
    public fixed long __glibc_reserved[3];
}

/// <summary>
/// x86_64 glibc <c>struct statvfs</c> (with _FILE_OFFSET_BITS=64 the counts are 64-bit):
/// <code>
/// struct statvfs {
///     unsigned long f_bsize; unsigned long f_frsize; fsblkcnt_t f_blocks; fsblkcnt_t f_bfree; fsblkcnt_t f_bavail;
///     fsfilcnt_t f_files; fsfilcnt_t f_ffree; fsfilcnt_t f_favail; unsigned long f_fsid; unsigned long f_flag;
///     unsigned long f_namemax; int __f_spare[6];
/// };
/// </code>
/// </summary>
[StructLayout(LayoutKind.Sequential)]
internal unsafe struct NativeStatvfs
{
    public ulong f_bsize;
    public ulong f_frsize;
    public ulong f_blocks;
    public ulong f_bfree;
    public ulong f_bavail;
    public ulong f_files;
    public ulong f_ffree;
    public ulong f_favail;
    public ulong f_fsid;
    public ulong f_flag;
    public ulong f_namemax;
    public fixed int __f_spare[6];
}

/// <summary>
/// <code>
/// struct fuse_entry_param {
///     fuse_ino_t ino; uint64_t generation; struct stat attr; double attr_timeout; double entry_timeout;
/// };
/// </code>
/// </summary>
[StructLayout(LayoutKind.Sequential)]
internal struct FuseEntryParam
{
    public ulong ino;
    public ulong generation;
    public NativeStat attr;
    public double attr_timeout;
    public double entry_timeout;
}

/// <summary>
/// <code>
/// struct fuse_ctx { uid_t uid; gid_t gid; pid_t pid; mode_t umask; };
/// </code>
/// </summary>
[StructLayout(LayoutKind.Sequential)]
internal struct FuseCtx
{
    public uint uid;
    public uint gid;
    public int pid;
    public uint umask;
}

/// <summary>
/// <code>
/// struct fuse_forget_data { fuse_ino_t ino; uint64_t nlookup; };
/// </code>
/// </summary>
[StructLayout(LayoutKind.Sequential)]
internal struct FuseForgetData
{
    public ulong ino;
    public ulong nlookup;
}

/// <summary>
/// libfuse 3.14 (the 3.0 layout, unchanged through 3.16):
/// <code>
/// struct fuse_conn_info {
///     unsigned proto_major; unsigned proto_minor; unsigned max_write; unsigned max_read; unsigned max_readahead;
///     unsigned capable; unsigned want; unsigned max_background; unsigned congestion_threshold; unsigned time_gran;
///     unsigned reserved[22];
/// };
/// </code>
/// </summary>
[StructLayout(LayoutKind.Sequential)]
internal unsafe struct FuseConnInfo
{
    public uint proto_major;
    public uint proto_minor;
    public uint max_write;
    public uint max_read;
    public uint max_readahead;
    public uint capable;
    public uint want;
    public uint max_background;
    public uint congestion_threshold;
    public uint time_gran;
    public fixed uint reserved[22];
}

/// <summary>
/// <code>
/// struct fuse_loop_config_v1 { int clone_fd; unsigned int max_idle_threads; };
/// </code>
/// The argument of <c>fuse_session_loop_mt@FUSE_3.2</c> (used only when the FUSE_3.12 version is absent).
/// </summary>
[StructLayout(LayoutKind.Sequential)]
internal struct FuseLoopConfigV1
{
    public int clone_fd;
    public uint max_idle_threads;
}

/// <summary>
/// <c>struct fuse_lowlevel_ops</c> of libfuse 3.14, every member in header order, as unmanaged function pointers
/// (a member left null is answered by libfuse itself, mostly with ENOSYS). The C prototype is above each member.
/// </summary>
[StructLayout(LayoutKind.Sequential)]
internal unsafe struct FuseLowLevelOps
{
    // void (*init) (void *userdata, struct fuse_conn_info *conn);
    public delegate* unmanaged<nint, FuseConnInfo*, void> init;

    // void (*destroy) (void *userdata);
    public delegate* unmanaged<nint, void> destroy;

    // void (*lookup) (fuse_req_t req, fuse_ino_t parent, const char *name);
    public delegate* unmanaged<nint, ulong, byte*, void> lookup;

    // void (*forget) (fuse_req_t req, fuse_ino_t ino, uint64_t nlookup);
    public delegate* unmanaged<nint, ulong, ulong, void> forget;

    // void (*getattr) (fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
    public delegate* unmanaged<nint, ulong, FuseFileInfo*, void> getattr;

    // void (*setattr) (fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set, struct fuse_file_info *fi);
    public delegate* unmanaged<nint, ulong, NativeStat*, int, FuseFileInfo*, void> setattr;

    // void (*readlink) (fuse_req_t req, fuse_ino_t ino);
    public delegate* unmanaged<nint, ulong, void> readlink;

    // void (*mknod) (fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev);
    public delegate* unmanaged<nint, ulong, byte*, uint, ulong, void> mknod;

    // void (*mkdir) (fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode);
    public delegate* unmanaged<nint, ulong, byte*, uint, void> mkdir;

    // void (*unlink) (fuse_req_t req, fuse_ino_t parent, const char *name);
    public delegate* unmanaged<nint, ulong, byte*, void> unlink;

    // void (*rmdir) (fuse_req_t req, fuse_ino_t parent, const char *name);
    public delegate* unmanaged<nint, ulong, byte*, void> rmdir;

    // void (*symlink) (fuse_req_t req, const char *link, fuse_ino_t parent, const char *name);
    public delegate* unmanaged<nint, byte*, ulong, byte*, void> symlink;

    // void (*rename) (fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent, const char *newname, unsigned int flags);
    public delegate* unmanaged<nint, ulong, byte*, ulong, byte*, uint, void> rename;

    // void (*link) (fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname);
    public delegate* unmanaged<nint, ulong, ulong, byte*, void> link;

    // void (*open) (fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
    public delegate* unmanaged<nint, ulong, FuseFileInfo*, void> open;

    // void (*read) (fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi);
    public delegate* unmanaged<nint, ulong, nuint, long, FuseFileInfo*, void> read;

    // void (*write) (fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off, struct fuse_file_info *fi);
    public delegate* unmanaged<nint, ulong, byte*, nuint, long, FuseFileInfo*, void> write;

    // void (*flush) (fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
    public delegate* unmanaged<nint, ulong, FuseFileInfo*, void> flush;

    // void (*release) (fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
    public delegate* unmanaged<nint, ulong, FuseFileInfo*, void> release;

    // void (*fsync) (fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi);
    public delegate* unmanaged<nint, ulong, int, FuseFileInfo*, void> fsync;

    // void (*opendir) (fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
    public delegate* unmanaged<nint, ulong, FuseFileInfo*, void> opendir;

    // void (*readdir) (fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi);
    public delegate* unmanaged<nint, ulong, nuint, long, FuseFileInfo*, void> readdir;

    // void (*releasedir) (fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
    public delegate* unmanaged<nint, ulong, FuseFileInfo*, void> releasedir;

    // void (*fsyncdir) (fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi);
    public delegate* unmanaged<nint, ulong, int, FuseFileInfo*, void> fsyncdir;

    // void (*statfs) (fuse_req_t req, fuse_ino_t ino);
    public delegate* unmanaged<nint, ulong, void> statfs;

    // void (*setxattr) (fuse_req_t req, fuse_ino_t ino, const char *name, const char *value, size_t size, int flags);
    public delegate* unmanaged<nint, ulong, byte*, byte*, nuint, int, void> setxattr;

    // void (*getxattr) (fuse_req_t req, fuse_ino_t ino, const char *name, size_t size);
    public delegate* unmanaged<nint, ulong, byte*, nuint, void> getxattr;

    // void (*listxattr) (fuse_req_t req, fuse_ino_t ino, size_t size);
    public delegate* unmanaged<nint, ulong, nuint, void> listxattr;

    // void (*removexattr) (fuse_req_t req, fuse_ino_t ino, const char *name);
    public delegate* unmanaged<nint, ulong, byte*, void> removexattr;

    // void (*access) (fuse_req_t req, fuse_ino_t ino, int mask);
    public delegate* unmanaged<nint, ulong, int, void> access;

    // void (*create) (fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, struct fuse_file_info *fi);
    public delegate* unmanaged<nint, ulong, byte*, uint, FuseFileInfo*, void> create;

    // void (*getlk) (fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi, struct flock *lock);
    public delegate* unmanaged<nint, ulong, FuseFileInfo*, void*, void> getlk;

    // void (*setlk) (fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi, struct flock *lock, int sleep);
    public delegate* unmanaged<nint, ulong, FuseFileInfo*, void*, int, void> setlk;

    // void (*bmap) (fuse_req_t req, fuse_ino_t ino, size_t blocksize, uint64_t idx);
    public delegate* unmanaged<nint, ulong, nuint, ulong, void> bmap;

    // void (*ioctl) (fuse_req_t req, fuse_ino_t ino, unsigned int cmd, void *arg, struct fuse_file_info *fi,
    //                unsigned flags, const void *in_buf, size_t in_bufsz, size_t out_bufsz);
    public delegate* unmanaged<nint, ulong, uint, void*, FuseFileInfo*, uint, void*, nuint, nuint, void> ioctl;

    // void (*poll) (fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi, struct fuse_pollhandle *ph);
    public delegate* unmanaged<nint, ulong, FuseFileInfo*, void*, void> poll;

    // void (*write_buf) (fuse_req_t req, fuse_ino_t ino, struct fuse_bufvec *bufv, off_t off, struct fuse_file_info *fi);
    public delegate* unmanaged<nint, ulong, void*, long, FuseFileInfo*, void> write_buf;

    // void (*retrieve_reply) (fuse_req_t req, void *cookie, fuse_ino_t ino, off_t offset, struct fuse_bufvec *bufv);
    public delegate* unmanaged<nint, void*, ulong, long, void*, void> retrieve_reply;

    // void (*forget_multi) (fuse_req_t req, size_t count, struct fuse_forget_data *forgets);
    public delegate* unmanaged<nint, nuint, FuseForgetData*, void> forget_multi;

    // void (*flock) (fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi, int op);
    public delegate* unmanaged<nint, ulong, FuseFileInfo*, int, void> flock;

    // void (*fallocate) (fuse_req_t req, fuse_ino_t ino, int mode, off_t offset, off_t length, struct fuse_file_info *fi);
    public delegate* unmanaged<nint, ulong, int, long, long, FuseFileInfo*, void> fallocate;

    // void (*readdirplus) (fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi);
    public delegate* unmanaged<nint, ulong, nuint, long, FuseFileInfo*, void> readdirplus;

    // void (*copy_file_range) (fuse_req_t req, fuse_ino_t ino_in, off_t off_in, struct fuse_file_info *fi_in,
    //                          fuse_ino_t ino_out, off_t off_out, struct fuse_file_info *fi_out, size_t len, int flags);
    public delegate* unmanaged<nint, ulong, long, FuseFileInfo*, ulong, long, FuseFileInfo*, nuint, int, void> copy_file_range;

    // void (*lseek) (fuse_req_t req, fuse_ino_t ino, off_t off, int whence, struct fuse_file_info *fi);
    public delegate* unmanaged<nint, ulong, long, int, FuseFileInfo*, void> lseek;
}
