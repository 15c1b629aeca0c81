using System.Diagnostics;
using System.Text;
using BAOverlay.FileSystem;
using BAOverlay.Fuse;
using BAOverlay.Tests.FileSystem;
using Mono.Unix.Native;

namespace BAOverlay.Tests.Fuse;

/// <summary>
/// Mounts an <see cref="OverlayFileSystem"/> on a temp directory, serves it from background threads of this process
/// (the session's own FUSE protocol layer, or libfuse3 where a test asks for it), and uses it with plain .NET file
/// APIs. Needs root (the binding mounts with mount(2)) and /dev/fuse, and libfuse3 for the libfuse tests; ignored,
/// saying which is missing, otherwise. Every test unmounts in a finally block.
/// </summary>
[TestFixture]
[Platform("Linux")]
[NonParallelizable]
public sealed partial class FuseMountTests
{
    private const int BigSize = 1 << 20;

    [Test]
    public void ReadsWritesAndChangesTheTreeThroughTheKernel()
    {
        using var fixture = new OverlayFixture(lowers: 1);
        string lower = fixture.Lowers[0];
        OverlayFixture.WriteFile(Path.Combine(lower, "hello.txt"), "hello from lower");
        byte[] big = Checks.RandomBytes(new Random(7), BigSize);
        OverlayFixture.WriteFile(Path.Combine(lower, "big.bin"), big);
        OverlayFixture.WriteFile(Path.Combine(lower, "dir", "a.txt"), "a");
        OverlayFixture.WriteFile(Path.Combine(lower, "dir", "b.txt"), "b");

        using Mounted mounted = Mounted.Start(fixture, out string mnt);

        string mountLine = File.ReadAllLines("/proc/self/mounts").Single(l => l.Split(' ')[1] == mnt);
        Assert.That(mountLine, Does.StartWith($"baoverlay-test {mnt} fuse.baoverlay "), "mounted by the session with its fsname and subtype");

        // list and read
        Assert.That(Names(mnt), Is.EqualTo(new[] { "big.bin", "dir", "hello.txt" }));
        Assert.That(File.ReadAllText(Path.Combine(mnt, "hello.txt")), Is.EqualTo("hello from lower"));
        Assert.That(new FileInfo(Path.Combine(mnt, "big.bin")).Length, Is.EqualTo(BigSize));

        // write into the middle of a large lower file: block-level copy-up
        byte[] patch = Encoding.ASCII.GetBytes("written through FUSE");
        using (var stream = new FileStream(Path.Combine(mnt, "big.bin"), FileMode.Open, FileAccess.ReadWrite))
        {
            stream.Position = 300_000;
            stream.Write(patch);
            stream.Flush(flushToDisk: true);
        }
        patch.CopyTo(big, 300_000);
        string upperBig = Path.Combine(fixture.Upper!, "big.bin");
        Assert.That(File.Exists(upperBig), Is.True, "the write copied big.bin up");
        Assert.That(Syscall.lgetxattr(upperBig, "user.baoverlay.bcow", out byte[] _), Is.GreaterThanOrEqualTo(0),
            "the upper big.bin is a B-CoW file (user.baoverlay.bcow), not a whole copy");
        Assert.That(new FileInfo(upperBig).Length, Is.LessThan(BigSize / 2), "only the written blocks are in upper");
        Assert.That(File.ReadAllBytes(Path.Combine(mnt, "big.bin")), Is.EqualTo(big), "reads through the mount return the merged content");
        Assert.That(File.ReadAllBytes(Path.Combine(lower, "big.bin")), Is.Not.EqualTo(big), "the lower file is untouched");

        // create, mkdir, rename, unlink, rmdir, symlink, xattrs, truncate
        Directory.CreateDirectory(Path.Combine(mnt, "newdir"));
        File.WriteAllText(Path.Combine(mnt, "newdir", "x.txt"), "new file");
        File.Move(Path.Combine(mnt, "hello.txt"), Path.Combine(mnt, "newdir", "hello2.txt"));
        File.Delete(Path.Combine(mnt, "dir", "a.txt"));
        File.Delete(Path.Combine(mnt, "dir", "b.txt"));
        Directory.Delete(Path.Combine(mnt, "dir"));
        File.CreateSymbolicLink(Path.Combine(mnt, "link"), "newdir/x.txt");
        Assert.That(Names(mnt), Is.EqualTo(new[] { "big.bin", "link", "newdir" }));
        Assert.That(Names(Path.Combine(mnt, "newdir")), Is.EqualTo(new[] { "hello2.txt", "x.txt" }));
        Assert.That(File.ReadAllText(Path.Combine(mnt, "newdir", "hello2.txt")), Is.EqualTo("hello from lower"));
        Assert.That(File.ReadAllText(Path.Combine(mnt, "link")), Is.EqualTo("new file"));
        Assert.That(new FileInfo(Path.Combine(mnt, "link")).LinkTarget, Is.EqualTo("newdir/x.txt"));
        Assert.That(File.Exists(Path.Combine(lower, "hello.txt")) && Directory.Exists(Path.Combine(lower, "dir")), Is.True, "lower is untouched");

        string x = Path.Combine(mnt, "newdir", "x.txt");
        Assert.That(Syscall.setxattr(x, "user.note", Encoding.UTF8.GetBytes("kept"), XattrFlags.XATTR_AUTO), Is.Zero, "setxattr");
        Assert.That(Syscall.getxattr(x, "user.note", out byte[] note), Is.EqualTo(4), "getxattr");
        Assert.That(Encoding.UTF8.GetString(note), Is.EqualTo("kept"));
        Assert.That(Syscall.listxattr(x, out string[] names), Is.GreaterThanOrEqualTo(0), "listxattr");
        Assert.That(names, Does.Contain("user.note"));
        Assert.That(Syscall.removexattr(x, "user.note"), Is.Zero, "removexattr");
        Assert.That(Syscall.getxattr(x, "user.note", out byte[] _), Is.EqualTo(-1));
        Assert.That(Stdlib.GetLastError(), Is.EqualTo(Errno.ENODATA), "the errno of an overlay failure reaches the caller");

        using (var stream = new FileStream(x, FileMode.Open, FileAccess.Write))
        {
            stream.SetLength(3);
        }
        Assert.That(File.ReadAllText(x), Is.EqualTo("new"));

        Assert.That(Syscall.statvfs(mnt, out Statvfs vfs), Is.Zero, "statfs");
        Assert.That(vfs.f_blocks, Is.GreaterThan(0UL));

        Assert.That(() => File.ReadAllText(Path.Combine(mnt, "missing")), Throws.InstanceOf<FileNotFoundException>());
        Assert.That(mounted.Log, Is.Empty, "no request failed unexpectedly (EIO)");
    }

