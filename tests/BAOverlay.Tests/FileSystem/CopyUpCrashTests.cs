using System.Runtime.InteropServices;
using BAOverlay.Checking;
using BAOverlay.FileSystem;
using BAOverlay.Storage;
using Mono.Unix.Native;
using static BAOverlay.Tests.FileSystem.OverlayFixture;

namespace BAOverlay.Tests.FileSystem;

/// <summary>
/// Crash consistency of copy-up, removal and rename. Two kinds of cases:
/// <list type="bullet">
/// <item>Planted crashes: the test leaves on disk exactly what a crash at one step of an operation leaves (a scratch
/// object in WORK/baoverlay, half written or complete, with or without its upper entry renamed into place), then
/// reopens: the visible tree must be the old one or the new one, never a half-made file, and the work directory must
/// be empty again.</item>
/// <item>Injected failures: a step of a real operation is made to fail by marking a directory immutable
/// (chattr +i, which stops even root), as a crash at that step would stop it; the operation must report the error
/// and leave the old visible tree (in the open file system and after reopening), with nothing left in the work
/// directory; once the directory is writable again the same operation succeeds.</item>
/// </list>
/// Needs root (whiteout devices, immutable flags).
/// </summary>
public partial class CopyUpCrashTests
{
    private const long Threshold = 64 * 1024;

    private static void RequireRoot()
    {
        if (Syscall.geteuid() != 0)
        {
            Assert.Ignore("needs root: whiteouts are 0/0 character devices and failures are injected with the immutable flag");
        }
    }

    private static string ScratchDir(OverlayFixture f) => Path.Combine(f.Work!, "baoverlay");

    private static byte[] Random(int seed, int length)
    {
        byte[] bytes = new byte[length];
        new Random(seed).NextBytes(bytes);
        return bytes;
    }

    /// <summary>Lower layers with a small file, a large file (B-CoW copy-up), a merged directory and a lower directory.</summary>
    private static OverlayFixture Layers()
    {
        var f = new OverlayFixture();
        WriteFile(Path.Combine(f.Lowers[0], "d", "small"), "small lower file");
        WriteFile(Path.Combine(f.Lowers[0], "d", "big"), Random(1, 600_000));
        WriteFile(Path.Combine(f.Lowers[1], "d", "deeper"), "from lower2");
        WriteFile(Path.Combine(f.Lowers[0], "m", "a"), "a");
        WriteFile(Path.Combine(f.Lowers[1], "m", "b"), "b");
        Directory.CreateDirectory(Path.Combine(f.Upper!, "d"));
        return f;
    }

    private static SortedDictionary<string, string> SnapshotOf(OverlayFixture f)
    {
        using OverlayFileSystem fs = f.Open(Threshold);
        return Snapshot(fs);
    }

    private static void AssertWorkDirectoryEmpty(OverlayFixture f, string when) =>
        Assert.That(Directory.EnumerateFileSystemEntries(ScratchDir(f)), Is.Empty, $"the work directory {when}");

    // ------------------------------------------------------------------ planted crashes

    /// <summary>What a crash leaves, planted on disk, and whether the operation had reached its commit point.</summary>
    private sealed record Crash(Action<OverlayFixture> Plant, bool Committed);

