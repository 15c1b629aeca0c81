using BAOverlay.FileSystem;
using Mono.Unix.Native;
using static BAOverlay.Tests.FileSystem.OverlayCases;
using static BAOverlay.Tests.FileSystem.OverlayFixture;

namespace BAOverlay.Tests.FileSystem;

/// <summary>
/// The same layer trees seen through kernel overlayfs and through <see cref="OverlayFileSystem"/> must show the same
/// visible tree (names, types, modes, owners, sizes, content hashes, link targets, device numbers), except for the
/// documented differences, which each case names and which the test checks really are differences. The mutation
/// cases apply the same operations through a kernel mount (on one set of layer folders) and through the overlay (on
/// an identical set), compare the results of each operation (ok or errno) and the visible trees afterwards, and then
/// cross-read: the overlay over the layers the kernel wrote, and the kernel over the layers the overlay wrote.
/// Needs root (mount, whiteout devices, trusted xattrs); CI runs as root.
/// </summary>
public class KernelOverlayComparisonTests
{
    private static void RequireRoot()
    {
        if (Syscall.geteuid() != 0)
        {
            Assert.Ignore("needs root: kernel overlayfs mounts, whiteout devices and trusted.overlay.* xattrs; CI runs as root");
        }
    }

    [TestCaseSource(typeof(OverlayCases), nameof(OverlayCases.LayoutNames))]
    public void TheKernelAndTheOverlayShowTheSameTreeOverTheSameLayers(string layout)
    {
        RequireRoot();
        var (build, differences) = Layouts[layout];
        using var layers = new OverlayLayers();
        build(layers);
        SortedDictionary<string, string> kernel;
        using (KernelOverlayMount mount = KernelOverlayMount.Mount([layers.Upper, .. layers.Lowers]))
        {
            kernel = new PosixTree(mount.MountPoint).Snapshot(withTimes: true);
        }
        SortedDictionary<string, string> overlay;
        using (OverlayFileSystem fs = layers.OpenOverlay())
        {
            overlay = new OverlayTree(fs, 0).Snapshot(withTimes: true);
        }
        AssertSameExceptDifferences(kernel, overlay, differences);
    }

    /// <summary>
    /// Kernel 6.7 and later also read whiteouts stored as xattrs (a file with trusted.overlay.whiteout in a directory
    /// with trusted.overlay.opaque=x, the form used for nested overlays). Documented difference: the overlay does
    /// not, and shows such a file as the empty regular file it is on disk.
    /// </summary>
    [Test]
    public void XattrWhiteoutsAreHonouredByRecentKernelsButNotByTheOverlay()
    {
        RequireRoot();
        using var layers = new OverlayLayers();
        WriteFile(layers.L(2, "x/f"), "hidden by the kernel");
        WriteFile(layers.L(2, "x/g"), "visible");
        WriteFile(layers.L(1, "x/f"), "");
        SetXattr(layers.L(1, "x"), "trusted.overlay.opaque", "x");
        SetXattr(layers.L(1, "x/f"), "trusted.overlay.whiteout", "");
        SortedDictionary<string, string> kernel;
        using (KernelOverlayMount mount = KernelOverlayMount.Mount([layers.Upper, .. layers.Lowers]))
        {
            kernel = new PosixTree(mount.MountPoint).Snapshot(withTimes: true);
        }
        using OverlayFileSystem fs = layers.OpenOverlay();
        SortedDictionary<string, string> overlay = new OverlayTree(fs, 0).Snapshot(withTimes: true);
        Assert.That(overlay.ContainsKey("/x/f"), Is.True, "the overlay shows the xattr whiteout as a file");
        Assert.That(overlay["/x/f"], Does.StartWith("file").And.Contain("size=0"));
        if (Environment.OSVersion.Version >= new Version(6, 7))
        {
            Assert.That(kernel.ContainsKey("/x/f"), Is.False, "kernel 6.7+ hides a name whited out by xattr");
        }
        kernel.Remove("/x/f");
        overlay.Remove("/x/f");
        Assert.That(overlay, Is.EqualTo(kernel), "everything else is the same");
    }

