using System.Runtime.InteropServices;

namespace BAOverlayFs;

/// <summary>The few libc calls the program needs beyond what .NET offers.</summary>
internal static unsafe partial class Native
{
    private const int O_RDWR = 2;
    private const int O_CLOEXEC = 0x80000;
    private const int F_DUPFD_CLOEXEC = 1030;
    private const int F_SETFD = 2;
    private const int FD_CLOEXEC = 1;
    private const int WNOHANG = 1;
    private const int SIGKILL = 9;
    private const int EINTR = 4;
    private const short POSIX_SPAWN_SETSIGMASK = 0x08;

    /// <summary>Room for glibc's <c>posix_spawn_file_actions_t</c> (80 bytes on 64-bit) and <c>posix_spawnattr_t</c>
    /// (336 bytes), allocated rather than declared so that no layout is assumed.</summary>
    private const int SpawnObjectSize = 1024;

    // uid_t geteuid(void);
    [LibraryImport("libc", EntryPoint = "geteuid")]
    public static partial uint geteuid();

    // int pipe2(int pipefd[2], int flags);
    [LibraryImport("libc", EntryPoint = "pipe2", SetLastError = true)]
    private static partial int pipe2(int* pipefd, int flags);

    // int fcntl(int fd, int cmd, ... /* int arg */);
    [LibraryImport("libc", EntryPoint = "fcntl", SetLastError = true)]
    private static partial int fcntl(int fd, int cmd, int arg);

    // ssize_t read(int fd, void *buf, size_t count);
    [LibraryImport("libc", EntryPoint = "read", SetLastError = true)]
    private static partial nint read(int fd, byte* buf, nuint count);

    // ssize_t write(int fd, const void *buf, size_t count);
    [LibraryImport("libc", EntryPoint = "write", SetLastError = true)]
    private static partial nint write(int fd, byte* buf, nuint count);

    // pid_t waitpid(pid_t pid, int *wstatus, int options);
    [LibraryImport("libc", EntryPoint = "waitpid", SetLastError = true)]
    private static partial int waitpid(int pid, int* wstatus, int options);

    // int posix_spawn(pid_t *pid, const char *path, const posix_spawn_file_actions_t *file_actions,
    //                 const posix_spawnattr_t *attrp, char *const argv[], char *const envp[]);
    [LibraryImport("libc", EntryPoint = "posix_spawn")]
    private static partial int posix_spawn(int* pid, byte* path, void* fileActions, void* attributes, byte** argv, byte** envp);

    // int posix_spawn_file_actions_init(posix_spawn_file_actions_t *file_actions);
    [LibraryImport("libc", EntryPoint = "posix_spawn_file_actions_init")]
    private static partial int posix_spawn_file_actions_init(void* fileActions);

    // int posix_spawn_file_actions_destroy(posix_spawn_file_actions_t *file_actions);
    [LibraryImport("libc", EntryPoint = "posix_spawn_file_actions_destroy")]
    private static partial int posix_spawn_file_actions_destroy(void* fileActions);

    // int posix_spawn_file_actions_adddup2(posix_spawn_file_actions_t *file_actions, int fildes, int newfildes);
    [LibraryImport("libc", EntryPoint = "posix_spawn_file_actions_adddup2")]
    private static partial int posix_spawn_file_actions_adddup2(void* fileActions, int fd, int newFd);

    // int posix_spawnattr_init(posix_spawnattr_t *attr);
    [LibraryImport("libc", EntryPoint = "posix_spawnattr_init")]
    private static partial int posix_spawnattr_init(void* attributes);

    // int posix_spawnattr_destroy(posix_spawnattr_t *attr);
    [LibraryImport("libc", EntryPoint = "posix_spawnattr_destroy")]
    private static partial int posix_spawnattr_destroy(void* attributes);

    // int posix_spawnattr_setflags(posix_spawnattr_t *attr, short flags);
    [LibraryImport("libc", EntryPoint = "posix_spawnattr_setflags")]
    private static partial int posix_spawnattr_setflags(void* attributes, short flags);

    // int posix_spawnattr_setsigmask(posix_spawnattr_t *attr, const sigset_t *sigmask);
    [LibraryImport("libc", EntryPoint = "posix_spawnattr_setsigmask")]
    private static partial int posix_spawnattr_setsigmask(void* attributes, void* mask);

    /// <summary>A pipe, both ends close-on-exec.</summary>
    /// <exception cref="IOException">The kernel refused (out of descriptors).</exception>
    public static (int Read, int Write) Pipe()
    {
        int* fds = stackalloc int[2];
        if (pipe2(fds, O_CLOEXEC) != 0)
        {
            throw new IOException("pipe2: " + Marshal.GetPInvokeErrorMessage(Marshal.GetLastPInvokeError()));
        }
        return (fds[0], fds[1]);
    }

