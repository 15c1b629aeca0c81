using System.Runtime.InteropServices;
using System.Security.Cryptography;
using System.Text;
using BAOverlay.FileSystem;
using Mono.Unix.Native;

namespace BAOverlay.Tests.FileSystem;

/// <summary>
/// Path-based operations on a merged tree, run the same way on a real directory (a kernel overlayfs mount, or a plain
/// directory used as a model) and on an <see cref="OverlayFileSystem"/>. Each returns "ok" or the errno's name, so two
/// trees can be compared on their results as well as on their contents.
/// </summary>
internal interface ITreeOps
{
    string Mkdir(string path, uint mode);

    string Rmdir(string path);

    string Unlink(string path);

    /// <summary>Creates a regular file (fails with EEXIST if the name exists) and writes <paramref name="content"/>.</summary>
    string Create(string path, uint mode, byte[] content);

    string Symlink(string target, string path);

    string Mkfifo(string path, uint mode);

    string WriteAt(string path, long offset, byte[] data);

    string Truncate(string path, long size);

    string Chmod(string path, uint mode);

    /// <summary>Changes the owner without following a symbolic link (lchown).</summary>
    string Chown(string path, uint uid, uint gid);

    string Rename(string from, string to);

    /// <summary>The visible tree: path → type, mode, owner, size and content hash, link target or device number.</summary>
    SortedDictionary<string, string> Snapshot(bool withTimes = false);

    /// <summary>The inode number of <paramref name="path"/> (not following a final symbolic link), or null when it does not exist.</summary>
    ulong? Ino(string path);
}

/// <summary>Formats one visible entry the same way for every kind of tree.</summary>
internal static class TreeEntry
{
    public const uint S_IFMT = 0xF000;

    public static string Describe(uint mode, uint uid, uint gid, long size, ulong rdev, long mtimeNs, Func<byte[]> content, Func<string> linkTarget, bool withTimes)
    {
        string perms = Convert.ToString(mode & 0xFFF, 8);
        string times = withTimes ? $" mtime={mtimeNs}" : "";
        return (mode & S_IFMT) switch
        {
            0x4000 => $"dir mode={perms} uid={uid} gid={gid}",
            0x8000 => $"file mode={perms} uid={uid} gid={gid} size={size} sha={Convert.ToHexString(SHA256.HashData(content()))[..16]}{times}",
            0xA000 => $"link->{linkTarget()} uid={uid} gid={gid}{times}",
            0x1000 => $"fifo mode={perms} uid={uid} gid={gid}{times}",
            0x2000 => $"chr {rdev} mode={perms} uid={uid} gid={gid}{times}",
            0x6000 => $"blk {rdev} mode={perms} uid={uid} gid={gid}{times}",
            0xC000 => $"sock mode={perms} uid={uid} gid={gid}{times}",
            uint other => $"type {other:x}",
        };
    }

    /// <summary>The process umask (read by setting it and setting it back).</summary>
    public static uint ProcessUmask()
    {
        FilePermissions old = Syscall.umask(FilePermissions.S_IWGRP | FilePermissions.S_IWOTH);
        Syscall.umask(old);
        return (uint)old;
    }

    public static string ErrnoName(int result) => result == 0 ? "ok" : Stdlib.GetLastError().ToString();

    /// <summary>The B-CoW files of an upper layer, found with lstat (Directory.EnumerateFiles would follow a link to "/").</summary>
    public static List<string> BCowFiles(string upper)
    {
        var found = new List<string>();
        void Walk(string directory)
        {
            foreach (string entry in Directory.EnumerateFileSystemEntries(directory))
            {
                if (Syscall.lstat(entry, out Stat st) != 0)
                {
                    continue;
                }
                var type = st.st_mode & FilePermissions.S_IFMT;
                if (type == FilePermissions.S_IFDIR)
                {
                    Walk(entry);
                }
                else if (type == FilePermissions.S_IFREG && Syscall.lgetxattr(entry, "user.baoverlay.bcow", out byte[] _) >= 0)
                {
                    found.Add(entry);
                }
            }
        }
        Walk(upper);
        return found;
    }
}