    [TestCaseSource(typeof(OverlayCases), nameof(OverlayCases.MutationNames))]
    public void TheSameChangesMadeThroughTheKernelAndThroughTheOverlayGiveTheSameTree(string mutation)
    {
        RequireRoot();
        Func<ITreeOps, string[]> apply = Mutations[mutation];
        uint umask = TreeEntry.ProcessUmask();
        using var kernelLayers = new OverlayLayers();
        using var overlayLayers = new OverlayLayers();
        BuildMutationBase(kernelLayers);
        BuildMutationBase(overlayLayers);

        string[] kernelResults;
        SortedDictionary<string, string> kernel;
        using (KernelOverlayMount mount = KernelOverlayMount.Mount(kernelLayers.Lowers, kernelLayers.Upper, kernelLayers.Work))
        {
            var tree = new PosixTree(mount.MountPoint);
            kernelResults = apply(tree);
            kernel = tree.Snapshot();
        }

        string[] overlayResults;
        using (OverlayFileSystem fs = overlayLayers.OpenOverlay())
        {
            var tree = new OverlayTree(fs, umask);
            overlayResults = apply(tree);
            Assert.That(overlayResults, Is.EqualTo(kernelResults), "the result of each operation (ok or errno)");
            Assert.That(Diff(kernel, tree.Snapshot()), Is.Empty, "entries that differ after the changes (kernel | overlay)");
        }
        using (OverlayFileSystem fs = overlayLayers.OpenOverlay())
        {
            Assert.That(Diff(kernel, new OverlayTree(fs, umask).Snapshot()), Is.Empty, "entries that differ after reopening the overlay (kernel | overlay)");
        }

        // The overlay reads the upper layer the kernel wrote (its whiteouts, opaque directories, copied-up files).
        using (OverlayFileSystem fs = kernelLayers.OpenOverlay(work: kernelLayers.Make("overlay-work")))
        {
            Assert.That(Diff(kernel, new OverlayTree(fs, umask).Snapshot()), Is.Empty, "the overlay over the kernel's upper layer (kernel | overlay)");
        }

        // The kernel reads the upper layer the overlay wrote.
        AssertKernelReadsTheUpperLayer(overlayLayers, kernel, "overlay");
    }

