using System.Diagnostics;
using System.Security.Cryptography;
using System.Text;
using BAOverlay.Fuse;
using BAOverlayFs;
using Mono.Unix.Native;

namespace BAOverlay.Tests.Fuse;

/// <summary>
/// baoverlayfs run rootless, as rootless Podman runs its mount program: by an ordinary user (uid <see cref="User"/>)
/// as root of a user namespace that owns its own mount namespace. Each test starts a holder process, as Podman's pause
/// process, in new user and mount namespaces made by that user (<c>unshare --user --mount</c>); root writes the id maps
/// as newuidmap would (0 is the user, 1..65536 are 200000..265535 on disk); every command of the test then joins the
/// namespaces as that user (<c>setpriv ... nsenter -U -m</c>). The mount exists only inside that mount namespace.
/// </summary>
/// <remarks>
/// The tests need root (to drop to the user and to write the id maps), util-linux (unshare, nsenter, setpriv) and
/// unprivileged user namespaces; they are ignored, saying which is missing, otherwise. The holder's namespaces are
/// made inside a private mount namespace of root's where /dev/fuse is a node of mode 0666, as udev makes it on most
/// systems (minimal containers leave it 0600 root-only); nothing outside the test changes. Every test unmounts inside
/// the namespace and kills, by pid, what it started in a finally block.
/// </remarks>
[TestFixture]
[Platform("Linux")]
[NonParallelizable]
public sealed class RootlessMountTests
{
    /// <summary>The unprivileged user (no passwd entry needed).</summary>
    private const uint User = 4321;

    /// <summary>Where ids 1..65536 inside the namespace are on disk (as a /etc/subuid range would put them).</summary>
    private const uint SubordinateBase = 200000;

    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(30);

    private static readonly Lazy<string?> s_missing = new(FindWhatIsMissing);

    private static string? s_program;

    [Test]
    public void MountsReadsAndUnmountsCleanlyAsRootOfAUserNamespace()
    {
        using var layers = new Layers();
        File.WriteAllText(Path.Combine(layers.Lower, "hello.txt"), "hello from the lower layer");
        layers.ChownToUser();
        using var ns = UserNamespace.Start(layers);
        try
        {
            (int rc, string output, string error) = ns.Run(layers.MountCommand());
            Assert.That(rc, Is.Zero, error);
            Assert.That(output + error, Is.Empty, "nothing printed on success");
            Assert.That(ns.MountLine(layers.Merged), Does.Contain(" - fuse.baoverlayfs baoverlayfs ").And.Contain("allow_other"),
                "mounted in the holder's mount namespace, allow_other as root of the namespace");
            Assert.That(File.ReadAllText("/proc/self/mountinfo"), Does.Not.Contain(layers.Merged), "not in the test's own mount namespace");
            int pid = DaemonPids(layers.Merged).Single();
            Assert.That(File.ReadLines($"/proc/{pid}/status").First(l => l.StartsWith("Uid:", StringComparison.Ordinal)).Split('\t')[1..4],
                Is.All.EqualTo(User.ToString()), "the daemon is the ordinary user on the host");
            Assert.That(new FileInfo($"/proc/{pid}/ns/user").LinkTarget, Is.EqualTo(ns.UserNamespaceLink).And.Not.EqualTo(new FileInfo("/proc/self/ns/user").LinkTarget));

            Assert.That(ns.Sh($"cat {layers.Merged}/hello.txt"), Is.EqualTo("hello from the lower layer"));
            Assert.That(ns.Sh($"stat -c %u:%g {layers.Merged}/hello.txt"), Is.EqualTo("0:0"), "the user's files are root's inside");

            (rc, _, error) = ns.Run(["fusermount3", "-u", layers.Merged]);
            Assert.That(rc, Is.Zero, "fusermount3 -u inside the namespace: " + error);
            Assert.That(ns.MountLine(layers.Merged), Is.Null, "unmounted");
            Assert.That(WaitFor(() => DaemonPids(layers.Merged).Length == 0), Is.True, "the daemon exits once unmounted");
        }
        finally
        {
            Cleanup(ns, layers);
        }
    }

