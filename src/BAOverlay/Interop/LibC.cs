using System.Runtime.InteropServices;

namespace BAOverlay.Interop;

/// <summary>
/// Linux calls that neither .NET nor Mono.Posix expose. Every native declaration of the library lives in this
/// folder, with its C prototype above it.
/// </summary>
internal static partial class LibC
{
    private const string Library = "libc";

    public const int FALLOC_FL_KEEP_SIZE = 0x01;
    public const int FALLOC_FL_PUNCH_HOLE = 0x02;
    public const int FALLOC_FL_ZERO_RANGE = 0x10;

    public const int SEEK_DATA = 3;
    public const int SEEK_HOLE = 4;

    public const int ENXIO = 6;
    public const int EOPNOTSUPP = 95;

    // int fallocate(int fd, int mode, off_t offset, off_t len);
    [LibraryImport(Library, EntryPoint = "fallocate64", SetLastError = true)]
    public static partial int fallocate(int fd, int mode, long offset, long len);

    public const int AT_FDCWD = -100;
    public const uint RENAME_NOREPLACE = 1;
    public const uint RENAME_EXCHANGE = 2;
    public const uint RENAME_WHITEOUT = 4;

    // int renameat2(int olddirfd, const char *oldpath, int newdirfd, const char *newpath, unsigned int flags);
    [LibraryImport(Library, EntryPoint = "renameat2", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int renameat2(int olddirfd, string oldpath, int newdirfd, string newpath, uint flags);

    public const int ENODATA = 61;
    public const int ERANGE = 34;

    // ssize_t lgetxattr(const char *path, const char *name, void *value, size_t size);
    [LibraryImport(Library, EntryPoint = "lgetxattr", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static unsafe partial nint lgetxattr(string path, string name, byte* value, nuint size);

    // ssize_t fgetxattr(int fd, const char *name, void *value, size_t size);
    [LibraryImport(Library, EntryPoint = "fgetxattr", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static unsafe partial nint fgetxattr(Microsoft.Win32.SafeHandles.SafeFileHandle fd, string name, byte* value, nuint size);

    // int fremovexattr(int fd, const char *name);
    [LibraryImport(Library, EntryPoint = "fremovexattr", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int fremovexattr(Microsoft.Win32.SafeHandles.SafeFileHandle fd, string name);

    // ssize_t llistxattr(const char *path, char *list, size_t size);
    [LibraryImport(Library, EntryPoint = "llistxattr", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static unsafe partial nint llistxattr(string path, byte* list, nuint size);

    // off_t lseek(int fd, off_t offset, int whence);
    [LibraryImport(Library, EntryPoint = "lseek64", SetLastError = true)]
    public static partial long lseek(int fd, long offset, int whence);

    // Open file description locks (<fcntl.h>, from <linux/fcntl.h> / <asm-generic/fcntl.h>; Linux 3.15+). Unlike
    // process-associated POSIX locks they belong to the open file description: closing another descriptor of the
    // same file does not drop them, and two opens in one process conflict. What qemu uses to keep images exclusive.
    public const int F_OFD_GETLK = 36;
    public const int F_OFD_SETLK = 37;
    public const short F_RDLCK = 0;
    public const short F_WRLCK = 1;
    public const short F_UNLCK = 2;
    public const short SEEK_SET = 0;

    public const int EACCES = 13;
    public const int EAGAIN = 11;
    public const int EINVAL = 22;
    public const int ENOLCK = 37;
    public const int ENOSYS = 38;
    public const int ENOSPC = 28;
    public const int EISDIR = 21;

    /// <summary><c>struct flock</c> of <c>&lt;bits/fcntl.h&gt;</c> (x86_64 and the other LP64 ABIs; off_t is 64-bit);
    /// its layout is checked against the header by a test.</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct Flock
    {
        public short l_type;    // F_RDLCK, F_WRLCK, F_UNLCK
        public short l_whence;  // SEEK_SET
        public long l_start;
        public long l_len;      // 0: to the end of the file, however far it grows
        public int l_pid;       // 0 for OFD locks (the kernel sets -1 in F_OFD_GETLK answers)
    }

    // int fcntl(int fd, int cmd, ... /* struct flock *arg */);
    // Variadic in C; declared with the one pointer argument the lock commands take (passed in a register as any
    // pointer argument, so the variadic and fixed calling conventions agree on x86_64 and arm64 Linux).
    [LibraryImport(Library, EntryPoint = "fcntl", SetLastError = true)]
    public static unsafe partial int fcntl_lock(int fd, int cmd, Flock* arg);
}
