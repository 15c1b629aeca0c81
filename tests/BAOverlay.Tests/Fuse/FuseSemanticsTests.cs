using BAOverlay.FileSystem;
using BAOverlay.Tests.FileSystem;
using Microsoft.Win32.SafeHandles;
using Mono.Unix.Native;
using static BAOverlay.Tests.FileSystem.OverlayCases;
using static BAOverlay.Tests.FileSystem.OverlayFixture;
using Mounted = BAOverlay.Tests.Fuse.FuseMountTests.Mounted;

namespace BAOverlay.Tests.Fuse;

/// <summary>
/// The overlay's semantic case table (<see cref="OverlayCases"/>) through a FUSE mount of the overlay, with kernel
/// overlayfs as the model, as <see cref="KernelOverlayComparisonTests"/> runs it through the library API: the same
/// layouts, mutations, random operations and special cases, done with POSIX calls on the mount point
/// (<see cref="PosixTree"/>). What the kernel's FUSE layer adds (its caches of names, attributes and pages, umask and
/// permission checks, how it splits a call into requests) is what these tests are for. Needs root and /dev/fuse (and
/// libfuse3 for the libfuse fixture); ignored, saying which is missing, otherwise (CI has all). Everything runs twice: with the
/// kernel's write-back cache (as baoverlayfs mounts) and without it (the library's default), over the session's own
/// FUSE protocol layer; and once more served through libfuse (<see cref="BAOverlay.Fuse.FuseMountOptions.UseLibFuse"/>),
/// the fallback, which must mean the same; and once more over FUSE over io_uring (<see cref="BAOverlay.Fuse.FuseMountOptions.IoUring"/>,
/// which needs the fuse module's enable_uring = Y: the fixture sets it, as root), every opcode through the ring's split requests.
/// </summary>
[TestFixture(true, false, false, TestName = "WithTheWritebackCache")]
[TestFixture(false, false, false, TestName = "WithoutTheWritebackCache")]
[TestFixture(true, true, false, TestName = "ThroughLibfuse")]
[TestFixture(false, false, true, TestName = "OverIoUring")]
[Platform("Linux")]
[NonParallelizable]
public sealed class FuseSemanticsTests(bool writeback, bool libfuse, bool ioUring)
{
    private int _mounts;
    private RingTransportTests.UringParameter? _ring;

    /// <summary>Over io_uring: the fuse module's enable_uring set to Y for the fixture (root only; the old value is
    /// put back), so that the README's test command needs nothing set beforehand.</summary>
    [OneTimeSetUp]
    public void EnableTheRing()
    {
        if (ioUring && Syscall.geteuid() == 0)
        {
            _ring = new RingTransportTests.UringParameter(enable: true);
        }
    }

    [OneTimeTearDown]
    public void RestoreTheRing() => _ring?.Dispose();

    /// <summary>
    /// Mounts the overlay over <paramref name="layers"/> on a fresh folder next to them, runs <paramref name="use"/>
    /// on the mount point, unmounts, and checks that no request was answered EIO on the way.
    /// </summary>
    private T WithMount<T>(OverlayLayers layers, Func<PosixTree, T> use)
    {
        string mountPoint = layers.Make($"fuse-mnt{++_mounts}");
        Mounted mounted = Mounted.Start(() => layers.OpenOverlay(), mountPoint, options: new BAOverlay.Fuse.FuseMountOptions { WritebackCache = writeback, UseLibFuse = libfuse, IoUring = ioUring });
        T result;
        try
        {
            if (ioUring)
            {
                RingTransportTests.AssertRingGranted(mounted, mountPoint);
            }
            result = use(new PosixTree(mountPoint));
        }
        finally
        {
            mounted.Dispose();
        }
        Assert.That(mounted.Log, Is.Empty, "no request failed unexpectedly (EIO)");
        return result;
    }

