using BAOverlay.Fuse;

namespace BAOverlayFs;

/// <summary>
/// auto_unmount without fork: the mount process starts this program again in watcher mode with a pipe as its standard
/// input. The pipe's write end lives only in the mount process, so the watcher reads end-of-file when that process
/// exits for any reason, kill -9 included; it then detaches the mount (MNT_DETACH) if, and only if, the mount on the
/// mount point is still the one the mount process made: same FUSE connection device number and same mount id
/// (<see cref="FuseMountIdentity"/>), checked and detached through one descriptor, so a file system mounted there since
/// (a tmpfs, another baoverlayfs) is never removed.
/// </summary>
internal sealed class AutoUnmountWatcher : IDisposable
{
    private int _pipe;

    private AutoUnmountWatcher(int pipe) => _pipe = pipe;

    /// <summary>Starts the watcher for the mount <paramref name="identity"/> on <paramref name="mountPoint"/>
    /// (<c>posix_spawn</c>, its standard output and error on /dev/null); keep the object alive while serving, and
    /// dispose it once unmounted. Null, with a line on standard error, when it cannot be started.</summary>
    public static AutoUnmountWatcher? Start(string mountPoint, FuseMountIdentity? identity)
    {
        if (identity is null)
        {
            Console.Error.WriteLine($"baoverlayfs: auto_unmount: the mount on {mountPoint} has no identity; not watching");
            return null;
        }
        (string fileName, string[] prefix) = Program.Self();
        int devNull = -1;
        (int read, int write) = (-1, -1);
        try
        {
            devNull = Native.OpenDevNull();
            (read, write) = Native.Pipe(); // the write end, close-on-exec, stays in this process only
            Native.Spawn(fileName, [fileName, .. prefix, identity.Value.ToString(), mountPoint],
                Native.EnvironmentWith((Program.WatchVariable, "1"), (Program.ChildVariable, null), (Program.MountPointVariable, null)),
                [(read, 0), (devNull, 1), (devNull, 2)]);
            int kept = write;
            write = -1;
            return new AutoUnmountWatcher(kept);
        }
        catch (IOException e)
        {
            Console.Error.WriteLine($"baoverlayfs: auto_unmount: {e.Message}; not watching");
            return null;
        }
        finally
        {
            foreach (int fd in new[] { devNull, read, write })
            {
                if (fd >= 0)
                {
                    Native.Close(fd);
                }
            }
        }
    }
    /// <summary>Closes the watcher's standard input: it sees end-of-file, finds the mount gone (or not ours) and exits.</summary>
    public void Dispose()
    {
        int pipe = Interlocked.Exchange(ref _pipe, -1);
        if (pipe >= 0)
        {
            Native.Close(pipe);
        }
    }

    /// <summary>Watcher mode: arguments are the mount identity and the mount point.</summary>
    public static int Run(string[] args)
    {
        if (args.Length != 2)
        {
            return 2;
        }
        FuseMountIdentity identity;
        try
        {
            identity = FuseMountIdentity.Parse(args[0]);
        }
        catch (FormatException)
        {
            return 2;
        }
        Native.setsid(); // not killed with the mount process's session or group
        using (Stream input = Console.OpenStandardInput())
        {
            byte[] buffer = new byte[64];
            try
            {
                while (input.Read(buffer) > 0)
                {
                }
            }
            catch (IOException)
            {
                // the pipe broke: the mount process is gone
            }
        }
        try
        {
            FuseMountIdentity.DetachIfSame(args[1], identity);
        }
        catch (IOException)
        {
            return 1; // ours, but the kernel refused; nobody is left to tell
        }
        return 0;
    }

    /// <summary>mountinfo's octal escapes (<c>\040</c> for a space, ...).</summary>
    internal static string Unescape(string field)
    {
        if (!field.Contains('\\', StringComparison.Ordinal))
        {
            return field;
        }
        var bytes = new List<byte>();
        for (int i = 0; i < field.Length; i++)
        {
            if (field[i] == '\\' && IsOctal(field, i + 1))
            {
                bytes.Add((byte)Convert.ToInt32(field.Substring(i + 1, 3), 8));
                i += 3;
            }
            else
            {
                bytes.AddRange(System.Text.Encoding.UTF8.GetBytes(field[i].ToString()));
            }
        }
        return System.Text.Encoding.UTF8.GetString(bytes.ToArray());
    }

    private static bool IsOctal(string s, int at) =>
        at + 3 <= s.Length && s[at] is >= '0' and <= '7' && s[at + 1] is >= '0' and <= '7' && s[at + 2] is >= '0' and <= '7';
}