    [Test]
    public void ManyEntriesAreListedAcrossSeveralReaddirCalls()
    {
        using var fixture = new OverlayFixture(lowers: 1);
        for (int i = 0; i < 600; i++)
        {
            OverlayFixture.WriteFile(Path.Combine(fixture.Lowers[0], "many", $"a-fairly-long-file-name-to-fill-the-buffer-{i:D4}.txt"), "x");
        }
        using Mounted mounted = Mounted.Start(fixture, out string mnt);
        File.WriteAllText(Path.Combine(mnt, "many", "upper.txt"), "u");
        string[] names = Names(Path.Combine(mnt, "many"));
        Assert.That(names, Has.Length.EqualTo(601));
        Assert.That(names.Distinct().Count(), Is.EqualTo(601), "no entry is listed twice");
        Assert.That(mounted.Log, Is.Empty);
    }

    [Test]
    public void UnmountingFromOutsideEndsTheLoop()
    {
        using var fixture = new OverlayFixture(lowers: 1);
        OverlayFixture.WriteFile(Path.Combine(fixture.Lowers[0], "f"), "f");
        using Mounted mounted = Mounted.Start(fixture, out string mnt);
        Assert.That(File.ReadAllText(Path.Combine(mnt, "f")), Is.EqualTo("f"));
        Assert.That(Mounted.ForceUnmount(mnt), Is.True, "fusermount3 -u / umount");
        Assert.That(mounted.Session.WaitForExit(TimeSpan.FromSeconds(20)), Is.True, "the loop ended after an external unmount");
    }

    [Test]
    public void HandlerExceptionsBecomeErrnoRepliesAndNeverEndTheLoop()
    {
        using var fixture = new OverlayFixture(lowers: 1);
        OverlayFixture.WriteFile(Path.Combine(fixture.Lowers[0], "f"), "still served");
        using Mounted mounted = Mounted.Start(fixture, out string mnt, fs => new FailingLookups(new OverlayFuseAdapter(fs)));

        Assert.That(Syscall.stat(Path.Combine(mnt, "boom"), out Stat _), Is.EqualTo(-1));
        Assert.That(Stdlib.GetLastError(), Is.EqualTo(Errno.EIO), "an unexpected exception is answered EIO");
        Assert.That(Syscall.stat(Path.Combine(mnt, "denied"), out Stat _), Is.EqualTo(-1));
        Assert.That(Stdlib.GetLastError(), Is.EqualTo(Errno.EACCES), "an OverlayException is answered with its errno");
        Assert.That(File.ReadAllText(Path.Combine(mnt, "f")), Is.EqualTo("still served"), "the mount keeps working");

        List<string> log = mounted.Log;
        Assert.That(log, Has.Count.EqualTo(1), "one log line, for the EIO only");
        Assert.That(log[0], Does.Contain("lookup").And.Contain("InvalidOperationException").And.Contain("boom"));
    }