    private void WithMount(OverlayLayers layers, Action<PosixTree> use) => WithMount(layers, tree =>
    {
        use(tree);
        return 0;
    });

    /// <summary>
    /// The link count of every directory below <paramref name="root"/>. Kernel overlayfs reports 1 for a directory
    /// merged from several layers and the real count for one of a single layer; the mount must report the same.
    /// </summary>
    private static SortedDictionary<string, ulong> DirectoryLinks(string root)
    {
        var links = new SortedDictionary<string, ulong>(StringComparer.Ordinal);
        void Walk(string relative)
        {
            string full = relative.Length == 0 ? root : root + "/" + relative;
            Assert.That(Syscall.lstat(full, out Stat st), Is.Zero, $"lstat {full}");
            links["/" + relative] = st.st_nlink;
            foreach (string child in Directory.EnumerateFileSystemEntries(full))
            {
                if (Syscall.lstat(child, out Stat c) == 0 && (c.st_mode & FilePermissions.S_IFMT) == FilePermissions.S_IFDIR)
                {
                    Walk(Path.GetRelativePath(root, child));
                }
            }
        }
        Walk("");
        return links;
    }

    /// <summary>The directories whose link counts differ, "path kernel/mount".</summary>
    private static string LinkDifferences(SortedDictionary<string, ulong> kernel, SortedDictionary<string, ulong> mount) =>
        string.Join(", ", kernel.Keys.Union(mount.Keys).Order(StringComparer.Ordinal)
            .Where(p => kernel.GetValueOrDefault(p) != mount.GetValueOrDefault(p))
            .Select(p => $"{p} {kernel.GetValueOrDefault(p)}/{mount.GetValueOrDefault(p)}"));

    private static string Parent(string path) => path.LastIndexOf('/') is > 0 and int slash ? path[..slash] : "/";

    [SetUp]
    public void RequireRootAndFuse()
    {
        // Before any layer is built: layers hold whiteout devices and trusted.overlay.* xattrs, which need root too.
        Mounted.RequireFuse();
    }

    // ------------------------------------------------------------------ read-only layouts

    /// <summary>
    /// Each layout looks through the mount as it does through kernel overlayfs, except the documented differences
    /// (each checked to be real), and exactly as it does through the library API (documented differences included):
    /// names, types, modes, owners, sizes, contents, link targets, device numbers and modification times.
    /// </summary>
    [TestCaseSource(typeof(OverlayCases), nameof(OverlayCases.LayoutNames))]
    public void TheKernelAndTheMountShowTheSameTreeOverTheSameLayers(string layout)
    {
        var (build, differences) = Layouts[layout];
        using var layers = new OverlayLayers();
        build(layers);
        SortedDictionary<string, string> kernel;
        SortedDictionary<string, ulong> kernelLinks;
        using (KernelOverlayMount mount = KernelOverlayMount.Mount([layers.Upper, .. layers.Lowers]))
        {
            kernel = new PosixTree(mount.MountPoint).Snapshot(withTimes: true);
            kernelLinks = DirectoryLinks(mount.MountPoint);
        }
        SortedDictionary<string, string> library;
        using (OverlayFileSystem fs = layers.OpenOverlay())
        {
            library = new OverlayTree(fs, 0).Snapshot(withTimes: true);
        }
        var (seen, links) = WithMount(layers, tree => (tree.Snapshot(withTimes: true), DirectoryLinks(tree.Root)));
        AssertSameExceptDifferences(kernel, seen, differences);
        Assert.That(Diff(library, seen), Is.Empty, "entries that differ (library | mount)");
        // A documented difference can make its directory merged for one and opaque (a single layer) for the other.
        bool Documented(string path) => differences.Any(d => path == d || path.StartsWith(d + "/", StringComparison.Ordinal) || path == Parent(d));
        Assert.That(links.Where(e => !Documented(e.Key)), Is.EqualTo(kernelLinks.Where(e => !Documented(e.Key))), "directory link counts (kernel, mount)");
    }

