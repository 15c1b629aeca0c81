using BAOverlay.FileSystem;
using static BAOverlay.Tests.FileSystem.OverlayFixture;

namespace BAOverlay.Tests.FileSystem;

/// <summary>
/// <see cref="OverlayOptions.CloseDelay"/>: a B-CoW file written through the overlay stays open (its commit, with its
/// fsyncs, not paid by the release) until the delay passes, <see cref="OverlayFileSystem.CloseIdleFiles()"/> or
/// disposal; an open in between finds it open; every path ends with a clean, committed B-CoW file. What a crash
/// leaves meanwhile is what a crash leaves while the file is open, which the engine's power-cut tests cover at every
/// write index (CrashTests): the delay changes when the durable commit happens, not its protocol.
/// </summary>
[TestFixture]
[Platform("Linux")]
public sealed class CloseDelayTests
{
    private const int Size = 256 * 1024;

    private static OverlayFixture Layers()
    {
        var f = new OverlayFixture(lowers: 1);
        WriteFile(Path.Combine(f.Lowers[0], "big"), Bytes(1, Size));
        return f;
    }

    private static OverlayFileSystem Open(OverlayFixture f, TimeSpan delay) => OverlayFileSystem.Open(new OverlayOptions
    {
        LowerDirectories = f.Lowers,
        UpperDirectory = f.Upper,
        WorkDirectory = f.Work,
        BlockCopyUpThreshold = 64 * 1024,
        BlockSize = 4096,
        CloseDelay = delay,
        Log = f.Log.Add,
    });

    private static byte[] Bytes(int seed, int length)
    {
        byte[] b = new byte[length];
        new Random(seed).NextBytes(b);
        return b;
    }

    /// <summary>True while the overlay still holds the upper B-CoW file open for writing (a second writer is refused).</summary>
    private static bool HeldOpen(string path)
    {
        try
        {
            using BCowFile file = BCowFile.Open(path);
            return false;
        }
        catch (BCowFileInUseException)
        {
            return true;
        }
    }

    private static void WriteThroughOverlay(OverlayFileSystem fs, int seed)
    {
        ulong ino = fs.Lookup(OverlayFileSystem.RootIno, "big").Ino;
        using OverlayHandle h = fs.Open(ino, write: true, truncate: false);
        h.Write(Bytes(seed, 4096), 8192);
    }

    [Test]
    public void AReleasedFileStaysOpenUntilCloseIdleFilesCommitsIt()
    {
        using OverlayFixture f = Layers();
        string upper = Path.Combine(f.Upper!, "big");
        using (OverlayFileSystem fs = Open(f, TimeSpan.FromHours(1)))
        {
            WriteThroughOverlay(fs, 2);
            Assert.That(HeldOpen(upper), Is.True, "kept open after the release: no commit paid by it");
            ulong ino = fs.Lookup(OverlayFileSystem.RootIno, "big").Ino;
            using (OverlayHandle reader = fs.Open(ino, write: false, truncate: false))
            {
                byte[] seen = new byte[4096];
                reader.Read(seen, 8192);
                Assert.That(seen, Is.EqualTo(Bytes(2, 4096)), "an open meanwhile reads the kept file");
            }
            fs.CloseIdleFiles();
            Assert.That(HeldOpen(upper), Is.False, "closed");
            Checks.AssertClean(upper);
            WriteThroughOverlay(fs, 3); // opened again, kept again, then closed by the disposal
        }
        Checks.AssertClean(upper);
        using OverlayFileSystem again = f.Open();
        ulong node = again.Lookup(OverlayFileSystem.RootIno, "big").Ino;
        using OverlayHandle check = again.Open(node, write: false, truncate: false);
        byte[] all = new byte[Size];
        check.Read(all, 0);
        byte[] expected = Bytes(1, Size);
        Bytes(3, 4096).CopyTo(expected, 8192);
        Assert.That(all, Is.EqualTo(expected));
        Assert.That(f.Log, Is.Empty);
    }

    [Test]
    public void TheDelayClosesTheFileByItself()
    {
        using OverlayFixture f = Layers();
        string upper = Path.Combine(f.Upper!, "big");
        using OverlayFileSystem fs = Open(f, TimeSpan.FromMilliseconds(200));
        WriteThroughOverlay(fs, 4);
        var clock = System.Diagnostics.Stopwatch.StartNew();
        while (HeldOpen(upper) && clock.Elapsed < TimeSpan.FromSeconds(20))
        {
            Thread.Sleep(20);
        }
        Assert.That(HeldOpen(upper), Is.False, "closed by the timer");
        Checks.AssertClean(upper);
    }