    [Test]
    public void WithoutDefaultPermissionsTheOverlayChecksTheCaller()
    {
        using var fixture = new OverlayFixture(lowers: 1);
        string lower = fixture.Lowers[0];
        OverlayFixture.WriteFile(Path.Combine(lower, "secret.txt"), "root only");
        OverlayFixture.WriteFile(Path.Combine(lower, "open.txt"), "anyone");
        Directory.CreateDirectory(Path.Combine(lower, "pub"));
        Assert.That(Syscall.chmod(Path.Combine(lower, "secret.txt"), (FilePermissions)OverlayFixture.Mode("600")), Is.Zero);
        Assert.That(Syscall.chmod(Path.Combine(lower, "open.txt"), (FilePermissions)OverlayFixture.Mode("644")), Is.Zero);
        Assert.That(Syscall.chmod(Path.Combine(lower, "pub"), (FilePermissions)OverlayFixture.Mode("777")), Is.Zero);
        using Mounted mounted = Mounted.Start(fixture, out string mnt, options: new FuseMountOptions { DefaultPermissions = false });

        // setfsuid is per thread: only this thread's requests reach the overlay as uid/gid 65534.
        (Errno secret, Errno open, Errno create) = AsUser(65534, () =>
        {
            Errno Try(string path, OpenFlags flags)
            {
                int fd = Syscall.open(path, flags, (FilePermissions)OverlayFixture.Mode("644"));
                Errno errno = fd < 0 ? Stdlib.GetLastError() : 0;
                if (fd >= 0)
                {
                    Syscall.close(fd);
                }
                return errno;
            }
            return (Try(Path.Combine(mnt, "secret.txt"), OpenFlags.O_RDONLY),
                Try(Path.Combine(mnt, "open.txt"), OpenFlags.O_RDONLY),
                Try(Path.Combine(mnt, "pub", "mine.txt"), OpenFlags.O_CREAT | OpenFlags.O_WRONLY | OpenFlags.O_EXCL));
        });
        Assert.That(secret, Is.EqualTo(Errno.EACCES), "a 0600 root file is refused to uid 65534 by the overlay's own check");
        Assert.That(open, Is.EqualTo((Errno)0), "a 0644 file is readable");
        Assert.That(create, Is.EqualTo((Errno)0), "creating in a 0777 directory is allowed");
        Assert.That(Syscall.lstat(Path.Combine(fixture.Upper!, "pub", "mine.txt"), out Stat made), Is.Zero);
        Assert.That((made.st_uid, made.st_gid), Is.EqualTo((65534u, 65534u)), "the new file belongs to the caller from fuse_ctx");
        Assert.That(File.ReadAllText(Path.Combine(mnt, "secret.txt")), Is.EqualTo("root only"), "root still reads it");
        Assert.That(mounted.Log, Is.Empty);
    }

    [Test]
    public void AReadOnlyMountRefusesWrites()
    {
        using var fixture = new OverlayFixture(lowers: 1);
        OverlayFixture.WriteFile(Path.Combine(fixture.Lowers[0], "f"), "f");
        using Mounted mounted = Mounted.Start(fixture, out string mnt, options: new FuseMountOptions { ReadOnly = true });
        Assert.That(File.ReadAllText(Path.Combine(mnt, "f")), Is.EqualTo("f"));
        Assert.That(Syscall.open(Path.Combine(mnt, "f"), OpenFlags.O_WRONLY), Is.EqualTo(-1));
        Assert.That(Stdlib.GetLastError(), Is.EqualTo(Errno.EROFS));
        Assert.That(File.ReadAllLines("/proc/self/mounts").Single(l => l.Split(' ')[1] == mnt).Split(' ')[3], Does.StartWith("ro,"));
    }

