using System.Text;
using BAOverlay.FileSystem;
using Mono.Unix.Native;

namespace BAOverlay.Tests.FileSystem;

/// <summary>Layer directories in a temp folder, an overlay over them, and a way to read the whole merged tree.</summary>
internal sealed class OverlayFixture : IDisposable
{
    private readonly TempDir _temp = new();

    public OverlayFixture(int lowers = 2, bool withUpper = true)
    {
        Lowers = Enumerable.Range(1, lowers).Select(i => Dir($"lower{i}")).ToArray();
        Upper = withUpper ? Dir("upper") : null;
        Work = withUpper ? Dir("work") : null;
    }

    public string[] Lowers { get; }

    public string? Upper { get; }

    public string? Work { get; }

    public List<string> Log { get; } = new();

    public string Root => _temp.Path;

    public OverlayFileSystem Open(long threshold = 64 * 1024) => OverlayFileSystem.Open(new OverlayOptions
    {
        LowerDirectories = Lowers,
        UpperDirectory = Upper,
        WorkDirectory = Work,
        BlockCopyUpThreshold = threshold,
        BlockSize = 4096,
        Log = Log.Add,
    });

    /// <summary>A permission mode written the usual way, in octal.</summary>
    public static uint Mode(string octal) => Convert.ToUInt32(octal, 8);

    public static void WriteFile(string path, string content) => WriteFile(path, Encoding.UTF8.GetBytes(content));

    public static void WriteFile(string path, byte[] content)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        File.WriteAllBytes(path, content);
    }

    public static void Whiteout(string path)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        Assert.That(Syscall.mknod(path, FilePermissions.S_IFCHR, 0), Is.Zero, "mknod whiteout (tests run as root)");
    }

    public static void SetXattr(string path, string name, string value) =>
        Assert.That(Syscall.lsetxattr(path, name, Encoding.UTF8.GetBytes(value), XattrFlags.XATTR_AUTO), Is.Zero, $"setxattr {name}");

    /// <summary>Resolves a path of the merged tree, one lookup per component.</summary>
    public static OverlayStat Resolve(OverlayFileSystem fs, string path)
    {
        OverlayStat stat = fs.GetAttr(OverlayFileSystem.RootIno);
        foreach (string part in path.Split('/', StringSplitOptions.RemoveEmptyEntries))
        {
            stat = fs.Lookup(stat.Ino, part);
        }
        return stat;
    }

    public static bool Exists(OverlayFileSystem fs, string path)
    {
        try
        {
            Resolve(fs, path);
            return true;
        }
        catch (OverlayException e) when (e.Errno == OverlayErrno.ENOENT)
        {
            return false;
        }
    }

    public static string ReadText(OverlayFileSystem fs, string path) => Encoding.UTF8.GetString(ReadBytes(fs, path));

    public static byte[] ReadBytes(OverlayFileSystem fs, string path)
    {
        OverlayStat stat = Resolve(fs, path);
        using OverlayHandle handle = fs.Open(stat.Ino, write: false, truncate: false);
        byte[] content = new byte[stat.Size];
        int n = handle.Read(content, 0);
        Assert.That(n, Is.EqualTo(content.Length), $"{path}: read length");
        return content;
    }

    public static void WriteAt(OverlayFileSystem fs, string path, long offset, byte[] data)
    {
        using OverlayHandle handle = fs.Open(Resolve(fs, path).Ino, write: true, truncate: false);
        handle.Write(data, offset);
    }

    public static List<string> List(OverlayFileSystem fs, string path) =>
        fs.ReadDirectory(Resolve(fs, path).Ino).Select(e => e.Name).Where(n => n is not "." and not "..").Order(StringComparer.Ordinal).ToList();

    /// <summary>
    /// Visits every visible object below the root, depth first, directories before their content: its path ("/a/b")
    /// and its attributes. Checks on the way that readdir and lookup agree on each inode number.
    /// </summary>
    public static void Walk(OverlayFileSystem fs, Action<string, OverlayStat> visit)
    {
        void WalkFrom(ulong ino, string path)
        {
            foreach (OverlayDirEntry entry in fs.ReadDirectory(ino))
            {
                if (entry.Name is "." or "..")
                {
                    continue;
                }
                OverlayStat stat = fs.Lookup(ino, entry.Name);
                string child = path + "/" + entry.Name;
                Assert.That(entry.Ino, Is.EqualTo(stat.Ino), $"{child}: readdir and lookup agree on the inode number");
                visit(child, stat);
                if (stat.IsDirectory)
                {
                    WalkFrom(stat.Ino, child);
                }
            }
        }
        WalkFrom(OverlayFileSystem.RootIno, "");
    }

    /// <summary>The visible tree: path → type, mode, size, content hash or link target, inode number.</summary>
    public static SortedDictionary<string, string> Snapshot(OverlayFileSystem fs)
    {
        var result = new SortedDictionary<string, string>(StringComparer.Ordinal);
        Walk(fs, (child, stat) =>
        {
            string what = stat.IsDirectory ? "dir" : stat.IsSymbolicLink ? "link->" + fs.ReadLink(stat.Ino) : stat.IsRegularFile ? $"file:{Convert.ToHexString(System.Security.Cryptography.SHA256.HashData(ReadBytes(fs, child)))[..16]}" : $"special:{stat.Rdev}";
            result[child] = $"{what} mode={Convert.ToString(stat.Mode & 0xFFF, 8)} uid={stat.Uid} size={(stat.IsDirectory ? 0 : stat.Size)} ino={stat.Ino}";
        });
        return result;
    }

    public void Dispose() => _temp.Dispose();

    private string Dir(string name)
    {
        string path = _temp.File(name);
        Directory.CreateDirectory(path);
        return path;
    }
}
