using System.Reflection;
using System.Runtime.InteropServices;
using BAOverlay.FileSystem;
using BAOverlay.Fuse;

namespace BAOverlayFs;

/// <summary>The mounting process of a backgrounded mount failed (and said why): the serving process leaves quietly.</summary>
internal sealed class MountHandOffException : Exception;

/// <summary>
/// baoverlayfs: mounts a BAOverlay overlay through FUSE with fuse-overlayfs's command line. Without <c>-f</c> it
/// backgrounds like fuse-overlayfs, without forking the runtime: it starts itself again (<c>posix_spawn</c>) as the
/// serving process, in a new session, mounts while that process starts, hands it the mounted <c>/dev/fuse</c>
/// descriptor, and returns 0 once the mount is served, or 1 with the error and nothing left mounted. See
/// docs/baoverlayfs.md.
/// </summary>
internal static class Program
{
    /// <summary>Marks the serving process started by <see cref="Background"/>: it reads the mount's identity on its
    /// standard input, serves the <c>/dev/fuse</c> descriptor <see cref="ChildFuseDescriptor"/>, and reports "ok" on its
    /// standard output once the mount is served.</summary>
    internal const string ChildVariable = "BAOVERLAYFS_CHILD";

    /// <summary>The descriptor number the serving process finds the mounted <c>/dev/fuse</c> on.</summary>
    internal const int ChildFuseDescriptor = 3;

    /// <summary>The mount point as the mounting process checked and resolved it, for the serving process, which must
    /// not look at the path itself (once mounted, looking would wait for its own answer).</summary>
    internal const string MountPointVariable = "BAOVERLAYFS_MOUNTPOINT";

    /// <summary>Marks the auto_unmount watcher process (arguments: mount identity, mount point).</summary>
    internal const string WatchVariable = "BAOVERLAYFS_WATCH";

