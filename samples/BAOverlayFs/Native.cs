using System.Runtime.InteropServices;

namespace BAOverlayFs;

/// <summary>The few libc calls the program needs beyond what .NET offers.</summary>
internal static partial class Native
{
    public const int MNT_DETACH = 2;
    private const int O_RDWR = 2;

    [LibraryImport("libc", EntryPoint = "setsid", SetLastError = true)]
    public static partial int setsid();

    [LibraryImport("libc", EntryPoint = "umount2", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int umount2(string target, int flags);

    [LibraryImport("libc", EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int open(string path, int flags);

    [LibraryImport("libc", EntryPoint = "dup2", SetLastError = true)]
    private static partial int dup2(int oldFd, int newFd);

    [LibraryImport("libc", EntryPoint = "close", SetLastError = true)]
    private static partial int close(int fd);

    /// <summary>Points standard input, output and error at /dev/null, as a daemon does once it has said it is ready.</summary>
    public static void DetachStdio()
    {
        int fd = open("/dev/null", O_RDWR);
        if (fd < 0)
        {
            return;
        }
        dup2(fd, 0);
        dup2(fd, 1);
        dup2(fd, 2);
        if (fd > 2)
        {
            close(fd);
        }
    }
}
