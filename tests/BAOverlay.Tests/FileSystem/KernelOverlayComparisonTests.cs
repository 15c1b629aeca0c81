using BAOverlay.FileSystem;
using Mono.Unix.Native;
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
    private const long Threshold = 64 * 1024;

    /// <summary>An upper, a work and three lower folders (highest first), in a temp dir of their own.</summary>
    private sealed class Layers : IDisposable
    {
        private readonly TempDir _temp = new();

        public Layers()
        {
            Upper = Make("upper");
            Work = Make("work");
            Lowers = [Make("lower1"), Make("lower2"), Make("lower3")];
        }

        public string Upper { get; }

        public string Work { get; }

        public string[] Lowers { get; }

        public string U(string relative) => Path.Combine(Upper, relative);

        public string L(int layer, string relative) => Path.Combine(Lowers[layer - 1], relative);

        public OverlayFileSystem OpenOverlay(string? work = null) => OverlayFileSystem.Open(new OverlayOptions
        {
            LowerDirectories = Lowers,
            UpperDirectory = Upper,
            WorkDirectory = work ?? Work,
            BlockCopyUpThreshold = Threshold,
            BlockSize = 4096,
            Log = line => TestContext.Out.WriteLine(line),
        });

        /// <summary>A fresh folder next to the layers (same file system), e.g. a second work directory.</summary>
        public string Make(string name)
        {
            string path = _temp.File(name);
            Directory.CreateDirectory(path);
            return path;
        }

        public void Dispose() => _temp.Dispose();
    }

    private static void RequireRoot()
    {
        if (Syscall.geteuid() != 0)
        {
            Assert.Ignore("needs root: kernel overlayfs mounts, whiteout devices and trusted.overlay.* xattrs; CI runs as root");
        }
    }

    private static void Symlink(string target, string path)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        Assert.That(Syscall.symlink(target, path), Is.Zero, $"symlink {path}");
    }

    private static void MakeNode(string path, FilePermissions mode, ulong rdev)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        Assert.That(Syscall.mknod(path, mode, rdev), Is.Zero, $"mknod {path}");
    }

    private static void Chmod(string path, string octal) => Assert.That(Syscall.chmod(path, (FilePermissions)Mode(octal)), Is.Zero, $"chmod {path}");

    private static void Opaque(string path, string xattr = "trusted.overlay.opaque", string value = "y")
    {
        Directory.CreateDirectory(path);
        SetXattr(path, xattr, value);
    }

    private static byte[] Random(int seed, int length)
    {
        byte[] bytes = new byte[length];
        new Random(seed).NextBytes(bytes);
        return bytes;
    }

    // ------------------------------------------------------------------ read-only layouts

    /// <summary>A layout and the paths where the kernel and the overlay are documented to differ.</summary>
    private sealed record Layout(Action<Layers> Build, params string[] Differences);

    private static readonly Dictionary<string, Layout> Layouts = new()
    {
        ["lookup precedence across the upper and three lowers"] = new(l =>
        {
            WriteFile(l.L(3, "a"), "l3");
            WriteFile(l.L(2, "a"), "l2");
            WriteFile(l.L(1, "a"), "l1");
            WriteFile(l.U("a"), "upper");
            WriteFile(l.L(3, "b"), "l3");
            WriteFile(l.L(2, "b"), "l2");
            WriteFile(l.L(3, "c"), "only l3");
            WriteFile(l.L(3, "d"), "l3");
            WriteFile(l.L(1, "d"), "l1 over a gap in l2");
            WriteFile(l.U("file-over-dir"), "upper file");
            WriteFile(l.L(1, "file-over-dir/inner"), "hidden");
            WriteFile(l.U("dir-over-file/z"), "upper z");
            WriteFile(l.L(1, "dir-over-file"), "a lower file stops the merge");
            WriteFile(l.L(2, "dir-over-file/w"), "hidden below the file");
            WriteFile(l.L(2, "dir-over-deep-file/k"), "k");
            WriteFile(l.L(3, "dir-over-deep-file"), "hidden");
            Symlink("a", l.U("link-over-file"));
            WriteFile(l.L(1, "link-over-file"), "hidden");
            WriteFile(l.L(1, "owned"), "owned");
            Assert.That(Syscall.lchown(l.L(1, "owned"), 1234, 5678), Is.Zero);
            Chmod(l.L(1, "owned"), "4750");
            Directory.CreateDirectory(l.L(1, "modes"));
            Directory.CreateDirectory(l.L(2, "modes"));
            Chmod(l.L(1, "modes"), "711");
            Chmod(l.L(2, "modes"), "777");
            Chmod(l.Upper, "751");
        }),
        ["whiteout devices in the upper and in lower layers"] = new(l =>
        {
            WriteFile(l.L(1, "w1"), "hidden by an upper whiteout");
            Whiteout(l.U("w1"));
            WriteFile(l.L(2, "w2/inside"), "hidden dir");
            WriteFile(l.L(3, "w2"), "hidden file");
            Whiteout(l.L(1, "w2"));
            WriteFile(l.L(1, "w3"), "above the whiteout, visible");
            Whiteout(l.L(2, "w3"));
            WriteFile(l.L(3, "w3"), "below the whiteout");
            Whiteout(l.U("w4-over-nothing"));
            WriteFile(l.L(3, "m/a"), "a");
            WriteFile(l.L(3, "m/b"), "b");
            WriteFile(l.L(3, "m/c"), "c");
            Whiteout(l.L(2, "m/a"));
            Whiteout(l.U("m/b"));
            WriteFile(l.L(1, "m/d"), "d");
            WriteFile(l.L(1, "m/sub/x"), "x");
            Whiteout(l.U("m/sub"));
            MakeNode(l.U("w5"), FilePermissions.S_IFCHR | (FilePermissions)Mode("644"), 0);
            WriteFile(l.L(1, "w5"), "a whiteout with permission bits is still a whiteout");
            MakeNode(l.L(1, "null"), FilePermissions.S_IFCHR | (FilePermissions)Mode("666"), (1 << 8) | 3);
        }),
        ["opaque directories marked with trusted.overlay.opaque"] = new(l =>
        {
            WriteFile(l.L(1, "o/new"), "new");
            Opaque(l.L(1, "o"));
            WriteFile(l.L(2, "o/old"), "old");
            WriteFile(l.L(3, "o/older"), "older");
            WriteFile(l.U("p/u"), "u");
            Opaque(l.U("p"));
            WriteFile(l.L(1, "p/l"), "l");
            WriteFile(l.L(1, "q/one"), "one");
            WriteFile(l.L(2, "q/two"), "two");
            Opaque(l.L(2, "q"));
            WriteFile(l.L(3, "q/three"), "three");
            WriteFile(l.L(1, "n/sub/top"), "top");
            Opaque(l.L(1, "n/sub"));
            WriteFile(l.L(2, "n/sub/below"), "below");
            WriteFile(l.L(2, "n/merged"), "merged");
            Opaque(l.U("empty-opaque"));
            WriteFile(l.L(1, "empty-opaque/x"), "x");
        }),
        ["directories merged across all layers"] = new(l =>
        {
            WriteFile(l.U("a/b/c/u"), "u");
            WriteFile(l.L(1, "a/b/l1"), "l1");
            WriteFile(l.L(2, "a/b/c/l2"), "l2");
            WriteFile(l.L(2, "a/l2x"), "l2x");
            WriteFile(l.L(3, "a/b/c/d/l3"), "l3");
            WriteFile(l.L(3, "a/b/c/u"), "shadowed");
            Directory.CreateDirectory(l.L(1, "a/empty1"));
            Directory.CreateDirectory(l.L(3, "a/empty1"));
            Directory.CreateDirectory(l.L(3, "deep/only/in/l3"));
            Directory.CreateDirectory(l.U("e/f"));
            Directory.CreateDirectory(l.L(2, "e/f/g"));
        }),
        ["symbolic links, dangling ones too"] = new(l =>
        {
            Symlink("/etc/passwd", l.L(1, "abs"));
            Symlink("../outside/of/everything", l.L(1, "dir/up"));
            Symlink("nowhere", l.L(2, "dangling"));
            Directory.CreateDirectory(l.L(1, "target-dir/x"));
            Symlink("target-dir", l.L(1, "to-dir"));
            Symlink("lower1-dir", l.U("link-over-dir"));
            WriteFile(l.L(1, "link-over-dir/hidden"), "hidden");
            Symlink(new string('t', 200), l.L(3, "long-target"));
            Symlink("w", l.L(1, "through-whiteout"));
            Whiteout(l.U("w"));
            WriteFile(l.L(1, "w"), "w");
        }),
        ["files of many sizes"] = new(l =>
        {
            int[] sizes = [0, 1, 511, 4095, 4096, 4097, 65535, 65536, 65537, 300_000, 1 << 20];
            foreach (int size in sizes)
            {
                WriteFile(l.L(2, $"sizes/{size}"), Random(size, size));
                WriteFile(l.L(1, $"shadowed/{size}"), Random(size + 1, size));
                WriteFile(l.L(3, $"shadowed/{size}"), Random(size + 2, size / 2 + 7));
            }
            using (var sparse = new FileStream(l.L(1, "sparse"), FileMode.CreateNew))
            {
                sparse.SetLength(3 << 20);
                sparse.Position = (2 << 20) + 17;
                sparse.Write("data after a hole"u8);
            }
        }),
        ["hidden and unusual names"] = new(l =>
        {
            string[] names = [".hidden", "..dots", ".wh", "wh.x", "x.wh.y", "name with spaces", "ünïcödé", "-dash", "Case", "case", new string('n', 255)];
            foreach (var (name, i) in names.Select((n, i) => (n, i)))
            {
                WriteFile(l.L(1 + (i % 3), name), name);
                WriteFile(l.L(1 + ((i + 1) % 3), "dir/" + name), name);
            }
            Directory.CreateDirectory(l.L(2, ".hidden-dir/.inner"));
        }),
        ["special files"] = new(l =>
        {
            MakeNode(l.L(2, "fifo"), FilePermissions.S_IFIFO | (FilePermissions)Mode("640"), 0);
            MakeNode(l.L(1, "sock"), FilePermissions.S_IFSOCK | (FilePermissions)Mode("755"), 0);
            MakeNode(l.L(3, "blk"), FilePermissions.S_IFBLK | (FilePermissions)Mode("600"), (7 << 8) | 5);
            MakeNode(l.U("chr"), FilePermissions.S_IFCHR | (FilePermissions)Mode("600"), (1 << 8) | 5);
            Assert.That(Syscall.lchown(l.L(2, "fifo"), 42, 43), Is.Zero);
        }),

        // Documented difference: the overlay honours OCI whiteout files (.wh.NAME) in every layer and hides every
        // name starting with .wh.; the kernel ignores them and shows both the marker and the name it would hide.
        ["OCI whiteout files"] = new(l =>
        {
            WriteFile(l.L(2, "gone1"), "hidden by a .wh. file in lower1 (overlay only)");
            WriteFile(l.L(1, ".wh.gone1"), "");
            WriteFile(l.L(1, "gone2/inside"), "hidden by a .wh. file in upper (overlay only)");
            WriteFile(l.U(".wh.gone2"), "");
            WriteFile(l.L(1, "m/x"), "x");
            WriteFile(l.L(1, "m/y"), "y");
            WriteFile(l.U("m/.wh.x"), "");
            WriteFile(l.U(".wh.nothing-below"), "");
        }, "/gone1", "/.wh.gone1", "/gone2", "/.wh.gone2", "/m/x", "/m/.wh.x", "/.wh.nothing-below"),

        // Documented difference: in a directory that only one layer has (not merged), the kernel passes readdir
        // straight to the real directory, so it lists the whiteouts there (ls shows c?????????) although looking
        // them up fails with ENOENT; the overlay hides them from readdir as well.
        ["whiteouts in a directory that only one layer has"] = new(l =>
        {
            WriteFile(l.L(1, "only/f"), "f");
            Whiteout(l.L(1, "only/wh"));
            Directory.CreateDirectory(l.U("uonly"));
            Whiteout(l.U("uonly/wh2"));
            WriteFile(l.L(2, "merged/g"), "g");
            Whiteout(l.L(1, "merged/wh3"));
        }, "/only/wh", "/uonly/wh2"),

        // Documented difference: the overlay treats a .wh..wh..opq entry as an opaque marker (the OCI form); the
        // kernel only honours the trusted.overlay.opaque xattr, so it merges the directory and lists the marker.
        ["OCI opaque markers"] = new(l =>
        {
            WriteFile(l.L(1, "o/new"), "new");
            WriteFile(l.L(1, "o/.wh..wh..opq"), "");
            WriteFile(l.L(2, "o/old"), "old");
        }, "/o/old", "/o/.wh..wh..opq"),

        // Documented difference: the overlay also honours user.overlay.opaque and user.fuseoverlayfs.opaque; the
        // kernel honours user.overlay.* only when mounted with userxattr (and then not trusted.overlay.*), and never
        // the fuse-overlayfs one.
        ["opaque directories marked with user xattrs"] = new(l =>
        {
            WriteFile(l.L(1, "uo/new"), "new");
            Opaque(l.L(1, "uo"), "user.overlay.opaque");
            WriteFile(l.L(2, "uo/old"), "old");
            WriteFile(l.L(1, "fo/new"), "new");
            Opaque(l.L(1, "fo"), "user.fuseoverlayfs.opaque");
            WriteFile(l.L(2, "fo/old"), "old");
        }, "/uo/old", "/fo/old"),
    };

    private static IEnumerable<string> LayoutNames => Layouts.Keys;

    [TestCaseSource(nameof(LayoutNames))]
    public void TheKernelAndTheOverlayShowTheSameTreeOverTheSameLayers(string layout)
    {
        RequireRoot();
        var (build, differences) = Layouts[layout];
        using var layers = new Layers();
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
        using var layers = new Layers();
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

    /// <summary>Equal trees once the documented differences are taken out, and each documented difference is real.</summary>
    private static void AssertSameExceptDifferences(SortedDictionary<string, string> kernel, SortedDictionary<string, string> overlay, string[] differences)
    {
        bool Documented(string path) => differences.Any(d => path == d || path.StartsWith(d + "/", StringComparison.Ordinal));
        foreach (string path in differences)
        {
            Assert.That(overlay.GetValueOrDefault(path), Is.Not.EqualTo(kernel.GetValueOrDefault(path)),
                $"{path}: documented as differing between kernel overlayfs and the overlay (kernel: {kernel.GetValueOrDefault(path) ?? "absent"})");
        }
        var k = kernel.Where(e => !Documented(e.Key)).ToDictionary();
        var o = overlay.Where(e => !Documented(e.Key)).ToDictionary();
        Assert.That(Diff(k, o), Is.Empty, "entries that differ (kernel | overlay)");
    }

    private static List<string> Diff(IReadOnlyDictionary<string, string> kernel, IReadOnlyDictionary<string, string> overlay) =>
        kernel.Keys.Union(overlay.Keys).Order(StringComparer.Ordinal)
            .Where(p => kernel.GetValueOrDefault(p) != overlay.GetValueOrDefault(p))
            .Select(p => $"{p}: {kernel.GetValueOrDefault(p) ?? "absent"} | {overlay.GetValueOrDefault(p) ?? "absent"}")
            .ToList();

    // ------------------------------------------------------------------ mutations

    /// <summary>The layers every mutation case starts from (built twice: once for the kernel, once for the overlay).</summary>
    private static void BuildMutationBase(Layers l)
    {
        WriteFile(l.U("u-file"), "upper");
        WriteFile(l.U("ud/uf"), "upper dir file");
        WriteFile(l.L(1, "gone"), "hidden");
        Whiteout(l.U("gone"));
        WriteFile(l.L(1, "d/a"), "a1");
        WriteFile(l.L(1, "d/c"), "c1");
        WriteFile(l.L(2, "d/a"), "a2");
        WriteFile(l.L(2, "d/b"), "b2");
        WriteFile(l.L(3, "d/z"), "z3");
        WriteFile(l.L(1, "f"), "small lower file");
        WriteFile(l.L(1, "big"), Random(7, 1 << 20));
        WriteFile(l.L(2, "t"), Random(8, 200_000));
        WriteFile(l.L(1, "e/sub/deep"), "deep");
        WriteFile(l.L(2, "e/l2e"), "l2e");
        WriteFile(l.L(1, "x/a"), "xa");
        WriteFile(l.L(2, "x/b"), "xb");
        WriteFile(l.L(1, "m/l1"), "l1");
        WriteFile(l.L(2, "m/l2"), "l2");
        WriteFile(l.L(3, "y/a"), "ya");
        Symlink("f", l.L(2, "lnk"));
        Chmod(l.L(1, "e"), "750");
    }

    private static byte[] Bytes(string text) => System.Text.Encoding.UTF8.GetBytes(text);

    private static readonly Dictionary<string, Func<ITreeOps, string[]>> Mutations = new()
    {
        ["unlinking lower and upper files"] = t =>
        [
            t.Unlink("d/a"), t.Unlink("d/b"), t.Unlink("d/z"), t.Unlink("gone"), t.Unlink("u-file"), t.Unlink("d"),
            t.Unlink("d/a"), t.Unlink("lnk"), t.Unlink("m/l2"), t.Create("d/a", Mode("644"), Bytes("new a")),
        ],
        ["removing a directory that holds only whiteouts"] = t =>
        [
            t.Rmdir("x"), t.Unlink("x/a"), t.Unlink("x/b"), t.Rmdir("x"), t.Rmdir("x"), t.Rmdir("f"), t.Rmdir("e"),
            t.Unlink("e/sub/deep"), t.Rmdir("e/sub"), t.Rmdir("ud"),
        ],
        ["making a directory where a lower one was removed"] = t =>
        [
            t.Unlink("x/a"), t.Unlink("x/b"), t.Rmdir("x"), t.Mkdir("x", Mode("700")), t.Create("x/new", Mode("600"), Bytes("new")),
            t.Mkdir("x", Mode("755")), t.Mkdir("d/a", Mode("755")), t.Mkdir("missing/q", Mode("755")), t.Mkdir("m/sub", Mode("755")),
            t.Unlink("f"), t.Mkdir("f", Mode("755")), t.Create("f/inside", Mode("644"), Bytes("inside")),
        ],
        ["writing into lower files small and large"] = t =>
        [
            t.WriteAt("f", 2, Bytes("XY")), t.WriteAt("big", 300_000, Random(9, 4000)), t.WriteAt("big", (1 << 20) - 10, Random(10, 100)),
            t.WriteAt("t", 0, Random(11, 70_000)), t.WriteAt("d/b", 10, Bytes("after a hole")), t.WriteAt("d", 0, Bytes("x")),
            t.WriteAt("e/sub/deep", 0, Bytes("D")), t.WriteAt("missing", 0, Bytes("x")),
        ],
        ["truncating lower files"] = t =>
        [
            t.Truncate("big", 100_000), t.Truncate("t", 300_000), t.Truncate("f", 0), t.Truncate("d/a", 1), t.Truncate("d", 0),
            t.Truncate("missing", 0), t.Truncate("m/l2", 5000),
        ],
        ["changing modes of lower objects"] = t =>
        [
            t.Chmod("f", Mode("600")), t.Chmod("big", Mode("700")), t.Chmod("d", Mode("700")), t.Chmod("e/sub", Mode("750")),
            t.Chmod("u-file", Mode("640")), t.Chmod("t", Mode("4755")), t.Chmod("gone", Mode("644")),
        ],
        ["renaming lower files"] = t =>
        [
            t.Rename("d/a", "e/moved"), t.Rename("f", "d/c"), t.Rename("big", "big2"), t.Rename("t", "d"), t.Rename("d", "d-renamed"),
            t.Rename("ud", "ud2"), t.Rename("u-file", "gone"), t.Rename("e/sub/deep", "deep"), t.Rename("d/b", "d/z"),
            t.Rename("missing", "x"), t.Rename("lnk", "m/lnk"),
        ],
        ["renaming directories over empty ones and over removed ones"] = t =>
        [
            t.Mkdir("nd", Mode("755")), t.Create("nd/q", Mode("644"), Bytes("q")), t.Unlink("x/a"), t.Unlink("x/b"), t.Rename("nd", "x"),
            t.Mkdir("nd2", Mode("755")), t.Create("nd2/r", Mode("644"), Bytes("r")), t.Unlink("y/a"), t.Rmdir("y"), t.Rename("nd2", "y"),
            t.Mkdir("nd3", Mode("755")), t.Rename("nd3", "m"), t.Rename("ud", "nd3"),
        ],
        ["creating files, links and fifos"] = t =>
        [
            t.Create("d/new", Mode("640"), Bytes("new")), t.Create("d/a", Mode("644"), Bytes("x")), t.Create("gone", Mode("644"), Bytes("back")),
            t.Symlink("../f", "d/link"), t.Symlink("x", "d/a"), t.Mkfifo("d/fifo", Mode("600")), t.Create("ud/more", Mode("600"), Random(12, 100_000)),
            t.Unlink("m/l1"), t.Symlink("nowhere", "m/l1"), t.Create("missing/x", Mode("644"), Bytes("x")),
        ],
    };

    private static IEnumerable<string> MutationNames => Mutations.Keys;

    [TestCaseSource(nameof(MutationNames))]
    public void TheSameChangesMadeThroughTheKernelAndThroughTheOverlayGiveTheSameTree(string mutation)
    {
        RequireRoot();
        Func<ITreeOps, string[]> apply = Mutations[mutation];
        uint umask = TreeEntry.ProcessUmask();
        using var kernelLayers = new Layers();
        using var overlayLayers = new Layers();
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

        // The kernel reads the upper layer the overlay wrote. B-CoW files differ on disk by design (the kernel sees
        // the B-CoW container, not the virtual file): only their type, mode and owner are compared.
        var bcow = TreeEntry.BCowFiles(overlayLayers.Upper)
            .Select(f => "/" + Path.GetRelativePath(overlayLayers.Upper, f))
            .ToHashSet();
        using (KernelOverlayMount mount = KernelOverlayMount.Mount([overlayLayers.Upper, .. overlayLayers.Lowers]))
        {
            var seen = new PosixTree(mount.MountPoint).Snapshot();
            Assert.That(Diff(WithoutContent(kernel, bcow), WithoutContent(seen, bcow)), Is.Empty, "the kernel over the overlay's upper layer (kernel | kernel over overlay's upper)");
        }
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
        int seed = Environment.GetEnvironmentVariable("BAOVERLAY_SEED") is { Length: > 0 } fixedSeed
            ? int.Parse(fixedSeed, System.Globalization.CultureInfo.InvariantCulture)
            : System.Random.Shared.Next();
        TestContext.Out.WriteLine($"seed {seed} (replay with BAOVERLAY_SEED={seed})");
        uint umask = TreeEntry.ProcessUmask();
        using var kernelLayers = new Layers();
        using var overlayLayers = new Layers();
        foreach (Layers layers in new[] { kernelLayers, overlayLayers })
        {
            var generator = new Random(seed);
            foreach (string layer in layers.Lowers.Reverse().Append(layers.Upper))
            {
                OverlayModelTests.GenerateLayer(generator, layer, depth: 0, isLower: layer != layers.Upper);
            }
        }
        // Documented difference (see "whiteouts in a directory that only one layer has"): the kernel counts such
        // whiteouts as entries, so its rmdir fails with ENOTEMPTY where the overlay's succeeds. Overlay operations
        // never make them; they come from the random generator, so remove them from both layer sets.
        List<string> listedOnly;
        using (KernelOverlayMount mount = KernelOverlayMount.Mount([kernelLayers.Upper, .. kernelLayers.Lowers]))
        {
            listedOnly = new PosixTree(mount.MountPoint).Snapshot().Where(e => e.Value == PosixTree.ReaddirOnly).Select(e => e.Key).ToList();
        }
        foreach (Layers layers in new[] { kernelLayers, overlayLayers })
        {
            foreach (string root in layers.Lowers.Append(layers.Upper))
            {
                foreach (string path in listedOnly.Select(p => root + p))
                {
                    if (Syscall.lstat(path, out Stat st) == 0 && (st.st_mode & FilePermissions.S_IFMT) == FilePermissions.S_IFCHR && st.st_rdev == 0)
                    {
                        Assert.That(Syscall.unlink(path), Is.Zero);
                    }
                }
            }
        }
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
        using var kernelLayers = new Layers();
        using var overlayLayers = new Layers();
        foreach (Layers l in new[] { kernelLayers, overlayLayers })
        {
            BuildMutationBase(l);
            Assert.That(Syscall.link(l.L(1, name), l.L(1, "hardlink")), Is.Zero);
        }
        byte[] patch = "through the first name"u8.ToArray();
        SortedDictionary<string, string> kernel;
        using (KernelOverlayMount mount = KernelOverlayMount.Mount(kernelLayers.Lowers, kernelLayers.Upper, kernelLayers.Work))
        {
            var tree = new PosixTree(mount.MountPoint);
            Assert.That(tree.WriteAt(name, 3, patch), Is.EqualTo("ok"));
            kernel = tree.Snapshot();
        }
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
        Assert.That(kernel[$"/{name}"], Is.Not.EqualTo(kernel["/hardlink"]), "the kernel changed one name only");
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
        using var kernelLayers = new Layers();
        using var overlayLayers = new Layers();
        foreach (Layers l in new[] { kernelLayers, overlayLayers })
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
        using var kernelLayers = new Layers();
        using var overlayLayers = new Layers();
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
        using var kernelLayers = new Layers();
        using var overlayLayers = new Layers();
        BuildMutationBase(kernelLayers);
        BuildMutationBase(overlayLayers);
        Func<ITreeOps, string[]> apply = t =>
        [
            t.Create(".wh.file", Mode("644"), Bytes("x")), t.Mkdir("d/.wh.dir", Mode("755")), t.Symlink("f", ".wh.link"),
            t.Rename("f", ".wh.f"), t.Mkfifo(".wh.fifo", Mode("644")),
        ];
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

    /// <summary>The kernel's tree without the whiteouts it lists in single-layer directories (documented difference above).</summary>
    private static SortedDictionary<string, string> Visible(PosixTree kernel) =>
        new(kernel.Snapshot().Where(e => e.Value != PosixTree.ReaddirOnly).ToDictionary(), StringComparer.Ordinal);

    private static Dictionary<string, string> WithoutContent(SortedDictionary<string, string> tree, HashSet<string> paths) =>
        tree.ToDictionary(e => e.Key, e => paths.Contains(e.Key) ? e.Value[..e.Value.IndexOf(" size=", StringComparison.Ordinal)] : e.Value);
}
