using System.Runtime.InteropServices;
using BAOverlay.FileSystem;
using Mono.Unix.Native;
using static BAOverlay.Tests.FileSystem.OverlayFixture;

namespace BAOverlay.Tests.FileSystem;

/// <summary>
/// The overlay run without privilege (as a rootless container engine runs it), on a thread whose effective uid is
/// switched to an ordinary user (and group) with the raw setresuid/setresgid system calls, which change that thread only (glibc's wrapper
/// would change every thread of the test process). Needs root to switch.
/// </summary>
public partial class RootlessOverlayTests
{
    internal const uint User = 4321;

    [LibraryImport("libc", SetLastError = true)]
    private static partial long syscall(long number, long a, long b, long c);

    private static long SetresuidNumber => RuntimeInformation.ProcessArchitecture switch
    {
        Architecture.X64 => 117,
        Architecture.Arm64 => 147,
        _ => -1,
    };

    private static long SetresgidNumber => RuntimeInformation.ProcessArchitecture switch
    {
        Architecture.X64 => 119,
        Architecture.Arm64 => 149,
        _ => -1,
    };

    /// <summary>Runs <paramref name="action"/> on a new thread with effective uid <see cref="User"/>; rethrows its failure.</summary>
    internal static void AsUser(Action action)
    {
        Exception? failure = null;
        var thread = new Thread(() =>
        {
            try
            {
                Assert.That(syscall(SetresgidNumber, -1, User, -1), Is.Zero, "setresgid on this thread");
                Assert.That(syscall(SetresuidNumber, -1, User, -1), Is.Zero, "setresuid on this thread");
                Assert.That(Syscall.geteuid(), Is.EqualTo(User));
                action();
            }
            catch (Exception e)
            {
                failure = e;
            }
        });
        thread.Start();
        thread.Join();
        Assert.That(Syscall.geteuid(), Is.Zero, "the test thread is still root");
        if (failure is not null)
        {
            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(failure).Throw();
        }
    }

    internal static void ChownTree(string path)
    {
        Assert.That(Syscall.lchown(path, User, User), Is.Zero);
        if (Directory.Exists(path) && (File.GetAttributes(path) & FileAttributes.ReparsePoint) == 0)
        {
            foreach (string entry in Directory.EnumerateFileSystemEntries(path))
            {
                ChownTree(entry);
            }
        }
    }

    private static OverlayFixture Layers()
    {
        if (Syscall.geteuid() != 0 || SetresuidNumber < 0)
        {
            Assert.Ignore("needs root (to switch one thread to an ordinary user) on x64 or arm64");
        }
        var f = new OverlayFixture();
        WriteFile(Path.Combine(f.Lowers[0], "a"), "lower a");
        WriteFile(Path.Combine(f.Lowers[0], "m", "x"), "x");
        WriteFile(Path.Combine(f.Lowers[1], "m", "y"), "y");
        ChownTree(f.Root);
        return f;
    }

    [Test]
    public void WithoutPrivilegeUnlinkingACopiedUpFileHidesTheLowerOne()
    {
        using OverlayFixture f = Layers();
        AsUser(() =>
        {
            using OverlayFileSystem fs = f.Open();
            WriteAt(fs, "a", 0, "upper"u8.ToArray());
            fs.Unlink(OverlayFileSystem.RootIno, "a");
            Assert.That(Exists(fs, "a"), Is.False);
        });
        using OverlayFileSystem reopened = f.Open();
        Assert.That(Exists(reopened, "a"), Is.False, "after reopening");
    }

    [Test]
    public void WithoutPrivilegeRemovingAMergedDirectoryHidesTheLowerOnes()
    {
        using OverlayFixture f = Layers();
        AsUser(() =>
        {
            using OverlayFileSystem fs = f.Open();
            ulong m = Resolve(fs, "m").Ino;
            fs.Unlink(m, "x");
            fs.Unlink(m, "y");
            fs.RemoveDirectory(OverlayFileSystem.RootIno, "m");
            Assert.That(Exists(fs, "m"), Is.False);
        });
        using OverlayFileSystem reopened = f.Open();
        Assert.That(Exists(reopened, "m"), Is.False, "after reopening");
    }

    /// <summary>Truncating a read-only file fails (EACCES, as truncate(2) for its owner); the copy-up it started must
    /// not have emptied it already.</summary>
    [Test]
    public void WithoutPrivilegeAFailedTruncateOfAReadOnlyLowerFileChangesNothing()
    {
        using OverlayFixture f = Layers();
        Assert.That(Syscall.chmod(Path.Combine(f.Lowers[0], "a"), (FilePermissions)Mode("444")), Is.Zero);
        AsUser(() =>
        {
            using OverlayFileSystem fs = f.Open();
            ulong a = Resolve(fs, "a").Ino;
            var e = Assert.Throws<OverlayException>(() => fs.SetAttr(a, new OverlaySetAttr { Size = 0 }, new OverlayCaller(User, User)));
            Assert.That(e!.Errno, Is.EqualTo(OverlayErrno.EACCES));
            Assert.That(ReadText(fs, "a"), Is.EqualTo("lower a"), "after a failed truncate");
            e = Assert.Throws<OverlayException>(() => fs.Open(a, write: true, truncate: true));
            Assert.That(e!.Errno, Is.EqualTo(OverlayErrno.EACCES));
            Assert.That(ReadText(fs, "a"), Is.EqualTo("lower a"), "after a failed open with O_TRUNC");
        });
    }

    [Test]
    public void WithoutPrivilegeUnlinkingALowerFileAndMakingADirectoryThereWork()
    {
        using OverlayFixture f = Layers();
        AsUser(() =>
        {
            using OverlayFileSystem fs = f.Open();
            fs.Unlink(OverlayFileSystem.RootIno, "a");
            fs.MakeDirectory(OverlayFileSystem.RootIno, "a", Mode("755"), new OverlayCaller(User, User));
            Assert.That(List(fs, "a"), Is.Empty);
            Assert.That(Resolve(fs, "a").Uid, Is.EqualTo(User));
        });
    }
}
