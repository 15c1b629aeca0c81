using System.Diagnostics;
using BAOverlay.Checking;
using BAOverlay.FileSystem;
using Mono.Unix.Native;

namespace BAOverlay.Tests.FileSystem;

/// <summary>
/// Randomized model test: random layers (with whiteouts, opaque directories, large files) are merged by the test
/// itself into a plain directory, the model; then random operations go both to the overlay and to the model, and
/// each must give the same result (ok or the same errno), the same visible tree every few steps, at the end, and
/// after the overlay is closed and reopened (inode numbers included). The seed is printed; set BAOVERLAY_SEED to
/// replay a run.
/// </summary>
public class OverlayModelTests
{
    private const long Threshold = 64 * 1024;
    private const int Steps = 1500;
    private const int CompareEvery = 10;
    private const int ReopenEvery = 250;

    private static readonly string[] Names = ["a", "b", "c", "d", "e", "f", "g", "h"];
    private static readonly uint[] Modes = [0x1A4 /* 644 */, 0x180 /* 600 */, 0x1ED /* 755 */, 0x1C0 /* 700 */, 0x1A0 /* 640 */, 0x124 /* 444 */];

    /// <param name="withoutPrivilege">Run the overlay and the model as an ordinary user (rootless: opaque directories
    /// marked with user.overlay.opaque, no trusted xattrs, no chown to others), on a thread of its own.</param>
    [TestCase(false)]
    [TestCase(true)]
    public void RandomOperationsOnTheOverlayAndOnAPlainCopyOfTheMergedTreeAgree(bool withoutPrivilege)
    {
        if (Syscall.geteuid() != 0)
        {
            Assert.Ignore("needs root: the random layers hold 0/0 whiteout devices and trusted.overlay.opaque directories");
        }
        string opaqueXattr = withoutPrivilege ? "user.overlay.opaque" : "trusted.overlay.opaque";
        int seed = Environment.GetEnvironmentVariable("BAOVERLAY_SEED") is { Length: > 0 } fixedSeed
            ? int.Parse(fixedSeed, System.Globalization.CultureInfo.InvariantCulture)
            : System.Random.Shared.Next();
        TestContext.Out.WriteLine($"seed {seed} (replay with BAOVERLAY_SEED={seed})");
        var random = new Random(seed);
        using var temp = new TempDir();
        string upper = Dir(temp, "upper"), work = Dir(temp, "work"), model = Dir(temp, "model");
        string[] lowers = [Dir(temp, "lower1"), Dir(temp, "lower2")];

        // Layers, lowest first, each merged into the model as overlayfs would show it.
        GenerateLayer(random, lowers[1], depth: 0, isLower: true, opaqueXattr: opaqueXattr);
        GenerateLayer(random, lowers[0], depth: 0, isLower: true, opaqueXattr: opaqueXattr);
        GenerateLayer(random, upper, depth: 0, isLower: false, opaqueXattr: opaqueXattr);
        foreach (string layer in new[] { lowers[1], lowers[0], upper })
        {
            MergeLayer(layer, model);
        }
        if (withoutPrivilege)
        {
            RootlessOverlayTests.ChownTree(temp.Path);
            RootlessOverlayTests.AsUser(() => Run(seed, random, upper, work, model, lowers, withoutPrivilege));
        }
        else
        {
            Run(seed, random, upper, work, model, lowers, withoutPrivilege);
        }
    }