    // ------------------------------------------------------------------ mutations

    /// <summary>
    /// The same operations through a kernel overlayfs mount and through the FUSE mount (on identical layers) give the
    /// same result each (ok or errno) and the same tree; the same tree again after unmounting and mounting again, and
    /// through the library over the layers the mount wrote; and the kernel reads the upper layer the mount wrote as
    /// it reads its own (B-CoW files compared by type, mode and owner only: the kernel sees the container).
    /// </summary>
    [TestCaseSource(typeof(OverlayCases), nameof(OverlayCases.MutationNames))]
    public void TheSameChangesMadeThroughTheKernelAndThroughTheMountGiveTheSameTree(string mutation)
    {
        Func<ITreeOps, string[]> apply = Mutations[mutation];
        using var kernelLayers = new OverlayLayers();
        using var fuseLayers = new OverlayLayers();
        BuildMutationBase(kernelLayers);
        BuildMutationBase(fuseLayers);

        string[] kernelResults;
        SortedDictionary<string, string> kernel;
        SortedDictionary<string, ulong> kernelLinks;
        using (KernelOverlayMount mount = KernelOverlayMount.Mount(kernelLayers.Lowers, kernelLayers.Upper, kernelLayers.Work))
        {
            var tree = new PosixTree(mount.MountPoint);
            kernelResults = apply(tree);
            kernel = tree.Snapshot();
            kernelLinks = DirectoryLinks(mount.MountPoint);
        }

        WithMount(fuseLayers, fuse =>
        {
            Assert.That(apply(fuse), Is.EqualTo(kernelResults), "the result of each operation (ok or errno)");
            Assert.That(Diff(kernel, fuse.Snapshot()), Is.Empty, "entries that differ after the changes (kernel | mount)");
            Assert.That(DirectoryLinks(fuse.Root), Is.EqualTo(kernelLinks), "directory link counts after the changes (kernel, mount)");
        });
        WithMount(fuseLayers, fuse =>
        {
            Assert.That(Diff(kernel, fuse.Snapshot()), Is.Empty, "entries that differ after mounting again (kernel | mount)");
            Assert.That(DirectoryLinks(fuse.Root), Is.EqualTo(kernelLinks), "directory link counts after mounting again (kernel, mount)");
        });
        using (OverlayFileSystem fs = fuseLayers.OpenOverlay())
        {
            Assert.That(Diff(kernel, new OverlayTree(fs, 0).Snapshot()), Is.Empty, "the library over the layers the mount wrote (kernel | library)");
        }

        AssertKernelReadsTheUpperLayer(fuseLayers, kernel, "mount");
    }

    // ------------------------------------------------------------------ random operations