    /// <summary>
    /// Starts <paramref name="path"/> with <paramref name="argv"/> and <paramref name="environment"/> through
    /// <c>posix_spawn</c> (glibc's is <c>clone(CLONE_VM|CLONE_VFORK)</c> + <c>execve</c>: no fork of the runtime's
    /// address space, safe with its threads), with an empty signal mask and only the descriptors of
    /// <paramref name="descriptors"/> beyond those not close-on-exec: each source descriptor becomes the target number in
    /// the child. No runtime machinery is involved (no SIGCHLD handling, no reaping thread): the caller reaps the child
    /// with <see cref="WaitForExit"/>, or leaves it to be reparented.
    /// </summary>
    /// <returns>The child's pid.</returns>
    /// <exception cref="IOException">The program could not be started (the message names it and says why).</exception>
    public static int Spawn(string path, IReadOnlyList<string> argv, IEnumerable<string> environment, IReadOnlyList<(int Source, int Target)> descriptors)
    {
        // A source that already has its target number would keep close-on-exec through dup2: give every source a
        // number above all targets first.
        int highest = 2;
        foreach ((_, int target) in descriptors)
        {
            highest = Math.Max(highest, target);
        }
        var moved = new List<int>();
        var strings = new List<nint>();
        void* actions = NativeMemory.AllocZeroed(SpawnObjectSize);
        void* attributes = NativeMemory.AllocZeroed(SpawnObjectSize);
        void* emptyMask = NativeMemory.AllocZeroed(128); // sigset_t: 1024 bits in glibc
        byte** nativeEnvironment = null;
        try
        {
            posix_spawn_file_actions_init(actions);
            posix_spawnattr_init(attributes);
            posix_spawnattr_setsigmask(attributes, emptyMask);
            posix_spawnattr_setflags(attributes, POSIX_SPAWN_SETSIGMASK);
            foreach ((int source, int target) in descriptors)
            {
                int copy = fcntl(source, F_DUPFD_CLOEXEC, highest + 1);
                if (copy < 0)
                {
                    throw new IOException($"spawn {path}: descriptor {source}: " + Marshal.GetPInvokeErrorMessage(Marshal.GetLastPInvokeError()));
                }
                moved.Add(copy);
                posix_spawn_file_actions_adddup2(actions, copy, target);
            }
            byte* Utf8(string value)
            {
                nint p = Marshal.StringToCoTaskMemUTF8(value);
                strings.Add(p);
                return (byte*)p;
            }
            List<string> environmentList = [.. environment];
            byte** nativeArgv = stackalloc byte*[argv.Count + 1];
            for (int i = 0; i < argv.Count; i++)
            {
                nativeArgv[i] = Utf8(argv[i]);
            }
            nativeArgv[argv.Count] = null;
            nativeEnvironment = (byte**)NativeMemory.AllocZeroed((nuint)(environmentList.Count + 1), (nuint)sizeof(byte*));
            for (int i = 0; i < environmentList.Count; i++)
            {
                nativeEnvironment[i] = Utf8(environmentList[i]);
            }
            int pid;
            int rc = posix_spawn(&pid, Utf8(path), actions, attributes, nativeArgv, nativeEnvironment);
            if (rc != 0)
            {
                throw new IOException($"cannot start {path}: {Marshal.GetPInvokeErrorMessage(rc)}");
            }
            return pid;
        }
        finally
        {
            foreach (int fd in moved)
            {
                close(fd);
            }
            foreach (nint p in strings)
            {
                Marshal.FreeCoTaskMem(p);
            }
            NativeMemory.Free(nativeEnvironment);
            posix_spawn_file_actions_destroy(actions);
            posix_spawnattr_destroy(attributes);
            NativeMemory.Free(actions);
            NativeMemory.Free(attributes);
            NativeMemory.Free(emptyMask);
        }
    }

    /// <summary>The environment of this process with <paramref name="changes"/> made (a null value removes the
    /// variable), as NAME=VALUE strings for <see cref="Spawn"/>.</summary>
    public static List<string> EnvironmentWith(params (string Name, string? Value)[] changes)
    {
        var result = new List<string>();
        foreach (System.Collections.DictionaryEntry entry in Environment.GetEnvironmentVariables())
        {
            string name = (string)entry.Key;
            if (!Array.Exists(changes, c => c.Name == name))
            {
                result.Add($"{name}={entry.Value}");
            }
        }
        foreach ((string name, string? value) in changes)
        {
            if (value is not null)
            {
                result.Add($"{name}={value}");
            }
        }
        return result;
    }

