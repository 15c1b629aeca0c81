using System.Diagnostics;
using BAOverlay.FileSystem;
using Mono.Unix.Native;
using static BAOverlay.Tests.FileSystem.OverlayFixture;

namespace BAOverlay.Tests.FileSystem;

/// <summary>
/// An upper directory the overlay wrote, handed to another overlay: kernel overlayfs must fail on a B-CoW file rather
/// than serve its raw bytes (the mark of ForeignMarks), and <see cref="UpperExport.ToPlainInPlace"/> must turn the
/// upper directory into one kernel overlayfs and fuse-overlayfs show exactly as the overlay did, crash-safely.
/// Needs root (kernel mounts, trusted xattrs, whiteout devices).
/// </summary>
public class SwitchingOverlayTests
{
    private static void RequireRoot()
    {
        if (Syscall.geteuid() != 0)
        {
            Assert.Ignore("needs root: kernel overlayfs mounts, trusted.* xattrs and 0/0 whiteouts");
        }
    }

    private static OverlayFixture BCowOverlay(out byte[] merged)
    {
        var f = new OverlayFixture();
        WriteFile(Path.Combine(f.Lowers[1], "big.bin"), Checks.RandomBytes(new Random(3), 1 << 20));
        using OverlayFileSystem fs = f.Open();
        WriteAt(fs, "big.bin", 5000, "written through the overlay"u8.ToArray());
        merged = ReadBytes(fs, "big.bin");
        return f;
    }

    [Test]
    public void ABCowFileCarriesAMarkThatTheOverlayHides()
    {
        RequireRoot();
        using OverlayFixture f = BCowOverlay(out byte[] merged);
        string upper = Path.Combine(f.Upper!, "big.bin");
        Assert.That(Syscall.lgetxattr(upper, "trusted.overlay.metacopy", out byte[] kernel), Is.EqualTo(1), "a one-byte, invalid metacopy record");
        Assert.That(Syscall.lgetxattr(upper, "user.overlay.metacopy", out byte[] user), Is.EqualTo(1), "the same for userxattr mounts");
        Assert.That((kernel, user), Is.EqualTo(("B"u8.ToArray(), "B"u8.ToArray())));
        using OverlayFileSystem fs = f.Open();
        ulong ino = Resolve(fs, "big.bin").Ino;
        Assert.That(fs.ListXattrs(ino), Has.None.Contains("metacopy"));
        Assert.That(fs.TryGetXattr(ino, "trusted.overlay.metacopy"), Is.Null);
        Assert.That(ReadBytes(fs, "big.bin"), Is.EqualTo(merged), "the overlay reads the file as before");
    }

    [TestCase(null)]
    [TestCase("metacopy=on")]
    public void KernelOverlayfsFailsOnAMarkedBCowFileInsteadOfServingItsBytes(string? option)
    {
        RequireRoot();
        using OverlayFixture f = BCowOverlay(out _);
        string mountPoint = Path.Combine(f.Root, "mnt"), work = Path.Combine(f.Root, "kernel-work");
        Directory.CreateDirectory(mountPoint);
        Directory.CreateDirectory(work);
        string extra = option is null ? "" : "," + option;
        UpperExportTests.Mount($"-t overlay overlay -o lowerdir={f.Lowers[0]}:{f.Lowers[1]},upperdir={f.Upper},workdir={work}{extra} {mountPoint}");
        try
        {
            string big = Path.Combine(mountPoint, "big.bin");
            Assert.That(Syscall.lstat(big, out _), Is.EqualTo(-1), "stat fails");
            Assert.That(Stdlib.GetLastError(), Is.EqualTo(Errno.EIO));
            Assert.That(Syscall.open(big, OpenFlags.O_RDONLY), Is.EqualTo(-1), "open fails: neither the B-CoW bytes nor the lower file's are served");
            Assert.That(Stdlib.GetLastError(), Is.EqualTo(Errno.EIO));
        }
        finally
        {
            UpperExportTests.Unmount(mountPoint);
        }
    }

    [Test]
    public void TheUpperExportTakesTheMarkAsTheOverlaysOwn()
    {
        RequireRoot();
        using OverlayFixture f = BCowOverlay(out byte[] merged);
        string exported = Path.Combine(f.Root, "exported");
        UpperExportResult result = UpperExport.ToDirectory(f.Upper!, exported);
        Assert.That(result.MaterializedBCowFiles, Is.EqualTo(1));
        Assert.That(File.ReadAllBytes(Path.Combine(exported, "big.bin")), Is.EqualTo(merged));
        Assert.That(Syscall.lgetxattr(Path.Combine(exported, "big.bin"), "trusted.overlay.metacopy", out byte[] _), Is.EqualTo(-1), "the mark is not exported");
    }