    private static readonly Dictionary<string, Crash> Crashes = new()
    {
        // Copy-up of d/small: the scratch file is created, then filled, then renamed over upper/d/small.
        ["scratch file of a whole copy-up created, nothing written"] = new(f => WriteFile(Path.Combine(ScratchDir(f), "tmp-1-1"), ""), false),
        ["scratch file of a whole copy-up half written"] = new(f => WriteFile(Path.Combine(ScratchDir(f), "tmp-1-2"), "small lowe"), false),
        // Copy-up of d/big: a B-CoW file over the lower file is made in scratch, marked, then renamed into place.
        ["scratch B-CoW file made but not yet marked nor renamed"] = new(f =>
        {
            BCowFile.Create(Path.Combine(ScratchDir(f), "tmp-1-3"), new BCowCreateOptions { LowerPath = Path.Combine(f.Lowers[0], "d", "big"), BlockSize = 4096 }).Dispose();
        }, false),
        ["scratch B-CoW file cut short while its header was written"] = new(f => WriteFile(Path.Combine(ScratchDir(f), "tmp-1-4"), new byte[100]), false),
        // Copy-up of directory m (to create or remove something in it): mkdir in scratch, metadata, rename.
        ["scratch directory of a directory copy-up"] = new(f =>
        {
            Directory.CreateDirectory(Path.Combine(ScratchDir(f), "tmp-1-5"));
            SetXattr(Path.Combine(ScratchDir(f), "tmp-1-5"), "trusted.overlay.opaque", "y");
        }, false),
        // Creation of a new directory over a whited-out name: the directory is built (opaque) in scratch with content.
        ["scratch tree of a creation with content and whiteouts inside"] = new(f =>
        {
            WriteFile(Path.Combine(ScratchDir(f), "tmp-1-6", "inner", "file"), "x");
            Whiteout(Path.Combine(ScratchDir(f), "tmp-1-6", "inner", "gone"));
            Assert.That(Syscall.symlink("nowhere", Path.Combine(ScratchDir(f), "tmp-1-6", "link")), Is.Zero);
        }, false),
        // Whiteout swap of an unlink (upper d/small over lower): the whiteout device is made in scratch, then exchanged.
        ["whiteout device made in scratch, not yet swapped in"] = new(f => Whiteout(Path.Combine(ScratchDir(f), "tmp-1-7")), false),

        // After the commit point: the upper entry is in place, the scratch leftover is the old object or another op's.
        ["copy-up renamed into place, another scratch file left"] = new(f =>
        {
            WriteFile(Path.Combine(f.Upper!, "d", "small"), "small lower file, changed");
            WriteFile(Path.Combine(ScratchDir(f), "tmp-1-8"), "small lower f");
        }, true),
        ["whiteout swapped in, the removed upper file still in scratch"] = new(f =>
        {
            Whiteout(Path.Combine(f.Upper!, "d", "small"));
            WriteFile(Path.Combine(ScratchDir(f), "tmp-1-9"), "the old upper copy of d/small");
        }, true),
        ["whiteout swapped in for a removed directory, its old upper copy with whiteouts still in scratch"] = new(f =>
        {
            Whiteout(Path.Combine(f.Upper!, "m"));
            Whiteout(Path.Combine(ScratchDir(f), "tmp-1-10", "a"));
            Whiteout(Path.Combine(ScratchDir(f), "tmp-1-10", "b"));
        }, true),
    };

    private static IEnumerable<string> CrashNames => Crashes.Keys;

    [TestCaseSource(nameof(CrashNames))]
    public void AfterACrashReopeningShowsTheOldOrTheNewTreeAndEmptiesTheWorkDirectory(string crash)
    {
        RequireRoot();
        using OverlayFixture f = Layers();
        SortedDictionary<string, string> old = SnapshotOf(f);
        var (plant, committed) = Crashes[crash];
        plant(f);
        using OverlayFileSystem fs = f.Open(Threshold);
        AssertWorkDirectoryEmpty(f, "after reopening");
        SortedDictionary<string, string> seen = Snapshot(fs);
        if (committed)
        {
            Assert.That(seen, Is.Not.EqualTo(old), "the operation had reached its commit point: the new tree");
            Assert.That(seen.Keys.Except(old.Keys), Is.Empty, "nothing appears that the operation did not make");
        }
        else
        {
            Assert.That(seen, Is.EqualTo(old), "the operation had not reached its commit point: the old tree");
        }
        Assert.That(ReadText(fs, "d/deeper"), Is.EqualTo("from lower2"), "the rest of the tree is untouched");
    }

    [Test]
    public void ACrashAfterRemovingADirectoryShowsItGoneWithoutItsLowerEntries()
    {
        RequireRoot();
        using OverlayFixture f = Layers();
        Crashes["whiteout swapped in for a removed directory, its old upper copy with whiteouts still in scratch"].Plant(f);
        using OverlayFileSystem fs = f.Open(Threshold);
        Assert.That(Exists(fs, "m"), Is.False);
        Assert.That(List(fs, "/"), Is.EqualTo(new[] { "d" }));
    }