    private static void Run(int seed, Random random, string upper, string work, string model, string[] lowers, bool withoutPrivilege)
    {

        uint umask = TreeEntry.ProcessUmask();
        var options = new OverlayOptions
        {
            LowerDirectories = lowers,
            UpperDirectory = upper,
            WorkDirectory = work,
            BlockCopyUpThreshold = Threshold,
            BlockSize = 4096,
            Log = line => TestContext.Out.WriteLine(line),
        };
        var modelTree = new PosixTree(model);
        var log = new List<string>();
        string Context() => $"seed {seed}, last operations:\n  " + string.Join("\n  ", log.TakeLast(15));
        OverlayFileSystem fs = OverlayFileSystem.Open(options);
        var stopwatch = Stopwatch.StartNew();
        try
        {
            var overlay = new OverlayTree(fs, umask);
            Assert.That(overlay.Snapshot(), Is.EqualTo(modelTree.Snapshot()), $"the merged tree before any change; {Context()}");
            for (int step = 1; step <= Steps; step++)
            {
                string entry = Step(random, overlay, modelTree, linkInodesMayChange: withoutPrivilege);
                log.Add($"{step}: {entry}");
                Assert.That(entry, Does.Not.Contain("MISMATCH"), $"an operation gave different results; {Context()}");
                Assert.That(fs.CheckListings(), Is.Empty, $"kept directory listings that differ from their layers; {Context()}");
                if (step % CompareEvery == 0)
                {
                    Assert.That(Diff(modelTree.Snapshot(), overlay.Snapshot()), Is.Empty, $"after step {step}, entries that differ (model | overlay); {Context()}");
                }
                if (step % ReopenEvery == 0)
                {
                    SortedDictionary<string, ulong> inodes = overlay.Inodes();
                    fs.Dispose();
                    fs = OverlayFileSystem.Open(options);
                    overlay = new OverlayTree(fs, umask);
                    Assert.That(overlay.Inodes(), Is.EqualTo(inodes), $"inode numbers after reopening at step {step}; {Context()}");
                    Assert.That(Diff(modelTree.Snapshot(), overlay.Snapshot()), Is.Empty, $"after reopening at step {step}; {Context()}");
                }
            }
            Assert.That(Diff(modelTree.Snapshot(), overlay.Snapshot()), Is.Empty, $"at the end; {Context()}");
        }
        finally
        {
            fs.Dispose();
        }
        using (OverlayFileSystem reopened = OverlayFileSystem.Open(options))
        {
            Assert.That(Diff(modelTree.Snapshot(), new OverlayTree(reopened, umask).Snapshot()), Is.Empty, $"after the final reopen; {Context()}");
        }
        Assert.That(Directory.EnumerateFileSystemEntries(Path.Combine(work, "baoverlay")), Is.Empty, "no scratch object is left in the work directory");
        foreach (string file in TreeEntry.BCowFiles(upper))
        {
            BCowCheckResult result = BCowChecker.Check(file);
            Assert.That(result.IsClean, Is.True, $"{file}: {string.Join("; ", result.Corruptions)}; seed {seed}");
        }
        TestContext.Out.WriteLine($"{Steps} steps in {stopwatch.Elapsed.TotalSeconds:F1} s; operations: {string.Join(", ", log.Select(l => l.Split(' ')[1]).CountBy(op => op).Select(kv => $"{kv.Key} {kv.Value}"))}");
    }

    private static string Dir(TempDir temp, string name)
    {
        string path = temp.File(name);
        Directory.CreateDirectory(path);
        return path;
    }

    // ------------------------------------------------------------------ layers and the model