    [Test]
    public void WritingIntoALargeLowerFileCopiesUpOnlyTheWrittenBlocks()
    {
        using var layers = new Layers();
        byte[] big = Checks.RandomBytes(new Random(5), 4 << 20);
        File.WriteAllBytes(Path.Combine(layers.Lower, "big.bin"), big);
        layers.ChownToUser();
        using var ns = UserNamespace.Start(layers);
        try
        {
            Assert.That(ns.Run(layers.MountCommand()).ExitCode, Is.Zero);
            const string patch = "written rootless through baoverlayfs";
            ns.Sh($"printf %s '{patch}' | dd of={layers.Merged}/big.bin bs=4096 seek=2000000 oflag=seek_bytes conv=notrunc status=none");
            Encoding.ASCII.GetBytes(patch).CopyTo(big, 2_000_000);
            Assert.That(ns.Sh($"sha256sum < {layers.Merged}/big.bin").Split(' ')[0], Is.EqualTo(Convert.ToHexStringLower(SHA256.HashData(big))),
                "the whole file reads back with the patch");

            string upper = Path.Combine(layers.Upper, "big.bin");
            Assert.That(Syscall.lgetxattr(upper, "user.baoverlay.bcow", out byte[] _), Is.GreaterThanOrEqualTo(0), "the upper file is a B-CoW file");
            Assert.That(Syscall.lstat(upper, out Stat stat), Is.Zero);
            Assert.That(stat.st_size, Is.LessThan(big.Length / 8), "only the written blocks are in upper");
            Assert.That(stat.st_blocks * 512, Is.LessThan(big.Length / 8), "and only they take space");
            Assert.That((stat.st_uid, stat.st_gid), Is.EqualTo((User, User)), "copied up with the lower file's owner");
            Assert.That(File.ReadAllBytes(Path.Combine(layers.Lower, "big.bin")), Is.Not.EqualTo(big), "the lower file is untouched");
            Assert.That(ns.Run(["umount", layers.Merged]).ExitCode, Is.Zero);
            Assert.That(WaitFor(() => DaemonPids(layers.Merged).Length == 0), Is.True);
            Checks.AssertClean(upper);
        }
        finally
        {
            Cleanup(ns, layers);
        }
    }

    [Test]
    public void CreatedFilesBelongToTheCallerInsideAndToItsMappedIdOnDisk()
    {
        using var layers = new Layers();
        Directory.CreateDirectory(Path.Combine(layers.Lower, "shared"));
        string foreign = Path.Combine(layers.Lower, "foreign");
        Directory.CreateDirectory(Path.Combine(foreign, "mine"));
        layers.ChownToUser();
        Assert.That(Syscall.chmod(Path.Combine(layers.Lower, "shared"), (FilePermissions)Convert.ToUInt32("1777", 8)), Is.Zero);
        Assert.That(Syscall.lchown(foreign, 70000, 70000), Is.Zero, "an owner outside the namespace's map");
        Assert.That(Syscall.chmod(foreign, (FilePermissions)Convert.ToUInt32("777", 8)), Is.Zero);
        using var ns = UserNamespace.Start(layers);
        try
        {
            Assert.That(ns.Run(layers.MountCommand()).ExitCode, Is.Zero);
            string merged = layers.Merged;

            ns.Sh($"echo root > {merged}/by-root.txt");
            Assert.That(ns.Sh($"stat -c %u:%g {merged}/by-root.txt"), Is.EqualTo("0:0"));
            AssertOwnerOnDisk(Path.Combine(layers.Upper, "by-root.txt"), User, User);

            // a container's process running as another user: FUSE lets it in only with allow_other
            ns.Sh($"echo user > {merged}/shared/by-1000.txt", uid: 1000);
            Assert.That(ns.Sh($"stat -c %u:%g {merged}/shared/by-1000.txt", uid: 1000), Is.EqualTo("1000:1000"));
            AssertOwnerOnDisk(Path.Combine(layers.Upper, "shared", "by-1000.txt"), SubordinateBase + 999, SubordinateBase + 999);
            Assert.That(ns.Run(["sh", "-c", $"echo no > {merged}/by-root.txt"], uid: 1000).ExitCode, Is.Not.Zero, "modes still apply");

            ns.Sh($"chown 1001:1002 {merged}/by-root.txt");
            Assert.That(ns.Sh($"stat -c %u:%g {merged}/by-root.txt"), Is.EqualTo("1001:1002"), "chown inside the namespace");
            AssertOwnerOnDisk(Path.Combine(layers.Upper, "by-root.txt"), SubordinateBase + 1000, SubordinateBase + 1001);
            Assert.That(ns.Run(["chown", "70000", $"{merged}/by-root.txt"]).ExitCode, Is.Not.Zero, "an id outside the namespace's map is refused (by the kernel)");

            // A limit: an owner outside the map is seen as the overflow id, 65534, and a copy-up keeps the owner as
            // seen, so the copied-up directory belongs to the namespace's 65534 (where that is not mapped, the
            // copy-up fails with EINVAL).
            Assert.That(ns.Sh($"stat -c %u:%g {merged}/foreign"), Is.EqualTo("65534:65534"));
            ns.Sh($"echo x > {merged}/foreign/mine/f");
            AssertOwnerOnDisk(Path.Combine(layers.Upper, "foreign"), SubordinateBase + 65533, SubordinateBase + 65533);
        }
        finally
        {
            Cleanup(ns, layers);
        }
    }