    // ------------------------------------------------------------------ injected failures

    private const ulong FS_IOC_GETFLAGS = 0x80086601;
    private const ulong FS_IOC_SETFLAGS = 0x40086602;
    private const int FS_IMMUTABLE_FL = 0x10;

    [LibraryImport("libc", SetLastError = true)]
    private static partial int ioctl(int fd, ulong request, ref int flags);

    /// <summary>Makes <paramref name="directory"/> immutable (no entry can be added, removed or renamed, even by root) until disposed.</summary>
    private sealed class Immutable : IDisposable
    {
        private readonly string _path;

        public Immutable(string directory)
        {
            _path = directory;
            Set(true);
        }

        public void Dispose() => Set(false);

        private void Set(bool on)
        {
            int fd = Syscall.open(_path, OpenFlags.O_RDONLY | OpenFlags.O_NONBLOCK);
            Assert.That(fd, Is.GreaterThanOrEqualTo(0), $"open {_path}");
            try
            {
                int flags = 0;
                Assert.That(ioctl(fd, FS_IOC_GETFLAGS, ref flags), Is.Zero, $"FS_IOC_GETFLAGS {_path}: {Stdlib.GetLastError()}");
                flags = on ? flags | FS_IMMUTABLE_FL : flags & ~FS_IMMUTABLE_FL;
                Assert.That(ioctl(fd, FS_IOC_SETFLAGS, ref flags), Is.Zero, $"FS_IOC_SETFLAGS {_path}: {Stdlib.GetLastError()}");
            }
            finally
            {
                Syscall.close(fd);
            }
        }
    }

    /// <summary>An operation, the directory whose immutability makes one of its steps fail, and what it models.</summary>
    private sealed record Failure(Func<OverlayFixture, string> Blocked, Action<OverlayFileSystem> Operation);

    private static readonly Dictionary<string, Failure> Failures = new()
    {
        // The rename that commits a whole copy-up fails (as a crash just before it).
        ["writing into a small lower file, the copy-up cannot be renamed into place"] = new(
            f => Path.Combine(f.Upper!, "d"), fs => WriteAt(fs, "d/small", 0, "SMALL"u8.ToArray())),
        // The rename that commits a B-CoW copy-up fails.
        ["writing into a large lower file, the B-CoW copy-up cannot be renamed into place"] = new(
            f => Path.Combine(f.Upper!, "d"), fs => WriteAt(fs, "d/big", 70_000, "block"u8.ToArray())),
        // The scratch object cannot even be made (as a crash before the first step).
        ["writing into a large lower file, the scratch B-CoW file cannot be made"] = new(
            f => ScratchDir(f), fs => WriteAt(fs, "d/big", 70_000, "block"u8.ToArray())),
        ["changing the mode of a large lower file, metadata-only copy-up cannot be renamed into place"] = new(
            f => Path.Combine(f.Upper!, "d"), fs => fs.SetAttr(Resolve(fs, "d/big").Ino, new OverlaySetAttr { Mode = Mode("700") }, OverlayCaller.Root)),
        ["truncating a large lower file, the copy-up cannot be renamed into place"] = new(
            f => Path.Combine(f.Upper!, "d"), fs => fs.SetAttr(Resolve(fs, "d/big").Ino, new OverlaySetAttr { Size = 1000 }, OverlayCaller.Root)),
        // A directory copy-up (to make a file in the lower directory m) cannot be renamed into place.
        ["creating a file in a lower directory, the directory copy-up cannot be renamed into place"] = new(
            f => f.Upper!, fs => fs.Create(Resolve(fs, "m").Ino, "new", Mode("644"), OverlayCaller.Root).Handle.Dispose()),
        // The unlink of a lower file cannot write its whiteout.
        ["unlinking a lower file, the whiteout cannot be made"] = new(
            f => Path.Combine(f.Upper!, "d"), fs => fs.Unlink(Resolve(fs, "d").Ino, "small")),
        // The rename of a lower file: the copy-up works, the rename into the target directory fails.
        ["renaming a lower file, the rename itself fails after the copy-up"] = new(
            f => f.Upper!, fs => fs.Rename(Resolve(fs, "d").Ino, "big", OverlayFileSystem.RootIno, "moved")),
    };

