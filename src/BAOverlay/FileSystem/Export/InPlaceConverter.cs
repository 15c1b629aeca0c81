using System.Text;
using BAOverlay.Storage;
using Mono.Unix.Native;

namespace BAOverlay.FileSystem.Export;

/// <summary>
/// Turns an upper directory into the plain overlayfs form where it is, for a user who switches to kernel overlayfs or
/// fuse-overlayfs: every B-CoW file becomes a plain file with its merged content (read through a read-only
/// <see cref="OverlayFileSystem"/> over the upper directory and its lower directories); a directory renamed out of a
/// lower layer keeps its redirect in the kernel's form; rootless whiteouts and opaque markers take the kernel's form
/// (as root); the overlay's private records (<c>user.baoverlay.*</c>, <c>trusted.baoverlay.*</c>, the mark of
/// <see cref="ForeignMarks"/>) are removed.
/// </summary>
/// <remarks>
/// <para>Crash order, per B-CoW inode X (keyed by its inode number): its plain copy is built as
/// <c>WORK/baoverlay/plain-upper/INO.part</c> (content, owner, mode, user xattrs, times), fsync-ed, renamed to
/// <c>INO</c> and the folder fsync-ed; then each name of X in turn gets a hard link of <c>INO</c> renamed over it (one
/// atomic rename, parent fsync-ed); then <c>INO</c> is removed. A kill at any point leaves every name either the B-CoW
/// file or the complete plain file. A re-run skips names that are plain already, and finds <c>INO</c> again for names
/// of X not yet replaced: it is reused (so hard links stay one inode) when its content equals a fresh copy, else
/// replaced. The overlay empties <c>WORK/baoverlay/</c> when it opens, so a mount between two runs drops the staged
/// copies (a hard-link group split by a crash then stays split; every name still reads right).</para>
/// <para>Other changes are idempotent xattr and whiteout edits, each safe to repeat.</para>
/// <para>Exclusion: refused while a kernel overlayfs mount names the upper directory, while another process holds a
/// descriptor under it or the work directory (a live baoverlayfs or fuse-overlayfs keeps its layer roots open), or
/// while any B-CoW file is locked by another process; each B-CoW inode is held with an exclusive lock while it is
/// converted.</para>
/// </remarks>
internal static class InPlaceConverter
{
    private const uint S_IFMT = 0xF000;
    private const uint S_IFDIR = 0x4000;
    private const uint S_IFREG = 0x8000;
    private const int ChunkSize = 1 << 20;
    private const string KernelRedirect = "trusted.overlay.redirect";
    private const string KernelOpaque = "trusted.overlay.opaque";

    /// <summary>The staging folder under the work directory, inside the overlay's own <c>baoverlay/</c>.</summary>
    internal const string StageFolder = "baoverlay/plain-upper";

    private sealed class Scan
    {
        public readonly Dictionary<(ulong Dev, ulong Ino), List<string>> BCowNames = new();
        public readonly List<string> Directories = [];
        public readonly List<string> Others = [];
        public readonly List<(string Directory, string Name)> OciWhiteouts = [];
        public long BytesTotal;
    }

