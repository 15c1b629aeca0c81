using System.Runtime.InteropServices;

namespace BAOverlay.Fuse.Interop;

/// <summary>
/// The few libc calls the FUSE binding makes itself: <c>dlvsym</c> to pick one version of a libfuse symbol, and the
/// <c>mount</c>/<c>umount2</c> system calls, made from this process so that libfuse never has to run (fork and exec)
/// <c>fusermount3</c> or <c>/bin/mount</c>.
/// </summary>
internal static unsafe partial class LibC
{
    private const string Library = "libc";

    public const int O_RDONLY = 0x0;
    public const int O_RDWR = 0x2;
    public const int O_CLOEXEC = 0x80000;
    public const int O_ACCMODE = 0x3;
    public const int O_TRUNC = 0x200;

    public const int F_GETFL = 3;
    public const int F_SETPIPE_SZ = 1031; // F_LINUX_SPECIFIC_BASE + 7

    public const ulong MS_RDONLY = 1;
    public const ulong MS_NOSUID = 2;
    public const ulong MS_NODEV = 4;
    public const ulong MS_NOEXEC = 8;
    public const ulong MS_NOATIME = 1024;

    public const int MNT_DETACH = 2;

    public const int O_PATH = 0x200000;
    public const int O_DIRECTORY = 0x10000;

    public const int AT_EMPTY_PATH = 0x1000;
    public const int AT_STATX_DONT_SYNC = 0x4000;

    public const uint STATX_MNT_ID = 0x1000;
    public const uint STATX_MNT_ID_UNIQUE = 0x4000;
    public const ulong STATX_ATTR_MOUNT_ROOT = 0x2000;

    public const short POLLERR = 0x8;
    public const short POLLIN = 0x1;

    public const int EBADF = 9;
    public const int ENOTCONN = 107;
    public const int ECANCELED = 125;
    public const int PROT_READ = 1;
    public const int PROT_WRITE = 2;
    public const int MAP_SHARED = 1;
    public const int MAP_POPULATE = 0x8000;
    public const int EFD_CLOEXEC = 0x80000;

    /// <summary><c>NS_GET_USERNS</c>, <c>_IO(0xb7, 0x1)</c>: a descriptor of the user namespace that owns a namespace.</summary>
    public const nuint NS_GET_USERNS = 0xb701;

    public const int EPERM = 1;
    public const int ENOENT = 2;
    public const int EINTR = 4;
    public const int EIO = 5;
    public const int EAGAIN = 11;
    public const int ENODEV = 19;
    public const int EACCES = 13;
    public const int EINVAL = 22;
    public const int ENOTTY = 25;
    public const int ELOOP = 40;
    public const int EOPNOTSUPP = 95;

    // void *dlvsym(void *handle, const char *symbol, const char *version);
    // (in libc.so.6 since glibc 2.34; older glibc has it in libdl.so.2 only, see DlvSym below)
    [LibraryImport(Library, EntryPoint = "dlvsym", StringMarshalling = StringMarshalling.Utf8)]
    private static partial nint dlvsym_libc(nint handle, string symbol, string version);

    private static delegate* unmanaged<nint, byte*, byte*, nint> s_dlvsymLibdl;

    /// <summary><c>dlvsym</c>: the address of <paramref name="symbol"/> at exactly <paramref name="version"/>, or 0.</summary>
    public static nint DlvSym(nint handle, string symbol, string version)
    {
        try
        {
            return dlvsym_libc(handle, symbol, version);
        }
        catch (EntryPointNotFoundException)
        {
            // glibc before 2.34: dlvsym lives in libdl.so.2, resolved once by name.
            if (s_dlvsymLibdl == null)
            {
                nint libdl = NativeLibrary.Load("libdl.so.2");
                s_dlvsymLibdl = (delegate* unmanaged<nint, byte*, byte*, nint>)NativeLibrary.GetExport(libdl, "dlvsym");
            }
            byte[] s = Utf8z(symbol);
            byte[] v = Utf8z(version);
            fixed (byte* ps = s)
            fixed (byte* pv = v)
            {
                return s_dlvsymLibdl(handle, ps, pv);
            }
        }
    }

