using Mono.Unix.Native;

namespace BAOverlay.FileSystem;

/// <summary>Hard links: the source is copied up (a large file as a B-CoW file, so no data moves) and linked in upper;
/// both names then share one upper inode and one overlay inode number.</summary>
public sealed partial class OverlayFileSystem
{
    /// <summary>Makes <paramref name="newName"/> in <paramref name="newParent"/> a hard link to <paramref name="ino"/>.</summary>
    /// <exception cref="OverlayException">EPERM for a directory; EEXIST when the name exists.</exception>
    /// <param name="ino">The existing file.</param>
    /// <param name="newParent">The directory of the new name.</param>
    /// <param name="newName">The new name.</param>
    /// <param name="caller">Checked for write and search permission on the directory; null for a trusted caller.</param>
    public OverlayStat Link(ulong ino, ulong newParent, string newName, OverlayCaller? caller = null)
    {
        RequireWritable();
        LayerPaths.ValidateName(newName);
        if (Whiteouts.IsReservedName(newName))
        {
            throw new OverlayException(Errno.EINVAL, $"{newName}: names starting with {Whiteouts.Prefix} are reserved for whiteouts");
        }
        _lock.EnterWriteLock();
        OverlayNode? changing = null;
        try
        {
            OverlayNode node = NodeOf(ino);
            OverlayNode directory = NodeOf(newParent);
            if (node.IsDirectory)
            {
                throw new OverlayException(Errno.EPERM, $"{Describe(node)}: cannot hard-link a directory");
            }
            CheckDirectoryAccess(directory, caller, Permissions.Write | Permissions.Exec);
            if (LookupLocked(directory, newName) is { } existing)
            {
                throw new OverlayException(Errno.EEXIST, $"{Describe(existing)}: exists");
            }
            changing = directory;
            CopyUp(node, truncateToZero: false);
            EnsureUpperDirectory(directory);
            using LayerDir upperDirectory = _layers.OpenDirectory(_upper, directory.Path);
            using LayerPath source = Upper(node);
            string destination = upperDirectory.At(newName);
            // Linked under a scratch name and renamed into place, which replaces a whiteout atomically.
            string scratch = NewScratchPath();
            if (Syscall.link(source.Path, scratch) != 0)
            {
                throw OverlayException.FromLastError("link", Describe(node));
            }
            if (Syscall.rename(scratch, destination) != 0)
            {
                Syscall.unlink(scratch);
                throw OverlayException.FromLastError("rename link into place", LayerPaths.Join(Describe(directory), newName));
            }
            Syscall.unlink(upperDirectory.At(Whiteouts.Prefix + newName));
            OverlayNode linked = LookupLocked(directory, newName, out Stat top) ?? throw NoEntry(directory, newName);
            ListingChanged(directory, newName, linked);
            OnNameChanged(newParent, newName);
            linked.Lookups++;
            using LayerPath linkedPath = Top(linked);
            return StatOf(linked, linkedPath, top);
        }
        catch when (changing is not null)
        {
            changing.Listing = null; // failed half way: the listing may not say what the layers now hold
            throw;
        }
        finally
        {
            _lock.ExitWriteLock();
        }
    }
}
