using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using Mono.Unix.Native;

namespace BAOverlay.Tests.Store;

/// <summary>
/// A directory served over a real network file system: an <c>sshd</c> started on 127.0.0.1 (a free port, a
/// throwaway host key and client key in a temporary folder, <c>sshd -D -f CONFIG</c>) and <c>sshfs</c> mounting the
/// directory on a mount point of its own. Traffic stays on the loopback address. Disposing unmounts and stops sshd,
/// also when the test failed. <see cref="SshdProcessId"/> is exposed so that a test can stop (SIGSTOP) or kill the
/// server under a reader to see how it copes with a share that hangs or goes away.
/// </summary>
/// <remarks>
/// The mount is made with <c>dir_cache=no</c> (sshfs otherwise keeps directory listings for 20 s, longer than a store's
/// refresh period) and <c>no_contain_symlinks</c> (Debian's sshfs refuses to read absolute symbolic links by default;
/// a layer holds many, and the store never follows them). Needs root (sshd's privilege separation, and FUSE mounts),
/// <c>sshd</c> (Debian openssh-server), <c>ssh</c> (openssh-client) and <c>sshfs</c>; otherwise the test is skipped
/// with the reason.
/// </remarks>
internal sealed class SshfsStore : IDisposable
{
    private readonly TempDir _keys;
    private Process? _sshd;
    private Process? _sshfs;
    private bool _mounted;

    private SshfsStore(string exported, TempDir keys, string mountPoint, string connectionOptions)
    {
        Exported = exported;
        _keys = keys;
        MountPoint = mountPoint;
        _connectionOptions = connectionOptions;
    }

    /// <summary>The default connection options: a server that stops answering is given up after about 10 s.</summary>
    public const string DefaultConnectionOptions = "ServerAliveInterval=5,ServerAliveCountMax=2";

    /// <summary>
    /// Connection options that bound every call through the mount, data and metadata alike, when the server hangs
    /// (SIGSTOP) or goes away: the connection is declared dead after about 3 s without an answer, sshfs reconnects
    /// (answering EIO meanwhile), and a connection attempt to a server that does not answer gives up after 2 s.
    /// </summary>
    public const string BoundedConnectionOptions = "ServerAliveInterval=1,ServerAliveCountMax=2,ConnectTimeout=2,reconnect";

    private readonly string _connectionOptions;

    /// <summary>The local directory the server exports.</summary>
    public string Exported { get; }

    /// <summary>Where sshfs mounts <see cref="Exported"/>: the same files, reached through SFTP.</summary>
    public string MountPoint { get; }

    /// <summary>The sshd serving the mount (its <c>-D</c> listener; each connection is served by a child of it).</summary>
    public int SshdProcessId => _sshd?.Id ?? throw new InvalidOperationException("sshd is not running");

    /// <summary>Every process id of the server side: the listener and the session processes it forked.</summary>
    public IReadOnlyList<int> ServerProcessIds()
    {
        var ids = new List<int> { SshdProcessId };
        var pending = new Queue<int>(ids);
        while (pending.Count > 0)
        {
            int parent = pending.Dequeue();
            string listed;
            try
            {
                listed = File.ReadAllText($"/proc/{parent}/task/{parent}/children");
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                continue; // the process ended meanwhile (a connection's server process does when its client goes)
            }
            foreach (string text in listed.Split(' ', StringSplitOptions.RemoveEmptyEntries))
            {
                int child = int.Parse(text, System.Globalization.CultureInfo.InvariantCulture);
                ids.Add(child);
                pending.Enqueue(child);
            }
        }
        return ids;
    }

    /// <summary>Skips the test (with the reason) when root, sshd, ssh-keygen, sshfs or /dev/fuse is missing.</summary>
    public static void RequireTools()
    {
        if (Syscall.geteuid() != 0)
        {
            Assert.Ignore("the sshfs store needs root: sshd's privilege separation and the FUSE mount of sshfs");
        }
        if (!File.Exists("/dev/fuse"))
        {
            Assert.Ignore("/dev/fuse does not exist (load the fuse module, or give the container --device /dev/fuse)");
        }
        foreach (string tool in new[] { "/usr/sbin/sshd", "ssh-keygen", "ssh", "sshfs", "fusermount3" })
        {
            if (Which(tool) is null)
            {
                Assert.Ignore($"{tool} is not installed (Debian: apt-get install openssh-server openssh-client sshfs fuse3)");
            }
        }
    }