    /// <summary>Reaps the child <paramref name="pid"/>, waiting up to <paramref name="timeout"/> for it to exit
    /// (checked every 10 ms: only failure paths wait).</summary>
    /// <returns>Its exit code, 128 + the signal that killed it, -1 when it is not our child; null on time-out.</returns>
    public static int? WaitForExit(int pid, TimeSpan timeout)
    {
        long deadline = Environment.TickCount64 + (timeout == Timeout.InfiniteTimeSpan ? long.MaxValue / 2 : (long)timeout.TotalMilliseconds);
        while (true)
        {
            int status;
            int rc = waitpid(pid, &status, WNOHANG);
            if (rc < 0 && Marshal.GetLastPInvokeError() == EINTR)
            {
                continue;
            }
            if (rc < 0)
            {
                return -1;
            }
            if (rc == pid)
            {
                return (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f);
            }
            if (Environment.TickCount64 >= deadline)
            {
                return null;
            }
            Thread.Sleep(10);
        }
    }

    // int kill(pid_t pid, int sig);
    [LibraryImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static partial int kill(int pid, int signal);

    /// <summary>Kills <paramref name="pid"/> (SIGKILL).</summary>
    public static void Kill(int pid) => kill(pid, SIGKILL);

    /// <summary>Sets close-on-exec on <paramref name="fd"/>.</summary>
    public static void SetCloseOnExec(int fd) => fcntl(fd, F_SETFD, FD_CLOEXEC);

    /// <summary>Reads one line (up to <paramref name="limit"/> bytes, without the newline) from <paramref name="fd"/>,
    /// byte by byte so that nothing after the line is consumed.</summary>
    /// <returns>The line; what was read before end-of-file when no newline came; null at end-of-file before any byte.</returns>
    public static string? ReadLine(int fd, int limit = 4096)
    {
        var bytes = new List<byte>();
        byte b;
        while (bytes.Count < limit)
        {
            nint n = read(fd, &b, 1);
            if (n < 0 && Marshal.GetLastPInvokeError() == EINTR)
            {
                continue;
            }
            if (n <= 0)
            {
                return bytes.Count == 0 ? null : System.Text.Encoding.UTF8.GetString(bytes.ToArray());
            }
            if (b == (byte)'\n')
            {
                break;
            }
            bytes.Add(b);
        }
        return System.Text.Encoding.UTF8.GetString(bytes.ToArray());
    }

    /// <summary>Writes <paramref name="text"/> whole to <paramref name="fd"/>.</summary>
    /// <returns>False when the reader is gone (EPIPE) or the write failed.</returns>
    public static bool Write(int fd, string text)
    {
        byte[] bytes = System.Text.Encoding.UTF8.GetBytes(text);
        fixed (byte* start = bytes)
        {
            int done = 0;
            while (done < bytes.Length)
            {
                nint n = write(fd, start + done, (nuint)(bytes.Length - done));
                if (n < 0 && Marshal.GetLastPInvokeError() == EINTR)
                {
                    continue;
                }
                if (n <= 0)
                {
                    return false;
                }
                done += (int)n;
            }
        }
        return true;
    }

    /// <summary>A close-on-exec duplicate of <paramref name="fd"/> numbered above 2, or -1.</summary>
    public static int Duplicate(int fd) => fcntl(fd, F_DUPFD_CLOEXEC, 3);

    // void _exit(int status);
    [LibraryImport("libc", EntryPoint = "_exit")]
    private static partial void _exit(int status);

    /// <summary>Ends the process at once with <paramref name="status"/> (<c>_exit</c>): no runtime shutdown, no atexit
    /// handlers. Only for a process that has nothing left to flush or release.</summary>
    public static void ExitNow(int status) => _exit(status);

    /// <summary>Points <paramref name="fd"/> at /dev/null (dup2), which closes what it was open on.</summary>
    public static void PointAtDevNull(int fd)
    {
        int devNull = open("/dev/null", O_RDWR | O_CLOEXEC);
        if (devNull >= 0)
        {
            dup2(devNull, fd);
            close(devNull);
        }
    }

    /// <summary>Opens /dev/null read-write, close-on-exec.</summary>
    /// <exception cref="IOException">It cannot be opened.</exception>
    public static int OpenDevNull()
    {
        int fd = open("/dev/null", O_RDWR | O_CLOEXEC);
        return fd >= 0 ? fd : throw new IOException("/dev/null: " + Marshal.GetPInvokeErrorMessage(Marshal.GetLastPInvokeError()));
    }

    /// <summary>Closes <paramref name="fd"/> (errors ignored: nothing is left to do about them).</summary>
    public static void Close(int fd) => close(fd);

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
    /// <param name="keep">A descriptor left as it is (a private duplicate of standard output still to be written to).</param>
    public static void DetachStdio(int keep = -1)
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
                if (int.TryParse(Path.GetFileName(entry), out int fd) && fd > 2 && fd != devNull && fd != keep
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