    /// <summary>
    /// The randomized model test through the mount: identical random layers for kernel overlayfs and for the FUSE
    /// mount, the same random operations through both (inode numbers checked stable across copy-up and rename, as
    /// <c>stat</c> shows them through the mount), the same tree every few steps and at the end, with the kernel made
    /// to forget the mount's unused inodes now and then (drop_caches); after mounting again the same tree and the
    /// same inode numbers. Prints the seed; BAOVERLAY_SEED replays.
    /// </summary>
    [Test]
    public void RandomChangesThroughTheKernelAndThroughTheMountGiveTheSameTree()
    {
        const int Steps = 1500;
        const int CompareEvery = 20;
        const int ForgetEvery = 300;
        int seed = Seed();
        using var kernelLayers = new OverlayLayers();
        using var fuseLayers = new OverlayLayers();
        BuildRandomLayers(seed, kernelLayers, fuseLayers);
        var random = new Random(seed + 1);
        var log = new List<string>();
        string Context() => $"seed {seed}, last operations:\n  " + string.Join("\n  ", log.TakeLast(15));
        SortedDictionary<string, string> kernel;
        Dictionary<string, ulong?> inodes;
        using (KernelOverlayMount mount = KernelOverlayMount.Mount(kernelLayers.Lowers, kernelLayers.Upper, kernelLayers.Work))
        {
            var kernelTree = new PosixTree(mount.MountPoint);
            (kernel, inodes) = WithMount(fuseLayers, fuse =>
            {
                try
                {
                    Assert.That(Diff(Visible(kernelTree), fuse.Snapshot()), Is.Empty, $"before any change (kernel | mount); {Context()}");
                    for (int step = 1; step <= Steps; step++)
                    {
                        string entry = OverlayModelTests.Step(random, fuse, kernelTree, modelIsOverlayfs: true);
                        log.Add($"{step}: {entry}");
                        Assert.That(entry, Does.Not.Contain("MISMATCH"), $"an operation gave different results; {Context()}");
                        if (step % ForgetEvery == 0)
                        {
                            // The kernel forgets every unused inode of the mount (FUSE forget): later requests must
                            // look the paths up again and find the same objects, with the same numbers.
                            File.WriteAllText("/proc/sys/vm/drop_caches", "2");
                        }
                        if (step % CompareEvery == 0)
                        {
                            Assert.That(Diff(Visible(kernelTree), fuse.Snapshot()), Is.Empty, $"after step {step} (kernel | mount); {Context()}");
                            SortedDictionary<string, ulong> mountLinks = DirectoryLinks(fuse.Root), kernelLinks = DirectoryLinks(kernelTree.Root);
                            Assert.That(mountLinks, Is.EqualTo(kernelLinks),
                                $"directory link counts after step {step} (kernel, mount): {LinkDifferences(kernelLinks, mountLinks)}; {Context()}");
                        }
                    }
                    TestContext.Out.WriteLine($"{Steps} steps; results: {string.Join(", ", log.Select(l => l.Contains("-> ", StringComparison.Ordinal) ? l.Split(' ')[1] + " " + l.Split("-> ")[^1].Split(' ')[0] : "skip").CountBy(r => r).OrderByDescending(kv => kv.Value).Select(kv => $"{kv.Key} {kv.Value}"))}");
                    SortedDictionary<string, string> final = Visible(kernelTree);
                    Assert.That(Diff(final, fuse.Snapshot()), Is.Empty, $"at the end (kernel | mount); {Context()}");
                    return (final, final.Keys.ToDictionary(p => p, p => fuse.Ino(p.TrimStart('/'))));
                }
                catch (Exception)
                {
                    TestContext.Out.WriteLine(Context());
                    throw;
                }
            });
        }
        WithMount(fuseLayers, remounted =>
        {
            Assert.That(Diff(kernel, remounted.Snapshot()), Is.Empty, $"after mounting again (kernel | mount); {Context()}");
            Assert.That(kernel.Keys.ToDictionary(p => p, p => remounted.Ino(p.TrimStart('/'))), Is.EqualTo(inodes), $"inode numbers after mounting again; {Context()}");
        });
    }

    // ------------------------------------------------------------------ special cases

    /// <summary>
    /// Two hard links to one lower file, both looked up (stat) before one is opened for writing: only the written
    /// name changes, as with kernel overlayfs. Through the mount the two names are two inodes (their own numbers, a
    /// documented difference from the kernel), so the kernel's page cache of one cannot show the other's data.
    /// </summary>
    [TestCase("f")]
    [TestCase("big")]
    public void WritingThroughOneOfTwoHardLinkedLowerNamesChangesOnlyThatName(string name)
    {
        using var kernelLayers = new OverlayLayers();
        using var fuseLayers = new OverlayLayers();
        byte[] patch = "through the first name"u8.ToArray();
        SortedDictionary<string, string> kernel = KernelWritesThroughOneHardLinkedName(kernelLayers, fuseLayers, name, patch);
        WithMount(fuseLayers, fuse =>
        {
            // Both names read (cached) before the write.
            Assert.That(fuse.Snapshot(), Does.ContainKey("/hardlink"));
            Assert.That(fuse.Ino(name), Is.Not.EqualTo(fuse.Ino("hardlink")), "two names of a lower hard link are two inodes of the mount");
            Assert.That(fuse.WriteAt(name, 3, patch), Is.EqualTo("ok"));
            Assert.That(Diff(kernel, fuse.Snapshot()), Is.Empty, "entries that differ (kernel | mount)");
        });
    }