    private static IEnumerable<string> FailureNames => Failures.Keys;

    [TestCaseSource(nameof(FailureNames))]
    public void AnOperationThatFailsMidwayLeavesTheOldTreeAndSucceedsOnRetry(string failure)
    {
        RequireRoot();
        var (blocked, operation) = Failures[failure];
        using OverlayFixture f = Layers();
        SortedDictionary<string, string> old = SnapshotOf(f);
        using (OverlayFileSystem fs = f.Open(Threshold))
        {
            using (new Immutable(blocked(f)))
            {
                var e = Assert.Throws<OverlayException>(() => operation(fs), "the blocked step fails the operation");
                Assert.That(e!.Errno, Is.EqualTo(OverlayErrno.EPERM), e.Message);
            }
            Assert.That(Snapshot(fs), Is.EqualTo(old), "the old tree, in the open file system");
            AssertWorkDirectoryEmpty(f, "after the failure");
        }
        using (OverlayFileSystem fs = f.Open(Threshold))
        {
            Assert.That(Snapshot(fs), Is.EqualTo(old), "the old tree, after reopening");
            operation(fs);
            Assert.That(Snapshot(fs), Is.Not.EqualTo(old), "the same operation succeeds once nothing blocks it");
        }
        CheckBCowFiles(f);
    }

    /// <summary>
    /// Removing a merged directory (upper part holding whiteouts over lower entries) must not bring the lower entries
    /// back if it stops before the directory is replaced by its whiteout: the whiteouts inside go with the directory.
    /// </summary>
    [Test]
    public void RemovingAMergedDirectoryThatFailsBeforeTheSwapDoesNotBringBackItsLowerEntries()
    {
        RequireRoot();
        using OverlayFixture f = Layers();
        using (OverlayFileSystem fs = f.Open(Threshold))
        {
            ulong m = Resolve(fs, "m").Ino;
            fs.Unlink(m, "a");
            fs.Unlink(m, "b");
        }
        SortedDictionary<string, string> old = SnapshotOf(f);
        Assert.That(old.ContainsKey("/m"), Is.True);
        using (OverlayFileSystem fs = f.Open(Threshold))
        {
            using (new Immutable(f.Upper!))
            {
                var e = Assert.Throws<OverlayException>(() => fs.RemoveDirectory(OverlayFileSystem.RootIno, "m"));
                Assert.That(e!.Errno, Is.EqualTo(OverlayErrno.EPERM), e.Message);
            }
            Assert.That(List(fs, "m"), Is.Empty, "m is still there and still empty");
            Assert.That(Snapshot(fs), Is.EqualTo(old));
        }
        using (OverlayFileSystem fs = f.Open(Threshold))
        {
            Assert.That(Snapshot(fs), Is.EqualTo(old), "after reopening");
            fs.RemoveDirectory(OverlayFileSystem.RootIno, "m");
            Assert.That(Exists(fs, "m"), Is.False);
        }
        AssertWorkDirectoryEmpty(f, "at the end");
    }