    [Test]
    public void UnlinkedAndRenamedLowerEntriesStayThatWayInAFreshMount()
    {
        using var layers = new Layers();
        File.WriteAllText(Path.Combine(layers.Lower, "gone.txt"), "to be removed");
        File.WriteAllText(Path.Combine(layers.Lower, "kept.txt"), "kept");
        Directory.CreateDirectory(Path.Combine(layers.Lower, "dir"));
        File.WriteAllText(Path.Combine(layers.Lower, "dir", "inner.txt"), "inner");
        layers.ChownToUser();
        using var ns = UserNamespace.Start(layers);
        Process? foreground = null;
        try
        {
            // first in the foreground, a child of this test, so that its exit status is seen
            foreground = ns.Start(layers.MountCommand("-f"));
            Assert.That(WaitFor(() => ns.MountLine(layers.Merged) is not null || foreground.HasExited), Is.True);
            Assert.That(foreground.HasExited, Is.False, "-f mounts and stays");
            ns.Sh($"rm {layers.Merged}/gone.txt");
            // a directory with lower parts is renamed with a redirect xattr; root of a user namespace may not write
            // the kernel's trusted.overlay.redirect, only the overlay's user.* one
            ns.Sh($"mv {layers.Merged}/dir {layers.Merged}/moved");
            Assert.That(ns.Sh($"ls {layers.Merged}"), Is.EqualTo("kept.txt\nmoved"));
            string whiteout = Path.Combine(layers.Upper, "gone.txt");
            bool device = Syscall.lstat(whiteout, out Stat stat) == 0 && (stat.st_mode & FilePermissions.S_IFMT) == FilePermissions.S_IFCHR && stat.st_rdev == 0;
            Assert.That(device || File.Exists(Path.Combine(layers.Upper, ".wh.gone.txt")), Is.True,
                "a whiteout in upper: a 0/0 device (allowed in a user namespace since Linux 5.8) or the OCI .wh. file");
            Assert.That(File.Exists(Path.Combine(layers.Lower, "gone.txt")), Is.True, "the lower layer is untouched");

            Assert.That(ns.Run(["umount", layers.Merged]).ExitCode, Is.Zero);
            Assert.That(foreground.WaitForExit(Patience), Is.True, "umount inside ends the foreground process");
            Assert.That(foreground.ExitCode, Is.Zero, "a clean exit");

            Assert.That(ns.Run(layers.MountCommand()).ExitCode, Is.Zero, "mounted again");
            Assert.That(ns.Run(["test", "-e", $"{layers.Merged}/gone.txt"]).ExitCode, Is.Not.Zero, "the fresh mount honours the whiteout");
            Assert.That(ns.Sh($"ls {layers.Merged}"), Is.EqualTo("kept.txt\nmoved"), "and the rename");
            Assert.That(ns.Sh($"cat {layers.Merged}/kept.txt {layers.Merged}/moved/inner.txt"), Is.EqualTo("keptinner"));
        }
        finally
        {
            Cleanup(ns, layers, foreground);
        }
    }

