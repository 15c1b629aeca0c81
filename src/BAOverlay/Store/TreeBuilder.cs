using Microsoft.Win32.SafeHandles;
using Mono.Unix.Native;

namespace BAOverlay.Store;

/// <summary>The metadata of an object to create: permission bits (07777), owner, modification time, extended attributes.</summary>
internal sealed record NodeMetadata(uint Mode, uint Uid, uint Gid, long MTimeSeconds, long MTimeNanoseconds, IReadOnlyList<(string Name, byte[] Value)> Xattrs);

/// <summary>
/// Creates the objects of a layer tree in a staging directory, one name relative to a directory handle at a time
/// (<see cref="StoreDirectory"/>), with their metadata in the order that keeps it: owner, extended attributes, mode
/// (after chown, which clears set-user-ID bits), times. A directory's own mode and times are set by
/// <see cref="FinishDirectory"/> once its children exist (a read-only directory could not receive them, and adding
/// them changes its time). Regular files are fsynced as they are written; directories by <see cref="SyncTree"/>.
/// </summary>
internal static class TreeBuilder
{
    public static void CreateDirectory(StoreDirectory parent, string name, NodeMetadata metadata)
    {
        if (Syscall.mkdir(parent.At(name), FilePermissions.S_IRWXU) != 0)
        {
            throw StoreDirectory.Failure(parent.Describe(name), "cannot create the directory");
        }
        Own(parent, name, metadata);
    }

    /// <summary>Sets a finished directory's mode and times (and its owner and xattrs when it is the tree's root, which
    /// the store created).</summary>
    public static void FinishDirectory(StoreDirectory directory, NodeMetadata metadata, bool isRoot)
    {
        if (isRoot)
        {
            Own(directory, null, metadata);
        }
        if (Syscall.fchmod(directory.Fd, (FilePermissions)metadata.Mode) != 0)
        {
            throw StoreDirectory.Failure(directory.Described, "cannot set the directory's mode");
        }
        SetTimes(directory, null, metadata);
    }

    /// <summary>Creates a regular file and fills it from <paramref name="content"/> (exactly <paramref name="length"/>
    /// bytes: fewer is a truncated input), then fsyncs it.</summary>
    public static void CreateFile(StoreDirectory parent, string name, NodeMetadata metadata, Stream content, long length, byte[] buffer)
    {
        using (SafeFileHandle file = parent.CreateFile(name))
        {
            long offset = 0;
            try
            {
                while (offset < length)
                {
                    int want = (int)Math.Min(buffer.Length, length - offset);
                    int read = content.Read(buffer, 0, want);
                    if (read == 0)
                    {
                        throw new LayerStoreException(parent.Describe(name), $"the input ended after {offset} of the file's {length} bytes (truncated)");
                    }
                    RandomAccess.Write(file, buffer.AsSpan(0, read), offset);
                    offset += read;
                }
                RandomAccess.FlushToDisk(file);
            }
            catch (EndOfStreamException)
            {
                throw new LayerStoreException(parent.Describe(name), $"the input ended within the file's {length} bytes (truncated)");
            }
            catch (IOException e) when (e is not LayerStoreException)
            {
                throw new LayerStoreException(parent.Describe(name), $"cannot write the file: {e.Message}", e);
            }
            catch (InvalidDataException e)
            {
                throw new LayerStoreException(parent.Describe(name), $"the input is malformed: {e.Message}", e);
            }
        }
        Own(parent, name, metadata);
        SetMode(parent, name, metadata);
        SetTimes(parent, name, metadata);
    }

    public static void CreateSymbolicLink(StoreDirectory parent, string name, string target, NodeMetadata metadata)
    {
        if (Syscall.symlink(target, parent.At(name)) != 0)
        {
            throw StoreDirectory.Failure(parent.Describe(name), "cannot create the symbolic link");
        }
        Own(parent, name, metadata);
        SetTimes(parent, name, metadata);
    }

