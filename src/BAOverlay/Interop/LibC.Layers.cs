using System.Runtime.InteropServices;

namespace BAOverlay.Interop;

/// <summary>Calls that reach inside the layers through directory handles (kept in a file of their own next to
/// <c>LibC.cs</c>). Flag values are from the kernel's <c>include/uapi/asm-generic/fcntl.h</c> and
/// <c>include/uapi/linux/openat2.h</c>; the ones that differ between architectures come from Mono.Posix.</summary>
internal static partial class LibC
{
    /// <summary>O_PATH: the same value on every architecture Linux has (010000000).</summary>
    public const int O_PATH = 0x200000;

    /// <summary>RESOLVE_NO_MAGICLINKS: no /proc/self/fd style links in the walk.</summary>
    public const ulong RESOLVE_NO_MAGICLINKS = 0x02;

    /// <summary>RESOLVE_NO_SYMLINKS: no symbolic link in any component.</summary>
    public const ulong RESOLVE_NO_SYMLINKS = 0x04;

    /// <summary>RESOLVE_BENEATH: never leave the starting directory (no "..", no absolute path above it).</summary>
    public const ulong RESOLVE_BENEATH = 0x08;


    // int openat(int dirfd, const char *pathname, int flags, mode_t mode);
    [LibraryImport(Library, EntryPoint = "openat", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int openat(int dirfd, string pathname, int flags, uint mode);

    /// <summary>struct open_how (include/uapi/linux/openat2.h): three __u64, 24 bytes.</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct OpenHow
    {
        public ulong flags;   // __u64 flags
        public ulong mode;    // __u64 mode
        public ulong resolve; // __u64 resolve
    }

    /// <summary>__NR_openat2: 437 in the generic and x86_64 tables alike.</summary>
    private const long SYS_openat2 = 437;

    // long syscall(SYS_openat2, int dirfd, const char *pathname, struct open_how *how, size_t size);
    [LibraryImport(Library, EntryPoint = "syscall", SetLastError = true)]
    private static unsafe partial long syscall_openat2(long number, int dirfd, byte* pathname, OpenHow* how, nuint size);

    /// <summary>openat2(2); -1 with errno set on failure (ENOSYS before Linux 5.6).</summary>
    public static unsafe int openat2(int dirfd, string pathname, ulong flags, ulong resolve)
    {
        int length = System.Text.Encoding.UTF8.GetByteCount(pathname);
        byte[] bytes = new byte[length + 1];
        System.Text.Encoding.UTF8.GetBytes(pathname, bytes);
        var how = new OpenHow { flags = flags, mode = 0, resolve = resolve };
        fixed (byte* p = bytes)
        {
            return (int)syscall_openat2(SYS_openat2, dirfd, p, &how, (nuint)sizeof(OpenHow));
        }
    }

    /// <summary>struct xattr_args (include/uapi/linux/xattr.h, Linux 6.13): value pointer, size, flags; 16 bytes.</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct XattrArgs
    {
        public ulong value; // __aligned_u64 value
        public uint size;   // __u32 size
        public uint flags;  // __u32 flags
    }

    /// <summary>__NR_getxattrat: 464 in the generic and x86_64 tables alike (Linux 6.13).</summary>
    private const long SYS_getxattrat = 464;

    // long syscall(SYS_getxattrat, int dfd, const char *pathname, unsigned int at_flags, const char *name,
    //              struct xattr_args *uargs, size_t usize);
    [LibraryImport(Library, EntryPoint = "syscall", SetLastError = true)]
    private static unsafe partial long syscall_getxattrat(long number, int dirfd, byte* pathname, uint atFlags, byte* name, XattrArgs* args, nuint size);

    private static volatile bool s_noGetxattrat;

    /// <summary>
    /// Whether <paramref name="relative"/> in directory <paramref name="dirfd"/> has extended attribute
    /// <paramref name="name"/> (symbolic links not followed): <c>getxattrat</c> where the kernel has it (6.13+), else
    /// <c>lgetxattr</c> of <paramref name="path"/>, the same object reached through /proc's magic link (a walk that
    /// took most of a lookup of a lower file: 5 000 of them, 165 → 133 ms).
    /// </summary>
    public static unsafe bool HasXattr(int dirfd, string relative, string path, string name)
    {
        if (!s_noGetxattrat)
        {
            Span<byte> pathBytes = stackalloc byte[System.Text.Encoding.UTF8.GetMaxByteCount(relative.Length) + 1];
            int pathLength = System.Text.Encoding.UTF8.GetBytes(relative, pathBytes);
            pathBytes[pathLength] = 0;
            Span<byte> nameBytes = stackalloc byte[System.Text.Encoding.UTF8.GetMaxByteCount(name.Length) + 1];
            int nameLength = System.Text.Encoding.UTF8.GetBytes(name, nameBytes);
            nameBytes[nameLength] = 0;
            var args = new XattrArgs(); // size 0: asks only whether it is there
            fixed (byte* p = pathBytes)
            fixed (byte* n = nameBytes)
            {
                if (syscall_getxattrat(SYS_getxattrat, dirfd, p, AT_SYMLINK_NOFOLLOW, n, &args, (nuint)sizeof(XattrArgs)) >= 0)
                {
                    return true;
                }
                if (Marshal.GetLastPInvokeError() != ENOSYS)
                {
                    return false;
                }
                s_noGetxattrat = true; // an older kernel: the path form from now on
            }
        }
        return lgetxattr(path, name, null, 0) >= 0;
    }

    public const int AT_SYMLINK_NOFOLLOW = 0x100;
    public const int AT_EMPTY_PATH = 0x1000;

    /// <summary>STATX_BASIC_STATS: type, mode, nlink, uid, gid, times, ino, size, blocks.</summary>
    public const uint STATX_BASIC_STATS = 0x7ff;

    /// <summary>struct statx_timestamp (include/uapi/linux/stat.h).</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct StatxTimestamp
    {
        public long tv_sec;      // __s64 tv_sec
        public uint tv_nsec;     // __u32 tv_nsec
        public int __reserved;   // __s32 __reserved
    }

    /// <summary>struct statx (include/uapi/linux/stat.h): the same layout on every architecture, 256 bytes.</summary>
    [StructLayout(LayoutKind.Sequential, Size = 256)]
    public struct Statx
    {
        public uint stx_mask;              // __u32
        public uint stx_blksize;           // __u32
        public ulong stx_attributes;       // __u64
        public uint stx_nlink;             // __u32
        public uint stx_uid;               // __u32
        public uint stx_gid;               // __u32
        public ushort stx_mode;            // __u16
        public ushort __spare0;            // __u16 __spare0[1]
        public ulong stx_ino;              // __u64
        public ulong stx_size;             // __u64
        public ulong stx_blocks;           // __u64
        public ulong stx_attributes_mask;  // __u64
        public StatxTimestamp stx_atime;
        public StatxTimestamp stx_btime;
        public StatxTimestamp stx_ctime;
        public StatxTimestamp stx_mtime;
        public uint stx_rdev_major;        // __u32
        public uint stx_rdev_minor;        // __u32
        public uint stx_dev_major;         // __u32
        public uint stx_dev_minor;         // __u32
    }

    // int statx(int dirfd, const char *restrict pathname, int flags, unsigned int mask, struct statx *restrict statxbuf);
    [LibraryImport(Library, EntryPoint = "statx", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static unsafe partial int statx(int dirfd, string pathname, int flags, uint mask, Statx* statxbuf);

    /// <summary>glibc's makedev: a dev_t from a major and minor number.</summary>
    public static ulong MakeDev(uint major, uint minor) =>
        ((ulong)(major & 0xfffff000) << 32) | ((ulong)(major & 0xfff) << 8) | ((ulong)(minor & 0xffffff00) << 12) | (minor & 0xff);

    // int close(int fd);
    [LibraryImport(Library, EntryPoint = "close", SetLastError = true)]
    public static partial int close(int fd);

    /// <summary>O_TMPFILE (x86_64: __O_TMPFILE | O_DIRECTORY): an unnamed regular file in the directory's file system.</summary>
    public const int O_TMPFILE = 0x410000;

    public const int O_RDWR = 0x2;
    public const int O_CLOEXEC = 0x80000;

    /// <summary>linkat's flag: follow a symbolic link (here /proc/self/fd/N, to the open unnamed file).</summary>
    public const int AT_SYMLINK_FOLLOW = 0x400;

    // int linkat(int olddirfd, const char *oldpath, int newdirfd, const char *newpath, int flags);
    [LibraryImport(Library, EntryPoint = "linkat", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int linkat(int olddirfd, string oldpath, int newdirfd, string newpath, int flags);
}