    private const string Usage = """
        usage: baoverlayfs [-f] [-d] [-s] [-o OPTIONS] [SOURCE] MOUNTPOINT

        Mounts the overlay of lowerdir (highest first), upperdir and workdir on MOUNTPOINT through FUSE,
        like fuse-overlayfs; files copied up from large lower files keep only the written blocks (B-CoW files).
        Needs root, or root of a user namespace with its own mount namespace (rootless: unshare --user
        --map-root-user --mount), since the mount is made with mount(2). Without -f, returns once the mount is live.

        general options:
            -h, --help             print this help and exit
            -V, --version          print the version and exit
            -f                     stay in the foreground
            -d, --debug, -o debug  request tracing on standard error (implies -f)
            -s                     serve requests on one thread (default: multi-threaded)
            -o OPT[,OPT...]        mount options (repeatable)

        overlay options:
            lowerdir=DIR[:DIR...]  read-only layers, highest first; '\:' is a colon inside a path (required)
            store=DIR,image=NAME   instead of lowerdir=: the layers of image NAME (or sha256:DIGEST) of the
                                   layer store DIR (bcow store), verified, and leased for the mount's lifetime;
                                   with cache=, a layer's metadata is checked once per host and publication and
                                   each file's content at its first read (a layer published without a tree
                                   list: hashed whole once); the cache keeps the records; without cache=, every
                                   layer is hashed whole at each mount
            verify=always|once     always: hash every layer at each mount even when this host verified it
                                   before; once (default): trust this host's record (needs cache= to keep one)
            cache=DIR              read the lower layers' files through a hot-zone cache in DIR (local disk):
                                   zones of 256 KiB read again are kept there; when the lower layers' network
                                   file system stops answering, reads of cached zones go on and the others fail
                                   with EIO after store_timeout (state: getfattr -n user.baoverlay.status MOUNT)
            cache_size=BYTES       the cache's budget, with K, M, G or T for KiB.. TiB (default 1G)
            store_timeout=S        seconds a read of a lower file that is not cached may take before it fails
                                   with EIO (default 2)
            upperdir=DIR           writable layer (without it the overlay is read-only)
            workdir=DIR            scratch directory on the upper's file system (required with upperdir)

        FUSE options:
            ro / rw                mount read-only / read-write (default rw)
            suid / nosuid          honour set-user-ID bits and file capabilities (default suid, as fuse-overlayfs)
            dev / nodev            device nodes work as devices (default nodev, as fuse-overlayfs)
            exec / noexec          programs may run from the mount (default exec)
            noatime / atime        access times (default noatime, as fuse-overlayfs)
            allow_other            let other users use the mount (always on when run as root, also
                                   root of a user namespace, as fuse-overlayfs)
            default_permissions    the kernel checks permissions from the mode bits (always on)
            auto_unmount           a watcher process unmounts (lazily) if baoverlayfs dies
            writeback[=1|0]        the kernel's write-back cache (default on, as fuse-overlayfs)
            passthrough[=1|0|all]  the kernel reads and writes whole upper files itself (FUSE passthrough,
                                   Linux 6.9+, root only; default on, but the kernel grants it only with
                                   writeback=0); all: it also reads untouched lower files itself, and an
                                   open for writing or truncate of one fails with ETXTBSY while it is open
            splice[=1|0]           large reads of plain lower and upper files are moved from the file into
                                   /dev/fuse by splice(2), one copy in the kernel instead of two (default 1)
            io_uring[=1|0]         take requests through FUSE over io_uring (Linux 6.14+) where the kernel offers
                                   it, i.e. while /sys/module/fuse/parameters/enable_uring is Y; read/writev on
                                   /dev/fuse otherwise (default 0)
            close_delay=S          seconds a written B-CoW file stays open after its last close; its durable
                                   commit (two fsyncs) happens then, not in close(2) (default 5; 0: at close)
            keep_cache=1|0         keep a file's cached pages from one open to the next (default 1)
            max_write=N            largest write request in bytes (default 131072; libfuse's own is 1 MiB)
            max_readahead=N        most bytes the kernel reads ahead (default: the kernel's, 128 KiB)
            max_threads=N          most worker threads (default 10)
            timeout=S              how long the kernel keeps names, attributes and absent names, in
                                   seconds (default 86400: the kernel sees every change made through the mount)
            entry_timeout=S, attr_timeout=S, negative_timeout=S   the same, one at a time
            fsname=NAME            the mount's source as /proc/mounts shows it (default: SOURCE or baoverlayfs)
            subtype=NAME           the mount's type is fuse.NAME (default baoverlayfs)

        owner options (as fuse-overlayfs):
            squash_to_root         show every file as owned by 0:0 (what is stored is unchanged)
            squash_to_uid=N        show every file as owned by user N
            squash_to_gid=N        show every file as owned by group N
            uidmapping=STORED:SHOWN:LEN[:STORED:SHOWN:LEN...], gidmapping=... (a leading ':' is allowed)
                                   owners stored as STORED+i are shown as SHOWN+i (others as 65534), and
                                   objects created or chowned by SHOWN+i are stored as STORED+i

        accepted for fuse-overlayfs compatibility, without effect:
            static_nlink, noacl, fsync=0, volatile (files are still synced on fsync), context=,
            xattr_permissions=, allow_root, the other atime options
        Other options are ignored with a warning on standard error.

        unmount with: fusermount3 -u MOUNTPOINT, umount MOUNTPOINT, or SIGTERM/SIGINT to the process.
        """;

    private static AutoUnmountWatcher? s_watcher;