    /// <summary>MakeChanges of the export tests, plus a lower directory renamed through the overlay and a hard link
    /// to a B-CoW file.</summary>
    private static byte[] MakeSwitchChanges(OverlayFixture f, bool renameDirectory)
    {
        WriteFile(Path.Combine(f.Lowers[1], "movable", "inside.txt"), "lower content of a renamed directory");
        byte[] merged = UpperExportTests.MakeChanges(f);
        if (renameDirectory)
        {
            using OverlayFileSystem fs = f.Open();
            fs.Rename(OverlayFileSystem.RootIno, "movable", OverlayFileSystem.RootIno, "moved");
        }
        Assert.That(Syscall.link(Path.Combine(f.Upper!, "big.bin"), Path.Combine(f.Upper!, "big-link.bin")), Is.Zero);
        return merged;
    }

    private static void AssertPlain(string upper)
    {
        foreach (string path in Directory.EnumerateFileSystemEntries(upper, "*", SearchOption.AllDirectories).Prepend(upper))
        {
            Assert.That(Syscall.llistxattr(path, out string[] names), Is.GreaterThanOrEqualTo(0), path);
            Assert.That(names.Where(n => n.Contains("baoverlay", StringComparison.Ordinal) || n.EndsWith(".metacopy", StringComparison.Ordinal)), Is.Empty, $"{path}: private xattrs and marks removed");
        }
        Assert.That(TreeEntry.BCowFiles(upper), Is.Empty, "no B-CoW file left");
    }

    [Test]
    public void ConvertingInPlaceGivesAnUpperKernelOverlayfsShowsAsTheOverlayDid()
    {
        RequireRoot();
        using var f = new OverlayFixture();
        byte[] merged = MakeSwitchChanges(f, renameDirectory: true);
        SortedDictionary<string, string> expected = UpperExportTests.VisibleTree(f, withTimes: true);
        Syscall.lstat(Path.Combine(f.Upper!, "big.bin"), out Stat before);

        UpperExportResult result = UpperExport.ToPlainInPlace(f.Upper!, f.Lowers, f.Work!);

        Assert.That((result.MaterializedBCowFiles, result.Files), Is.EqualTo((2, 3)), "big.bin (two names) and big2.bin");
        Assert.That(result.Warnings, Is.Empty);
        AssertPlain(f.Upper!);
        string big = Path.Combine(f.Upper!, "big.bin");
        Assert.That(File.ReadAllBytes(big), Is.EqualTo(merged));
        Assert.That(Syscall.lstat(big, out Stat after), Is.Zero);
        Assert.That(Syscall.lstat(Path.Combine(f.Upper!, "big-link.bin"), out Stat link), Is.Zero);
        Assert.That(link.st_ino, Is.EqualTo(after.st_ino), "the hard link stays a hard link");
        Assert.That((after.st_mode, after.st_uid, after.st_mtime, after.st_mtime_nsec), Is.EqualTo((before.st_mode, before.st_uid, before.st_mtime, before.st_mtime_nsec)), "mode, owner and times kept");
        Assert.That(Syscall.lgetxattr(Path.Combine(f.Upper!, "moved"), "trusted.overlay.redirect", out byte[] redirect), Is.GreaterThan(0));
        Assert.That(System.Text.Encoding.UTF8.GetString(redirect), Is.EqualTo("/movable"));
        Assert.That(Directory.Exists(Path.Combine(f.Work!, "baoverlay", "plain-upper")), Is.False, "nothing staged is left");

        UpperExportTests.AssertKernelShows(f, f.Upper!, expected, "redirect_dir=on", "kernel overlayfs over the upper directory converted in place");
        Assert.That(UpperExport.ToPlainInPlace(f.Upper!, f.Lowers, f.Work!).Files, Is.Zero, "a second run has nothing to do");
        using OverlayFileSystem fs = f.Open();
        Assert.That(ReadBytes(fs, "big.bin"), Is.EqualTo(merged), "the overlay still reads the converted upper directory");
    }