    [Test]
    public void AContainersStorageCommandLineWithAutoUnmountSurvivesKillMinus9()
    {
        using var layers = new Layers();
        File.WriteAllText(Path.Combine(layers.Lower, "f"), "f");
        layers.ChownToUser();
        using var ns = UserNamespace.Start(layers);
        try
        {
            // exactly "-o LABEL MERGED", as containers-storage runs a mount_program, which reads standard error to its end
            string label = $"lowerdir={layers.Lower},upperdir={layers.Upper},workdir={layers.Work},volatile,"
                + "context=\"system_u:object_r:container_file_t:s0:c1,c2\",auto_unmount";
            (int rc, string output, string error) = ns.Run([ProgramForUser, "-o", label, layers.Merged]);
            Assert.That((rc, output, error), Is.EqualTo((0, "", "")));
            Assert.That(ns.Sh($"cat {layers.Merged}/f"), Is.EqualTo("f"));
            int[] pids = DaemonPids(layers.Merged);
            Assert.That(pids, Has.Length.EqualTo(2), "the mount process and its watcher");
            int daemon = pids.Single(p => File.ReadAllText($"/proc/{p}/environ").Contains(Program.ChildVariable + "=1", StringComparison.Ordinal));
            Assert.That(Syscall.kill(daemon, Signum.SIGKILL), Is.Zero);
            Assert.That(WaitFor(() => ns.MountLine(layers.Merged) is null, TimeSpan.FromSeconds(10)), Is.True, "the watcher detached the dead mount");
            Assert.That(WaitFor(() => DaemonPids(layers.Merged).Length == 0), Is.True, "and exited");
            Assert.That(ns.Sh($"ls -A {layers.Merged}"), Is.Empty, "the mount point is a plain directory again");
        }
        finally
        {
            Cleanup(ns, layers);
        }
    }

    [TestCase("0600", "", "chmod 0666 /dev/fuse", TestName = "MountingIsRefusedWithWhatToDo(/dev/fuse root-only)")]
    [TestCase("0666", "", "unshare --user --map-root-user --mount", TestName = "MountingIsRefusedWithWhatToDo(no user namespace)")]
    [TestCase("0666", "unshare --user --map-root-user", "mount namespace belongs to an outer one", TestName = "MountingIsRefusedWithWhatToDo(no own mount namespace)")]
    public void MountingIsRefusedWithWhatToDo(string devFuseMode, string prefix, string advice)
    {
        using var layers = new Layers();
        layers.ChownToUser();
        string[] command = [.. prefix.Split(' ', StringSplitOptions.RemoveEmptyEntries), .. layers.MountCommand()];
        try
        {
            (int rc, _, string error) = Exec("unshare", ["--mount", "--propagation", "private", "sh", "-c",
                UserNamespace.DevFuseScript + "exec setpriv --reuid=\"$U\" --regid=\"$U\" --clear-groups \"$@\"", "sh", .. command],
                new Dictionary<string, string> { ["D"] = layers.Dev, ["M"] = devFuseMode, ["U"] = User.ToString() });
            Assert.That(rc, Is.EqualTo(1));
            Assert.That(error.Trim(), Does.StartWith("baoverlayfs: ").And.Contain(advice).And.Not.Contain("\n"), "one line that says what to do");
            Assert.That(DaemonPids(layers.Merged), Is.Empty, "no process is left behind");
        }
        finally
        {
            foreach (int pid in DaemonPids(layers.Merged))
            {
                Syscall.kill(pid, Signum.SIGKILL);
            }
        }
    }