    public static UpperExportResult Convert(string upperDirectory, IReadOnlyList<string> lowerDirectories, string workDirectory, UpperExportOptions options)
    {
        string upper = Canonical(upperDirectory, "upper directory");
        string work = Canonical(workDirectory, "work directory");
        var lowers = lowerDirectories.Select(l => Canonical(l, "lower directory")).ToList();
        if (work == upper || work.StartsWith(upper + "/", StringComparison.Ordinal) || upper.StartsWith(work + "/", StringComparison.Ordinal))
        {
            throw new ArgumentException($"{workDirectory}: the work directory must not be the upper directory, inside it, or hold it", nameof(workDirectory));
        }
        if (Lstat(upper).st_dev != Lstat(work).st_dev)
        {
            throw new IOException($"{work}: the work directory must be on the upper directory's file system ({upper}), as for an overlay mount");
        }
        CancellationToken cancel = options.CancellationToken;
        CheckNotInUse(upper, work);
        bool privileged = Syscall.geteuid() == 0;
        var warnings = new List<string>();
        var scan = new Scan();
        ScanTree(upper, "", scan, cancel);
        // Everything that needs root is known before the first change, so a run that cannot finish changes nothing.
        if (!privileged)
        {
            foreach (string directory in scan.Directories)
            {
                string path = Join(upper, directory);
                if (Syscall.lgetxattr(path, Redirects.Xattr, out byte[] _) >= 0 && Syscall.lgetxattr(path, KernelRedirect, out byte[] _) < 0)
                {
                    throw new IOException($"{path}: a directory renamed out of a lower layer; keeping it for kernel overlayfs needs {KernelRedirect}, which only root can write. Run as root, or use bcow export to a new directory with --lowerdir (it writes such a directory out whole)");
                }
            }
        }
        foreach (List<string> names in scan.BCowNames.Values)
        {
            // A mount or another tool using a B-CoW file fails the run before anything changed.
            using FileStorage probe = Hold(Join(upper, names[0]));
        }

        string stage = Path.Combine(work, StageFolder);
        foreach (string folder in (ReadOnlySpan<string>)[Path.GetDirectoryName(stage)!, stage])
        {
            if (Syscall.mkdir(folder, FilePermissions.S_IRWXU) != 0 && Stdlib.GetLastError() != Errno.EEXIST)
            {
                throw Failure("cannot make the staging folder", folder);
            }
        }
        int filesTotal = scan.BCowNames.Values.Sum(n => n.Count);
        int filesDone = 0;
        long bytesDone = 0;
        int converted = 0;
        options.Progress?.Report(new UpperExportProgress(0, scan.BytesTotal, 0, filesTotal, ""));
        if (scan.BCowNames.Count > 0)
        {
            using OverlayFileSystem view = OverlayFileSystem.Open(new OverlayOptions { LowerDirectories = [upper, .. lowers] });
            foreach (var (key, names) in scan.BCowNames)
            {
                cancel.ThrowIfCancellationRequested();
                string first = Join(upper, names[0]);
                using FileStorage held = Hold(first);
                string staged = Path.Combine(stage, key.Ino.ToString(System.Globalization.CultureInfo.InvariantCulture));
                long size = BuildStaged(view, names[0], first, staged, done => options.Progress?.Report(new UpperExportProgress(bytesDone + done, scan.BytesTotal, filesDone, filesTotal, names[0])), cancel);
                bytesDone += size;
                foreach (string name in names)
                {
                    cancel.ThrowIfCancellationRequested();
                    string path = Join(upper, name);
                    if (Syscall.lstat(path, out Stat now) == 0 && (now.st_dev, now.st_ino) == key)
                    {
                        string link = staged + ".link";
                        Syscall.unlink(link);
                        Check(Syscall.link(staged, link), "cannot link the plain copy", staged);
                        KeepingTimes(Path.GetDirectoryName(path)!, () => Check(Syscall.rename(link, path), "cannot rename the plain copy into place", path));
                    }
                    filesDone++;
                    options.Progress?.Report(new UpperExportProgress(bytesDone, scan.BytesTotal, filesDone, filesTotal, name));
                }
                converted++;
                Syscall.unlink(staged);
            }
        }

        int whiteouts = 0, opaque = 0;
        foreach (var (directory, name) in scan.OciWhiteouts)
        {
            cancel.ThrowIfCancellationRequested();
            if (!privileged)
            {
                warnings.Add($"{Join(upper, Join(directory, name))}: left as it is: kernel overlayfs reads only 0/0 character-device whiteouts, which need root to make");
                continue;
            }
            if (ToKernelWhiteout(Join(upper, directory), name))
            {
                whiteouts++;
            }
        }
        foreach (string directory in scan.Directories)
        {
            cancel.ThrowIfCancellationRequested();
            string path = Join(upper, directory);
            if (privileged)
            {
                KernelRedirectFor(path);
                if (ToKernelOpaque(path))
                {
                    opaque++;
                }
            }
            else if (Whiteouts.IsOpaque(path) && Syscall.lgetxattr(path, "user.overlay.opaque", out byte[] _) < 0)
            {
                warnings.Add($"{path}: opaque in a form kernel overlayfs does not read; without root only user.overlay.opaque (for -o userxattr) could be written, and it was not");
            }
            DropPrivate(path);
        }
        foreach (string other in scan.Others)
        {
            cancel.ThrowIfCancellationRequested();
            DropPrivate(Join(upper, other));
        }
        try
        {
            Directory.Delete(stage, recursive: true);
        }
        catch (IOException)
        {
        }
        SyncFileSystem(upper);
        options.Progress?.Report(new UpperExportProgress(bytesDone, scan.BytesTotal, filesDone, filesTotal, ""));
        return new UpperExportResult(filesDone, bytesDone, converted, whiteouts, opaque, warnings);
    }

