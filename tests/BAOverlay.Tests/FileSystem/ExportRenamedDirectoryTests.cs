using System.Diagnostics;
using System.Formats.Tar;
using System.Security.Cryptography;
using BAOverlay.FileSystem;
using Mono.Unix.Native;

namespace BAOverlay.Tests.FileSystem;

/// <summary>
/// A directory renamed out of a lower layer keeps its content in the lower layers under its old path. Exported, it is
/// written out whole (as an opaque directory) from the lower directories, so kernel overlayfs and OCI tools show the
/// overlay's tree; without the lower directories the export says what it needs instead of writing it empty.
/// </summary>
public class ExportRenamedDirectoryTests
{
    private static OverlayFixture RenamedDirectory()
    {
        if (Syscall.geteuid() != 0)
        {
            Assert.Ignore("needs root: whiteout devices, trusted xattrs and a kernel overlayfs mount");
        }
        var f = new OverlayFixture();
        OverlayFixture.WriteFile(Path.Combine(f.Lowers[1], "dir", "deep", "a"), "from lower2");
        OverlayFixture.WriteFile(Path.Combine(f.Lowers[1], "dir", "removed"), "deleted through the overlay");
        OverlayFixture.WriteFile(Path.Combine(f.Lowers[0], "dir", "b"), "from lower1");
        OverlayFixture.WriteFile(Path.Combine(f.Lowers[0], "dir", "deep", "c"), "lower1 part of a merged subdirectory");
        OverlayFixture.WriteFile(Path.Combine(f.Lowers[0], "renamed", "stale"), "must not show through");
        using OverlayFileSystem fs = f.Open();
        fs.Unlink(OverlayFixture.Resolve(fs, "dir").Ino, "removed");
        fs.Unlink(OverlayFixture.Resolve(fs, "renamed").Ino, "stale");
        fs.RemoveDirectory(OverlayFileSystem.RootIno, "renamed");
        fs.Rename(OverlayFileSystem.RootIno, "dir", OverlayFileSystem.RootIno, "renamed");
        var (_, handle) = fs.Create(OverlayFixture.Resolve(fs, "renamed/deep").Ino, "new", Convert.ToUInt32("644", 8), OverlayCaller.Root);
        using (handle)
        {
            handle.Write("added after the rename"u8, 0);
        }
        return f;
    }

    [Test]
    public void WithoutTheLowerDirectoriesTheExportSaysWhatItNeeds()
    {
        using OverlayFixture f = RenamedDirectory();
        string exported = Path.Combine(f.Root, "exported");
        Assert.That(() => UpperExport.ToDirectory(f.Upper!, exported),
            Throws.InstanceOf<IOException>().With.Message.Contains("renamed directory").And.Message.Contains("lower directories"));
        Assert.That(Directory.Exists(exported), Is.False, "nothing is left under the destination's name");
    }

    [Test]
    public void ADirectoryExportUnderKernelOverlayfsShowsTheRenamedDirectoryWhole()
    {
        using OverlayFixture f = RenamedDirectory();
        string exported = Path.Combine(f.Root, "exported");
        UpperExport.ToDirectory(f.Upper!, exported, new UpperExportOptions { LowerDirectories = f.Lowers });
        string work = Path.Combine(f.Root, "kwork"), mountPoint = Path.Combine(f.Root, "kmnt");
        Directory.CreateDirectory(work);
        Directory.CreateDirectory(mountPoint);
        Checks.Run("mount", $"-t overlay overlay -o lowerdir={f.Lowers[0]}:{f.Lowers[1]},upperdir={exported},workdir={work} {mountPoint}");
        try
        {
            using OverlayFileSystem fs = f.Open();
            Assert.That(Tree(mountPoint), Is.EqualTo(OverlayTree(fs)));
        }
        finally
        {
            Checks.Run("umount", mountPoint);
        }
    }

    [Test]
    public void AnOciTarAppliedOverTheLowerTreeShowsTheRenamedDirectoryWhole()
    {
        using OverlayFixture f = RenamedDirectory();
        string tar = Path.Combine(f.Root, "layer.tar");
        UpperExport.ToOciTarFile(f.Upper!, tar, new UpperExportOptions { LowerDirectories = f.Lowers });
        // The OCI way: the lower layers flattened (lowest first), then the layer applied.
        string tree = Path.Combine(f.Root, "applied");
        Directory.CreateDirectory(tree);
        Checks.Run("cp", $"-a {f.Lowers[1]}/. {tree}");
        Checks.Run("cp", $"-a {f.Lowers[0]}/. {tree}");
        using (var reader = new TarReader(File.OpenRead(tar)))
        {
            while (reader.GetNextEntry() is { } entry)
            {
                string name = entry.Name.TrimEnd('/');
                string dir = Path.GetDirectoryName(name) ?? "";
                string leaf = Path.GetFileName(name);
                string target = Path.Combine(tree, name);
                if (leaf == ".wh..wh..opq")
                {
                    foreach (string child in Directory.EnumerateFileSystemEntries(Path.Combine(tree, dir)))
                    {
                        if (Directory.Exists(child)) { Directory.Delete(child, true); } else { File.Delete(child); }
                    }
                }
                else if (leaf.StartsWith(".wh.", StringComparison.Ordinal))
                {
                    string hidden = Path.Combine(tree, dir, leaf[4..]);
                    if (Directory.Exists(hidden)) { Directory.Delete(hidden, true); } else { File.Delete(hidden); }
                }
                else if (entry.EntryType == TarEntryType.Directory)
                {
                    Directory.CreateDirectory(target);
                }
                else
                {
                    entry.ExtractToFile(target, overwrite: true);
                }
            }
        }
        using OverlayFileSystem fs = f.Open();
        Assert.That(Tree(tree), Is.EqualTo(OverlayTree(fs)));
    }

    /// <summary>Path → kind and content hash of a plain directory tree.</summary>
    private static SortedDictionary<string, string> Tree(string root)
    {
        var result = new SortedDictionary<string, string>(StringComparer.Ordinal);
        foreach (string path in Directory.EnumerateFileSystemEntries(root, "*", SearchOption.AllDirectories))
        {
            string relative = "/" + Path.GetRelativePath(root, path);
            result[relative] = Directory.Exists(path) ? "dir" : "file:" + Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(path)))[..16];
        }
        return result;
    }

    private static SortedDictionary<string, string> OverlayTree(OverlayFileSystem fs)
    {
        var result = new SortedDictionary<string, string>(StringComparer.Ordinal);
        OverlayFixture.Walk(fs, (child, stat) =>
            result[child] = stat.IsDirectory ? "dir" : "file:" + Convert.ToHexString(SHA256.HashData(OverlayFixture.ReadBytes(fs, child)))[..16]);
        return result;
    }

}