    // ---- helpers ----------------------------------------------------------------------------------------------

    private static void AssertOwnerOnDisk(string path, uint uid, uint gid)
    {
        Assert.That(Syscall.lstat(path, out Stat stat), Is.Zero, path);
        Assert.That((stat.st_uid, stat.st_gid), Is.EqualTo((uid, gid)), $"{path} on disk");
    }

    /// <summary>Unmounts inside the namespace, kills (by pid) the daemons and watchers of this mount point, and ends
    /// the holder, which frees the namespaces.</summary>
    private static void Cleanup(UserNamespace ns, Layers layers, Process? foreground = null)
    {
        if (ns.IsAlive && ns.MountLine(layers.Merged) is not null)
        {
            ns.Run(["umount", "-l", layers.Merged]);
        }
        if (foreground is not null)
        {
            if (!foreground.WaitForExit(TimeSpan.FromSeconds(10)))
            {
                foreground.Kill();
            }
            foreground.Dispose();
        }
        WaitFor(() => DaemonPids(layers.Merged).Length == 0, TimeSpan.FromSeconds(5));
        foreach (int pid in DaemonPids(layers.Merged))
        {
            TestContext.Out.WriteLine($"killing leftover baoverlayfs process {pid}");
            Syscall.kill(pid, Signum.SIGKILL);
        }
    }

    /// <summary>The program as the user can run it: in place, or a copy in a directory the user can reach (when the
    /// build output is under a home directory only root may enter). Ignores the test when even the copy cannot run
    /// (the .NET runtime itself is out of the user's reach).</summary>
    private static string ProgramForUser
    {
        get
        {
            if (s_program is not null)
            {
                return s_program;
            }
            string program = Path.Combine(AppContext.BaseDirectory, "baoverlayfs");
            (int rc, _, string error) = Exec("setpriv", [.. DropToUser, program, "--version"]);
            if (rc != 0)
            {
                string copy = Path.Combine(Path.GetTempPath(), "baoverlayfs-rootless-" + Environment.ProcessId);
                CopyProgram(AppContext.BaseDirectory, copy);
                program = Path.Combine(copy, "baoverlayfs");
                (rc, _, string copyError) = Exec("setpriv", [.. DropToUser, program, "--version"]);
                if (rc != 0)
                {
                    Assert.Ignore($"uid {User} cannot run baoverlayfs, in place ({error.Trim()}) or copied to {copy} ({copyError.Trim()}): "
                        + "the .NET runtime must be readable by that user (DOTNET_ROOT, /usr/share/dotnet, /usr/lib/dotnet)");
                }
            }
            return s_program = program;
        }
    }

    private static void CopyProgram(string from, string to)
    {
        Directory.CreateDirectory(to);
        foreach (string file in Directory.EnumerateFiles(from).Where(f => Path.GetFileName(f).StartsWith("baoverlayfs", StringComparison.Ordinal)
            || Path.GetFileName(f) is "BAOverlay.dll" or "BAOverlay.Fuse.dll" or "Mono.Posix.NETStandard.dll"))
        {
            File.Copy(file, Path.Combine(to, Path.GetFileName(file)), overwrite: true);
        }
        foreach (string file in Directory.EnumerateFiles(Path.Combine(from, "runtimes"), "*Posix*", SearchOption.AllDirectories))
        {
            string target = Path.Combine(to, Path.GetRelativePath(from, file));
            Directory.CreateDirectory(Path.GetDirectoryName(target)!);
            File.Copy(file, target, overwrite: true);
        }
    }

    private static string[] DropToUser => [$"--reuid={User}", $"--regid={User}", "--clear-groups"];