    /// <summary>Walks the upper directory without following links. B-CoW names are grouped by inode (hard links).</summary>
    private static void ScanTree(string upper, string relative, Scan scan, CancellationToken cancel)
    {
        cancel.ThrowIfCancellationRequested();
        scan.Directories.Add(relative);
        string directory = Join(upper, relative);
        List<string> names;
        try
        {
            names = Directory.EnumerateFileSystemEntries(directory).Select(p => Path.GetFileName(p)).Order(StringComparer.Ordinal).ToList();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new IOException($"{directory}: cannot list the directory: {e.Message}", e);
        }
        foreach (string name in names)
        {
            string child = relative.Length == 0 ? name : relative + "/" + name;
            string path = Join(upper, child);
            Stat st = Lstat(path);
            uint type = (uint)st.st_mode & S_IFMT;
            if (Whiteouts.IsReservedName(name))
            {
                if (name != Whiteouts.OpaqueMarker) // handled with its directory (ToKernelOpaque)
                {
                    scan.OciWhiteouts.Add((relative, name));
                }
                continue;
            }
            if (type == S_IFDIR)
            {
                ScanTree(upper, child, scan, cancel);
            }
            else if (type == S_IFREG && Syscall.lgetxattr(path, LayerPaths.BCowXattr, out byte[] _) >= 0)
            {
                if (!scan.BCowNames.TryGetValue((st.st_dev, st.st_ino), out List<string>? group))
                {
                    scan.BCowNames[(st.st_dev, st.st_ino)] = group = [];
                    scan.BytesTotal += BCowLength(path);
                }
                group.Add(child);
            }
            else
            {
                scan.Others.Add(child);
            }
        }
    }

    /// <summary>
    /// Makes <paramref name="staged"/> the complete, durable plain copy of the B-CoW file at <paramref name="relative"/>:
    /// built fresh as <c>.part</c>; a staged copy left by an interrupted run is kept when it holds the same bytes (other
    /// names of the inode may be its links already), else replaced.
    /// </summary>
    /// <returns>The logical size copied.</returns>
    private static long BuildStaged(OverlayFileSystem view, string relative, string source, string staged, Action<long> progress, CancellationToken cancel)
    {
        string part = staged + ".part";
        Syscall.unlink(part);
        Stat st = Lstat(source);
        ulong ino = OverlayFileSystem.RootIno;
        foreach (string component in relative.Split('/'))
        {
            ino = view.Lookup(ino, component).Ino;
        }
        long size = view.GetAttr(ino).Size;
        using (OverlayHandle handle = view.Open(ino, write: false, truncate: false))
        using (Microsoft.Win32.SafeHandles.SafeFileHandle output = File.OpenHandle(part, FileMode.CreateNew, FileAccess.ReadWrite, FileShare.None))
        {
            byte[] buffer = new byte[ChunkSize];
            long offset = 0;
            while (offset < size)
            {
                cancel.ThrowIfCancellationRequested();
                int want = (int)Math.Min(buffer.Length, size - offset);
                int got = handle.Read(buffer.AsSpan(0, want), offset);
                if (got <= 0)
                {
                    throw new IOException($"{source}: the merged content ended at {offset} of {size} bytes");
                }
                if (buffer.AsSpan(0, got).ContainsAnyExcept((byte)0))
                {
                    RandomAccess.Write(output, buffer.AsSpan(0, got), offset); // zeros stay a hole
                }
                offset += got;
                progress(offset);
            }
            RandomAccess.SetLength(output, size);
            CopyMetadata(source, part, st);
            RandomAccess.FlushToDisk(output); // content and inode metadata durable before any rename
        }
        if (Syscall.lstat(staged, out _) == 0 && SameBytes(staged, part))
        {
            Syscall.unlink(part);
            return size;
        }
        Check(Syscall.rename(part, staged), "cannot rename the plain copy", part);
        FsyncDirectory(Path.GetDirectoryName(staged)!);
        return size;
    }