    /// <summary>Starts sshd and mounts <paramref name="exported"/> through sshfs at a fresh mount point.</summary>
    /// <param name="exported">The directory to serve.</param>
    /// <param name="connectionOptions">sshfs/ssh options on what to do when the server does not answer
    /// (<see cref="DefaultConnectionOptions"/>, <see cref="BoundedConnectionOptions"/>).</param>
    public static SshfsStore Start(string exported, string connectionOptions = DefaultConnectionOptions)
    {
        RequireTools();
        var keys = new TempDir();
        string mountPoint = keys.File("mnt");
        Directory.CreateDirectory(mountPoint);
        var store = new SshfsStore(Path.GetFullPath(exported), keys, mountPoint, connectionOptions);
        try
        {
            store.StartServer();
            store.Mount();
            return store;
        }
        catch
        {
            store.Dispose();
            throw;
        }
    }

    private void StartServer()
    {
        Run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", _keys.File("host_key"));
        Run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", _keys.File("client_key"));
        File.Copy(_keys.File("client_key.pub"), _keys.File("authorized_keys"));
        Directory.CreateDirectory("/run/sshd"); // privilege separation directory, which sshd checks for
        string failures = "";
        for (int attempt = 0; attempt < 3; attempt++)
        {
            // A free port is picked by binding port 0 and closing; another process may take it before sshd binds, so
            // a failure to start is retried with another.
            int port = FreePort();
            if (TryStartServer(port, ref failures))
            {
                return;
            }
        }
        throw new IOException($"sshd did not start on 127.0.0.1: {failures}");
    }

    /// <summary>Kills the server, the listener and every session process (SIGKILL): the connection drops.</summary>
    public void KillServer()
    {
        foreach (int id in ServerProcessIds())
        {
            Syscall.kill(id, Signum.SIGKILL);
        }
        _sshd!.WaitForExit();
        _sshd.Dispose();
        _sshd = null;
    }

    /// <summary>Starts the server again on the same port, after <see cref="KillServer"/>.</summary>
    public void RestartServer()
    {
        string failures = "";
        var until = Stopwatch.StartNew();
        while (!TryStartServer(Port, ref failures))
        {
            if (until.Elapsed > TimeSpan.FromSeconds(30))
            {
                throw new IOException($"sshd did not start again on 127.0.0.1:{Port}: {failures}");
            }
            Thread.Sleep(200);
        }
    }

    private bool TryStartServer(int port, ref string failures)
    {
        File.WriteAllText(_keys.File("sshd_config"), $"""
            ListenAddress 127.0.0.1
            Port {port}
            HostKey {_keys.File("host_key")}
            AuthorizedKeysFile {_keys.File("authorized_keys")}
            PidFile none
            PermitRootLogin prohibit-password
            PasswordAuthentication no
            KbdInteractiveAuthentication no
            UsePAM no
            StrictModes no
            Subsystem sftp internal-sftp
            LogLevel ERROR

            """);
        var start = new ProcessStartInfo("/usr/sbin/sshd") { RedirectStandardError = true, RedirectStandardOutput = true };
        foreach (string arg in new[] { "-D", "-e", "-f", _keys.File("sshd_config") })
        {
            start.ArgumentList.Add(arg);
        }
        _sshd = Process.Start(start)!;
        Task<string> error = _sshd.StandardError.ReadToEndAsync();
        if (WaitListening(port, _sshd))
        {
            Port = port;
            return true;
        }
        _sshd.WaitForExit(5_000);
        failures += error.IsCompleted ? error.Result : "";
        StopServer();
        return false;
    }

    /// <summary>The port sshd listens on.</summary>
    public int Port { get; private set; }

    private void Mount()
    {
        // In the foreground (-f) as a child of the test: its own daemon would keep the test's pipes open through the
        // ssh process it starts, and a child can be waited for and killed by its id.
        var start = new ProcessStartInfo("sshfs") { RedirectStandardError = true, RedirectStandardOutput = true };
        foreach (string arg in (string[])["-f", .. MountArguments(MountPoint)])
        {
            start.ArgumentList.Add(arg);
        }
        _sshfs = Process.Start(start)!;
        _ = _sshfs.StandardOutput.ReadToEndAsync();
        Task<string> error = _sshfs.StandardError.ReadToEndAsync();
        var until = Stopwatch.StartNew();
        while (!IsMounted(MountPoint))
        {
            if (_sshfs.HasExited || until.Elapsed > TimeSpan.FromSeconds(30))
            {
                string message = _sshfs.HasExited ? $"exit {_sshfs.ExitCode}: {error.Result}" : "not mounted after 30 s";
                throw new IOException($"sshfs {Exported} {MountPoint}: {message}");
            }
            Thread.Sleep(20);
        }
        _mounted = true;
    }

