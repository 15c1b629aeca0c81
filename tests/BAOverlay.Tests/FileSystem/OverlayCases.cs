using Mono.Unix.Native;
using static BAOverlay.Tests.FileSystem.OverlayFixture;

namespace BAOverlay.Tests.FileSystem;

/// <summary>
/// The overlay's semantic case table, with kernel overlayfs as the model: read-only layer layouts (each with the
/// paths where the overlay is documented to differ from the kernel), mutations (named lists of operations through an
/// <see cref="ITreeOps"/>, each giving "ok" or an errno) over one base layout, and the random layers of the model
/// test. <see cref="KernelOverlayComparisonTests"/> runs them through the library API, FuseSemanticsTests through a
/// FUSE mount; both compare with a kernel overlayfs mount over identical layers.
/// </summary>
internal static class OverlayCases
{
    public static void Symlink(string target, string path)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        Assert.That(Syscall.symlink(target, path), Is.Zero, $"symlink {path}");
    }

    public static void MakeNode(string path, FilePermissions mode, ulong rdev)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        Assert.That(Syscall.mknod(path, mode, rdev), Is.Zero, $"mknod {path}");
    }

    public static void Chmod(string path, string octal) => Assert.That(Syscall.chmod(path, (FilePermissions)Mode(octal)), Is.Zero, $"chmod {path}");

    public static void Opaque(string path, string xattr = "trusted.overlay.opaque", string value = "y")
    {
        Directory.CreateDirectory(path);
        SetXattr(path, xattr, value);
    }

    public static byte[] Random(int seed, int length)
    {
        byte[] bytes = new byte[length];
        new Random(seed).NextBytes(bytes);
        return bytes;
    }

    // ------------------------------------------------------------------ read-only layouts

    /// <summary>A layout and the paths where the kernel and the overlay are documented to differ.</summary>
    public sealed record Layout(Action<OverlayLayers> Build, params string[] Differences);

    public static readonly Dictionary<string, Layout> Layouts = new()
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

    public static IEnumerable<string> LayoutNames => Layouts.Keys;

    /// <summary>Equal trees once the documented differences are taken out, and each documented difference is real.</summary>
    public static void AssertSameExceptDifferences(SortedDictionary<string, string> kernel, SortedDictionary<string, string> overlay, string[] differences)
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

    public static List<string> Diff(IReadOnlyDictionary<string, string> kernel, IReadOnlyDictionary<string, string> overlay) =>
        kernel.Keys.Union(overlay.Keys).Order(StringComparer.Ordinal)
            .Where(p => kernel.GetValueOrDefault(p) != overlay.GetValueOrDefault(p))
            .Select(p => $"{p}: {kernel.GetValueOrDefault(p) ?? "absent"} | {overlay.GetValueOrDefault(p) ?? "absent"}")
            .ToList();

    // ------------------------------------------------------------------ mutations

    /// <summary>The layers every mutation case starts from (built twice: once for the kernel, once for the overlay).</summary>
    public static void BuildMutationBase(OverlayLayers l)
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

    public static byte[] Bytes(string text) => System.Text.Encoding.UTF8.GetBytes(text);

    public static readonly Dictionary<string, Func<ITreeOps, string[]>> Mutations = new()
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
        ["modes of new objects: the umask, special bits, a set-group-ID directory"] = t =>
        [
            t.Create("d/all", Mode("666"), Bytes("x")), t.Mkdir("d/alldir", Mode("777")), t.Mkfifo("d/allfifo", Mode("666")),
            t.Create("d/suid", Mode("4755"), []), t.Mkdir("d/sticky", Mode("1777")), t.Chown("e", 0, 4321), t.Chmod("e", Mode("2775")),
            t.Create("e/inherits-group", Mode("644"), Bytes("g")), t.Mkdir("e/inherits-setgid", Mode("755")), t.Mkfifo("e/fifo", Mode("644")),
            t.Symlink("x", "e/link"), t.Mkdir("e/sub/lower-parent", Mode("755")),
        ],
    };

    public static IEnumerable<string> MutationNames => Mutations.Keys;

    /// <summary>Operations that make names starting with .wh. (reserved by the overlay, allowed by the kernel), on the mutation base.</summary>
    public static string[] MakeDotWhNames(ITreeOps t) =>
    [
        t.Create(".wh.file", Mode("644"), Bytes("x")), t.Mkdir("d/.wh.dir", Mode("755")), t.Symlink("f", ".wh.link"),
        t.Rename("f", ".wh.f"), t.Mkfifo(".wh.fifo", Mode("644")),
    ];

    // ------------------------------------------------------------------ random layers

    /// <summary>The seed of a randomized test, printed; BAOVERLAY_SEED replays a run.</summary>
    public static int Seed()
    {
        int seed = Environment.GetEnvironmentVariable("BAOVERLAY_SEED") is { Length: > 0 } fixedSeed
            ? int.Parse(fixedSeed, System.Globalization.CultureInfo.InvariantCulture)
            : System.Random.Shared.Next();
        TestContext.Out.WriteLine($"seed {seed} (replay with BAOVERLAY_SEED={seed})");
        return seed;
    }

    /// <summary>
    /// The same random layers (whiteouts, opaque directories, large files, lower hard links) in each set, from
    /// <paramref name="seed"/>. Mounts kernel overlayfs read-only over the first set, so it needs root.
    /// </summary>
    public static void BuildRandomLayers(int seed, params OverlayLayers[] sets)
    {
        foreach (OverlayLayers layers in sets)
        {
            var generator = new Random(seed);
            foreach (string layer in layers.Lowers.Reverse().Append(layers.Upper))
            {
                OverlayModelTests.GenerateLayer(generator, layer, depth: 0, isLower: layer != layers.Upper);
            }
        }
        // Documented difference (see "whiteouts in a directory that only one layer has"): the kernel counts such
        // whiteouts as entries, so its rmdir fails with ENOTEMPTY where the overlay's succeeds. Overlay operations
        // never make them; they come from the random generator, so remove them from every layer set.
        List<string> listedOnly;
        using (KernelOverlayMount mount = KernelOverlayMount.Mount([sets[0].Upper, .. sets[0].Lowers]))
        {
            listedOnly = new PosixTree(mount.MountPoint).Snapshot().Where(e => e.Value == PosixTree.ReaddirOnly).Select(e => e.Key).ToList();
        }
        foreach (OverlayLayers layers in sets)
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
    }

    /// <summary>The kernel's tree without the whiteouts it lists in single-layer directories (documented difference above).</summary>
    public static SortedDictionary<string, string> Visible(PosixTree kernel) =>
        new(kernel.Snapshot().Where(e => e.Value != PosixTree.ReaddirOnly).ToDictionary(), StringComparer.Ordinal);

    /// <summary>
    /// Kernel overlayfs mounted over the upper layer <paramref name="layers"/> got (by the overlay or a mount of it)
    /// shows the tree <paramref name="expected"/>, except B-CoW files: the kernel cannot read them, and their mark
    /// (ForeignMarks) makes it fail their lookup with EIO rather than show the B-CoW container's bytes.
    /// </summary>
    public static void AssertKernelReadsTheUpperLayer(OverlayLayers layers, SortedDictionary<string, string> expected, string writer)
    {
        var bcow = TreeEntry.BCowFiles(layers.Upper)
            .Select(f => "/" + Path.GetRelativePath(layers.Upper, f))
            .ToHashSet();
        using KernelOverlayMount mount = KernelOverlayMount.Mount([layers.Upper, .. layers.Lowers]);
        var seen = new PosixTree(mount.MountPoint).Snapshot();
        Assert.That(seen.Where(e => bcow.Contains(e.Key)).Select(e => e.Value), Has.All.EqualTo(PosixTree.LookupEio),
            "B-CoW files fail with EIO under the kernel");
        Assert.That(Diff(Without(expected, bcow), Without(seen, bcow)), Is.Empty,
            $"the kernel over the {writer}'s upper layer (kernel | kernel over {writer}'s upper)");
    }

    /// <summary>
    /// The hard-link case: both layer sets get the mutation base and a second lower name, <c>hardlink</c>, for
    /// <paramref name="name"/>; kernel overlayfs over <paramref name="kernelLayers"/> writes <paramref name="patch"/>
    /// at offset 3 through <paramref name="name"/>. Returns the kernel's tree, in which only that name changed.
    /// </summary>
    public static SortedDictionary<string, string> KernelWritesThroughOneHardLinkedName(OverlayLayers kernelLayers, OverlayLayers other, string name, byte[] patch)
    {
        foreach (OverlayLayers l in new[] { kernelLayers, other })
        {
            BuildMutationBase(l);
            Assert.That(Syscall.link(l.L(1, name), l.L(1, "hardlink")), Is.Zero);
        }
        SortedDictionary<string, string> kernel;
        using (KernelOverlayMount mount = KernelOverlayMount.Mount(kernelLayers.Lowers, kernelLayers.Upper, kernelLayers.Work))
        {
            var tree = new PosixTree(mount.MountPoint);
            Assert.That(tree.WriteAt(name, 3, patch), Is.EqualTo("ok"));
            kernel = tree.Snapshot();
        }
        Assert.That(kernel[$"/{name}"], Is.Not.EqualTo(kernel["/hardlink"]), "the kernel changed one name only");
        return kernel;
    }

    private static SortedDictionary<string, string> Without(SortedDictionary<string, string> tree, HashSet<string> paths) =>
        new(tree.Where(e => !paths.Contains(e.Key)).ToDictionary(), StringComparer.Ordinal);

    public static Dictionary<string, string> WithoutContent(SortedDictionary<string, string> tree, HashSet<string> paths) =>
        tree.ToDictionary(e => e.Key, e => paths.Contains(e.Key) ? e.Value[..e.Value.IndexOf(" size=", StringComparison.Ordinal)] : e.Value);
}
