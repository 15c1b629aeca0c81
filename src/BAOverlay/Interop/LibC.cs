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

    // ssize_t llistxattr(const char *path, char *list, size_t size);
    [LibraryImport(Library, EntryPoint = "llistxattr", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static unsafe partial nint llistxattr(string path, byte* list, nuint size);

    // off_t lseek(int fd, off_t offset, int whence);
    [LibraryImport(Library, EntryPoint = "lseek64", SetLastError = true)]
    public static partial long lseek(int fd, long offset, int whence);
}