    /// <summary>The arguments of an sshfs mount of the exported directory on <paramref name="mountPoint"/> (after the
    /// program name and any -f), for another "host" that mounts the same share itself, in a mount namespace of its own.</summary>
    public string[] MountArguments(string mountPoint) =>
    [
        "-o", $"port={Port},IdentityFile={_keys.File("client_key")},StrictHostKeyChecking=no,UserKnownHostsFile=/dev/null,BatchMode=yes",
        "-o", "dir_cache=no,no_contain_symlinks," + _connectionOptions,
        $"root@127.0.0.1:{Exported}", mountPoint,
    ];

    /// <summary>The sshfs client process (in the foreground).</summary>
    public int SshfsProcessId => _sshfs?.Id ?? throw new InvalidOperationException("sshfs is not running");

    private static bool IsMounted(string mountPoint) =>
        File.ReadLines("/proc/self/mountinfo").Any(line => line.Split(' ') is { Length: > 4 } fields && fields[4] == mountPoint);

    private static bool WaitListening(int port, Process sshd)
    {
        var until = Stopwatch.StartNew();
        while (until.Elapsed < TimeSpan.FromSeconds(20) && !sshd.HasExited)
        {
            try
            {
                using var client = new TcpClient();
                client.Connect(IPAddress.Loopback, port);
                return true;
            }
            catch (SocketException)
            {
                Thread.Sleep(50);
            }
        }
        return false;
    }

    private static int FreePort()
    {
        var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        int port = ((IPEndPoint)listener.LocalEndpoint).Port;
        listener.Stop();
        return port;
    }

    private void StopServer()
    {
        if (_sshd is null)
        {
            return;
        }
        foreach (int id in ServerProcessIds())
        {
            Syscall.kill(id, Signum.SIGCONT); // a test may have stopped it
        }
        if (!_sshd.HasExited)
        {
            _sshd.Kill(entireProcessTree: true);
            _sshd.WaitForExit();
        }
        _sshd.Dispose();
        _sshd = null;
    }

    public void Dispose()
    {
        if (_mounted)
        {
            // Unmount before stopping the server, so that sshfs leaves cleanly; lazily if something still holds it.
            if (RunQuiet("fusermount3", "-u", MountPoint) != 0)
            {
                RunQuiet("umount", "-l", MountPoint);
            }
            _mounted = false;
        }
        if (_sshfs is not null)
        {
            if (!_sshfs.WaitForExit(10_000))
            {
                _sshfs.Kill();
                _sshfs.WaitForExit();
            }
            _sshfs.Dispose();
            _sshfs = null;
        }
        StopServer();
        if (!IsMounted(MountPoint)) // never delete recursively through a mount that is still there
        {
            _keys.Dispose();
        }
    }

    private static string? Which(string tool)
    {
        if (tool.Contains('/'))
        {
            return File.Exists(tool) ? tool : null;
        }
        foreach (string directory in (Environment.GetEnvironmentVariable("PATH") ?? "/usr/bin:/bin").Split(':'))
        {
            string candidate = Path.Combine(directory, tool);
            if (File.Exists(candidate))
            {
                return candidate;
            }
        }
        return null;
    }

    private static void Run(string program, params string[] args)
    {
        int exit = RunCapturing(program, args, out string error);
        if (exit != 0)
        {
            throw new IOException($"{program} {string.Join(' ', args)}: exit {exit}: {error}");
        }
    }

    private static int RunQuiet(string program, params string[] args) => RunCapturing(program, args, out _);

    private static int RunCapturing(string program, string[] args, out string error)
    {
        var start = new ProcessStartInfo(program) { RedirectStandardError = true, RedirectStandardOutput = true };
        foreach (string arg in args)
        {
            start.ArgumentList.Add(arg);
        }
        using Process process = Process.Start(start)!;
        Task<string> output = process.StandardOutput.ReadToEndAsync();
        error = process.StandardError.ReadToEnd();
        process.WaitForExit();
        _ = output.Result;
        return process.ExitCode;
    }
}