    /// <summary>Owner, then mode (chown clears setuid bits), then the user-visible xattrs (after chown, which clears
    /// security.capability), then times last.</summary>
    private static void CopyMetadata(string from, string to, in Stat st)
    {
        if (Syscall.lchown(to, st.st_uid, st.st_gid) != 0 && Syscall.geteuid() == 0)
        {
            throw Failure("cannot set the owner", to);
        }
        Check(Syscall.chmod(to, (FilePermissions)((uint)st.st_mode & 0xFFF)), "cannot set the mode", to);
        if (Syscall.llistxattr(from, out string[] names) >= 0)
        {
            foreach (string name in names)
            {
                if (!Whiteouts.IsPrivateXattr(name) && Syscall.lgetxattr(from, name, out byte[] value) >= 0)
                {
                    Check(Syscall.lsetxattr(to, name, value ?? [], XattrFlags.XATTR_AUTO), $"cannot set extended attribute {name}", to);
                }
            }
        }
        var times = new Timespec[]
        {
            new() { tv_sec = st.st_atime, tv_nsec = st.st_atime_nsec },
            new() { tv_sec = st.st_mtime, tv_nsec = st.st_mtime_nsec },
        };
        Check(Syscall.utimensat(Interop.LibC.AT_FDCWD, to, times, AtFlags.AT_SYMLINK_NOFOLLOW), "cannot set the times", to);
    }

    /// <summary><c>.wh.NAME</c> → a 0/0 character device NAME (made first, so a kill leaves two whiteouts, not none).
    /// Where NAME exists beside it, NAME is what the overlay shows and the <c>.wh.</c> entry goes.
    /// <c>.wh..wh..opq</c> is handled with its directory.</summary>
    private static bool ToKernelWhiteout(string directory, string name)
    {
        string hidden = name[Whiteouts.Prefix.Length..];
        if (hidden.Length == 0)
        {
            return false;
        }
        string target = Join(directory, hidden);
        bool made = false;
        KeepingTimes(directory, () =>
        {
            if (Syscall.lstat(target, out _) != 0)
            {
                Check(Syscall.mknod(target, FilePermissions.S_IFCHR, 0), "cannot make a whiteout", target);
                FsyncDirectory(directory);
                made = true;
            }
            Check(Syscall.unlink(Join(directory, name)), "cannot remove", Join(directory, name));
        });
        return made;
    }

    /// <summary>Writes the kernel's absolute redirect where only the overlay's is (root only).</summary>
    private static void KernelRedirectFor(string path)
    {
        if (Syscall.lgetxattr(path, Redirects.Xattr, out byte[] value) > 0 && Syscall.lgetxattr(path, KernelRedirect, out byte[] _) < 0)
        {
            byte[] kernel = Encoding.UTF8.GetBytes("/" + Encoding.UTF8.GetString(value));
            Check(Syscall.lsetxattr(path, KernelRedirect, kernel, XattrFlags.XATTR_AUTO), $"cannot set {KernelRedirect}", path);
        }
    }

