using System.Buffers;
using BAOverlay.Interop;
using Mono.Unix.Native;

namespace BAOverlay.FileSystem.Export;

/// <summary>
/// Writes an upper directory as a plain overlayfs upper directory: B-CoW files become regular (sparse) files with
/// their merged content, whiteouts become 0/0 character devices, opaque directories carry
/// <c>trusted.overlay.opaque=y</c>, and the overlay's own extended attributes are left out.
/// </summary>
internal sealed class DirectoryExporter
{
    private const int ChunkSize = 1 << 20;

    private readonly string _root;
    private readonly ExportProgressTracker _progress;
    private readonly List<string> _warnings;
    private readonly bool _privileged = Syscall.geteuid() == 0;
    private readonly List<ExportEntry> _directories = new();
    private bool _ownershipWarned;
    private bool _whiteoutWarned;
    private bool _opaqueWarned;

    private DirectoryExporter(string root, ExportProgressTracker progress, List<string> warnings)
    {
        _root = root;
        _progress = progress;
        _warnings = warnings;
    }

    public int Whiteouts { get; private set; }

    public int Opaque { get; private set; }

    public int Materialized { get; private set; }

    public static UpperExportResult Export(string upperDirectory, string destination, UpperExportOptions options)
    {
        ExportDestination target = ExportDestination.Prepare(upperDirectory, destination, options.Overwrite);
        var warnings = new List<string>();
        List<ExportEntry> entries = UpperTree.Scan(upperDirectory, options.LowerDirectories, warnings, options.CancellationToken);
        long bytesTotal = entries.Where(e => e.Kind is ExportKind.RegularFile or ExportKind.BCowFile).Sum(e => e.Size);
        var progress = new ExportProgressTracker(options.Progress, bytesTotal, entries.Count, options.CancellationToken);
        var exporter = new DirectoryExporter(target.Temporary, progress, warnings);
        progress.Begin();
        try
        {
            foreach (ExportEntry entry in entries)
            {
                progress.StartEntry(entry.Path);
                exporter.Write(entry);
                progress.EndEntry();
            }
            exporter.FinishDirectories();
            target.Commit();
        }
        catch
        {
            target.Abandon();
            throw;
        }
        progress.Finish();
        return new UpperExportResult(progress.EntriesDone, progress.BytesDone, exporter.Materialized, exporter.Whiteouts, exporter.Opaque, warnings);
    }

    private string Target(ExportEntry entry) => entry.Path.Length == 0 ? _root : LayerPaths.Join(_root, entry.Path);

    private void Write(ExportEntry entry)
    {
        string path = Target(entry);
        switch (entry.Kind)
        {
            case ExportKind.Directory:
                if (Syscall.mkdir(path, FilePermissions.S_IRWXU) != 0)
                {
                    throw UpperTree.Failure("cannot make the directory", path);
                }
                SetOwner(entry, path);
                SetXattrs(entry, path);
                if (entry.Opaque)
                {
                    MakeOpaque(path);
                    Opaque++;
                }
                _directories.Add(entry); // mode and times once its content is written
                return;
            case ExportKind.RegularFile:
            case ExportKind.BCowFile:
                WriteFile(entry, path);
                if (entry.Kind == ExportKind.BCowFile)
                {
                    Materialized++;
                }
                break;
            case ExportKind.HardLink:
                if (Syscall.link(LayerPaths.Join(_root, entry.LinkTarget!), path) != 0)
                {
                    throw UpperTree.Failure($"cannot make the hard link to {entry.LinkTarget}", path);
                }
                return; // shares the metadata of the first name
            case ExportKind.SymbolicLink:
                if (Syscall.symlink(entry.LinkTarget!, path) != 0)
                {
                    throw UpperTree.Failure("cannot make the symbolic link", path);
                }
                break;
            case ExportKind.CharacterDevice:
            case ExportKind.BlockDevice:
            case ExportKind.Fifo:
            case ExportKind.Socket:
                if (Syscall.mknod(path, entry.Stat.st_mode, entry.Stat.st_rdev) != 0)
                {
                    throw UpperTree.Failure("cannot make the node", path);
                }
                break;
            case ExportKind.Whiteout:
                WriteWhiteout(entry, path);
                Whiteouts++;
                return;
        }
        SetOwner(entry, path);
        if (entry.Kind != ExportKind.SymbolicLink && Syscall.chmod(path, (FilePermissions)entry.Permissions) != 0)
        {
            throw UpperTree.Failure("cannot set the mode", path);
        }
        SetXattrs(entry, path);
        SetTimes(entry, path);
    }

