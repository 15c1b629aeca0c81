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

    // int close(int fd);
    [LibraryImport(Library, EntryPoint = "close", SetLastError = true)]
    public static partial int close(int fd);
}