    [Test]
    public void AConvertedUpperShowsTheSameTreeUnderFuseOverlayfs()
    {
        RequireRoot();
        if (!File.Exists("/usr/bin/fuse-overlayfs"))
        {
            Assert.Ignore("fuse-overlayfs is not installed (apt-get install fuse-overlayfs; .ci/run installs it)");
        }
        using var f = new OverlayFixture();
        // fuse-overlayfs follows no directory redirects, so no renamed directory here (docs/overlay-export.md).
        MakeSwitchChanges(f, renameDirectory: false);
        SortedDictionary<string, string> expected = UpperExportTests.VisibleTree(f, withTimes: true);
        UpperExport.ToPlainInPlace(f.Upper!, f.Lowers, f.Work!);
        string mountPoint = Path.Combine(f.Root, "mnt"), work = Path.Combine(f.Root, "fuse-work");
        Directory.CreateDirectory(mountPoint);
        Directory.CreateDirectory(work);
        using (Process mount = Process.Start(new ProcessStartInfo("fuse-overlayfs", $"-o lowerdir={f.Lowers[0]}:{f.Lowers[1]},upperdir={f.Upper},workdir={work} {mountPoint}") { RedirectStandardError = true })!)
        {
            mount.WaitForExit();
            Assert.That(mount.ExitCode, Is.Zero, mount.StandardError.ReadToEnd());
        }
        try
        {
            UpperExportTests.AssertSameTree(UpperExportTests.TreeOf(mountPoint, withTimes: true), expected, "fuse-overlayfs over the converted upper directory");
        }
        finally
        {
            UpperExportTests.Unmount(mountPoint);
        }
    }

    [Test]
    public void AnInterruptedConversionFinishesWhenRunAgain()
    {
        RequireRoot();
        using var f = new OverlayFixture();
        byte[] merged = MakeSwitchChanges(f, renameDirectory: true);
        SortedDictionary<string, string> expected = UpperExportTests.VisibleTree(f, withTimes: true);
        using var cancel = new CancellationTokenSource();
        var options = new UpperExportOptions
        {
            CancellationToken = cancel.Token,
            // Stops between the two names of big.bin's inode ("big-link.bin" sorts first): the worst place for a kill.
            Progress = new Inline(p =>
            {
                if (p.FilesDone == 1)
                {
                    cancel.Cancel();
                }
            }),
        };

        Assert.Throws<OperationCanceledException>(() => UpperExport.ToPlainInPlace(f.Upper!, f.Lowers, f.Work!, options));

        Assert.That(TreeEntry.BCowFiles(f.Upper!), Has.Count.EqualTo(2), "big.bin and big2.bin are still B-CoW files");
        Assert.That(File.ReadAllBytes(Path.Combine(f.Upper!, "big-link.bin")), Is.EqualTo(merged), "big-link.bin is the complete plain file");
        using (OverlayFileSystem fs = f.Open())
        {
            Assert.That(ReadBytes(fs, "big.bin"), Is.EqualTo(merged), "every name reads right in between");
        }
        // The overlay emptied its work folder when it opened: the staged copy is gone, the rerun builds it again.
        UpperExportResult result = UpperExport.ToPlainInPlace(f.Upper!, f.Lowers, f.Work!);
        Assert.That(result.Files, Is.EqualTo(2), "the names left: big.bin and big2.bin");
        AssertPlain(f.Upper!);
        UpperExportTests.AssertKernelShows(f, f.Upper!, expected, "redirect_dir=on", "kernel overlayfs after an interrupted and resumed conversion");
    }

    [Test]
    public void AResumedConversionKeepsAHardLinkGroupWhole()
    {
        RequireRoot();
        using var f = new OverlayFixture();
        MakeSwitchChanges(f, renameDirectory: false);
        using var cancel = new CancellationTokenSource();
        var options = new UpperExportOptions { CancellationToken = cancel.Token, Progress = new Inline(p => { if (p.FilesDone == 1) cancel.Cancel(); }) };
        Assert.Throws<OperationCanceledException>(() => UpperExport.ToPlainInPlace(f.Upper!, f.Lowers, f.Work!, options));

        UpperExport.ToPlainInPlace(f.Upper!, f.Lowers, f.Work!);

        Syscall.lstat(Path.Combine(f.Upper!, "big.bin"), out Stat big);
        Syscall.lstat(Path.Combine(f.Upper!, "big-link.bin"), out Stat link);
        Assert.That(link.st_ino, Is.EqualTo(big.st_ino), "the staged copy of the interrupted run was reused");
        Assert.That(big.st_nlink, Is.EqualTo(2UL));
    }