    private void WriteFile(ExportEntry entry, string path)
    {
        using ExportContent content = ExportContent.Open(entry);
        byte[] buffer = ArrayPool<byte>.Shared.Rent(ChunkSize);
        try
        {
            using var output = new FileStream(path, FileMode.CreateNew, FileAccess.Write, FileShare.None, bufferSize: 0);
            long position = 0;
            foreach (var (offset, length) in content.DataRanges())
            {
                _progress.AddBytes(offset - position); // a hole: nothing to write
                for (long done = 0; done < length;)
                {
                    _progress.ThrowIfCancellationRequested();
                    int n = (int)Math.Min(ChunkSize, length - done);
                    content.ReadExactly(buffer.AsSpan(0, n), offset + done);
                    RandomAccess.Write(output.SafeFileHandle, buffer.AsSpan(0, n), offset + done);
                    done += n;
                    _progress.AddBytes(n);
                }
                position = offset + length;
            }
            _progress.AddBytes(content.Length - position);
            output.SetLength(content.Length); // the trailing hole, if any
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException && !e.Message.Contains(entry.Source, StringComparison.Ordinal) && !e.Message.Contains(path, StringComparison.Ordinal))
        {
            throw new IOException($"{path}: cannot write the copy of {entry.Source}: {e.Message}", e);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    /// <summary>A 0/0 character device, the form kernel overlayfs reads; <c>.wh.NAME</c> where device nodes cannot be made.</summary>
    private void WriteWhiteout(ExportEntry entry, string path)
    {
        if (Syscall.mknod(path, FilePermissions.S_IFCHR, 0) == 0)
        {
            return;
        }
        Errno errno = Stdlib.GetLastError();
        if (errno is not (Errno.EPERM or Errno.EACCES))
        {
            throw new IOException($"{path}: cannot make the whiteout: {Stdlib.strerror(errno)}");
        }
        string file = LayerPaths.Join(Path.GetDirectoryName(path)!, BAOverlay.FileSystem.Whiteouts.Prefix + entry.Name);
        int fd = Syscall.open(file, OpenFlags.O_CREAT | OpenFlags.O_WRONLY | OpenFlags.O_EXCL, FilePermissions.S_IRUSR | FilePermissions.S_IWUSR);
        if (fd < 0)
        {
            throw UpperTree.Failure("cannot make the whiteout", file);
        }
        Syscall.close(fd);
        if (!_whiteoutWarned)
        {
            _whiteoutWarned = true;
            _warnings.Add($"{file}: whiteouts kept as .wh. files (making 0/0 character devices is not permitted): fine for BAOverlay and fuse-overlayfs, not a kernel overlayfs upper directory");
        }
    }

    /// <summary>trusted.overlay.opaque=y as kernel overlayfs reads it; without the privilege for trusted.*,
    /// user.overlay.opaque=y (kernel overlayfs with <c>-o userxattr</c>, fuse-overlayfs, BAOverlay), and failing
    /// that a <c>.wh..wh..opq</c> file.</summary>
    private void MakeOpaque(string path)
    {
        byte[] y = "y"u8.ToArray();
        if (Syscall.lsetxattr(path, "trusted.overlay.opaque", y, XattrFlags.XATTR_AUTO) == 0)
        {
            return;
        }
        bool user = Syscall.lsetxattr(path, "user.overlay.opaque", y, XattrFlags.XATTR_AUTO) == 0;
        if (!user)
        {
            string marker = LayerPaths.Join(path, BAOverlay.FileSystem.Whiteouts.OpaqueMarker);
            int fd = Syscall.open(marker, OpenFlags.O_CREAT | OpenFlags.O_WRONLY | OpenFlags.O_EXCL, FilePermissions.S_IRUSR);
            if (fd < 0)
            {
                throw UpperTree.Failure("cannot mark the directory opaque", path);
            }
            Syscall.close(fd);
        }
        if (!_opaqueWarned)
        {
            _opaqueWarned = true;
            _warnings.Add(user
                ? $"{path}: opaque directories marked with user.overlay.opaque=y (trusted.* not permitted): mount with -o userxattr"
                : $"{path}: opaque directories marked with a .wh..wh..opq file (no extended attributes permitted): not a kernel overlayfs upper directory");
        }
    }

    private void SetOwner(ExportEntry entry, string path)
    {
        if (Syscall.lchown(path, entry.Stat.st_uid, entry.Stat.st_gid) == 0)
        {
            return;
        }
        if (_privileged)
        {
            throw UpperTree.Failure("cannot set the owner", path);
        }
        if (!_ownershipWarned && (entry.Stat.st_uid != Syscall.geteuid() || entry.Stat.st_gid != Syscall.getegid()))
        {
            _ownershipWarned = true;
            _warnings.Add($"{path}: ownership not kept (uid {entry.Stat.st_uid}, gid {entry.Stat.st_gid}): not running as root");
        }
    }

    private void SetXattrs(ExportEntry entry, string path)
    {
        foreach (var (name, value) in entry.Xattrs)
        {
            if (Syscall.lsetxattr(path, name, value, XattrFlags.XATTR_AUTO) != 0)
            {
                _warnings.Add($"{path}: extended attribute {name} not kept: {Stdlib.strerror(Stdlib.GetLastError())}");
            }
        }
    }

    private static void SetTimes(ExportEntry entry, string path)
    {
        var times = new Timespec[]
        {
            new() { tv_sec = entry.Stat.st_atime, tv_nsec = entry.Stat.st_atime_nsec },
            new() { tv_sec = entry.Stat.st_mtime, tv_nsec = entry.Stat.st_mtime_nsec },
        };
        if (Syscall.utimensat(LibC.AT_FDCWD, path, times, AtFlags.AT_SYMLINK_NOFOLLOW) != 0)
        {
            throw UpperTree.Failure("cannot set the times", path);
        }
    }

    /// <summary>Directory modes and times last, deepest first: writing into a directory changes its times, and a
    /// read-only mode would stop the writes.</summary>
    private void FinishDirectories()
    {
        for (int i = _directories.Count - 1; i >= 0; i--)
        {
            ExportEntry entry = _directories[i];
            string path = Target(entry);
            if (Syscall.chmod(path, (FilePermissions)entry.Permissions) != 0)
            {
                throw UpperTree.Failure("cannot set the mode", path);
            }
            SetTimes(entry, path);
        }
    }
}