    /// <summary>A random layer tree: files (a few large), symlinks, dirs, whiteouts, opaque dirs, on a small name pool so layers collide.</summary>
    /// <remarks>Hard links only in lower layers: there the overlay breaks them on copy-up (as the model's copies are
    /// separate), while in the upper layer they stay one file.</remarks>
    internal static void GenerateLayer(Random random, string directory, int depth, bool isLower, List<string>? files = null, string opaqueXattr = "trusted.overlay.opaque")
    {
        bool allowLarge = isLower;
        files ??= new List<string>();
        foreach (string name in Names.Where(_ => random.Next(3) == 0))
        {
            string path = Path.Combine(directory, name);
            int kind = random.Next(depth < 2 ? 10 : 7);
            switch (kind)
            {
                case 0:
                    Assert.That(Syscall.mknod(path, FilePermissions.S_IFCHR, 0), Is.Zero, "whiteout");
                    break;
                case 1:
                    Assert.That(Syscall.symlink(random.Next(2) == 0 ? "a" : "../nowhere/" + name, path), Is.Zero);
                    break;
                case 2 when allowLarge && random.Next(3) == 0:
                    File.WriteAllBytes(path, Checks.RandomBytes(random, random.Next((int)Threshold, 1 << 20)));
                    break;
                case 3 when isLower && files.Count > 0 && random.Next(2) == 0:
                    // A hard link to a file made before in this layer (the overlay breaks it on copy-up, as the kernel).
                    Assert.That(Syscall.link(files[random.Next(files.Count)], path), Is.Zero, "link");
                    break;
                case < 7:
                    File.WriteAllBytes(path, Checks.RandomBytes(random, random.Next(0, 9000)));
                    Syscall.chmod(path, (FilePermissions)Modes[random.Next(Modes.Length)]);
                    files.Add(path);
                    break;
                default:
                    Directory.CreateDirectory(path);
                    if (random.Next(5) == 0)
                    {
                        OverlayFixture.SetXattr(path, opaqueXattr, "y");
                    }
                    GenerateLayer(random, path, depth + 1, isLower, files, opaqueXattr);
                    Syscall.chmod(path, (FilePermissions)(random.Next(2) == 0 ? 0x1ED : 0x1C0));
                    break;
            }
        }
    }

    /// <summary>Lays one layer over the model the way overlayfs merges it: whiteouts delete, opaque dirs replace,
    /// dirs merge (the higher mode wins), anything else replaces.</summary>
    private static void MergeLayer(string layer, string model)
    {
        foreach (string source in Directory.EnumerateFileSystemEntries(layer))
        {
            string target = Path.Combine(model, Path.GetFileName(source));
            Assert.That(Syscall.lstat(source, out Stat st), Is.Zero);
            var type = st.st_mode & FilePermissions.S_IFMT;
            bool targetIsDir = Syscall.lstat(target, out Stat existing) == 0 && (existing.st_mode & FilePermissions.S_IFMT) == FilePermissions.S_IFDIR;
            if (type == FilePermissions.S_IFCHR && st.st_rdev == 0)
            {
                Remove(target);
                continue;
            }
            if (type == FilePermissions.S_IFDIR)
            {
                if (!targetIsDir || Syscall.lgetxattr(source, "trusted.overlay.opaque", out byte[] _) >= 0 || Syscall.lgetxattr(source, "user.overlay.opaque", out byte[] _) >= 0)
                {
                    Remove(target);
                    Directory.CreateDirectory(target);
                }
                MergeLayer(source, target);
                Syscall.chmod(target, st.st_mode & (FilePermissions)0xFFF);
                continue;
            }
            Remove(target);
            if (type == FilePermissions.S_IFLNK)
            {
                Assert.That(Syscall.symlink(Mono.Unix.UnixPath.ReadLink(source), target), Is.Zero);
            }
            else
            {
                File.Copy(source, target);
                Syscall.chmod(target, st.st_mode & (FilePermissions)0xFFF);
            }
        }
    }

    private static void Remove(string path)
    {
        if (Syscall.lstat(path, out Stat st) != 0)
        {
            return;
        }
        if ((st.st_mode & FilePermissions.S_IFMT) == FilePermissions.S_IFDIR)
        {
            Directory.Delete(path, recursive: true);
        }
        else
        {
            File.Delete(path);
        }
    }

    // ------------------------------------------------------------------ operations

    private sealed record Entry(string Path, uint Type, long Size);

    /// <summary>What the model holds now: every path with its type and size.</summary>
    private static List<Entry> Entries(string root)
    {
        var entries = new List<Entry> { new("", 0x4000, 0) };
        void Walk(string directory)
        {
            foreach (string full in Directory.EnumerateFileSystemEntries(directory))
            {
                if (Syscall.lstat(full, out Stat st) != 0)
                {
                    continue; // listed but not there (kernel overlayfs: a whiteout in a directory of one layer)
                }
                entries.Add(new Entry(Path.GetRelativePath(root, full), (uint)st.st_mode & 0xF000, st.st_size));
                if ((st.st_mode & FilePermissions.S_IFMT) == FilePermissions.S_IFDIR)
                {
                    Walk(full); // never through a symbolic link
                }
            }
        }
        Walk(root);
        entries.Sort((a, b) => string.CompareOrdinal(a.Path, b.Path)); // readdir order is not reproducible: seeds must be
        return entries;
    }