    public static int Main(string[] args)
    {
        StartTrace.Mark("main");
        // Mono.Posix's helper library is looked for as "MonoPosixHelper.so" through every library directory before
        // "libMonoPosixHelper.so" beside the program is tried (~50 failed opens): name the file straight away.
        NativeLibrary.SetDllImportResolver(typeof(Mono.Unix.Native.Syscall).Assembly, (name, _, _) =>
            name == "MonoPosixHelper" && NativeLibrary.TryLoad(Path.Combine(AppContext.BaseDirectory, "libMonoPosixHelper.so"), out nint handle)
                ? handle
                : 0);
        if (Environment.GetEnvironmentVariable(WatchVariable) == "1")
        {
            return AutoUnmountWatcher.Run(args);
        }
        // The re-executed mount process: its parent has already printed the warnings.
        bool child = Environment.GetEnvironmentVariable(ChildVariable) == "1";
        CommandLine line;
        try
        {
            line = CommandLine.Parse(args);
            if (line.Help)
            {
                Console.Out.WriteLine(Usage);
                return 0;
            }
            if (line.Version)
            {
                string version = typeof(Program).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion ?? "unknown";
                Console.Out.WriteLine($"baoverlayfs version {version.Split('+')[0]}");
                Console.Out.WriteLine($"BAOverlay for .NET, a fuse-overlayfs replacement with block-level copy-up; FUSE protocol {BAOverlay.Fuse.FuseSession.ProtocolVersion} on /dev/fuse (no libfuse)");
                return 0;
            }
            foreach (string warning in child ? [] : line.Warnings)
            {
                Console.Error.WriteLine("baoverlayfs: " + warning);
            }
            line.Validate(child ? Environment.GetEnvironmentVariable(MountPointVariable) : null);
        }
        catch (UsageException e)
        {
            Console.Error.WriteLine("baoverlayfs: " + e.Message);
            return 1;
        }

        if (!line.Foreground && !child)
        {
            return Background(line, args);
        }
        return Serve(line, child);
    }

    /// <summary>The program to re-execute: the apphost, or <c>dotnet baoverlayfs.dll</c>.</summary>
    internal static (string FileName, string[] Prefix) Self()
    {
        string process = Environment.ProcessPath ?? "dotnet";
        return Path.GetFileNameWithoutExtension(process) == "dotnet"
            ? (process, [Path.Combine(AppContext.BaseDirectory, "baoverlayfs.dll")]) // not Assembly.Location: empty when native
            : (process, []);
    }

    /// <summary>
    /// Backgrounds without forking the runtime: opens <c>/dev/fuse</c>, starts the serving process (this program again,
    /// <see cref="ChildVariable"/> set) with the descriptor as its <see cref="ChildFuseDescriptor"/>, and mounts while
    /// that process starts and opens the layers; then tells it the mount's identity (a line on its standard input) and
    /// waits for its "ok" (its standard output), which comes once the layers are open and the kernel's INIT is
    /// answered. So the mount appears one program start after the command, and the command returns once the mount is
    /// served.
    /// </summary>
    /// <remarks>
    /// <para>A layer at or under the mount point (an overlay mounted on its own lower directory, as
    /// <c>mount -t overlay -o lowerdir=/usr,... /usr</c> can be) must be opened before the mount covers it: then the
    /// mount waits for the serving process's "opened".</para>
    /// <para>Failures, all with exit code 1 and one message: <c>/dev/fuse</c> or the mount refused (said here; the
    /// serving process reads end-of-file on its standard input and leaves without a word); the layers refused (said by
    /// the serving process, on the standard error it shares). A mount made and then not served is detached by the
    /// serving process, and again here, by its identity, so that nothing is left mounted whichever of the two is
    /// killed.</para>
    /// </remarks>
    private static int Background(CommandLine line, string[] args)
    {
        (string fileName, string[] prefix) = Self();
        FuseMountOptions options = MountOptions(line);
        string target;
        int fuse;
        try
        {
            target = FuseSession.MountTarget(line.MountPoint);
            fuse = FuseSession.OpenDevice();
        }
        catch (Exception e) when (e is IOException or FuseUnavailableException)
        {
            Console.Error.WriteLine("baoverlayfs: " + e.Message);
            return 1;
        }
        int controlWrite, statusRead, pid;
        try
        {
            (int controlRead, controlWrite) = Native.Pipe(); // to the serving process: the mount's identity, or end-of-file
            (statusRead, int statusWrite) = Native.Pipe();   // from it: "opened", "ok"; end-of-file when it failed
            try
            {
                StartTrace.Mark("spawn");
                pid = Native.Spawn(fileName, [fileName, .. prefix, .. args],
                    Native.EnvironmentWith((ChildVariable, "1"), (MountPointVariable, line.MountPoint)),
                    [(controlRead, 0), (statusWrite, 1), (fuse, ChildFuseDescriptor)]);
                StartTrace.Mark("spawned");
            }
            finally
            {
                Native.Close(controlRead);
                Native.Close(statusWrite);
            }
        }
        catch (IOException e)
        {
            Native.Close(fuse);
            Console.Error.WriteLine("baoverlayfs: " + e.Message);
            return 1;
        }

        string? answer = null;
        bool opened = false;
        if (LayersUnder(line, target))
        {
            answer = Native.ReadLine(statusRead);
            opened = answer == "opened";
            if (!opened)
            {
                Native.Close(controlWrite);
                return Failed(pid, answer, said: false, target, null, fuse, statusRead);
            }
        }
        FuseMountIdentity identity;
        try
        {
            identity = FuseSession.MountDevice(fuse, target, options);
            StartTrace.Mark("mounted");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            Native.Close(controlWrite); // the serving process reads end-of-file and leaves without a word
            Console.Error.WriteLine("baoverlayfs: " + e.Message);
            return Failed(pid, answer, said: true, target, null, fuse, statusRead);
        }
        Native.Write(controlWrite, identity + "\n"); // a serving process already gone is seen below, as end-of-file
        Native.Close(controlWrite);
        answer = Native.ReadLine(statusRead);
        if (answer == "opened" && !opened)
        {
            answer = Native.ReadLine(statusRead);
        }
        StartTrace.Mark("answered");
        if (answer == "ok")
        {
            // Nothing to flush or release (standard error writes through): leave without the runtime's shutdown, which
            // the caller would wait for. Exiting closes this copy of the descriptor; the serving process holds the
            // connection.
            Native.ExitNow(0);
        }
        return Failed(pid, answer, said: false, target, identity, fuse, statusRead);
    }