    /// <summary>Why these tests cannot run here, or null.</summary>
    private static string? FindWhatIsMissing()
    {
        if (Syscall.geteuid() != 0)
        {
            return "needs root: to drop to an ordinary user and to write its user namespace's id maps (as newuidmap would)";
        }
        if (!File.Exists("/dev/fuse"))
        {
            return "/dev/fuse does not exist (load the fuse module, or give the container --device /dev/fuse)";
        }
        foreach (string tool in new[] { "unshare", "nsenter", "setpriv", "fusermount3" })
        {
            if (!(Environment.GetEnvironmentVariable("PATH") ?? "/usr/bin:/bin").Split(':').Any(d => File.Exists(Path.Combine(d, tool))))
            {
                return $"{tool} is missing (apt-get install util-linux fuse3)";
            }
        }
        (int rc, _, string error) = Exec("setpriv", [.. DropToUser, "unshare", "--user", "--mount", "true"]);
        if (rc != 0)
        {
            return $"unprivileged user namespaces are disabled here ({error.Trim()}; user.max_user_namespaces={Sysctl("user/max_user_namespaces")}, "
                + $"kernel.unprivileged_userns_clone={Sysctl("kernel/unprivileged_userns_clone")}, "
                + $"kernel.apparmor_restrict_unprivileged_userns={Sysctl("kernel/apparmor_restrict_unprivileged_userns")})";
        }
        for (string? dir = Path.GetTempPath(); dir is not null; dir = Path.GetDirectoryName(dir))
        {
            if (Syscall.stat(dir, out Stat stat) == 0 && (stat.st_mode & FilePermissions.S_IXOTH) == 0)
            {
                return $"{dir} (on the way to the temp directory) is not searchable by other users; set TMPDIR to a directory that is";
            }
        }
        return null;
    }

    private static string Sysctl(string name)
    {
        try
        {
            return File.ReadAllText("/proc/sys/" + name).Trim();
        }
        catch (IOException)
        {
            return "absent";
        }
    }