    /// <summary>Any opaque form → <c>trusted.overlay.opaque=y</c> (root only); the other forms are then removed.</summary>
    private static bool ToKernelOpaque(string path)
    {
        if (!Whiteouts.IsOpaque(path))
        {
            return false;
        }
        bool made = false;
        if (!(Syscall.lgetxattr(path, KernelOpaque, out byte[] value) == 1 && value[0] == (byte)'y'))
        {
            Check(Syscall.lsetxattr(path, KernelOpaque, "y"u8.ToArray(), XattrFlags.XATTR_AUTO), $"cannot set {KernelOpaque}", path);
            made = true;
        }
        foreach (string other in (ReadOnlySpan<string>)["user.overlay.opaque", "user.fuseoverlayfs.opaque"])
        {
            Syscall.lremovexattr(path, other);
        }
        string marker = Join(path, Whiteouts.OpaqueMarker);
        if (Syscall.lstat(marker, out _) == 0)
        {
            KeepingTimes(path, () => Check(Syscall.unlink(marker), "cannot remove", marker));
        }
        return made;
    }

    /// <summary>Removes the overlay's own records (its inode numbers, its redirect once the kernel's is there).</summary>
    private static void DropPrivate(string path)
    {
        if (Syscall.llistxattr(path, out string[] names) < 0)
        {
            return;
        }
        foreach (string name in names)
        {
            if (name.StartsWith(LayerPaths.XattrPrefix, StringComparison.Ordinal) || name.StartsWith("trusted.baoverlay.", StringComparison.Ordinal))
            {
                if (name == Redirects.Xattr && Syscall.lgetxattr(path, KernelRedirect, out byte[] _) < 0)
                {
                    continue; // not root: the only record of the redirect (refused earlier when it matters)
                }
                if (Syscall.lremovexattr(path, name) != 0 && Stdlib.GetLastError() != Errno.ENODATA)
                {
                    throw Failure($"cannot remove extended attribute {name}", path);
                }
            }
        }
    }

    /// <summary>
    /// Refuses an upper directory in use: named by a kernel overlayfs mount (upperdir, workdir or a lowerdir), or with a
    /// descriptor under it or the work directory held by another process (baoverlayfs and fuse-overlayfs keep their
    /// layer roots open). Processes whose descriptors cannot be read (another user's, without root) are not seen; the
    /// B-CoW locks still are.
    /// </summary>
    private static void CheckNotInUse(string upper, string work)
    {
        bool Under(string path, string root) => path == root || path.StartsWith(root + "/", StringComparison.Ordinal);
        try
        {
            foreach (string line in File.ReadLines("/proc/self/mountinfo"))
            {
                int dash = line.IndexOf(" - ", StringComparison.Ordinal);
                string[] tail = dash < 0 ? [] : line[(dash + 3)..].Split(' ');
                if (tail.Length < 3 || tail[0] != "overlay")
                {
                    continue;
                }
                foreach (string option in Unescape(tail[2]).Split(','))
                {
                    int eq = option.IndexOf('=');
                    if (eq > 0 && option[..eq] is "upperdir" or "workdir" or "lowerdir" &&
                        option[(eq + 1)..].Split(':').Any(dir => Under(dir, upper) || Under(dir, work)))
                    {
                        throw new IOException($"{upper}: in use by a mounted overlay ({option}); unmount it first");
                    }
                }
            }
        }
        catch (Exception e) when (e is UnauthorizedAccessException or FileNotFoundException or DirectoryNotFoundException)
        {
        }
        int self = Environment.ProcessId;
        foreach (string process in Directory.EnumerateDirectories("/proc"))
        {
            string pid = Path.GetFileName(process);
            if (!int.TryParse(pid, out int id) || id == self)
            {
                continue;
            }
            IEnumerable<string> fds;
            try
            {
                fds = Directory.EnumerateFileSystemEntries(Path.Combine(process, "fd")).ToList();
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                continue;
            }
            foreach (string fd in fds)
            {
                string? target = Mono.Unix.UnixPath.TryReadLink(fd);
                if (target is not null && (Under(target, upper) || Under(target, work)))
                {
                    string command = File.Exists(Path.Combine(process, "comm")) ? File.ReadAllText(Path.Combine(process, "comm")).Trim() : "?";
                    throw new IOException($"{upper}: in use by process {pid} ({command}), which has {target} open; unmount or stop it first");
                }
            }
        }
    }

