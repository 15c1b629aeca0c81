using BAOverlay.Interop;
using Microsoft.Win32.SafeHandles;
using Mono.Unix.Native;

namespace BAOverlay.FileSystem;

/// <summary>What a kernel serving the overlay (FUSE) asks of it beyond the POSIX calls: the files it may read and write
/// directly (passthrough), and the privileges a write by an unprivileged caller takes away.</summary>
public sealed partial class OverlayFileSystem
{
    private const uint S_ISUID = 0x800;

    /// <summary>
    /// Clears the privileges a write, truncate or change of owner by a caller without CAP_FSETID takes from a regular
    /// file, as Linux's <c>file_remove_privs</c> does: set-user-ID, set-group-ID when group execute is set, and the
    /// <c>security.capability</c> attribute. A FUSE mount that negotiated <c>FUSE_HANDLE_KILLPRIV_V2</c> leaves this
    /// to the file system, and says when (<c>FUSE_WRITE_KILL_SUIDGID</c>, <c>FATTR_KILL_SUIDGID</c>,
    /// <c>FUSE_OPEN_KILL_SUIDGID</c>). The object is copied up (metadata only) when there is something to clear.
    /// </summary>
    /// <param name="ino">The object; nothing is done for anything but a regular file.</param>
    /// <param name="caller">Who writes: set-group-ID without group execute is cleared too when the caller is not in
    /// the file's group (Linux 6.2+'s <c>setattr_should_drop_sgid</c>; <see cref="OverlayCaller.Groups"/> counts).</param>
    /// <returns>True when its mode or attributes changed.</returns>
    public bool DropPrivileges(ulong ino, OverlayCaller caller)
    {
        if (!MayHavePrivileges(ino))
        {
            return false;
        }
        RequireWritable();
        _lock.EnterWriteLock();
        try
        {
            OverlayNode node = NodeOf(ino);
            if (node.Type != S_IFREG || node.Removed)
            {
                return false;
            }
            OverlayStat stat = StatOf(node);
            uint mode = stat.Mode;
            // The caller's groups are looked at only when they decide (a caller's groups may be read on demand).
            bool dropGroup = (mode & S_ISGID) != 0 && ((mode & S_IXGRP) != 0 || !Permissions.InGroup(caller, stat.Gid));
            bool setId = (mode & S_ISUID) != 0 || dropGroup;
            bool capability = false;
            if (!node.HasNoCapabilityXattr)
            {
                using LayerPath top = Top(node);
                capability = ReadXattr(top.Path, CapabilityXattr, node) is not null;
            }
            if (!setId && !capability)
            {
                node.HasNoCapabilityXattr = true;
                node.HasNoPrivileges = true;
                return false;
            }
            CopyUp(node, truncateToZero: false);
            using LayerPath upper = Upper(node);
            if (setId)
            {
                uint kept = mode & 0xFFF & ~S_ISUID & (dropGroup ? ~S_ISGID : 0xFFF);
                if (Syscall.chmod(upper.Path, (FilePermissions)kept) != 0)
                {
                    throw OverlayException.FromLastError("chmod (clearing set-user-ID and set-group-ID)", Describe(node));
                }
            }
            if (capability && Syscall.lremovexattr(upper.Path, CapabilityXattr) != 0 && Stdlib.GetLastError() != Errno.ENODATA)
            {
                throw OverlayException.FromLastError($"removexattr {CapabilityXattr}", Describe(node));
            }
            node.HasNoCapabilityXattr = true;
            node.HasNoPrivileges = true;
            OnChanged(ino, -1, 0);
            return true;
        }
        finally
        {
            _lock.ExitWriteLock();
        }
    }

    /// <summary>
    /// False when <paramref name="ino"/> is known to have nothing <see cref="DropPrivileges"/> would clear (it found
    /// nothing, or cleared it, and neither its mode, owner nor attributes changed since): no I/O, a read lock. A FUSE
    /// adapter asks this before it gathers what <see cref="DropPrivileges"/> needs (the caller's groups), since the
    /// kernel flags every write of a caller without CAP_FSETID.
    /// </summary>
    public bool MayHavePrivileges(ulong ino)
    {
        _lock.EnterReadLock();
        try
        {
            return !_nodes.TryGetValue(ino, out OverlayNode? node) || !node.HasNoPrivileges;
        }
        finally
        {
            _lock.ExitReadLock();
        }
    }

    /// <summary>
    /// The file behind <paramref name="handle"/>, opened again, when a kernel may serve its reads (and writes)
    /// directly (FUSE passthrough); null when the overlay must serve them. A whole regular file of the upper layer
    /// qualifies, opened for reading and writing, unless it is set-user-ID or set-group-ID (it must lose those bits on a
    /// write by another user, which a write served by the kernel with the overlay's privileges would not do). With
    /// <paramref name="includeLowerFiles"/>, so does an untouched regular file of a lower layer, opened read-only, unless
    /// its layer is read through the hot-zone cache: the caller must then pass through only opens for reading, and
    /// refuse changes to the file's bytes while they are open, since the file it reads is not the one a copy-up makes.
    /// A B-CoW file merges blocks of two files: never.
    /// </summary>
    /// <returns>A new handle the caller owns, or null.</returns>
    internal SafeFileHandle? OpenPassthroughFile(OverlayHandle handle, bool includeLowerFiles)
    {
        _lock.EnterReadLock();
        try
        {
            OverlayNode node = handle.Node;
            if (node.Removed || node.Data is not NodeData.Plain || node.Layers.Count == 0)
            {
                return null;
            }
            int layer = node.Layers[0].Layer;
            bool upper = layer == _upper;
            if (upper ? IsReadOnly : !includeLowerFiles || CachesLayer(layer))
            {
                return null;
            }
            using LayerPath top = Top(node);
            if (LayerStack.Lstat(top, out Stat st) != 0 || ((uint)st.st_mode & S_IFMT) != S_IFREG)
            {
                return null;
            }
            uint mode = (uint)st.st_mode;
            if ((upper && (mode & (S_ISUID | S_ISGID)) != 0) || IsBCowFile(top))
            {
                return null;
            }
            OpenFlags access = upper ? OpenFlags.O_RDWR : OpenFlags.O_RDONLY;
            int fd = LibC.openat(top.Directory.Fd, top.Name,
                NativeConvert.FromOpenFlags(access | OpenFlags.O_CLOEXEC | OpenFlags.O_NOFOLLOW | OpenFlags.O_LARGEFILE), 0);
            return fd < 0 ? null : new SafeFileHandle(fd, ownsHandle: true);
        }
        finally
        {
            _lock.ExitReadLock();
        }
    }
}