    /// <summary>baoverlayfs processes (daemons, watchers) whose command line names <paramref name="mountPoint"/>; zombies
    /// (reaped by nobody in some containers) do not count.</summary>
    private static int[] DaemonPids(string mountPoint)
    {
        var pids = new List<int>();
        foreach (string dir in Directory.GetDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(dir), out int pid) || pid == Environment.ProcessId)
            {
                continue;
            }
            try
            {
                string[] argv = File.ReadAllText(Path.Combine(dir, "cmdline")).Split('\0');
                string stat = File.ReadAllText(Path.Combine(dir, "stat"));
                if (!stat[(stat.LastIndexOf(')') + 2)..].StartsWith('Z') && argv.Length > 1
                    && Path.GetFileName(argv[0]) == "baoverlayfs" && argv.Contains(mountPoint))
                {
                    pids.Add(pid);
                }
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                // gone meanwhile
            }
        }
        return [.. pids];
    }

    private static bool WaitFor(Func<bool> condition, TimeSpan? timeout = null)
    {
        var watch = Stopwatch.StartNew();
        while (watch.Elapsed < (timeout ?? Patience))
        {
            if (condition())
            {
                return true;
            }
            Thread.Sleep(20);
        }
        return condition();
    }

    private static ProcessStartInfo StartInfo(string program, IEnumerable<string> args, IReadOnlyDictionary<string, string>? environment)
    {
        var start = new ProcessStartInfo(program) { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = "/" };
        foreach (string arg in args)
        {
            start.ArgumentList.Add(arg);
        }
        start.Environment.Remove(Program.ChildVariable);
        start.Environment.Remove(Program.WatchVariable);
        foreach ((string name, string value) in environment ?? new Dictionary<string, string>())
        {
            start.Environment[name] = value;
        }
        return start;
    }

    /// <summary>Runs a command to its exit and to the end of its output (a backgrounded baoverlayfs lets go of it).</summary>
    private static (int ExitCode, string Output, string Error) Exec(string program, IEnumerable<string> args, IReadOnlyDictionary<string, string>? environment = null)
    {
        ProcessStartInfo start = StartInfo(program, args, environment);
        using var process = Process.Start(start)!;
        Task<string> output = process.StandardOutput.ReadToEndAsync();
        Task<string> error = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(Patience) || !Task.WaitAll([output, error], Patience))
        {
            process.Kill(entireProcessTree: true);
            Assert.Fail($"{program} {string.Join(' ', start.ArgumentList)} did not finish within {Patience}");
        }
        return (process.ExitCode, output.Result, error.Result);
    }

    /// <summary>The layer directories, owned by <see cref="User"/> as a rootless user's storage is.</summary>
    private sealed class Layers : IDisposable
    {
        private readonly TempDir _temp;

        public Layers()
        {
            if (s_missing.Value is string missing)
            {
                Assert.Ignore(missing);
            }
            _temp = new TempDir();
            foreach (string dir in new[] { Lower, Upper, Work, Merged, Dev })
            {
                Directory.CreateDirectory(dir);
            }
            // the shared parent of every test's temp directory was made with root's umask: let the user through
            string parent = Path.GetDirectoryName(_temp.Path)!;
            Assert.That(Syscall.stat(parent, out Stat stat), Is.Zero);
            if ((stat.st_mode & FilePermissions.S_IXOTH) == 0)
            {
                Assert.That(Syscall.chmod(parent, (stat.st_mode & (FilePermissions)0xFFF) | FilePermissions.S_IXOTH), Is.Zero);
            }
        }

        public string Lower => Path.Combine(_temp.Path, "lower");

        public string Upper => Path.Combine(_temp.Path, "upper");

        public string Work => Path.Combine(_temp.Path, "work");

        public string Merged => Path.Combine(_temp.Path, "merged");

        /// <summary>Where root's private mount namespace mounts the tmpfs holding its /dev/fuse node.</summary>
        public string Dev => Path.Combine(_temp.Path, "dev");

        public string[] MountCommand(params string[] flags) =>
            [ProgramForUser, .. flags, "-o", $"lowerdir={Lower},upperdir={Upper},workdir={Work}", Merged];

        /// <summary>Gives every layer file to the user (the dev directory stays root's).</summary>
        public void ChownToUser()
        {
            Assert.That(Syscall.lchown(_temp.Path, User, User), Is.Zero);
            foreach (string path in new[] { Lower, Upper, Work, Merged }.SelectMany(d => Directory.EnumerateFileSystemEntries(d, "*", SearchOption.AllDirectories).Prepend(d)))
            {
                Assert.That(Syscall.lchown(path, User, User), Is.Zero, path);
            }
        }

        public void Dispose() => _temp.Dispose();
    }

    /// <summary>
    /// The holder of a user namespace and the mount namespace it owns, made by <see cref="User"/> (as Podman's pause
    /// process), and a way to run commands inside as that user: root of the namespace by default.
    /// </summary>
    private sealed class UserNamespace : IDisposable
    {
        /// <summary>sh that mounts a tmpfs on $D holding a /dev/fuse node of mode $M and binds it over /dev/fuse;
        /// run in a private mount namespace of root's, so only what runs from there sees it.</summary>
        internal static readonly string DevFuseScript =
            "set -e; mount -t tmpfs -o mode=755 baoverlay-test-dev \"$D\"; "
            + $"mknod -m \"$M\" \"$D/fuse\" c {DevFuseMajorMinor}; mount --bind \"$D/fuse\" /dev/fuse; ";

        private readonly Process _holder;

        private UserNamespace(Process holder, string link)
        {
            _holder = holder;
            UserNamespaceLink = link;
        }

        /// <summary>Whether the holder still runs (and with it, the namespaces).</summary>
        public bool IsAlive => !_holder.HasExited;

        /// <summary>The user namespace's /proc link ("user:[INODE]").</summary>
        public string UserNamespaceLink { get; }

        private static string DevFuseMajorMinor
        {
            get
            {
                Assert.That(Syscall.stat("/dev/fuse", out Stat stat), Is.Zero);
                ulong dev = stat.st_rdev;
                ulong major = ((dev >> 8) & 0xfff) | ((dev >> 32) & ~0xfffUL);
                ulong minor = (dev & 0xff) | ((dev >> 12) & ~0xffUL);
                return $"{major} {minor}";
            }
        }

        public static UserNamespace Start(Layers layers)
        {
            // The holder reads its standard input, a pipe this process holds: it ends with the test process, at the latest.
            ProcessStartInfo start = StartInfo("unshare", ["--mount", "--propagation", "private", "sh", "-c",
                DevFuseScript + "exec setpriv --reuid=\"$U\" --regid=\"$U\" --clear-groups unshare --user --mount cat"],
                new Dictionary<string, string> { ["D"] = layers.Dev, ["M"] = "0666", ["U"] = User.ToString() });
            start.RedirectStandardInput = true;
            var holder = Process.Start(start)!;
            string own = new FileInfo("/proc/self/ns/user").LinkTarget!;
            string? link = null;
            bool entered = WaitFor(() =>
            {
                try
                {
                    link = new FileInfo($"/proc/{holder.Id}/ns/user").LinkTarget;
                    return link != own || holder.HasExited;
                }
                catch (IOException)
                {
                    return holder.HasExited;
                }
            }, TimeSpan.FromSeconds(10));
            if (!entered || holder.HasExited)
            {
                string error = holder.HasExited ? holder.StandardError.ReadToEnd() : "timed out";
                holder.Kill(entireProcessTree: true);
                holder.Dispose();
                Assert.Fail("the holder did not enter a new user namespace: " + error);
            }
            // One write each (the kernel takes a map in one write only): ns root is the user, 1..65536 a subordinate range.
            string map = $"0 {User} 1\n1 {SubordinateBase} 65536\n";
            File.WriteAllBytes($"/proc/{holder.Id}/uid_map", Encoding.ASCII.GetBytes(map));
            File.WriteAllBytes($"/proc/{holder.Id}/gid_map", Encoding.ASCII.GetBytes(map));
            return new UserNamespace(holder, link!);
        }

        /// <summary>Runs a command inside, as root of the namespace or as <paramref name="uid"/> (same gid).</summary>
        public (int ExitCode, string Output, string Error) Run(IEnumerable<string> command, uint uid = 0) =>
            Exec("setpriv", Enter(command, uid));

        /// <summary>Runs sh -c <paramref name="script"/> inside; fails the test unless it succeeds; its output, trimmed.</summary>
        public string Sh(string script, uint uid = 0)
        {
            (int rc, string output, string error) = Run(["sh", "-c", script], uid);
            Assert.That(rc, Is.Zero, $"{script}: {error}");
            return output.Trim();
        }

        /// <summary>Starts a command inside without waiting (nsenter execs it: the process is the command).</summary>
        public Process Start(IEnumerable<string> command)
        {
            var process = Process.Start(StartInfo("setpriv", Enter(command, 0), null))!;
            process.OutputDataReceived += (_, e) => TestContext.Progress.WriteLine("baoverlayfs out: " + e.Data);
            process.ErrorDataReceived += (_, e) => TestContext.Progress.WriteLine("baoverlayfs err: " + e.Data);
            process.BeginOutputReadLine();
            process.BeginErrorReadLine();
            return process;
        }

        /// <summary>The mount on <paramref name="mountPoint"/> as the holder's mount namespace shows it, or null.</summary>
        public string? MountLine(string mountPoint) =>
            File.ReadLines($"/proc/{_holder.Id}/mountinfo").LastOrDefault(l => l.Split(' ') is { Length: > 4 } f && AutoUnmountWatcher.Unescape(f[4]) == mountPoint);

        public void Dispose()
        {
            if (!_holder.HasExited)
            {
                _holder.Kill();
                _holder.WaitForExit(TimeSpan.FromSeconds(10));
            }
            _holder.Dispose();
        }

        private string[] Enter(IEnumerable<string> command, uint uid) =>
            [.. DropToUser, "nsenter", "-t", _holder.Id.ToString(), "-U", "-m", "-S", uid.ToString(), "-G", uid.ToString(), "--", .. command];
    }
}