    /// <summary>Opens a B-CoW file with an exclusive lock: fails when another process has it open (a mount, bcow).</summary>
    private static FileStorage Hold(string path)
    {
        try
        {
            return new FileStorage(path, FileMode.Open, FileAccess.ReadWrite, FileLockMode.Exclusive);
        }
        catch (BCowFileInUseException e)
        {
            throw new IOException($"{path}: the B-CoW file is in use by another process (a mount of the overlay?); unmount it first: {e.Message}", e);
        }
    }

    private static long BCowLength(string path)
    {
        using BCowFile file = BCowFile.Open(path, new BCowOpenOptions { ReadOnly = true });
        return file.Length;
    }

    private static bool SameBytes(string a, string b)
    {
        using var x = new FileStream(a, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16);
        using var y = new FileStream(b, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16);
        if (x.Length != y.Length)
        {
            return false;
        }
        byte[] bx = new byte[1 << 16], by = new byte[1 << 16];
        int n;
        while ((n = x.Read(bx)) > 0)
        {
            y.ReadExactly(by, 0, n);
            if (!bx.AsSpan(0, n).SequenceEqual(by.AsSpan(0, n)))
            {
                return false;
            }
        }
        return true;
    }

    private static string Unescape(string value) =>
        System.Text.RegularExpressions.Regex.Replace(value, @"\\([0-7]{3})", m => ((char)System.Convert.ToInt32(m.Groups[1].Value, 8)).ToString());

    private static string Canonical(string path, string what)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        string full = Path.GetFullPath(path).TrimEnd('/');
        string? resolved;
        try
        {
            resolved = Mono.Unix.UnixPath.GetCompleteRealPath(full);
        }
        catch (Exception e) when (e is IOException or ArgumentException or Mono.Unix.UnixIOException)
        {
            resolved = null;
        }
        if (resolved is null || Syscall.stat(resolved, out Stat st) != 0 || ((uint)st.st_mode & S_IFMT) != S_IFDIR)
        {
            throw new DirectoryNotFoundException($"{path}: the {what} does not exist or is not a directory");
        }
        return resolved.Length > 1 ? resolved.TrimEnd('/') : resolved;
    }

    private static string Join(string root, string relative) => relative.Length == 0 ? root : root + "/" + relative;

    private static Stat Lstat(string path) => Syscall.lstat(path, out Stat st) == 0 ? st : throw Failure("cannot stat", path);

    private static void Check(int result, string what, string path)
    {
        if (result != 0)
        {
            throw Failure(what, path);
        }
    }

    private static IOException Failure(string what, string path) => UpperTree.Failure(what, path);

    /// <summary>Runs <paramref name="change"/> in <paramref name="directory"/>, then gives the directory back the access and
    /// modification times it had (the merged view shows them), and makes the change durable.</summary>
    private static void KeepingTimes(string directory, Action change)
    {
        Stat st = Lstat(directory);
        change();
        var times = new Timespec[]
        {
            new() { tv_sec = st.st_atime, tv_nsec = st.st_atime_nsec },
            new() { tv_sec = st.st_mtime, tv_nsec = st.st_mtime_nsec },
        };
        Check(Syscall.utimensat(Interop.LibC.AT_FDCWD, directory, times, AtFlags.AT_SYMLINK_NOFOLLOW), "cannot set the times", directory);
        FsyncDirectory(directory);
    }

    private static void FsyncDirectory(string path)
    {
        int fd = Syscall.open(path, OpenFlags.O_RDONLY | OpenFlags.O_DIRECTORY);
        if (fd < 0)
        {
            throw Failure("cannot open to flush", path);
        }
        try
        {
            if (Syscall.fsync(fd) != 0)
            {
                throw Failure("cannot flush", path);
            }
        }
        finally
        {
            Syscall.close(fd);
        }
    }

    private static void SyncFileSystem(string path)
    {
        int fd = Syscall.open(path, OpenFlags.O_RDONLY | OpenFlags.O_DIRECTORY);
        if (fd >= 0)
        {
            Interop.LibC.syncfs(fd);
            Syscall.close(fd);
        }
    }
}
