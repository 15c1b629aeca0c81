using System.Runtime.InteropServices;

namespace BAOverlayFs;

/// <summary>The few libc calls the program needs beyond what .NET offers.</summary>
internal static partial class Native
{
    private const int O_RDWR = 2;

    [LibraryImport("libc", EntryPoint = "setsid", SetLastError = true)]
    public static partial int setsid();

    [LibraryImport("libc", EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int open(string path, int flags);

    [LibraryImport("libc", EntryPoint = "realpath", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial nint realpath(string path, nint resolved);

    [LibraryImport("libc", EntryPoint = "free")]
    private static partial void free(nint pointer);

    /// <summary>The canonical path (symbolic links resolved, no trailing slash), as /proc/self/mountinfo shows
    /// mount points; the path itself when it cannot be resolved.</summary>
    public static string RealPath(string path)
    {
        nint resolved = realpath(path, 0);
        if (resolved == 0)
        {
            return path;
        }
        try
        {
            return Marshal.PtrToStringUTF8(resolved) ?? path;
        }
        finally
        {
            free(resolved);
        }
    }

    [LibraryImport("libc", EntryPoint = "dup2", SetLastError = true)]
    private static partial int dup2(int oldFd, int newFd);

    [LibraryImport("libc", EntryPoint = "close", SetLastError = true)]
    private static partial int close(int fd);

    /// <summary>
    /// Points standard input, output and error at /dev/null, as a daemon does once it has said it is ready, and
    /// with them every other descriptor of this process open on the same files: .NET's Console writes through
    /// duplicates of descriptors 1 and 2, which would otherwise keep the caller's pipes open (a caller that reads
    /// our standard error to its end, as containers-storage does, would wait for ever). The duplicates are
    /// re-pointed (dup2), not closed, since the runtime still owns their numbers.
    /// </summary>
    public static void DetachStdio()
    {
        var standard = new HashSet<(ulong Dev, ulong Ino)>();
        for (int fd = 0; fd <= 2; fd++)
        {
            if (Mono.Unix.Native.Syscall.fstat(fd, out Mono.Unix.Native.Stat stat) == 0)
            {
                standard.Add((stat.st_dev, stat.st_ino));
            }
        }
        int devNull = open("/dev/null", O_RDWR);
        if (devNull < 0)
        {
            return;
        }
        if (Mono.Unix.Native.Syscall.fstat(devNull, out Mono.Unix.Native.Stat nullStat) == 0)
        {
            standard.Remove((nullStat.st_dev, nullStat.st_ino));
        }
        var targets = new List<int> { 0, 1, 2 };
        try
        {
            foreach (string entry in Directory.GetFileSystemEntries("/proc/self/fd"))
            {
                if (int.TryParse(Path.GetFileName(entry), out int fd) && fd > 2 && fd != devNull
                    && Mono.Unix.Native.Syscall.fstat(fd, out Mono.Unix.Native.Stat stat) == 0
                    && standard.Contains((stat.st_dev, stat.st_ino)))
                {
                    targets.Add(fd);
                }
            }
        }
        catch (IOException)
        {
            // no /proc: the standard descriptors alone
        }
        foreach (int fd in targets)
        {
            dup2(devNull, fd);
        }
        if (devNull > 2)
        {
            close(devNull);
        }
    }
}