    // int mount(const char *source, const char *target, const char *filesystemtype, unsigned long mountflags, const void *data);
    [LibraryImport(Library, EntryPoint = "mount", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int mount(string source, string target, string filesystemtype, ulong mountflags, string data);

    // int umount2(const char *target, int flags);
    [LibraryImport(Library, EntryPoint = "umount2", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int umount2(string target, int flags);

    // int statx(int dirfd, const char *restrict pathname, int flags, unsigned int mask, struct statx *restrict statxbuf);
    [LibraryImport(Library, EntryPoint = "statx", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int statx(int dirfd, string pathname, int flags, uint mask, byte* statxbuf);

    // int poll(struct pollfd *fds, nfds_t nfds, int timeout);
    [LibraryImport(Library, EntryPoint = "poll", SetLastError = true)]
    public static partial int poll(PollFd* fds, nuint nfds, int timeout);

    // int open(const char *pathname, int flags);
    [LibraryImport(Library, EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int open(string pathname, int flags);

    // ssize_t read(int fd, void *buf, size_t count);
    [LibraryImport(Library, EntryPoint = "read", SetLastError = true)]
    public static partial nint read(int fd, byte* buf, nuint count);

    // ssize_t writev(int fd, const struct iovec *iov, int iovcnt);
    [LibraryImport(Library, EntryPoint = "writev", SetLastError = true)]
    public static partial nint writev(int fd, IoVec* iov, int iovcnt);

    // ssize_t write(int fd, const void *buf, size_t count);
    [LibraryImport(Library, EntryPoint = "write", SetLastError = true)]
    public static partial nint write(int fd, void* buf, nuint count);

    // int pipe2(int pipefd[2], int flags);
    [LibraryImport(Library, EntryPoint = "pipe2", SetLastError = true)]
    public static partial int pipe2(int* pipefd, int flags);

    // ssize_t splice(int fd_in, off64_t *off_in, int fd_out, off64_t *off_out, size_t len, unsigned int flags);
    [LibraryImport(Library, EntryPoint = "splice", SetLastError = true)]
    public static partial nint splice(int fd_in, long* off_in, int fd_out, long* off_out, nuint len, uint flags);

    // int fcntl(int fd, int cmd, int arg);  (F_SETPIPE_SZ: returns the pipe's new size)
    [LibraryImport(Library, EntryPoint = "fcntl", SetLastError = true)]
    public static partial int fcntl(int fd, int cmd, int arg);

    // int close(int fd);
    [LibraryImport(Library, EntryPoint = "close", SetLastError = true)]
    public static partial int close(int fd);

    // int ioctl(int fd, unsigned long request, ...);  (called without a third argument)
    [LibraryImport(Library, EntryPoint = "ioctl", SetLastError = true)]
    public static partial int ioctl(int fd, nuint request);

    // int ioctl(int fd, unsigned long request, void *argp);  (FUSE_DEV_IOC_BACKING_OPEN / _CLOSE)
    [LibraryImport(Library, EntryPoint = "ioctl", SetLastError = true)]
    public static partial int ioctl(int fd, nuint request, void* argp);

    // int fcntl(int fd, int cmd, ...);  (F_GETFL: no third argument)
    [LibraryImport(Library, EntryPoint = "fcntl", SetLastError = true)]
    public static partial int fcntl(Microsoft.Win32.SafeHandles.SafeFileHandle fd, int cmd);

    // void *mmap(void *addr, size_t length, int prot, int flags, int fd, off_t offset);
    [LibraryImport(Library, EntryPoint = "mmap", SetLastError = true)]
    public static partial void* mmap(void* addr, nuint length, int prot, int flags, int fd, long offset);

    // int munmap(void *addr, size_t length);
    [LibraryImport(Library, EntryPoint = "munmap", SetLastError = true)]
    public static partial int munmap(void* addr, nuint length);

    // int eventfd(unsigned int initval, int flags);
    [LibraryImport(Library, EntryPoint = "eventfd", SetLastError = true)]
    public static partial int eventfd(uint initval, int flags);

    // long syscall(long number, ...);  (called with six integer arguments: io_uring_setup, _enter and _register take
    // at most six, and glibc's syscall reads them from the registers and stack as a non-variadic call passes them)
    [LibraryImport(Library, EntryPoint = "syscall", SetLastError = true)]
    public static partial long syscall(long number, long a1, long a2, long a3, long a4, long a5, long a6);

    // int io_uring_setup(u32 entries, struct io_uring_params *p);  (no libc wrapper)
    public static int io_uring_setup(uint entries, io_uring_params* p) =>
        (int)syscall(UringAbi.__NR_io_uring_setup, entries, (long)p, 0, 0, 0, 0);

    // int io_uring_enter(unsigned int fd, unsigned int to_submit, unsigned int min_complete, unsigned int flags,
    //                    const sigset_t *sig, size_t sigsz);
    public static int io_uring_enter(int fd, uint toSubmit, uint minComplete, uint flags) =>
        (int)syscall(UringAbi.__NR_io_uring_enter, fd, toSubmit, minComplete, flags, 0, 0);

    // int io_uring_register(unsigned int fd, unsigned int opcode, void *arg, unsigned int nr_args);
    public static int io_uring_register(int fd, uint opcode, void* arg, uint nrArgs) =>
        (int)syscall(UringAbi.__NR_io_uring_register, fd, opcode, (long)arg, nrArgs, 0, 0);

    // uid_t geteuid(void);
    [LibraryImport(Library, EntryPoint = "geteuid")]
    public static partial uint geteuid();

    // uid_t getuid(void);
    [LibraryImport(Library, EntryPoint = "getuid")]
    public static partial uint getuid();

    // gid_t getgid(void);
    [LibraryImport(Library, EntryPoint = "getgid")]
    public static partial uint getgid();

    private static byte[] Utf8z(string s)
    {
        byte[] bytes = new byte[System.Text.Encoding.UTF8.GetByteCount(s) + 1];
        System.Text.Encoding.UTF8.GetBytes(s, bytes);
        return bytes;
    }
}

/// <summary><c>struct statx</c> (linux/stat.h, the same on every architecture): the fields the binding reads, by offset.</summary>
internal static class StatxLayout
{
    public const int Size = 256;
    public const int stx_mask = 0;               // __u32
    public const int stx_attributes = 8;         // __u64
    public const int stx_attributes_mask = 56;   // __u64
    public const int stx_dev_major = 136;        // __u32
    public const int stx_dev_minor = 140;        // __u32
    public const int stx_mnt_id = 144;           // __u64
}

/// <summary><c>struct iovec</c>.</summary>
[StructLayout(LayoutKind.Sequential)]
internal unsafe struct IoVec
{
    public void* iov_base;
    public nuint iov_len;
}

/// <summary><c>struct pollfd</c>.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct PollFd
{
    public int fd;
    public short events;
    public short revents;
}