    /// <summary>Creates a device node or a FIFO (<paramref name="type"/> S_IFCHR, S_IFBLK or S_IFIFO). Device nodes
    /// (overlay whiteouts among them) need CAP_MKNOD.</summary>
    public static void CreateNode(StoreDirectory parent, string name, FilePermissions type, uint major, uint minor, NodeMetadata metadata)
    {
        ulong device = Interop.LibC.MakeDev(major, minor);
        if (Syscall.mknod(parent.At(name), type | FilePermissions.S_IRUSR | FilePermissions.S_IWUSR, device) != 0)
        {
            Errno errno = Stdlib.GetLastError();
            throw new LayerStoreException(parent.Describe(name), errno == Errno.EPERM && type != FilePermissions.S_IFIFO
                ? "cannot create a device node (an overlay whiteout is one): needs root (CAP_MKNOD)"
                : $"cannot create the node: {Stdlib.strerror(errno)}");
        }
        Own(parent, name, metadata);
        SetMode(parent, name, metadata);
        SetTimes(parent, name, metadata);
    }

    /// <summary>A hard link <paramref name="name"/> to the existing non-directory <paramref name="targetName"/>.</summary>
    public static void CreateHardLink(StoreDirectory targetParent, string targetName, StoreDirectory parent, string name)
    {
        if (Syscall.link(targetParent.At(targetName), parent.At(name)) != 0)
        {
            throw StoreDirectory.Failure(parent.Describe(name), $"cannot link to {targetParent.Describe(targetName)}");
        }
    }

    private static void Own(StoreDirectory parent, string? name, NodeMetadata metadata)
    {
        string path = name is null ? parent.Self : parent.At(name);
        string described = name is null ? parent.Described : parent.Describe(name);
        if (Syscall.lchown(path, metadata.Uid, metadata.Gid) != 0)
        {
            Errno errno = Stdlib.GetLastError();
            throw new LayerStoreException(described, errno == Errno.EPERM
                ? $"cannot give it owner {metadata.Uid}:{metadata.Gid}: needs root (CAP_CHOWN)"
                : $"cannot set the owner: {Stdlib.strerror(errno)}");
        }
        foreach ((string xattr, byte[] value) in metadata.Xattrs)
        {
            if (Syscall.lsetxattr(path, xattr, value, XattrFlags.XATTR_AUTO) != 0)
            {
                Errno errno = Stdlib.GetLastError();
                throw new LayerStoreException(described, $"cannot set extended attribute {xattr}: {Stdlib.strerror(errno)}"
                    + (errno == Errno.EPERM && xattr.StartsWith("trusted.", StringComparison.Ordinal) ? " (trusted.* needs root)" : ""));
            }
        }
    }

    private static void SetMode(StoreDirectory parent, string name, NodeMetadata metadata)
    {
        if (Syscall.chmod(parent.At(name), (FilePermissions)metadata.Mode) != 0)
        {
            throw StoreDirectory.Failure(parent.Describe(name), "cannot set the mode");
        }
    }

    private static void SetTimes(StoreDirectory parent, string? name, NodeMetadata metadata)
    {
        var time = new Timespec { tv_sec = metadata.MTimeSeconds, tv_nsec = metadata.MTimeNanoseconds };
        Timespec[] times = [time, time];
        string path = name is null ? parent.Self : parent.At(name);
        if (Syscall.utimensat(-100, path, times, AtFlags.AT_SYMLINK_NOFOLLOW) != 0)
        {
            throw StoreDirectory.Failure(name is null ? parent.Described : parent.Describe(name), "cannot set the modification time");
        }
    }

    /// <summary>fsyncs every directory of the tree, children before parents, so that every name is durable once the
    /// root's fsync returns (files were fsynced as they were written).</summary>
    public static void SyncTree(StoreDirectory directory, CancellationToken cancellation, int depth = 0)
    {
        if (depth > StoreLayout.MaxDepth)
        {
            throw new LayerStoreException(directory.Described, $"deeper than the {StoreLayout.MaxDepth} levels a layer may have");
        }
        foreach (string name in directory.Names())
        {
            cancellation.ThrowIfCancellationRequested();
            if (directory.TryLstat(name, out Stat stat) && (stat.st_mode & FilePermissions.S_IFMT) == FilePermissions.S_IFDIR)
            {
                using StoreDirectory child = directory.OpenChild(name);
                SyncTree(child, cancellation, depth + 1);
            }
        }
        directory.Sync();
    }
}