    /// <summary>
    /// The serving process failed (it said why on standard error, or <paramref name="answer"/> says it) or was told
    /// to leave (<paramref name="said"/>: this process said why): reaps it, and detaches the mount <paramref name="identity"/> if one was made. The serving process
    /// detaches it too, but may have been killed first. Only our own mount is detached (its identity), and only while
    /// this process still holds the connection (<paramref name="fuse"/>, closed last), so the identity cannot have been
    /// reused by another mount.
    /// </summary>
    /// <returns>1, the exit code.</returns>
    private static int Failed(int pid, string? answer, bool said, string target, FuseMountIdentity? identity, int fuse, int statusRead)
    {
        int exitCode = Reap(pid);
        Native.Close(statusRead);
        if (identity is not null)
        {
            try
            {
                FuseMountIdentity.DetachIfSame(target, identity.Value);
            }
            catch (IOException e)
            {
                Console.Error.WriteLine("baoverlayfs: " + e.Message);
            }
        }
        Native.Close(fuse);
        if (said)
        {
            return 1;
        }
        if (answer is { Length: > 0 } and not "opened")
        {
            Console.Error.WriteLine("baoverlayfs: " + answer);
        }
        else if (exitCode == 0)
        {
            Console.Error.WriteLine("baoverlayfs: the mount process exited before the mount was ready");
        }
        return 1;
    }

    /// <summary>Whether a directory the serving process opens (a layer, the store, the cache) is the mount point or
    /// lies under it, so that it must be opened before the mount covers it. Resolved paths, so symbolic links count.</summary>
    private static bool LayersUnder(CommandLine line, string mountPoint)
    {
        string root = mountPoint.EndsWith('/') ? mountPoint : mountPoint + "/";
        IEnumerable<string?> directories = [.. line.LowerDirectories, line.UpperDirectory, line.WorkDirectory, line.Store, line.CacheDirectory];
        foreach (string? directory in directories)
        {
            if (directory is not null)
            {
                string real = Native.RealPath(Path.GetFullPath(directory));
                if (real == mountPoint || real.StartsWith(root, StringComparison.Ordinal) || root == "/")
                {
                    return true;
                }
            }
        }
        return false;
    }