    [Test]
    public void ConcurrentReadersAreServedByTheMultiThreadedLoop()
    {
        using var fixture = new OverlayFixture(lowers: 1);
        byte[] big = Checks.RandomBytes(new Random(3), 4 << 20);
        OverlayFixture.WriteFile(Path.Combine(fixture.Lowers[0], "big.bin"), big);
        using Mounted mounted = Mounted.Start(fixture, out string mnt);
        string path = Path.Combine(mnt, "big.bin");
        Parallel.For(0, 16, new ParallelOptions { MaxDegreeOfParallelism = 8 }, i =>
        {
            using var handle = File.OpenHandle(path);
            byte[] chunk = new byte[256 * 1024];
            long offset = i * (long)chunk.Length;
            Assert.That(RandomAccess.Read(handle, chunk, offset), Is.EqualTo(chunk.Length));
            Assert.That(chunk.AsSpan().SequenceEqual(big.AsSpan((int)offset, chunk.Length)), Is.True, $"chunk {i}");
        });
        Assert.That(mounted.Log, Is.Empty);
    }

    /// <summary>Runs <paramref name="action"/> on a new thread whose fsuid/fsgid are <paramref name="id"/>.</summary>
    private static T AsUser<T>(uint id, Func<T> action)
    {
        T result = default!;
        Exception? failure = null;
        var thread = new Thread(() =>
        {
            NativeIds.setfsgid(id);
            NativeIds.setfsuid(id);
            try
            {
                result = action();
            }
            catch (Exception e)
            {
                failure = e;
            }
            finally
            {
                NativeIds.setfsuid(0);
                NativeIds.setfsgid(0);
            }
        });
        thread.Start();
        thread.Join();
        if (failure is not null)
        {
            throw new AggregateException(failure);
        }
        return result;
    }

    private static string[] Names(string directory) =>
        Directory.GetFileSystemEntries(directory).Select(Path.GetFileName).Order(StringComparer.Ordinal).ToArray()!;

    /// <summary>An overlay mounted on fixture.Root/mnt (or any empty directory) with its loop on a background thread;
    /// disposing unmounts, checks the loop thread ended, and closes everything.</summary>
    internal sealed class Mounted : IDisposable
    {
        private readonly OverlayFileSystem _fileSystem;
        private readonly Thread _loop;
        private readonly string _mountPoint;
        private Exception? _loopFailure;

        private Mounted(OverlayFileSystem fileSystem, FuseSession session, string mountPoint, List<string> log)
        {
            _fileSystem = fileSystem;
            Session = session;
            _mountPoint = mountPoint;
            _log = log;
            _loop = new Thread(() =>
            {
                try
                {
                    LoopResult = session.Run();
                }
                catch (Exception e)
                {
                    _loopFailure = e;
                }
            })
            { IsBackground = true, Name = "fuse-loop" };
        }

        private readonly List<string> _log;

        public FuseSession Session { get; }

        /// <summary>The overlay behind the mount, for changes made other than through it.</summary>
        public OverlayFileSystem FileSystem => _fileSystem;

        /// <summary>The session's log lines (one per request answered EIO).</summary>
        public List<string> Log
        {
            get
            {
                lock (_log)
                {
                    return _log.ToList();
                }
            }
        }

        public int? LoopResult { get; private set; }

        public static Mounted Start(OverlayFixture fixture, out string mountPoint, Func<OverlayFileSystem, IFuseLowLevelHandler>? handler = null, FuseMountOptions? options = null)
        {
            mountPoint = Path.Combine(fixture.Root, "mnt");
            return Start(() => fixture.Open(threshold: 64 * 1024), mountPoint, handler, options);
        }

        /// <summary>Mounts the overlay that <paramref name="open"/> opens on <paramref name="mountPoint"/> (made if missing).</summary>
        public static Mounted Start(Func<OverlayFileSystem> open, string mountPoint, Func<OverlayFileSystem, IFuseLowLevelHandler>? handler = null, FuseMountOptions? options = null)
        {
            RequireFuse();
            if (options?.UseLibFuse == true)
            {
                RequireLibFuse();
            }
            Directory.CreateDirectory(mountPoint);
            OverlayFileSystem fileSystem = open();
            var log = new List<string>();
            FuseSession session;
            try
            {
                options ??= new FuseMountOptions();
                IFuseLowLevelHandler served = handler?.Invoke(fileSystem) ?? new OverlayFuseAdapter(fileSystem, options.DefaultPermissions);
                session = new FuseSession(served, options with
                {
                    FsName = "baoverlay-test",
                    Subtype = "baoverlay",
                    Log = line =>
                    {
                        lock (log)
                        {
                            log.Add(line);
                        }
                        TestContext.Progress.WriteLine("fuse: " + line);
                    },
                });
            }
            catch
            {
                fileSystem.Dispose();
                throw;
            }
            var mounted = new Mounted(fileSystem, session, mountPoint, log);
            try
            {
                IFuseLowLevelHandler inner = session.Handler;
                while (inner is DelegatingFuseHandler delegating)
                {
                    inner = delegating.Inner; // a test's wrapper around the adapter: the adapter still forwards changes
                }
                (inner as OverlayFuseAdapter)?.Attach(session);
                session.Mount(mountPoint);
                mounted._loop.Start();
            }
            catch
            {
                mounted.Dispose();
                throw;
            }
            return mounted;
        }