    /// <summary>
    /// The randomized model test with kernel overlayfs as the model: identical random layers (whiteouts, opaque
    /// directories, large files) for the kernel and for the overlay, the same random operations through both, the
    /// same result for each, the same tree every few steps, at the end, after reopening the overlay, and across: the
    /// overlay over the kernel's upper layer. Prints the seed; BAOVERLAY_SEED replays.
    /// </summary>
    [Test]
    public void RandomChangesThroughTheKernelAndThroughTheOverlayGiveTheSameTree()
    {
        RequireRoot();
        int seed = Seed();
        uint umask = TreeEntry.ProcessUmask();
        using var kernelLayers = new OverlayLayers();
        using var overlayLayers = new OverlayLayers();
        BuildRandomLayers(seed, kernelLayers, overlayLayers);
        var random = new Random(seed + 1);
        var log = new List<string>();
        string Context() => $"seed {seed}, last operations:\n  " + string.Join("\n  ", log.TakeLast(15));
        SortedDictionary<string, string> kernel;
        using (KernelOverlayMount mount = KernelOverlayMount.Mount(kernelLayers.Lowers, kernelLayers.Upper, kernelLayers.Work))
        using (OverlayFileSystem fs = overlayLayers.OpenOverlay())
        {
            var kernelTree = new PosixTree(mount.MountPoint);
            var overlay = new OverlayTree(fs, umask);
            Assert.That(OverlayModelTests.Diff(Visible(kernelTree), overlay.Snapshot()), Is.Empty, $"before any change (kernel | overlay); {Context()}");
            try
            {
                for (int step = 1; step <= 600; step++)
                {
                    string entry = OverlayModelTests.Step(random, overlay, kernelTree, modelIsOverlayfs: true);
                    log.Add($"{step}: {entry}");
                    Assert.That(entry, Does.Not.Contain("MISMATCH"), $"an operation gave different results; {Context()}");
                    if (step % 20 == 0)
                    {
                        Assert.That(OverlayModelTests.Diff(Visible(kernelTree), overlay.Snapshot()), Is.Empty, $"after step {step} (kernel | overlay); {Context()}");
                    }
                }
                kernel = Visible(kernelTree);
            }
            catch (Exception)
            {
                TestContext.Out.WriteLine(Context());
                throw;
            }
            Assert.That(OverlayModelTests.Diff(kernel, overlay.Snapshot()), Is.Empty, $"at the end (kernel | overlay); {Context()}");
        }
        using (OverlayFileSystem fs = overlayLayers.OpenOverlay())
        {
            Assert.That(OverlayModelTests.Diff(kernel, new OverlayTree(fs, umask).Snapshot()), Is.Empty, $"after reopening the overlay; {Context()}");
        }
        using (OverlayFileSystem fs = kernelLayers.OpenOverlay(work: kernelLayers.Make("overlay-work")))
        {
            Assert.That(OverlayModelTests.Diff(kernel, new OverlayTree(fs, umask).Snapshot()), Is.Empty, $"the overlay over the kernel's upper layer; {Context()}");
        }
    }

    /// <summary>
    /// Two hard links to one lower file: writing through one name copies up only that name (kernel overlayfs breaks
    /// the link, the other name keeps the lower data). The overlay must write the file it was asked to even when, as
    /// a FUSE kernel does, both names were looked up before the open.
    /// </summary>
    [TestCase("f")]
    [TestCase("big")]
    public void WritingThroughOneOfTwoHardLinkedLowerNamesChangesOnlyThatName(string name)
    {
        RequireRoot();
        using var kernelLayers = new OverlayLayers();
        using var overlayLayers = new OverlayLayers();
        byte[] patch = "through the first name"u8.ToArray();
        SortedDictionary<string, string> kernel = KernelWritesThroughOneHardLinkedName(kernelLayers, overlayLayers, name, patch);
        using (OverlayFileSystem fs = overlayLayers.OpenOverlay())
        {
            ulong ino = fs.Lookup(OverlayFileSystem.RootIno, name).Ino;
            fs.Lookup(OverlayFileSystem.RootIno, "hardlink");
            using (OverlayHandle handle = fs.Open(ino, write: true, truncate: false))
            {
                handle.Write(patch, 3);
            }
            Assert.That(Diff(kernel, new OverlayTree(fs, 0).Snapshot()), Is.Empty, "entries that differ (kernel | overlay)");
        }
    }

    /// <summary>
    /// Documented difference, continued: the kernel counts the whiteouts of a directory that only one layer has as
    /// entries, so removing such a directory fails with ENOTEMPTY; for the overlay it is empty (its whiteouts hide
    /// nothing) and the removal works.
    /// </summary>
    [Test]
    public void ADirectoryOfOneLayerHoldingOnlyWhiteoutsIsEmptyForTheOverlayButNotForTheKernel()
    {
        RequireRoot();
        using var kernelLayers = new OverlayLayers();
        using var overlayLayers = new OverlayLayers();
        foreach (OverlayLayers l in new[] { kernelLayers, overlayLayers })
        {
            Directory.CreateDirectory(l.U("uonly"));
            Whiteout(l.U("uonly/wh"));
        }
        string kernel;
        using (KernelOverlayMount mount = KernelOverlayMount.Mount(kernelLayers.Lowers, kernelLayers.Upper, kernelLayers.Work))
        {
            kernel = new PosixTree(mount.MountPoint).Rmdir("uonly");
        }
        using OverlayFileSystem fs = overlayLayers.OpenOverlay();
        Assert.That(kernel, Is.EqualTo("ENOTEMPTY"), "the kernel");
        Assert.That(new OverlayTree(fs, 0).Rmdir("uonly"), Is.EqualTo("ok"), "the overlay");
    }