    [Test]
    public void ConversionIsRefusedWhileAnotherProcessHasTheUpperOpen()
    {
        RequireRoot();
        using OverlayFixture f = BCowOverlay(out _);
        string big = Path.Combine(f.Upper!, "big.bin");
        using Process holder = Process.Start(new ProcessStartInfo("bash", ["-c", $"exec 3<'{big}'; exec sleep 60"]))!;
        try
        {
            for (int i = 0; i < 100 && !Directory.EnumerateFileSystemEntries($"/proc/{holder.Id}/fd").Any(fd => Mono.Unix.UnixPath.TryReadLink(fd) == big); i++)
            {
                Thread.Sleep(50);
            }
            IOException refused = Assert.Throws<IOException>(() => UpperExport.ToPlainInPlace(f.Upper!, f.Lowers, f.Work!))!;
            Assert.That(refused.Message, Does.Contain("in use").And.Contain(holder.Id.ToString(System.Globalization.CultureInfo.InvariantCulture)));
            Assert.That(TreeEntry.BCowFiles(f.Upper!), Has.Count.EqualTo(1), "nothing changed");
        }
        finally
        {
            holder.Kill();
            holder.WaitForExit();
        }
    }

    [Test]
    public void ConversionIsRefusedWhileAKernelOverlayUsesTheUpper()
    {
        RequireRoot();
        using var f = new OverlayFixture();
        WriteFile(Path.Combine(f.Lowers[0], "a.txt"), "a");
        string mountPoint = Path.Combine(f.Root, "mnt"), work = Path.Combine(f.Root, "kernel-work");
        Directory.CreateDirectory(mountPoint);
        Directory.CreateDirectory(work);
        UpperExportTests.Mount($"-t overlay overlay -o lowerdir={f.Lowers[0]},upperdir={f.Upper},workdir={work} {mountPoint}");
        try
        {
            IOException refused = Assert.Throws<IOException>(() => UpperExport.ToPlainInPlace(f.Upper!, f.Lowers, f.Work!))!;
            Assert.That(refused.Message, Does.Contain("mounted overlay"));
        }
        finally
        {
            UpperExportTests.Unmount(mountPoint);
        }
    }

    [Test]
    public void RootlessWhiteoutsAndOpaqueMarkersTakeTheKernelsForm()
    {
        RequireRoot();
        using var f = new OverlayFixture();
        WriteFile(Path.Combine(f.Lowers[0], "gone.txt"), "hidden");
        WriteFile(Path.Combine(f.Lowers[0], "opaque", "below.txt"), "hidden");
        WriteFile(Path.Combine(f.Upper!, ".wh.gone.txt"), "");
        WriteFile(Path.Combine(f.Upper!, "opaque", ".wh..wh..opq"), "");
        WriteFile(Path.Combine(f.Upper!, "opaque", "own.txt"), "own");
        SortedDictionary<string, string> expected = UpperExportTests.VisibleTree(f, withTimes: true);

        UpperExportResult result = UpperExport.ToPlainInPlace(f.Upper!, f.Lowers, f.Work!);

        Assert.That((result.Whiteouts, result.OpaqueDirectories), Is.EqualTo((1, 1)));
        Assert.That(Syscall.lstat(Path.Combine(f.Upper!, "gone.txt"), out Stat gone), Is.Zero);
        Assert.That(Whiteouts.IsWhiteoutStat(gone), Is.True, "a 0/0 character device");
        Assert.That(File.Exists(Path.Combine(f.Upper!, ".wh.gone.txt")), Is.False);
        Assert.That(File.Exists(Path.Combine(f.Upper!, "opaque", ".wh..wh..opq")), Is.False);
        Assert.That(Syscall.lgetxattr(Path.Combine(f.Upper!, "opaque"), "trusted.overlay.opaque", out byte[] y), Is.EqualTo(1));
        Assert.That(y, Is.EqualTo("y"u8.ToArray()));
        UpperExportTests.AssertKernelShows(f, f.Upper!, expected, null, "kernel overlayfs over the converted rootless forms");
    }

    private sealed class Inline(Action<UpperExportProgress> report) : IProgress<UpperExportProgress>
    {
        public void Report(UpperExportProgress value) => report(value);
    }
}