        public void Dispose()
        {
            try
            {
                try
                {
                    Session.Unmount();
                }
                catch (IOException e)
                {
                    TestContext.Out.WriteLine($"session unmount: {e.Message}");
                }
                if (IsMounted(_mountPoint))
                {
                    ForceUnmount(_mountPoint);
                }
                if ((_loop.ThreadState & System.Threading.ThreadState.Unstarted) == 0)
                {
                    Assert.That(_loop.Join(TimeSpan.FromSeconds(20)), Is.True, "the FUSE loop thread ended after unmount");
                }
                Assert.That(_loopFailure, Is.Null, "the loop did not throw");
                Assert.That(LoopResult, Is.Not.Null.And.GreaterThanOrEqualTo(0), "fuse_session_loop_mt returned without an error");
            }
            finally
            {
                if (IsMounted(_mountPoint))
                {
                    ForceUnmount(_mountPoint);
                }
                if (!_loop.IsAlive)
                {
                    Session.Dispose();
                }
                _fileSystem.Dispose();
            }
        }

        public static bool IsMounted(string mountPoint) =>
            File.ReadAllLines("/proc/self/mounts").Any(l => l.Split(' ') is { Length: > 2 } f && f[1] == mountPoint);

        /// <summary>fusermount3 -u, then umount -l: never leave a mount behind.</summary>
        public static bool ForceUnmount(string mountPoint)
        {
            foreach ((string program, string arguments) in new[] { ("fusermount3", $"-u {mountPoint}"), ("umount", $"-l {mountPoint}") })
            {
                try
                {
                    using Process process = Process.Start(new ProcessStartInfo(program, arguments) { UseShellExecute = false, RedirectStandardError = true })!;
                    process.StandardError.ReadToEnd();
                    process.WaitForExit();
                    if (!IsMounted(mountPoint))
                    {
                        return true;
                    }
                }
                catch (System.ComponentModel.Win32Exception)
                {
                    // not installed: try the next one
                }
            }
            return !IsMounted(mountPoint);
        }

        /// <summary>Ignores the test, saying why, unless /dev/fuse and root are there (the session speaks the FUSE
        /// protocol itself: libfuse3 is needed only by <see cref="RequireLibFuse"/>'s tests).</summary>
        public static void RequireFuse()
        {
            if (!File.Exists("/dev/fuse"))
            {
                Assert.Ignore("/dev/fuse does not exist (load the fuse module, or give the container --device /dev/fuse)");
            }
            if (Syscall.geteuid() != 0)
            {
                Assert.Ignore("mounting needs root (CAP_SYS_ADMIN): the binding mounts with mount(2) and never runs fusermount3");
            }
        }

        /// <summary>Ignores the test, saying what to install, unless libfuse3 loads (for mounts served through it,
        /// <see cref="FuseMountOptions.UseLibFuse"/>).</summary>
        public static void RequireLibFuse()
        {
            try
            {
                FuseSession.EnsureAvailable();
            }
            catch (FuseUnavailableException e)
            {
                Assert.Ignore(e.Message);
            }
        }
    }

    /// <summary>The overlay adapter, except that looking up "boom" throws a non-overlay exception and "denied" an
    /// OverlayException(EACCES).</summary>
    private sealed class FailingLookups(IFuseLowLevelHandler inner) : DelegatingFuseHandler(inner)
    {
        public override double EntryTimeout => 0;

        public override double AttributeTimeout => 0;

        public override OverlayStat Lookup(ulong parent, string name, FuseContext context) => name switch
        {
            "boom" => throw new InvalidOperationException("boom: a bug in the handler"),
            "denied" => throw new OverlayException(OverlayErrno.EACCES, "denied"),
            _ => Inner.Lookup(parent, name, context),
        };
    }

    private static partial class NativeIds
    {
        // int setfsuid(uid_t fsuid);
        [System.Runtime.InteropServices.LibraryImport("libc")]
        public static partial int setfsuid(uint fsuid);

        // int setfsgid(gid_t fsgid);
        [System.Runtime.InteropServices.LibraryImport("libc")]
        public static partial int setfsgid(uint fsgid);
    }
}