    /// <summary>
    /// A file opened for reading before another open copies it up reads the new data, through kernel overlayfs
    /// (since Linux 4.19, which re-opens the real file after a copy-up) and through the overlay alike; checked for a
    /// small (whole copy-up) and a large (B-CoW) lower file.
    /// </summary>
    [TestCase("f")]
    [TestCase("big")]
    public void AReaderOpenedBeforeACopyUpSeesTheNewDataThroughTheKernelAndThroughTheOverlay(string name)
    {
        RequireRoot();
        using var kernelLayers = new OverlayLayers();
        using var overlayLayers = new OverlayLayers();
        BuildMutationBase(kernelLayers);
        BuildMutationBase(overlayLayers);
        byte[] patch = "written after the reader opened"u8.ToArray();
        byte[] kernelSeen = new byte[patch.Length];
        using (KernelOverlayMount mount = KernelOverlayMount.Mount(kernelLayers.Lowers, kernelLayers.Upper, kernelLayers.Work))
        using (var reader = new FileStream(Path.Combine(mount.MountPoint, name), FileMode.Open, FileAccess.Read, FileShare.ReadWrite, 1))
        {
            Assert.That(new PosixTree(mount.MountPoint).WriteAt(name, 5, patch), Is.EqualTo("ok"));
            reader.Position = 5;
            reader.ReadExactly(kernelSeen);
        }
        byte[] overlaySeen = new byte[patch.Length];
        using (OverlayFileSystem fs = overlayLayers.OpenOverlay())
        using (OverlayHandle reader = fs.Open(Resolve(fs, name).Ino, write: false, truncate: false))
        {
            Assert.That(new OverlayTree(fs, 0).WriteAt(name, 5, patch), Is.EqualTo("ok"));
            Assert.That(reader.Read(overlaySeen, 5), Is.EqualTo(patch.Length));
        }
        Assert.That(kernelSeen, Is.EqualTo(patch), "the kernel's early reader sees the new data");
        Assert.That(overlaySeen, Is.EqualTo(kernelSeen), "the overlay's early reader sees what the kernel's does");
    }

    /// <summary>
    /// Documented difference: the overlay reserves names starting with .wh. for whiteouts, so creating, making a
    /// directory, a link or renaming to such a name fails with EINVAL; the kernel allows them (it does not read
    /// .wh. files as whiteouts).
    /// </summary>
    [Test]
    public void NamesStartingWithDotWhAreReservedInTheOverlayButAllowedByTheKernel()
    {
        RequireRoot();
        using var kernelLayers = new OverlayLayers();
        using var overlayLayers = new OverlayLayers();
        BuildMutationBase(kernelLayers);
        BuildMutationBase(overlayLayers);
        Func<ITreeOps, string[]> apply = MakeDotWhNames;
        string[] kernel;
        using (KernelOverlayMount mount = KernelOverlayMount.Mount(kernelLayers.Lowers, kernelLayers.Upper, kernelLayers.Work))
        {
            kernel = apply(new PosixTree(mount.MountPoint));
        }
        using OverlayFileSystem fs = overlayLayers.OpenOverlay();
        string[] overlay = apply(new OverlayTree(fs, 0));
        Assert.That(kernel, Is.All.EqualTo("ok"), "the kernel allows .wh. names");
        Assert.That(overlay, Is.All.EqualTo("EINVAL"), "the overlay reserves them");
    }
}