/// <summary>A real directory: a kernel overlayfs mount point, or a plain directory holding the model tree.</summary>
internal sealed class PosixTree(string root) : ITreeOps
{
    /// <summary>The snapshot value of a name that readdir lists but lookup does not find.</summary>
    public const string ReaddirOnly = "listed by readdir, lookup ENOENT";

    /// <summary>What kernel overlayfs shows for a B-CoW file the overlay wrote: listed, but lookup fails (ForeignMarks).</summary>
    public const string LookupEio = "listed by readdir, lookup EIO";

    public string Root => root;

    private string P(string path) => path.Length == 0 ? root : root + "/" + path;

    public string Mkdir(string path, uint mode) => TreeEntry.ErrnoName(Syscall.mkdir(P(path), (FilePermissions)mode));

    public string Rmdir(string path) => TreeEntry.ErrnoName(Syscall.rmdir(P(path)));

    public string Unlink(string path) => TreeEntry.ErrnoName(Syscall.unlink(P(path)));

    public string Create(string path, uint mode, byte[] content)
    {
        int fd = Syscall.open(P(path), OpenFlags.O_CREAT | OpenFlags.O_EXCL | OpenFlags.O_WRONLY, (FilePermissions)mode);
        if (fd < 0)
        {
            return Stdlib.GetLastError().ToString();
        }
        try
        {
            return content.Length == 0 ? "ok" : WriteAll(fd, content, 0);
        }
        finally
        {
            Syscall.close(fd);
        }
    }

    public string Symlink(string target, string path) => TreeEntry.ErrnoName(Syscall.symlink(target, P(path)));

    public string Mkfifo(string path, uint mode) => TreeEntry.ErrnoName(Syscall.mknod(P(path), FilePermissions.S_IFIFO | (FilePermissions)mode, 0));

    public string WriteAt(string path, long offset, byte[] data)
    {
        int fd = Syscall.open(P(path), OpenFlags.O_WRONLY);
        if (fd < 0)
        {
            return Stdlib.GetLastError().ToString();
        }
        try
        {
            return WriteAll(fd, data, offset);
        }
        finally
        {
            Syscall.close(fd);
        }
    }

    public string Truncate(string path, long size) => TreeEntry.ErrnoName(Syscall.truncate(P(path), size));

    public string Chmod(string path, uint mode) => TreeEntry.ErrnoName(Syscall.chmod(P(path), (FilePermissions)mode));

    public string Chown(string path, uint uid, uint gid) => TreeEntry.ErrnoName(Syscall.lchown(P(path), uid, gid));

    public string Rename(string from, string to) => TreeEntry.ErrnoName(Syscall.rename(P(from), P(to)));

    public ulong? Ino(string path) => Syscall.lstat(P(path), out Stat st) == 0 ? st.st_ino : null;

    private static unsafe string WriteAll(int fd, byte[] data, long offset)
    {
        int done = 0;
        while (done < data.Length)
        {
            long n;
            fixed (byte* p = &data[done])
            {
                n = Syscall.pwrite(fd, p, (ulong)(data.Length - done), offset + done);
            }
            if (n < 0)
            {
                return Stdlib.GetLastError().ToString();
            }
            done += (int)n;
        }
        return "ok";
    }

    public SortedDictionary<string, string> Snapshot(bool withTimes = false)
    {
        var result = new SortedDictionary<string, string>(StringComparer.Ordinal);
        void Walk(string relative)
        {
            foreach (string full in Directory.EnumerateFileSystemEntries(P(relative)))
            {
                string name = Path.GetFileName(full);
                string child = relative.Length == 0 ? name : relative + "/" + name;
                int rc = Syscall.lstat(full, out Stat st);
                Errno error = rc == 0 ? 0 : Stdlib.GetLastError();
                if (error == Errno.ENOENT)
                {
                    // Kernel overlayfs lists the whiteouts of a directory that only one layer has, but looking
                    // them up fails: recorded as such, for the documented difference.
                    result["/" + child] = ReaddirOnly;
                    continue;
                }
                if (error == Errno.EIO)
                {
                    result["/" + child] = LookupEio;
                    continue;
                }
                Assert.That(rc, Is.Zero, $"lstat {full}: {error}");
                result["/" + child] = TreeEntry.Describe((uint)st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_rdev,
                    st.st_mtime * 1_000_000_000L + st.st_mtime_nsec,
                    () => File.ReadAllBytes(full), () => Mono.Unix.UnixPath.ReadLink(full), withTimes);
                if (((uint)st.st_mode & TreeEntry.S_IFMT) == 0x4000)
                {
                    Walk(child);
                }
            }
        }
        Assert.That(Syscall.lstat(root, out Stat top), Is.Zero, $"lstat {root}");
        result["/"] = TreeEntry.Describe((uint)top.st_mode, top.st_uid, top.st_gid, 0, 0, 0, () => [], () => "", false);
        Walk("");
        return result;
    }
}