    /// <summary>Reaps the serving process after a failure: it exits at once, or is killed after 30 s.</summary>
    private static int Reap(int pid)
    {
        int? exitCode = Native.WaitForExit(pid, TimeSpan.FromSeconds(30));
        if (exitCode is null)
        {
            Console.Error.WriteLine("baoverlayfs: the mount process did not report and did not exit; killing it");
            Native.Kill(pid);
            exitCode = Native.WaitForExit(pid, Timeout.InfiniteTimeSpan);
        }
        return exitCode ?? -1;
    }

    /// <summary>The mount options the command line asks for (the same in both processes of a backgrounded mount).</summary>
    private static FuseMountOptions MountOptions(CommandLine line) => new()
    {
        FsName = line.FsName ?? line.Source ?? "baoverlayfs",
        Subtype = line.Subtype ?? "baoverlayfs",
        // As fuse-overlayfs: as root, including root of a user namespace (rootless Podman), always allow_other,
        // since a container's processes run as other users, whom FUSE turns away (EACCES) without it. Inside a
        // user namespace the kernel limits allow_other to that namespace's processes.
        AllowOther = line.AllowOther || Native.geteuid() == 0,
        DefaultPermissions = line.DefaultPermissions,
        ReadOnly = line.ReadOnly,
        AllowSetuid = line.SetUid,
        AllowDevices = line.Devices,
        NoExec = line.NoExec,
        NoAtime = line.NoAtime,
        WritebackCache = line.Writeback,
        Passthrough = line.Passthrough,
        SpliceReads = line.Splice,
        IoUring = line.IoUring,
        MaxWrite = line.MaxWrite,
        MaxReadahead = line.MaxReadahead,
        Debug = line.Debug,
        MaxThreads = line.SingleThreaded ? 1 : line.MaxThreads ?? 10,
    };

    /// <summary>
    /// The serving process's half of the hand-off: waits for the mount's identity on standard input (the mounting
    /// process writes it once mount(2) succeeded, or closes the pipe when it failed).
    /// </summary>
    /// <returns>The identity; null when the mounting process failed (it says why) or is gone.</returns>
    private static FuseMountIdentity? ReceiveMount()
    {
        string? text = Native.ReadLine(0);
        if (text is null)
        {
            return null;
        }
        try
        {
            return FuseMountIdentity.Parse(text);
        }
        catch (FormatException)
        {
            return null;
        }
    }

    /// <summary>The serving process failed before serving: detaches the mount handed to it, if there is one.</summary>
    private static void AbandonMount(CommandLine line)
    {
        // End-of-file on the status pipe first: a mounting process waiting for "opened" before it mounts (a layer
        // under the mount point) then closes its end of the identity pipe instead of waiting for ever.
        Native.PointAtDevNull(1);
        if (ReceiveMount() is FuseMountIdentity identity)
        {
            try
            {
                FuseMountIdentity.DetachIfSame(line.MountPoint, identity);
            }
            catch (IOException e)
            {
                Console.Error.WriteLine("baoverlayfs: " + e.Message);
            }
        }
        Native.Close(ChildFuseDescriptor);
    }

