using System.Runtime.InteropServices;
using BAOverlay.Fuse.Interop;

namespace BAOverlay.UringBench.Interop;

/// <summary>The libc functions the prototype calls, each with its C prototype. io_uring has no libc wrapper:
/// its three system calls go through syscall(2).</summary>
internal static unsafe partial class Native
{
    private const string Libc = "libc";

    public const int O_RDONLY = 0;
    public const int O_RDWR = 2;
    public const int O_CLOEXEC = 0x80000;
    public const int PROT_READ = 1;
    public const int PROT_WRITE = 2;
    public const int MAP_SHARED = 1;
    public const int MAP_POPULATE = 0x8000;
    public const ulong MS_RDONLY = 1;
    public const ulong MS_NOSUID = 2;
    public const ulong MS_NODEV = 4;
    public const int MNT_DETACH = 2;
    public const int AT_FDCWD = -100;
    public const uint STATX_BASIC_STATS = 0x7ff;

    public const int ENOENT = 2;
    public const int EINTR = 4;
    public const int EAGAIN = 11;
    public const int ENODEV = 19;
    public const int ENOSYS = 38;
    public const int ENOTCONN = 107;

    /// <summary>struct iovec.</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct IoVec
    {
        public void* iov_base;
        public nuint iov_len;
    }

    // int open(const char *pathname, int flags);
    [LibraryImport(Libc, EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int open(string pathname, int flags);

    // int close(int fd);
    [LibraryImport(Libc, EntryPoint = "close", SetLastError = true)]
    public static partial int close(int fd);

    // ssize_t read(int fd, void *buf, size_t count);
    [LibraryImport(Libc, EntryPoint = "read", SetLastError = true)]
    public static partial nint read(int fd, void* buf, nuint count);

    // ssize_t writev(int fd, const struct iovec *iov, int iovcnt);
    [LibraryImport(Libc, EntryPoint = "writev", SetLastError = true)]
    public static partial nint writev(int fd, IoVec* iov, int iovcnt);

    // int mount(const char *source, const char *target, const char *filesystemtype, unsigned long mountflags, const void *data);
    [LibraryImport(Libc, EntryPoint = "mount", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int mount(string source, string target, string filesystemtype, ulong mountflags, string data);

    // int umount2(const char *target, int flags);
    [LibraryImport(Libc, EntryPoint = "umount2", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int umount2(string target, int flags);

    // void *mmap(void *addr, size_t length, int prot, int flags, int fd, off_t offset);
    [LibraryImport(Libc, EntryPoint = "mmap", SetLastError = true)]
    public static partial void* mmap(void* addr, nuint length, int prot, int flags, int fd, long offset);

    // int munmap(void *addr, size_t length);
    [LibraryImport(Libc, EntryPoint = "munmap", SetLastError = true)]
    public static partial int munmap(void* addr, nuint length);

    // long syscall(long number, ...);  (called with six integer arguments: io_uring_setup, _enter and _register
    // take at most six, and glibc's syscall reads them from the registers and stack as a non-variadic call passes them)
    [LibraryImport(Libc, EntryPoint = "syscall", SetLastError = true)]
    public static partial long syscall(long number, long a1, long a2, long a3, long a4, long a5, long a6);

    // int sched_setaffinity(pid_t pid, size_t cpusetsize, const cpu_set_t *mask);
    [LibraryImport(Libc, EntryPoint = "sched_setaffinity", SetLastError = true)]
    public static partial int sched_setaffinity(int pid, nuint cpusetsize, ulong* mask);

    // int statx(int dirfd, const char *restrict pathname, int flags, unsigned int mask, struct statx *restrict statxbuf);
    [LibraryImport(Libc, EntryPoint = "statx", SetLastError = true)]
    public static partial int statx(int dirfd, byte* pathname, int flags, uint mask, void* statxbuf);

    // int io_uring_setup(u32 entries, struct io_uring_params *p);
    public static int io_uring_setup(uint entries, io_uring_params* p) =>
        (int)syscall(UringAbi.__NR_io_uring_setup, entries, (long)p, 0, 0, 0, 0);

    // int io_uring_enter(unsigned int fd, unsigned int to_submit, unsigned int min_complete, unsigned int flags,
    //                    const sigset_t *sig, size_t sigsz);
    public static int io_uring_enter(int fd, uint toSubmit, uint minComplete, uint flags) =>
        (int)syscall(UringAbi.__NR_io_uring_enter, fd, toSubmit, minComplete, flags, 0, 0);

    // int io_uring_register(unsigned int fd, unsigned int opcode, void *arg, unsigned int nr_args);
    public static int io_uring_register(int fd, uint opcode, void* arg, uint nrArgs) =>
        (int)syscall(UringAbi.__NR_io_uring_register, fd, opcode, (long)arg, nrArgs, 0, 0);

    /// <summary>The errno of the last call marked SetLastError.</summary>
    public static int Errno => Marshal.GetLastPInvokeError();

    /// <summary>strerror of an errno.</summary>
    public static string Describe(int errno) => Marshal.GetPInvokeErrorMessage(errno);
}