    private static string Join(string directory, string name) => directory.Length == 0 ? name : directory + "/" + name;

    /// <summary>One random operation on both trees; the log line says MISMATCH when their results differ, or when an
    /// object's inode number changed. <paramref name="overlay"/> is the overlay through its API or through a FUSE mount;
    /// <paramref name="model"/> is a plain directory, or a kernel overlayfs mount when <paramref name="modelIsOverlayfs"/>.</summary>
    internal static string Step(Random random, ITreeOps overlay, PosixTree model, bool modelIsOverlayfs = false, bool linkInodesMayChange = false)
    {
        List<Entry> entries = Entries(model.Root);
        List<Entry> dirs = entries.Where(e => e.Type == 0x4000).ToList();
        List<Entry> files = entries.Where(e => e.Type == 0x8000).ToList();
        List<Entry> nonDirs = entries.Where(e => e.Type != 0x4000).ToList();
        T Pick<T>(List<T> list) => list[random.Next(list.Count)];
        // Paths never go through a symbolic link: the kernel resolves those before a FUSE server sees a request, and
        // the overlay's path-less API has no notion of them. A regular file as parent gives ENOTDIR on both sides.
        string NewPath() => Join((random.Next(20) == 0 && files.Count > 0 ? Pick(files) : Pick(dirs)).Path, random.Next(30) == 0 ? "long-" + new string('x', 200) : Pick(Names.ToList()));
        string AnyFile() => files.Count > 0 && random.Next(15) != 0 ? Pick(files).Path : Pick(dirs).Path; // never a link: the model's open would follow it

        // Rootless, a copied-up symbolic link cannot keep its inode number (no user.* xattrs on links, no trusted.*).
        string SameIno(ITreeOps o, string path, ulong? before) =>
            linkInodesMayChange && entries.Any(e => e.Path == path && e.Type == 0xA000) ? "" : OverlayModelTests.SameIno(o, path, before);

        string Both(string what, Func<ITreeOps, string> op)
        {
            string o = op(overlay), m = op(model);
            return o == m ? $"{what} -> {o}" : $"{what} -> MISMATCH overlay {o}, model {m}";
        }

        switch (random.Next(100))
        {
            case < 12:
            {
                string path = NewPath();
                byte[] content = Checks.RandomBytes(random, random.Next(0, 20_000));
                uint mode = Pick(Modes.ToList());
                return Both($"create {path} {content.Length}B", t => t.Create(path, mode, content));
            }
            case < 40:
            {
                string path = AnyFile();
                long size = entries.First(e => e.Path == path).Size;
                long offset = random.Next(8) == 0 ? size + random.Next(0, 100_000) : (long)(random.NextDouble() * (size + 1));
                byte[] data = Checks.RandomBytes(random, random.Next(1, random.Next(4) == 0 ? 200_000 : 9000));
                ulong? before = overlay.Ino(path);
                string result = Both($"write {path} @{offset} {data.Length}B", t => t.WriteAt(path, offset, data));
                return result + SameIno(overlay, path, before);
            }
            case < 50:
            {
                string path = AnyFile();
                long size = entries.First(e => e.Path == path).Size;
                long newSize = random.Next(4) == 0 ? 0 : (long)(random.NextDouble() * (size * 1.5 + 5000));
                ulong? before = overlay.Ino(path);
                return Both($"truncate {path} {newSize}", t => t.Truncate(path, newSize)) + SameIno(overlay, path, before);
            }
            case < 60:
            {
                string path = nonDirs.Count > 0 && random.Next(10) != 0 ? Pick(nonDirs).Path : Pick(entries).Path;
                if (path.Length == 0)
                {
                    return "skip";
                }
                return Both($"unlink {path}", t => t.Unlink(path));
            }
            case < 68:
            {
                string path = NewPath();
                uint mode = random.Next(2) == 0 ? 0x1EDu : 0x1C0u;
                return Both($"mkdir {path}", t => t.Mkdir(path, mode));
            }
            case < 76:
            {
                // Empty directories half the time, so removals succeed as well as fail.
                var empty = dirs.Where(d => d.Path.Length > 0 && !entries.Any(e => e.Path.StartsWith(d.Path + "/", StringComparison.Ordinal))).ToList();
                string path = empty.Count > 0 && random.Next(2) == 0 ? Pick(empty).Path : Pick(entries).Path;
                if (path.Length == 0)
                {
                    return "skip";
                }
                return Both($"rmdir {path}", t => t.Rmdir(path));
            }
            case < 88:
            {
                Entry source = random.Next(5) == 0 ? Pick(dirs) : nonDirs.Count > 0 ? Pick(nonDirs) : Pick(entries);
                if (source.Path.Length == 0)
                {
                    return "skip";
                }
                string target = random.Next(3) == 0 ? Pick(entries).Path : NewPath();
                if (target.Length == 0)
                {
                    return "skip";
                }
                ulong? before = overlay.Ino(source.Path);
                string o = overlay.Rename(source.Path, target);
                if (o == "EXDEV" && source.Type == 0x4000 && !modelIsOverlayfs)
                {
                    // Documented: a directory that comes from a lower layer cannot be renamed (kernel overlayfs
                    // without redirect_dir does the same); the model's plain rename would succeed.
                    return $"rename {source.Path} {target} -> EXDEV (lower directory)";
                }
                string m = model.Rename(source.Path, target);
                string result = $"rename {source.Path} {target} -> " + (o == m ? o : $"MISMATCH overlay {o}, model {m}");
                return o == "ok" && source.Path != target && !(linkInodesMayChange && source.Type == 0xA000) ? result + SameIno(overlay, target, before) : result;
            }
            case < 93:
            {
                string path = NewPath();
                string target = random.Next(2) == 0 ? "./" + Pick(entries).Path : "../dangling/" + Pick(Names.ToList()); // never empty, never "/"
                return Both($"symlink {path} -> {target}", t => t.Symlink(target, path));
            }
            case < 96:
            {
                // Owner changes copy up metadata only, symbolic links included (lchown on both sides).
                var targets = entries.Where(e => e.Path.Length > 0).ToList();
                if (targets.Count == 0)
                {
                    return "skip";
                }
                string path = Pick(targets).Path;
                uint uid = Pick(new List<uint> { 0, 1000, 4242, RootlessOverlayTests.User });
                ulong? before = overlay.Ino(path);
                return Both($"chown {path} {uid}", t => t.Chown(path, uid, uid + 1)) + SameIno(overlay, path, before);
            }
            default:
            {
                var targets = entries.Where(e => e.Path.Length > 0 && e.Type is 0x8000 or 0x4000).ToList();
                if (targets.Count == 0)
                {
                    return "skip";
                }
                string path = Pick(targets).Path;
                uint mode = Pick(Modes.ToList()) | (uint)(entries.First(e => e.Path == path).Type == 0x4000 ? 0x1C0 : 0);
                ulong? before = overlay.Ino(path);
                return Both($"chmod {path} {Convert.ToString(mode, 8)}", t => t.Chmod(path, mode)) + SameIno(overlay, path, before);
            }
        }
    }

    private static string SameIno(ITreeOps overlay, string path, ulong? before)
    {
        ulong? after = overlay.Ino(path);
        return before is null || after is null || before == after ? "" : $" MISMATCH inode number changed from {before:x} to {after:x}";
    }

    internal static List<string> Diff(IReadOnlyDictionary<string, string> model, IReadOnlyDictionary<string, string> overlay) =>
        model.Keys.Union(overlay.Keys).Order(StringComparer.Ordinal)
            .Where(p => model.GetValueOrDefault(p) != overlay.GetValueOrDefault(p))
            .Select(p => $"{p}: {model.GetValueOrDefault(p) ?? "absent"} | {overlay.GetValueOrDefault(p) ?? "absent"}")
            .ToList();
}