/// <summary>The same operations through the inode-based API of <see cref="OverlayFileSystem"/>.</summary>
internal sealed class OverlayTree(OverlayFileSystem fs, uint umask) : ITreeOps
{
    private readonly OverlayCaller _caller = new(0, 0, umask);

    public OverlayFileSystem FileSystem => fs;

    private ulong Resolve(string path)
    {
        ulong ino = OverlayFileSystem.RootIno;
        foreach (string part in path.Split('/', StringSplitOptions.RemoveEmptyEntries))
        {
            ino = fs.Lookup(ino, part).Ino;
        }
        return ino;
    }

    private (ulong Parent, string Name) Split(string path)
    {
        int slash = path.LastIndexOf('/');
        return slash < 0 ? (OverlayFileSystem.RootIno, path) : (Resolve(path[..slash]), path[(slash + 1)..]);
    }

    private static string Run(Action action)
    {
        try
        {
            action();
            return "ok";
        }
        catch (OverlayException e)
        {
            return e.Errno.ToString();
        }
    }

    public string Mkdir(string path, uint mode) => Run(() =>
    {
        var (parent, name) = Split(path);
        fs.MakeDirectory(parent, name, mode, _caller);
    });

    public string Rmdir(string path) => Run(() =>
    {
        var (parent, name) = Split(path);
        fs.RemoveDirectory(parent, name);
    });

    public string Unlink(string path) => Run(() =>
    {
        var (parent, name) = Split(path);
        fs.Unlink(parent, name);
    });

    public string Create(string path, uint mode, byte[] content) => Run(() =>
    {
        var (parent, name) = Split(path);
        var (_, handle) = fs.Create(parent, name, mode, _caller);
        using (handle)
        {
            if (content.Length > 0)
            {
                handle.Write(content, 0);
            }
        }
    });

    public string Symlink(string target, string path) => Run(() =>
    {
        var (parent, name) = Split(path);
        fs.MakeSymbolicLink(parent, name, target, _caller);
    });

    public string Mkfifo(string path, uint mode) => Run(() =>
    {
        var (parent, name) = Split(path);
        fs.MakeNode(parent, name, 0x1000 | mode, 0, _caller);
    });

    public string WriteAt(string path, long offset, byte[] data) => Run(() =>
    {
        using OverlayHandle handle = fs.Open(Resolve(path), write: true, truncate: false);
        handle.Write(data, offset);
    });

    public string Truncate(string path, long size) => Run(() => fs.SetAttr(Resolve(path), new OverlaySetAttr { Size = size }, _caller));

    public string Chmod(string path, uint mode) => Run(() => fs.SetAttr(Resolve(path), new OverlaySetAttr { Mode = mode }, _caller));

    public string Chown(string path, uint uid, uint gid) => Run(() => fs.SetAttr(Resolve(path), new OverlaySetAttr { Uid = uid, Gid = gid }, _caller));

    public string Rename(string from, string to) => Run(() =>
    {
        var (parent, name) = Split(from);
        var (newParent, newName) = Split(to);
        fs.Rename(parent, name, newParent, newName);
    });

    public SortedDictionary<string, string> Snapshot(bool withTimes = false) => Walk(withTimes, inodes: null);

    public ulong? Ino(string path)
    {
        try
        {
            return Resolve(path);
        }
        catch (OverlayException)
        {
            return null;
        }
    }