    /// <summary>Mounts and serves until unmounted or signalled.</summary>
    private static int Serve(CommandLine line, bool child)
    {
        if (child)
        {
            Native.setsid(); // leave the caller's session and process group, like a daemon
        }
        OverlayFileSystem fileSystem;
        FuseSession session;
        // The image's layers stay leased while mounted (renewed by the lease's timer), so that garbage collection on
        // any host of the store leaves them alone even once the image is deleted.
        BAOverlay.Store.StoreLease? lease = null;
        BAOverlay.Cache.ZoneCache? cache = null;
        IReadOnlyList<BAOverlay.Store.LayerIndex>? indexes = null;
        try
        {
            if (line.CacheDirectory is not null)
            {
                cache = new BAOverlay.Cache.ZoneCache(new BAOverlay.Cache.ZoneCacheOptions
                {
                    Directory = line.CacheDirectory,
                    BudgetBytes = line.CacheSize ?? 1L << 30,
                    RemoteTimeout = TimeSpan.FromSeconds(line.StoreTimeout ?? 2),
                    AdmitInBackground = true, // a start that makes zones hot is not slowed by copying them in
                    Log = message => Console.Error.WriteLine("baoverlayfs: cache: " + message),
                });
            }
            if (line.Store is not null)
            {
                using var store = BAOverlay.Store.LayerStore.Open(line.Store, new BAOverlay.Store.LayerStoreOptions
                {
                    ReverifyIndexedLayers = line.VerifyAlways,
                    // Every layer is read through the cache, which checks each file of a layer published with its tree
                    // list at its first read from the store: the first mount on a host reads no file content.
                    VerifyFilesAtFirstRead = line.CacheDirectory is not null,
                });
                if (line.CacheDirectory is not null)
                {
                    // The layers' metadata kept beside the cache: lookups and attributes answered locally (checked
                    // against each layer's digest, made again from the layer when missing or damaged). An index is
                    // also this host's record of the layer's verification: a layer verified before is not read again
                    // (the lease and the resolution below then do not hash it), one never verified here is checked
                    // once, by the walk that makes its index: its metadata against its tree list (each file's content
                    // then at its first read), or, without a list, all of it hashed.
                    indexes = store.OpenIndexes(line.Image!, Path.Combine(line.CacheDirectory, "index"),
                        message => Console.Error.WriteLine("baoverlayfs: index: " + message));
                }
                lease = store.LeaseImage(line.Image!);
                line.LowerDirectories.AddRange(store.ResolveLowerDirectories(line.Image!));
            }
            fileSystem = OverlayFileSystem.Open(new OverlayOptions
            {
                LowerDirectories = line.LowerDirectories,
                UpperDirectory = line.UpperDirectory,
                WorkDirectory = line.WorkDirectory,
                CloseDelay = TimeSpan.FromSeconds(line.CloseDelay),
                LowerCache = cache,
                // Store layers come after any lowerdir= ones, which have no index.
                LowerIndexes = indexes is null ? null : [.. Enumerable.Repeat<BAOverlay.Store.LayerIndex?>(null, line.LowerDirectories.Count - indexes.Count), .. indexes],
            });
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException or FuseUnavailableException or OverlayException)
        {
            cache?.Dispose();
            lease?.Dispose();
            Console.Error.WriteLine("baoverlayfs: " + e.Message);
            if (child)
            {
                AbandonMount(line);
            }
            return 1;
        }
        StartTrace.Mark("opened");
        if (child)
        {
            Native.Write(1, "opened\n");
        }
        FuseMountOptions options = MountOptions(line);
        try
        {
            var adapter = new OverlayFuseAdapter(fileSystem, options.DefaultPermissions)
            {
                KeepCache = line.KeepCache,
                PassthroughLowerFiles = line.PassthroughLowerFiles,
                EntryTimeout = line.EntryTimeout,
                AttributeTimeout = line.AttributeTimeout,
                NegativeTimeout = line.NegativeTimeout,
            };
            IFuseLowLevelHandler handler = adapter;
            // as fuse-overlayfs: an explicit squash_to_uid/gid wins over squash_to_root
            uint? squashUid = line.SquashToUid ?? (line.SquashToRoot ? 0u : null);
            uint? squashGid = line.SquashToGid ?? (line.SquashToRoot ? 0u : null);
            if (squashUid is not null || squashGid is not null || line.UidMappings.Count > 0 || line.GidMappings.Count > 0)
            {
                handler = new OwnerMappingHandler(handler, squashUid, squashGid, line.UidMappings, line.GidMappings);
            }
            session = new FuseSession(handler, options);
            adapter.Attach(session);
        }
        catch (Exception e) when (e is IOException or FuseUnavailableException)
        {
            fileSystem.Dispose();
            cache?.Dispose();
            lease?.Dispose();
            Console.Error.WriteLine("baoverlayfs: " + e.Message);
            if (child)
            {
                AbandonMount(line);
            }
            return 1;
        }

        bool signalled = false;
        void Stop(PosixSignalContext context)
        {
            context.Cancel = true; // unmount and return instead of dying with the mount left behind
            Volatile.Write(ref signalled, true);
            ThreadPool.QueueUserWorkItem(_ =>
            {
                try
                {
                    session.Exit();
                }
                catch (IOException e)
                {
                    Console.Error.WriteLine("baoverlayfs: " + e.Message);
                }
            });
        }
        // Registered before mounting, so that no signal between mount and serve can leave a dead mount behind.
        using PosixSignalRegistration term = PosixSignalRegistration.Create(PosixSignal.SIGTERM, Stop);
        using PosixSignalRegistration interrupt = PosixSignalRegistration.Create(PosixSignal.SIGINT, Stop);
        using PosixSignalRegistration hangup = PosixSignalRegistration.Create(PosixSignal.SIGHUP, Stop);

        try
        {
            if (child)
            {
                // The mounting process mounted (or failed to mount) while this one started and opened the layers.
                if (ReceiveMount() is not FuseMountIdentity identity)
                {
                    throw new MountHandOffException(); // it said why, and left nothing mounted
                }
                // Not passed on to processes this one starts (the auto_unmount watcher): only the serving process may
                // hold the connection, so that it ends when this process does.
                Native.SetCloseOnExec(ChildFuseDescriptor);
                session.Adopt(ChildFuseDescriptor, line.MountPoint, identity);
            }
            else
            {
                session.Mount(line.MountPoint);
            }
            StartTrace.Mark("mounted");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or FuseUnavailableException or MountHandOffException)
        {
            if (e is not MountHandOffException)
            {
                Console.Error.WriteLine("baoverlayfs: " + e.Message);
            }
            session.Dispose();
            fileSystem.Dispose();
            cache?.Dispose();
            lease?.Dispose();
            if (child)
            {
                Native.Close(ChildFuseDescriptor);
            }
            return 1;
        }

        // The kernel sends INIT at mount time. The main thread serves (it is the loop's first worker, so an idle mount
        // has no thread waiting on another); this short-lived one reports once INIT is answered, then ends.
        string? startFailure = null;
        var ready = new Thread(() =>
        {
            if (!session.WaitForInit(TimeSpan.FromSeconds(30)))
            {
                startFailure = Volatile.Read(ref signalled)
                    ? $"mount {line.MountPoint}: interrupted by a signal"
                    : $"mount {line.MountPoint}: the kernel did not initialise the FUSE connection";
                Console.Error.WriteLine("baoverlayfs: " + startFailure);
                session.Exit();
                if (!session.WaitForExit(TimeSpan.FromSeconds(10)))
                {
                    Environment.Exit(1); // the loop is stuck: leave rather than free the session under it
                }
                return;
            }
            if (line.AutoUnmount)
            {
                s_watcher = AutoUnmountWatcher.Start(session.MountPoint ?? line.MountPoint, session.Identity);
            }
            StartTrace.Mark("initialised");
            if (child)
            {
                // Standard error, which the caller may read to its end, is let go before "ok" lets the mounting process
                // exit, so that the caller sees the end of it as soon as that process has gone. A failed write means
                // the waiting parent is gone (killed): the mount is live all the same, so keep serving it.
                int status = Native.Duplicate(1);
                if (status < 0)
                {
                    Native.Write(1, "ok\n");
                    Native.DetachStdio();
                }
                else
                {
                    Native.DetachStdio(keep: status);
                    Native.Write(status, "ok\n");
                    Native.Close(status);
                }
            }
        })
        { Name = "fuse-ready", IsBackground = true };
        ready.Start();

        int loopResult = 0;
        Exception? loopFailure = null;
        try
        {
            loopResult = session.Run();
        }
        catch (Exception e)
        {
            loopFailure = e;
        }
        ready.Join();
        session.Dispose();
        fileSystem.Dispose();
        cache?.Dispose(); // commits what was admitted, and writes the heat and state files
        lease?.Dispose();
        s_watcher?.Dispose(); // closes the watcher's standard input: it sees the mount gone and exits
        if (loopFailure is not null)
        {
            Console.Error.WriteLine("baoverlayfs: " + loopFailure.Message);
            return 1;
        }
        if (startFailure is not null)
        {
            return 1;
        }
        return loopResult < 0 ? 1 : 0;
    }
}