    /// <summary>The same for a rename over an empty merged directory: its whiteouts must stay until it is replaced.</summary>
    [Test]
    public void RenamingOverAMergedDirectoryThatFailsBeforeTheRenameDoesNotBringBackItsLowerEntries()
    {
        RequireRoot();
        using OverlayFixture f = Layers();
        using (OverlayFileSystem fs = f.Open(Threshold))
        {
            ulong m = Resolve(fs, "m").Ino;
            fs.Unlink(m, "a");
            fs.Unlink(m, "b");
            OverlayStat n = fs.MakeDirectory(OverlayFileSystem.RootIno, "n", Mode("755"), OverlayCaller.Root);
            fs.Create(n.Ino, "inside", Mode("644"), OverlayCaller.Root).Handle.Dispose();
        }
        SortedDictionary<string, string> old = SnapshotOf(f);
        using (OverlayFileSystem fs = f.Open(Threshold))
        {
            using (new Immutable(f.Upper!))
            {
                var e = Assert.Throws<OverlayException>(() => fs.Rename(OverlayFileSystem.RootIno, "n", OverlayFileSystem.RootIno, "m"));
                Assert.That(e!.Errno, Is.EqualTo(OverlayErrno.EPERM), e.Message);
            }
            Assert.That(List(fs, "m"), Is.Empty, "m is still there and still empty");
        }
        using (OverlayFileSystem fs = f.Open(Threshold))
        {
            Assert.That(Snapshot(fs), Is.EqualTo(old), "after reopening");
            fs.Rename(OverlayFileSystem.RootIno, "n", OverlayFileSystem.RootIno, "m");
            Assert.That(List(fs, "m"), Is.EqualTo(new[] { "inside" }));
        }
    }

    /// <summary>
    /// Kill-style: the process "dies" with files open for writing (the file system and its handles are dropped, never
    /// disposed) after writes into a B-CoW copy-up, one made durable and one not. A fresh overlay on the same folders
    /// must show each file with its old or its new content (whatever reached the disk), never a mix inside one write,
    /// and the B-CoW files must pass the checker. Data made durable with Fsync before the "kill" must be there.
    /// The "kill" waits for the dropped instance's background copier to go idle: in one process its threads would
    /// otherwise keep writing into the file the fresh overlay has opened, which no killed process can do; then it
    /// closes the dropped file's descriptors without a commit, which also drops its write lock. Kills at
    /// every write index, copier included, are the engine's power-cut tests.
    /// </summary>
    [Test]
    public void ADroppedOverlayLeavesOldOrNewDataAndCleanBCowFiles()
    {
        RequireRoot();
        using OverlayFixture f = Layers();
        byte[] lower = File.ReadAllBytes(Path.Combine(f.Lowers[0], "d", "big"));
        byte[] synced = Random(2, 10_000);
        byte[] unsynced = Random(3, 3000);
        OverlayHandle abandoned = AbandonWithOpenHandles(f, synced, unsynced);
        BCowFile dropped = ((NodeData.BCow)abandoned.Node.Data!).File;
        dropped.WaitForCopyUps();
        dropped.CloseWithoutCommit(); // the kernel closes a killed process's files, and with them its lock on the file
        using OverlayFileSystem fs = f.Open(Threshold);
        byte[] seen = ReadBytes(fs, "d/big");
        Assert.That(seen.Length, Is.EqualTo(lower.Length));
        Assert.That(seen.AsSpan(100_000, synced.Length).ToArray(), Is.EqualTo(synced), "the write made durable with Fsync");
        byte[] tail = seen.AsSpan(300_000, unsynced.Length).ToArray();
        Assert.That(tail, Is.EqualTo(unsynced).Or.EqualTo(lower.AsSpan(300_000, unsynced.Length).ToArray()), "the write not synced: old or new, never a mix");
        Assert.That(seen.AsSpan(0, 100_000).ToArray(), Is.EqualTo(lower.AsSpan(0, 100_000).ToArray()), "unwritten blocks still come from the lower file");
        CheckBCowFiles(f);
        GC.KeepAlive(abandoned);
    }

    private static OverlayHandle AbandonWithOpenHandles(OverlayFixture f, byte[] synced, byte[] unsynced)
    {
        OverlayFileSystem fs = f.Open(Threshold);
        OverlayHandle handle = fs.Open(Resolve(fs, "d/big").Ino, write: true, truncate: false);
        handle.Write(synced, 100_000);
        handle.Fsync();
        handle.Write(unsynced, 300_000);
        // No Dispose of the handle nor of the file system: what a killed process leaves.
        return handle;
    }

    private static void CheckBCowFiles(OverlayFixture f)
    {
        foreach (string file in TreeEntry.BCowFiles(f.Upper!))
        {
            BCowCheckResult result = BCowChecker.Check(file);
            Assert.That(result.IsClean, Is.True, $"{file}: {string.Join("; ", result.Corruptions)}");
        }
    }
}