    /// <summary>The overlay inode number of every visible path.</summary>
    public SortedDictionary<string, ulong> Inodes()
    {
        var inodes = new SortedDictionary<string, ulong>(StringComparer.Ordinal);
        Walk(false, inodes);
        return inodes;
    }

    private SortedDictionary<string, string> Walk(bool withTimes, SortedDictionary<string, ulong>? inodes)
    {
        var result = new SortedDictionary<string, string>(StringComparer.Ordinal);
        OverlayStat top = fs.GetAttr(OverlayFileSystem.RootIno);
        result["/"] = TreeEntry.Describe(top.Mode, top.Uid, top.Gid, 0, 0, 0, () => [], () => "", false);
        OverlayFixture.Walk(fs, (child, stat) =>
        {
            if (inodes is not null)
            {
                inodes[child] = stat.Ino;
            }
            result[child] = TreeEntry.Describe(stat.Mode, stat.Uid, stat.Gid, stat.Size, stat.Rdev, stat.MTimeNs,
                () => Read(stat), () => fs.ReadLink(stat.Ino), withTimes);
        });
        return result;
    }

    private byte[] Read(OverlayStat stat)
    {
        using OverlayHandle handle = fs.Open(stat.Ino, write: false, truncate: false);
        byte[] content = new byte[stat.Size];
        int done = 0;
        while (done < content.Length)
        {
            int n = handle.Read(content.AsSpan(done), done);
            Assert.That(n, Is.GreaterThan(0), $"inode {stat.Ino}: short read at {done} of {content.Length}");
            done += n;
        }
        return content;
    }
}

/// <summary>A kernel overlayfs mount in its own temp directory; unmounted (lazily if busy) on dispose.</summary>
internal sealed partial class KernelOverlayMount : IDisposable
{
    private const ulong MS_RDONLY = 1;
    private const int MNT_DETACH = 2;

    private readonly TempDir _dir = new();
    private bool _mounted;

    private KernelOverlayMount()
    {
        MountPoint = _dir.File("mnt");
        Directory.CreateDirectory(MountPoint);
    }

    public string MountPoint { get; }

    /// <summary>
    /// Mounts lowerdir=<paramref name="lowers"/> (highest first), with <paramref name="upper"/> and
    /// <paramref name="work"/> when given (read-only without them). Metacopy and the index are off; redirect_dir is on,
    /// so the kernel renames directories that have lower parts, as the overlay does (with it off the kernel says EXDEV). Calls
    /// Assert.Ignore when mounting is not permitted (not root), saying why.
    /// </summary>
    public static KernelOverlayMount Mount(IReadOnlyList<string> lowers, string? upper = null, string? work = null)
    {
        if (Syscall.geteuid() != 0)
        {
            Assert.Ignore("mounting kernel overlayfs needs root (CAP_SYS_ADMIN); the comparison runs in CI, which is root");
        }
        var mount = new KernelOverlayMount();
        var data = new StringBuilder("lowerdir=").Append(string.Join(':', lowers));
        if (upper is not null)
        {
            data.Append(",upperdir=").Append(upper).Append(",workdir=").Append(work);
        }
        data.Append(",index=off,metacopy=off,redirect_dir=on");
        if (mount_("overlay", mount.MountPoint, "overlay", upper is null ? MS_RDONLY : 0, data.ToString()) != 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            mount.Dispose();
            Errno e = NativeConvert.ToErrno(errno);
            if (e == Errno.EPERM)
            {
                Assert.Ignore($"mount -t overlay failed with EPERM (not privileged here): {data}");
            }
            Assert.Fail($"mount -t overlay -o {data} failed: {e}");
        }
        mount._mounted = true;
        return mount;
    }

    public void Dispose()
    {
        if (_mounted)
        {
            if (umount2(MountPoint, 0) != 0)
            {
                umount2(MountPoint, MNT_DETACH);
            }
            _mounted = false;
        }
        _dir.Dispose();
    }

    [LibraryImport("libc", EntryPoint = "mount", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int mount_(string source, string target, string fstype, ulong flags, string data);

    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int umount2(string target, int flags);
}