    /// <summary>
    /// Documented difference, through the mount as through the library: a directory that only one layer has, holding
    /// only whiteouts, is empty for the overlay (rmdir works) but not for the kernel (ENOTEMPTY).
    /// </summary>
    [Test]
    public void ADirectoryOfOneLayerHoldingOnlyWhiteoutsIsEmptyThroughTheMountButNotForTheKernel()
    {
        using var kernelLayers = new OverlayLayers();
        using var fuseLayers = new OverlayLayers();
        foreach (OverlayLayers l in new[] { kernelLayers, fuseLayers })
        {
            Directory.CreateDirectory(l.U("uonly"));
            Whiteout(l.U("uonly/wh"));
        }
        using (KernelOverlayMount mount = KernelOverlayMount.Mount(kernelLayers.Lowers, kernelLayers.Upper, kernelLayers.Work))
        {
            Assert.That(new PosixTree(mount.MountPoint).Rmdir("uonly"), Is.EqualTo("ENOTEMPTY"), "the kernel");
        }
        WithMount(fuseLayers, fuse =>
        {
            Assert.That(fuse.Snapshot(), Does.ContainKey("/uonly").And.Not.ContainKey("/uonly/wh"), "the whiteout is not listed");
            Assert.That(fuse.Rmdir("uonly"), Is.EqualTo("ok"), "the mount");
            Assert.That(fuse.Ino("uonly"), Is.Null, "gone");
        });
    }

    /// <summary>
    /// A file opened for reading (and read, so the kernel has its pages cached) before another open copies it up
    /// reads the new data, through kernel overlayfs and through the mount alike; for a small (whole copy-up) and a
    /// large (B-CoW) lower file.
    /// </summary>
    [TestCase("f")]
    [TestCase("big")]
    public void AReaderOpenedBeforeACopyUpSeesTheNewDataThroughTheKernelAndThroughTheMount(string name)
    {
        using var kernelLayers = new OverlayLayers();
        using var fuseLayers = new OverlayLayers();
        BuildMutationBase(kernelLayers);
        BuildMutationBase(fuseLayers);
        byte[] patch = "written after the reader opened"u8.ToArray();

        byte[] ReadThroughEarlyReader(string root, out byte[] before)
        {
            using var reader = new FileStream(Path.Combine(root, name), FileMode.Open, FileAccess.Read, FileShare.ReadWrite, 1);
            before = new byte[4];
            reader.Position = 5;
            reader.ReadExactly(before);
            Assert.That(new PosixTree(root).WriteAt(name, 5, patch), Is.EqualTo("ok"));
            byte[] seen = new byte[patch.Length];
            reader.Position = 5;
            reader.ReadExactly(seen);
            return seen;
        }

        byte[] kernelSeen;
        using (KernelOverlayMount mount = KernelOverlayMount.Mount(kernelLayers.Lowers, kernelLayers.Upper, kernelLayers.Work))
        {
            kernelSeen = ReadThroughEarlyReader(mount.MountPoint, out _);
        }
        (byte[] fuseSeen, byte[] fuseBefore) = WithMount(fuseLayers, fuse => (ReadThroughEarlyReader(fuse.Root, out byte[] before), before));
        Assert.That(fuseBefore, Is.Not.EqualTo(patch[..4]), "the reader read the lower data first");
        Assert.That(kernelSeen, Is.EqualTo(patch), "the kernel's early reader sees the new data");
        Assert.That(fuseSeen, Is.EqualTo(kernelSeen), "the mount's early reader sees what the kernel's does");
    }