    [Test]
    public void AKeptFileRemovedMeanwhileClosesCleanly()
    {
        using OverlayFixture f = Layers();
        using OverlayFileSystem fs = Open(f, TimeSpan.FromHours(1));
        WriteThroughOverlay(fs, 5);
        fs.Unlink(OverlayFileSystem.RootIno, "big");
        Assert.DoesNotThrow(fs.CloseIdleFiles);
        Assert.That(() => fs.Lookup(OverlayFileSystem.RootIno, "big"), Throws.TypeOf<OverlayException>());
        Assert.That(Mono.Unix.Native.Syscall.lstat(Path.Combine(f.Upper!, "big"), out Mono.Unix.Native.Stat st), Is.Zero);
        Assert.That(st.st_mode & Mono.Unix.Native.FilePermissions.S_IFMT, Is.EqualTo(Mono.Unix.Native.FilePermissions.S_IFCHR), "a whiteout hides the lower file");
        Assert.That(Directory.GetFileSystemEntries(Path.Combine(f.Work!, "baoverlay")), Is.Empty, "nothing left in the work directory");
        Assert.That(f.Log, Is.Empty);
    }

    [Test]
    public void WithoutADelayTheReleaseCommits()
    {
        using OverlayFixture f = Layers();
        string upper = Path.Combine(f.Upper!, "big");
        using OverlayFileSystem fs = Open(f, TimeSpan.Zero);
        WriteThroughOverlay(fs, 6);
        Assert.That(HeldOpen(upper), Is.False);
        Checks.AssertClean(upper);
    }

    /// <summary>
    /// The commit of a written B-CoW file (its writes and fsyncs) waits for the disk outside the overlay's lock: with
    /// the upper layer's file system frozen (fsfreeze: every write to it waits) while
    /// <see cref="OverlayFileSystem.CloseIdleFiles()"/> commits a kept file, or while the last release commits one
    /// (no close delay), a lookup of another name is still answered; it waited for the lock, i.e. for the disk, when
    /// the commit was made under it. Root only (a loop-mounted ext4 to freeze); CI is root.
    /// </summary>
    [Test]
    public void TheCommitWaitsForTheDiskWithoutHoldingUpOtherOperations([Values(true, false)] bool deferred)
    {
        if (Mono.Unix.Native.Syscall.geteuid() != 0)
        {
            Assert.Ignore("needs root: the upper layer is a loop-mounted ext4, frozen with fsfreeze; CI is root");
        }
        using OverlayFixture f = Layers();
        WriteFile(Path.Combine(f.Lowers[0], "other"), "another name");
        using var scratch = Fuse.ScratchFileSystem.Ext4(Path.Combine(f.Root, "scratch"));
        string upperDirectory = Directory.CreateDirectory(Path.Combine(scratch.MountPoint, "upper")).FullName;
        string work = Directory.CreateDirectory(Path.Combine(scratch.MountPoint, "work")).FullName;
        Task closing;
        using (OverlayFileSystem fs = OverlayFileSystem.Open(new OverlayOptions
        {
            LowerDirectories = f.Lowers,
            UpperDirectory = upperDirectory,
            WorkDirectory = work,
            BlockCopyUpThreshold = 64 * 1024,
            BlockSize = 4096,
            CloseDelay = deferred ? TimeSpan.FromHours(1) : TimeSpan.Zero,
            Log = f.Log.Add,
        }))
        {
            ulong ino = fs.Lookup(OverlayFileSystem.RootIno, "big").Ino;
            OverlayHandle written = fs.Open(ino, write: true, truncate: false);
            written.Write(Bytes(7, 4096), 8192);
            if (deferred)
            {
                written.Dispose(); // kept open: committed by CloseIdleFiles below
            }
            Checks.Run("fsfreeze", $"-f {scratch.MountPoint}");
            try
            {
                closing = deferred ? Task.Run(fs.CloseIdleFiles) : Task.Run(written.Dispose);
                Thread.Sleep(300);
                Assert.That(closing.IsCompleted, Is.False, "the commit waits for the frozen file system");
                Task<OverlayStat> lookup = Task.Run(() => fs.Lookup(OverlayFileSystem.RootIno, "other"));
                Assert.That(lookup.Wait(TimeSpan.FromSeconds(20)), Is.True,
                    "a lookup is answered while the deferred commit waits for the disk (not held up by the overlay's lock)");
                Assert.That(closing.IsCompleted, Is.False, "the commit still waits");
            }
            finally
            {
                Checks.Run("fsfreeze", $"-u {scratch.MountPoint}");
            }
            Assert.That(closing.Wait(TimeSpan.FromSeconds(60)), Is.True, "the commit ends once the file system thaws");
            closing.GetAwaiter().GetResult();
        }
        string upper = Path.Combine(upperDirectory, "big");
        Assert.That(HeldOpen(upper), Is.False, "closed");
        Checks.AssertClean(upper);
        using BCowFile file = BCowFile.Open(upper, new BCowOpenOptions { ReadOnly = true, LowerPath = Path.Combine(f.Lowers[0], "big") });
        byte[] seen = new byte[4096];
        file.ReadAt(seen, 8192);
        Assert.That(seen, Is.EqualTo(Bytes(7, 4096)), "the write is in the committed file");
        Assert.That(f.Log, Is.Empty);
    }
}