    /// <summary>
    /// Open files outlive their names: a lower file (small, and large as B-CoW) unlinked while open for writing is
    /// still written, read and stat'ed through its descriptor, and a reader of a file that another is renamed over
    /// keeps reading the old data; the same through kernel overlayfs and through the mount.
    /// </summary>
    [TestCase("f")]
    [TestCase("big")]
    public void FilesUnlinkedOrReplacedWhileOpenBehaveThroughTheMountAsThroughTheKernel(string name)
    {
        List<string> Run(string root)
        {
            var seen = new List<string>();
            var tree = new PosixTree(root);
            using (SafeFileHandle open = File.OpenHandle(Path.Combine(root, name), FileMode.Open, FileAccess.ReadWrite))
            {
                seen.Add("unlink " + tree.Unlink(name));
                RandomAccess.Write(open, "after unlink"u8, 3);
                byte[] back = new byte[12];
                seen.Add($"read {RandomAccess.Read(open, back, 3)} {System.Text.Encoding.ASCII.GetString(back)}");
                seen.Add($"length {RandomAccess.GetLength(open)}");
                seen.Add("exists " + (tree.Ino(name) is not null));
            }
            using (SafeFileHandle reader = File.OpenHandle(Path.Combine(root, "u-file")))
            {
                seen.Add("rename " + tree.Rename("d/b", "u-file"));
                byte[] old = new byte[5];
                seen.Add($"old {RandomAccess.Read(reader, old, 0)} {System.Text.Encoding.ASCII.GetString(old)}");
                seen.Add("new " + File.ReadAllText(Path.Combine(root, "u-file")));
            }
            return seen;
        }

        using var kernelLayers = new OverlayLayers();
        using var fuseLayers = new OverlayLayers();
        BuildMutationBase(kernelLayers);
        BuildMutationBase(fuseLayers);
        List<string> kernel;
        SortedDictionary<string, string> kernelTree;
        using (KernelOverlayMount mount = KernelOverlayMount.Mount(kernelLayers.Lowers, kernelLayers.Upper, kernelLayers.Work))
        {
            kernel = Run(mount.MountPoint);
            kernelTree = new PosixTree(mount.MountPoint).Snapshot();
        }
        WithMount(fuseLayers, fuse =>
        {
            Assert.That(Run(fuse.Root), Is.EqualTo(kernel), "what the descriptors saw (kernel, mount)");
            Assert.That(Diff(kernelTree, fuse.Snapshot()), Is.Empty, "entries that differ afterwards (kernel | mount)");
        });
        Assert.That(Directory.EnumerateFileSystemEntries(Path.Combine(fuseLayers.Work, "baoverlay")), Is.Empty, "nothing of the unlinked file is left in the work directory");
    }

    /// <summary>Documented difference, through the mount as through the library: names starting with .wh. cannot be
    /// made (EINVAL); the kernel allows them.</summary>
    [Test]
    public void NamesStartingWithDotWhAreReservedThroughTheMountButAllowedByTheKernel()
    {
        using var kernelLayers = new OverlayLayers();
        using var fuseLayers = new OverlayLayers();
        BuildMutationBase(kernelLayers);
        BuildMutationBase(fuseLayers);
        using (KernelOverlayMount mount = KernelOverlayMount.Mount(kernelLayers.Lowers, kernelLayers.Upper, kernelLayers.Work))
        {
            Assert.That(MakeDotWhNames(new PosixTree(mount.MountPoint)), Is.All.EqualTo("ok"), "the kernel allows .wh. names");
        }
        WithMount(fuseLayers, fuse =>
        {
            Assert.That(MakeDotWhNames(fuse), Is.All.EqualTo("EINVAL"), "the mount reserves them");
            Assert.That(fuse.Snapshot().Keys, Has.None.Contains(".wh."), "nothing was made");
        });
    }
}
