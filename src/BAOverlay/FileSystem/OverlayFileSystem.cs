using System.Buffers.Binary;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using BAOverlay.Interop;
using BAOverlay.Storage;
using Microsoft.Win32.SafeHandles;
using Mono.Unix.Native;

namespace BAOverlay.FileSystem;

/// <summary>
/// A merged tree over read-only lower directories and an optional writable upper directory, with overlayfs
/// semantics and block-level copy-up: writing into a large lower file turns its upper entry into a B-CoW file over
/// the lower one instead of copying it whole. Operations are inode-based, as a FUSE low-level server needs them.
/// </summary>
/// <remarks>
/// <para>Thread safety: all members may be called concurrently. Namespace operations (lookup, create, rename, ...)
/// are serialized by a reader/writer lock; reads and writes through <see cref="OverlayHandle"/> take no file system
/// lock.</para>
/// <para>Errors: failures raise <see cref="OverlayException"/> carrying the POSIX error for a FUSE reply. A broken
/// layer tree (an unreadable directory, a corrupt B-CoW file) fails the operations on the paths concerned, with a log
/// line, never the whole file system.</para>
/// <para>Crash safety: every object the overlay creates in the upper directory is built in the work directory and
/// renamed into place, so a crash never leaves a half-made object visible; leftovers in the work directory are
/// removed when the file system is opened.</para>
/// </remarks>
public sealed partial class OverlayFileSystem : IDisposable
{
    /// <summary>The inode number of the root directory (FUSE_ROOT_ID).</summary>
    public const ulong RootIno = 1;

    /// <summary>The options the overlay was opened with.</summary>
    public OverlayOptions Options => _options;

    private const uint S_IFMT = 0xF000;
    private const uint S_IFDIR = 0x4000;
    private const uint S_IFREG = 0x8000;
    private const uint S_IFLNK = 0xA000;
    private const uint S_ISGID = 0x400;
    private const uint S_IXGRP = 0x8;

    private readonly OverlayOptions _options;
    private readonly LayerStack _layers;
    private readonly int _upper;
    private readonly ReaderWriterLockSlim _lock = new(LockRecursionPolicy.SupportsRecursion);
    private readonly Dictionary<ulong, OverlayNode> _nodes = new();
    private readonly OverlayNode _root;
    private readonly Action<string> _log;
    private long _scratchCounter;
    private bool _disposed;

    private OverlayFileSystem(OverlayOptions options, LayerStack layers, int upper)
    {
        _options = options;
        _layers = layers;
        _upper = upper;
        _log = options.Log ?? (line => Console.Error.WriteLine("baoverlay: " + line));
        _root = new OverlayNode(RootIno, null, "", "") { Type = S_IFDIR, Lookups = 1 };
        _nodes[RootIno] = _root;
        ResolveRoot();
    }

    /// <summary>True when there is no upper directory: every change fails with EROFS.</summary>
    public bool IsReadOnly => _upper < 0;

    /// <summary>
    /// Raised after a regular file's data, size or attributes changed through this overlay: a write, truncate,
    /// fallocate or copy into it through an <see cref="OverlayHandle"/>, an open with truncation, or
    /// <see cref="SetAttr"/>. A cache of file contents kept by someone else (the kernel's page cache behind a FUSE
    /// mount) uses it to drop what went stale. Raised on the thread that made the change, possibly with the overlay's
    /// lock held: a handler must be quick, must not throw and must not call back into the overlay.
    /// </summary>
    public event OverlayChangedHandler? Changed;

    /// <summary>Tells the <see cref="Changed"/> handlers; <paramref name="offset"/> -1 for attributes only.</summary>
    internal void OnChanged(ulong ino, long offset, long length) => Changed?.Invoke(ino, offset, length);

    /// <summary>
    /// Raised after an object's attributes changed as a side effect of a change to another one: a directory copied up
    /// because something below it changed (it now merges two layers and counts one link, as under kernel overlayfs).
    /// Unlike the changes <see cref="Changed"/> reports, a kernel that made the change through a FUSE mount does not
    /// know of this one, so a cache of attributes must drop it whoever made the change. Same rules as
    /// <see cref="Changed"/>: quick, never throwing, never calling back into the overlay.
    /// </summary>
    public event Action<ulong>? AttributesChangedAside;

    /// <summary>
    /// Raised after a name in a directory was made, removed or now names another object through this overlay:
    /// <see cref="Create"/>, <see cref="MakeDirectory"/>, <see cref="MakeNode"/>, <see cref="MakeSymbolicLink"/>,
    /// <see cref="Link"/>, <see cref="Unlink"/>, <see cref="RemoveDirectory"/> and both names of a
    /// <see cref="Rename"/>. A cache of names kept by someone else (the kernel's dentries behind a FUSE mount, which
    /// may keep them for long) uses it to drop what went stale. Same rules as <see cref="Changed"/>: quick, never
    /// throwing, never calling back into the overlay; it may be raised with the overlay's lock held.
    /// </summary>
    public event OverlayNameChangedHandler? NameChanged;

    /// <summary>Tells the <see cref="NameChanged"/> handlers.</summary>
    private void OnNameChanged(ulong parent, string name) => NameChanged?.Invoke(parent, name);

    /// <summary>True when someone listens to <see cref="Changed"/> (lets the async write path skip its continuation).</summary>
    internal bool HasChangedHandlers => Changed is not null;

    /// <summary>Opens the overlay: checks the directories and cleans the work directory of a crashed copy-up.</summary>
    /// <exception cref="OverlayException">A directory is missing or not a directory (ENOENT, ENOTDIR), or the work
    /// directory is on another file system than the upper one (EXDEV).</exception>
    public static OverlayFileSystem Open(OverlayOptions options)
    {
        if (options.LowerDirectories.Count == 0)
        {
            throw new OverlayException(Errno.EINVAL, "at least one lower directory is needed");
        }
        ValidateIndexes(options);
        var roots = new List<string>();
        string? scratch = null;
        if (options.UpperDirectory is not null)
        {
            roots.Add(RequireDirectory(options.UpperDirectory, "upper directory", out Stat upperStat));
            if (options.WorkDirectory is null)
            {
                throw new OverlayException(Errno.EINVAL, $"{options.UpperDirectory}: an upper directory needs a work directory");
            }
            string work = RequireDirectory(options.WorkDirectory, "work directory", out Stat workStat);
            if (workStat.st_dev != upperStat.st_dev)
            {
                throw new OverlayException(Errno.EXDEV, $"{work}: the work directory must be on the same file system as the upper directory {roots[0]}");
            }
            scratch = LayerPaths.Join(work, "baoverlay");
            RecoverScratch(scratch);
        }
        foreach (string lower in options.LowerDirectories)
        {
            roots.Add(RequireDirectory(lower, "lower directory", out _));
        }
        LayerStack layers = LayerStack.Open(roots, scratch);
        try
        {
            return new OverlayFileSystem(options, layers, options.UpperDirectory is null ? -1 : 0);
        }
        catch
        {
            layers.Dispose();
            throw;
        }
    }

    // ------------------------------------------------------------------ lookup and attributes

    /// <summary>Looks up <paramref name="name"/> in directory <paramref name="parent"/> and counts one reference to the
    /// result (released by <see cref="Forget"/>).</summary>
    /// <exception cref="OverlayException">ENOENT when there is no such name; ENOTDIR when the parent is not a directory.</exception>
    /// <param name="parent">The directory's inode number.</param>
    /// <param name="name">One name.</param>
    /// <param name="caller">Checked for search permission on the directory; null for a trusted caller.</param>
    public OverlayStat Lookup(ulong parent, string name, OverlayCaller? caller = null) =>
        Lookup(parent, name, caller, mustExist: true)!.Value;

    /// <summary>As <see cref="Lookup(ulong, string, OverlayCaller?)"/>, but null when there is no such name (nothing
    /// counted): a name looked up to be made (what a FUSE kernel does before each create) costs no exception.</summary>
    /// <exception cref="OverlayException">ENOTDIR when the parent is not a directory; EACCES; the errors of reading a layer.</exception>
    /// <param name="parent">The directory's inode number.</param>
    /// <param name="name">One name.</param>
    /// <param name="caller">Checked for search permission on the directory; null for a trusted caller.</param>
    public OverlayStat? TryLookup(ulong parent, string name, OverlayCaller? caller = null) =>
        Lookup(parent, name, caller, mustExist: false);

    private OverlayStat? Lookup(ulong parent, string name, OverlayCaller? caller, bool mustExist)
    {
        LayerPaths.ValidateName(name);
        _lock.EnterWriteLock();
        try
        {
            CheckDirectoryAccess(NodeOf(parent), caller, Permissions.Exec);
            OverlayNode? found = LookupLocked(NodeOf(parent), name, out Stat top);
            if (found is not { } node)
            {
                return mustExist ? throw NoEntry(NodeOf(parent), name) : null;
            }
            node.Lookups++;
            if (IndexedStatOf(node) is { } indexed)
            {
                return indexed;
            }
            using LayerPath path = Top(node);
            return StatOf(node, path, top); // the lookup's lstat: no second one
        }
        finally
        {
            _lock.ExitWriteLock();
        }
    }

    /// <summary>
    /// True when <paramref name="name"/> in directory <paramref name="parent"/> names an object whose lookups are
    /// counted and not all forgotten: whoever holds those references (the kernel behind a FUSE mount) knows the object
    /// already. Cheap: reads no layer.
    /// </summary>
    /// <param name="parent">The directory's inode number.</param>
    /// <param name="name">One name.</param>
    public bool IsReferenced(ulong parent, string name)
    {
        _lock.EnterReadLock();
        try
        {
            return _nodes.TryGetValue(parent, out OverlayNode? directory) && directory.Children.TryGetValue(name, out OverlayNode? node)
                && !node.Removed && node.Lookups > 0;
        }
        finally
        {
            _lock.ExitReadLock();
        }
    }

    /// <summary>Drops <paramref name="count"/> references counted by lookups and creations (FUSE forget).</summary>
    public void Forget(ulong ino, ulong count)
    {
        if (ino == RootIno)
        {
            return;
        }
        _lock.EnterWriteLock();
        try
        {
            if (_nodes.TryGetValue(ino, out OverlayNode? node))
            {
                node.Lookups -= (long)Math.Min(count, (ulong)node.Lookups);
                if (node.Lookups == 0 && node.OpenHandles == 0 && node.Data is null)
                {
                    _nodes.Remove(ino);
                    if (node.Parent is { } p && p.Children.TryGetValue(node.Name, out OverlayNode? mapped) && mapped == node)
                    {
                        p.Children.Remove(node.Name);
                    }
                }
            }
        }
        finally
        {
            _lock.ExitWriteLock();
        }
    }

    /// <summary>The attributes of <paramref name="ino"/>.</summary>
    public OverlayStat GetAttr(ulong ino)
    {
        _lock.EnterReadLock();
        try
        {
            return StatOf(NodeOf(ino));
        }
        finally
        {
            _lock.ExitReadLock();
        }
    }

    /// <summary>
    /// Changes attributes: mode, owner, times and size. On a lower object, mode, owner and time changes copy up the
    /// metadata only (a large file's data stays in lower: its upper entry is a B-CoW file with no block written).
    /// </summary>
    public OverlayStat SetAttr(ulong ino, OverlaySetAttr change, OverlayCaller caller)
    {
        RequireWritable();
        _lock.EnterWriteLock();
        try
        {
            OverlayNode node = NodeOf(ino);
            if (node.Removed)
            {
                return SetAttrOfRemoved(node, change, caller);
            }
            Permissions.CheckSetAttr(StatOf(node), change, caller, Describe(node));
            if (change.Size is long size)
            {
                if (node.IsDirectory)
                {
                    throw new OverlayException(Errno.EISDIR, $"{Describe(node)}: is a directory");
                }
                CopyUp(node, truncateToZero: false); // not emptied yet: if the truncate below fails, nothing visible changed
                TruncateLocked(node, size);
            }
            else
            {
                CopyUp(node, truncateToZero: false);
            }
            using LayerPath upper = Upper(node);
            string path = upper.Path;
            if (change.Mode is not null || change.Uid is not null || change.Gid is not null)
            {
                node.ForgetPrivileges();
            }
            if (change.Mode is uint mode && node.Type != S_IFLNK && Syscall.chmod(path, (FilePermissions)(mode & 0xFFF)) != 0)
            {
                throw OverlayException.FromLastError("chmod", Describe(node));
            }
            if ((change.Uid is not null || change.Gid is not null) &&
                Syscall.lchown(path, change.Uid ?? unchecked((uint)-1), change.Gid ?? unchecked((uint)-1)) != 0)
            {
                throw OverlayException.FromLastError("chown", Describe(node));
            }
            if (change.ATimeNs is not null || change.MTimeNs is not null)
            {
                var times = new Timespec[] { ToTimespec(change.ATimeNs), ToTimespec(change.MTimeNs) };
                if (Syscall.utimensat(LibC.AT_FDCWD, path, times, AtFlags.AT_SYMLINK_NOFOLLOW) != 0)
                {
                    throw OverlayException.FromLastError("utimensat", Describe(node));
                }
            }
            OnChanged(ino, change.Size is long newSize ? newSize : -1, 0);
            return StatOf(node);
        }
        finally
        {
            _lock.ExitWriteLock();
        }
    }

    /// <summary>
    /// SetAttr of an object whose last name is gone (unlinked, or replaced by a rename) while the kernel still holds it:
    /// through an open descriptor (ftruncate, fchmod, futimens), or when, with the write-back cache, the kernel writes
    /// back the times it kept for the file as it drops the inode. A size change goes to the open data; mode, owner and
    /// times only to the attributes remembered for it, since nothing but its open descriptors can see them any more.
    /// </summary>
    /// <exception cref="OverlayException">ENOENT when nothing is remembered of it (it was never open); EBADF for a size
    /// change without data open for writing.</exception>
    private OverlayStat SetAttrOfRemoved(OverlayNode node, OverlaySetAttr change, OverlayCaller caller)
    {
        if (node.OpenStat is not { } remembered)
        {
            throw new OverlayException(Errno.ENOENT, $"{Describe(node)}: removed");
        }
        OverlayStat stat = remembered.Value;
        Permissions.CheckSetAttr(stat, change, caller, Describe(node));
        if (change.Size is long size)
        {
            if (node.Data is not { CanWrite: true } data)
            {
                throw new OverlayException(Errno.EBADF, $"{Describe(node)}: removed, and not open for writing");
            }
            data.SetLength(size);
            OnChanged(node.Ino, size, 0);
        }
        long now = DateTime.UtcNow.Ticks - DateTime.UnixEpoch.Ticks;
        long Time(long? requested, long current) => requested switch
        {
            null => current,
            OverlaySetAttr.Now => now * 100,
            long value => value,
        };
        stat = stat with
        {
            Mode = change.Mode is uint mode ? (stat.Mode & 0xF000) | (mode & 0xFFF) : stat.Mode,
            Uid = change.Uid ?? stat.Uid,
            Gid = change.Gid ?? stat.Gid,
            ATimeNs = Time(change.ATimeNs, stat.ATimeNs),
            MTimeNs = Time(change.MTimeNs, stat.MTimeNs),
            CTimeNs = now * 100,
            Size = node.Data?.Length ?? stat.Size,
            Nlink = 0,
        };
        node.OpenStat = new StrongBox<OverlayStat>(stat);
        return stat;
    }

    /// <summary>The target of a symbolic link (never followed by the overlay).</summary>
    public string ReadLink(ulong ino)
    {
        _lock.EnterReadLock();
        try
        {
            OverlayNode node = NodeOf(ino);
            if (node.Type != S_IFLNK)
            {
                throw new OverlayException(Errno.EINVAL, $"{Describe(node)}: not a symbolic link");
            }
            if (IndexedLinkTarget(node) is { } target)
            {
                return target;
            }
            using LayerPath path = Top(node);
            return Mono.Unix.UnixPath.ReadLink(path.Path);
        }
        finally
        {
            _lock.ExitReadLock();
        }
    }

    /// <summary>File system statistics of the upper directory (of the top lower one when read-only).</summary>
    public OverlayStatFs StatFs()
    {
        if (Syscall.statvfs(_layers.Root(0).Self, out Statvfs s) != 0)
        {
            throw OverlayException.FromLastError("statvfs", _layers.NameOf(0));
        }
        return new OverlayStatFs(s.f_bsize, s.f_frsize, s.f_blocks, s.f_bfree, s.f_bavail, s.f_files, s.f_ffree, s.f_favail,
            s.f_fsid, (ulong)s.f_flag, s.f_namemax);
    }

    // ------------------------------------------------------------------ directories

    /// <summary>The merged entries of directory <paramref name="ino"/>, taken now: offsets stay valid while the caller
    /// keeps the list (FUSE opendir/readdir/releasedir), which later changes leave as it is. <c>.</c> and <c>..</c>
    /// come first.</summary>
    /// <param name="ino">The directory.</param>
    /// <param name="caller">Checked for read permission; null for a trusted caller.</param>
    public IReadOnlyList<OverlayDirEntry> ReadDirectory(ulong ino, OverlayCaller? caller = null)
    {
        _lock.EnterReadLock();
        try
        {
            OverlayNode node = NodeOf(ino);
            if (!node.IsDirectory)
            {
                throw new OverlayException(Errno.ENOTDIR, $"{Describe(node)}: not a directory");
            }
            CheckAccess(node, caller, Permissions.Read);
            return ListingOf(node).Entries(node.Ino, node.Parent?.Ino ?? RootIno);
        }
        finally
        {
            _lock.ExitReadLock();
        }
    }

    /// <summary>Makes a directory (mode masked by the caller's umask, owned by the caller).</summary>
    public OverlayStat MakeDirectory(ulong parent, string name, uint mode, OverlayCaller caller) =>
        CreateObject(parent, name, caller, scratch =>
        {
            if (Syscall.mkdir(scratch, (FilePermissions)0x1C0) != 0)
            {
                throw OverlayException.FromLastError("mkdir", scratch);
            }
        }, mode & ~caller.Umask & 0xFFF, isDirectory: true);

    /// <summary>Makes a symbolic link. The target is stored as given and never resolved by the overlay.</summary>
    public OverlayStat MakeSymbolicLink(ulong parent, string name, string target, OverlayCaller caller) =>
        CreateObject(parent, name, caller, scratch =>
        {
            if (Syscall.symlink(target, scratch) != 0)
            {
                throw OverlayException.FromLastError("symlink", scratch);
            }
        }, mode: null, isDirectory: false);

    /// <summary>Makes a fifo, socket or (as root) device node.</summary>
    public OverlayStat MakeNode(ulong parent, string name, uint mode, ulong rdev, OverlayCaller caller) =>
        (mode & S_IFMT) is 0x2000 or 0x6000 && caller.Uid != 0 && !caller.AccessChecked
            ? throw new OverlayException(Errno.EPERM, $"{name}: only root may make device nodes")
            : CreateObject(parent, name, caller, scratch =>
        {
            if (Syscall.mknod(scratch, (FilePermissions)(0x180 | (mode & S_IFMT)), rdev) != 0)
            {
                throw OverlayException.FromLastError("mknod", scratch);
            }
        }, mode & ~caller.Umask & 0xFFF, isDirectory: false);

    /// <summary>Creates and opens a regular file (FUSE create).</summary>
    public (OverlayStat Stat, OverlayHandle Handle) Create(ulong parent, string name, uint mode, OverlayCaller caller)
    {
        _lock.EnterWriteLock();
        try
        {
            uint requested = mode & ~caller.Umask & 0xFFF;
            // Readable and writable by its owner until opened: without privilege, a read-only mode would make the
            // reopen below fail, where open(O_CREAT) with such a mode returns a writable file.
            SafeFileHandle? created = null;
            OverlayStat stat;
            try
            {
                stat = CreateObject(parent, name, caller, scratch =>
                {
                    int fd = Syscall.open(scratch, OpenFlags.O_CREAT | OpenFlags.O_EXCL | OpenFlags.O_WRONLY, (FilePermissions)0x180);
                    if (fd < 0)
                    {
                        throw OverlayException.FromLastError("create", scratch);
                    }
                    Syscall.close(fd);
                }, requested, isDirectory: false, untilOpened: 0x180,
                inPlace: (directory, described, uid, gid, finalMode) => (created = CreateFileInPlace(directory, name, described, uid, gid, finalMode)) is not null);
            }
            catch
            {
                created?.Dispose();
                throw;
            }
            OverlayNode node = NodeOf(stat.Ino);
            if (created is not null)
            {
                // Made in place and still open for reading and writing: that descriptor serves the open.
                if (node.Data is null)
                {
                    node.Data = new NodeData.Plain(new FileStorage(created, Describe(node), canWrite: true, ownsHandle: true));
                }
                else
                {
                    created.Dispose();
                }
            }
            OverlayHandle handle = OpenLocked(node, write: true, truncate: false);
            if (created is null && (requested & 0x180) != 0x180)
            {
                // The mode CreateObject gave, without the owner bits added until now (it changes only S_ISGID).
                uint finalMode = (stat.Mode & 0xFFF & ~0x180u) | (requested & 0x180);
                using LayerPath upper = Upper(node);
                if (Syscall.chmod(upper.Path, (FilePermissions)finalMode) != 0)
                {
                    OverlayException e = OverlayException.FromLastError("chmod", Describe(node));
                    handle.Dispose();
                    throw e;
                }
                stat = StatOf(node);
            }
            return (stat, handle);
        }
        finally
        {
            _lock.ExitWriteLock();
        }
    }

    /// <summary>Removes a non-directory; a lower one is hidden by a whiteout.</summary>
    /// <param name="parent">The directory.</param>
    /// <param name="name">The name to remove.</param>
    /// <param name="caller">Checked for write and search permission on the directory and the sticky rule; null for a trusted caller.</param>
    public void Unlink(ulong parent, string name, OverlayCaller? caller = null) => RemoveEntry(parent, name, caller, directory: false);

    /// <summary>Removes an empty directory (one holding only whiteouts counts as empty).</summary>
    /// <param name="parent">The directory holding it.</param>
    /// <param name="name">The directory to remove.</param>
    /// <param name="caller">Checked as for <see cref="Unlink"/>; null for a trusted caller.</param>
    public void RemoveDirectory(ulong parent, string name, OverlayCaller? caller = null) => RemoveEntry(parent, name, caller, directory: true);

    private void RemoveEntry(ulong parent, string name, OverlayCaller? caller, bool directory)
    {
        RequireWritable();
        LayerPaths.ValidateName(name);
        _lock.EnterWriteLock();
        try
        {
            OverlayNode container = NodeOf(parent);
            OverlayNode node = LookupLocked(container, name) ?? throw NoEntry(container, name);
            CheckRemove(container, node, caller);
            if (node.IsDirectory != directory)
            {
                throw directory
                    ? new OverlayException(Errno.ENOTDIR, $"{Describe(node)}: not a directory")
                    : new OverlayException(Errno.EISDIR, $"{Describe(node)}: is a directory");
            }
            if (directory && !IsEmptyDirectory(node))
            {
                throw new OverlayException(Errno.ENOTEMPTY, $"{Describe(node)}: directory not empty");
            }
            try
            {
                RemoveName(container, name, node); // clears the whiteouts an upper directory still holds
            }
            catch
            {
                _layers.ForgetDirectories(_upper); // failed half way: a directory may have been swapped out
                container.Listing = null; // failed half way: the listing may not say what the layers now hold
                throw;
            }
            OnNameChanged(parent, name);
        }
        finally
        {
            _lock.ExitWriteLock();
        }
    }

    /// <summary>
    /// Renames <paramref name="name"/> in <paramref name="parent"/> to <paramref name="newName"/> in
    /// <paramref name="newParent"/>. <see cref="OverlayRenameFlags.NoReplace"/> fails with EEXIST when the target
    /// exists; <see cref="OverlayRenameFlags.Exchange"/> swaps two existing objects. A lower file is copied up by
    /// metadata only (a large file's data stays in lower). A directory that has lower parts is recorded with a
    /// redirect to them, so it keeps its content under the new name, across remounts (overlayfs and fuse-overlayfs
    /// return EXDEV here by default).
    /// </summary>
    /// <param name="parent">The source directory.</param>
    /// <param name="name">The source name.</param>
    /// <param name="newParent">The target directory.</param>
    /// <param name="newName">The target name.</param>
    /// <param name="flags">renameat2 flags.</param>
    /// <param name="caller">Checked for write and search permission on both directories and the sticky rule; null for a trusted caller.</param>
    public void Rename(ulong parent, string name, ulong newParent, string newName, OverlayRenameFlags flags = OverlayRenameFlags.None, OverlayCaller? caller = null)
    {
        RequireWritable();
        LayerPaths.ValidateName(name);
        LayerPaths.ValidateName(newName);
        if (Whiteouts.IsReservedName(newName))
        {
            throw new OverlayException(Errno.EINVAL, $"{newName}: names starting with {Whiteouts.Prefix} are reserved for whiteouts");
        }
        bool exchange = (flags & OverlayRenameFlags.Exchange) != 0;
        if (exchange && (flags & OverlayRenameFlags.NoReplace) != 0)
        {
            throw new OverlayException(Errno.EINVAL, "RENAME_EXCHANGE and RENAME_NOREPLACE exclude each other");
        }
        _lock.EnterWriteLock();
        OverlayNode[]? changing = null;
        try
        {
            OverlayNode from = NodeOf(parent);
            OverlayNode to = NodeOf(newParent);
            OverlayNode node = LookupLocked(from, name) ?? throw NoEntry(from, name);
            OverlayNode? target = LookupLocked(to, newName);
            if (target == node)
            {
                return;
            }
            if (target is not null && (flags & OverlayRenameFlags.NoReplace) != 0)
            {
                throw new OverlayException(Errno.EEXIST, $"{Describe(target)}: exists");
            }
            if (exchange && target is null)
            {
                throw NoEntry(to, newName);
            }
            CheckRemove(from, node, caller);
            if (target is not null)
            {
                CheckRemove(to, target, caller);
            }
            else
            {
                CheckDirectoryAccess(to, caller, Permissions.Write | Permissions.Exec);
            }
            if (node.IsDirectory && from != to)
            {
                CheckAccess(node, caller, Permissions.Write); // its ".." changes
            }
            for (OverlayNode? up = from; target is not null && !exchange && up is not null; up = up.Parent)
            {
                if (up == target)
                {
                    // As rename(2): a target that is an ancestor of the source is never empty.
                    throw new OverlayException(Errno.ENOTEMPTY, $"{Describe(target)}: directory not empty (an ancestor of {Describe(node)})");
                }
            }
            RefuseMoveIntoItself(node, to);
            if (exchange)
            {
                RefuseMoveIntoItself(target!, from);
            }
            else if (target is not null)
            {
                if (node.IsDirectory && !target.IsDirectory)
                {
                    throw new OverlayException(Errno.ENOTDIR, $"{Describe(target)}: not a directory");
                }
                if (!node.IsDirectory && target.IsDirectory)
                {
                    throw new OverlayException(Errno.EISDIR, $"{Describe(target)}: is a directory");
                }
                if (target.IsDirectory && !IsEmptyDirectory(target))
                {
                    throw new OverlayException(Errno.ENOTEMPTY, $"{Describe(target)}: directory not empty");
                }
            }
            changing = [from, to, node];
            EnsureUpperDirectory(from);
            EnsureUpperDirectory(to);
            PrepareToMove(node, to, newName);
            if (exchange)
            {
                PrepareToMove(target!, from, name);
            }
            using LayerDir fromDirectory = _layers.OpenDirectory(_upper, from.Path);
            using LayerDir toDirectory = _layers.OpenDirectory(_upper, to.Path);
            string source = fromDirectory.At(name);
            string destination = toDirectory.At(newName);
            if (!exchange && target is { IsDirectory: true } && target.Layers[0].Layer == _upper)
            {
                // Swap in an empty opaque directory rather than clearing the target's whiteouts in place: a crash in
                // between would bring back the lower entries they hide.
                string empty = NewScratchPath();
                if (Syscall.mkdir(empty, FilePermissions.S_IRWXU) != 0)
                {
                    throw OverlayException.FromLastError("mkdir", empty);
                }
                Whiteouts.MakeOpaque(empty);
                if (LibC.renameat2(LibC.AT_FDCWD, empty, LibC.AT_FDCWD, destination, LibC.RENAME_EXCHANGE) != 0)
                {
                    Errno errno = ToErrno(Marshal.GetLastPInvokeError());
                    RemoveTree(empty);
                    throw new OverlayException(errno, $"{Describe(target)}: cannot replace by an empty directory");
                }
                RemoveTree(empty);
            }
            bool hideSource = !exchange && VisibleBelowUpper(from, name);
            // A directory cannot replace a whiteout device: swap them instead, which leaves the whiteout at the old
            // name, just what is needed when the old name must stay hidden.
            bool overWhiteout = !exchange && node.IsDirectory && Syscall.lstat(destination, out Stat destinationStat) == 0 && Whiteouts.IsWhiteoutStat(destinationStat);
            uint renameFlags = exchange || overWhiteout ? LibC.RENAME_EXCHANGE : hideSource && IsPrivileged ? LibC.RENAME_WHITEOUT : 0;
            if (LibC.renameat2(LibC.AT_FDCWD, source, LibC.AT_FDCWD, destination, renameFlags) != 0)
            {
                throw new OverlayException(ToErrno(Marshal.GetLastPInvokeError()), $"{Describe(node)}: rename to /{LayerPaths.Child(to.Path, newName)} failed");
            }
            if (overWhiteout)
            {
                if (!hideSource)
                {
                    Syscall.unlink(source);
                }
                renameFlags = LibC.RENAME_WHITEOUT;
            }
            if (!exchange)
            {
                Syscall.unlink(toDirectory.At(Whiteouts.Prefix + newName));
                if (hideSource && renameFlags == 0)
                {
                    Whiteouts.Create(fromDirectory.Self, name);
                }
            }
            // Directories moved or replaced: handles kept by path may now name other ones.
            _layers.ForgetDirectories(_upper);
            from.Children.Remove(name);
            to.Children.Remove(newName);
            if (target is not null && !exchange)
            {
                NameGone(target, to, newName);
            }
            Refresh(to, newName);
            Refresh(from, name);
            OnNameChanged(parent, name);
            OnNameChanged(newParent, newName);
        }
        catch when (changing is not null)
        {
            _layers.ForgetDirectories(_upper); // failed half way: a directory may have moved
            foreach (OverlayNode directory in changing)
            {
                directory.Listing = null; // failed half way: the listing may not say what the layers now hold
            }
            throw;
        }
        finally
        {
            _lock.ExitWriteLock();
        }
    }

    private static void RefuseMoveIntoItself(OverlayNode node, OverlayNode destination)
    {
        for (OverlayNode? up = destination; up is not null; up = up.Parent)
        {
            if (up == node)
            {
                throw new OverlayException(Errno.EINVAL, $"{Describe(node)}: cannot move a directory into itself");
            }
        }
    }

    /// <summary>
    /// Gets an object ready to live under another name: copied up (by metadata), and, for a directory, either given a
    /// redirect to its lower parts (so they follow it) or, if it has none, made opaque where a lower directory exists
    /// under the new name (so that one does not merge in).
    /// </summary>
    private void PrepareToMove(OverlayNode node, OverlayNode to, string newName)
    {
        string? lowerPath = node.IsDirectory ? node.Layers.FirstOrDefault(l => l.Layer != _upper).Path : null;
        bool hasLowerParts = node.IsDirectory && node.Layers.Any(l => l.Layer != _upper);
        CopyUp(node, truncateToZero: false);
        if (!node.IsDirectory)
        {
            return;
        }
        using LayerPath upper = Upper(node);
        if (hasLowerParts)
        {
            Redirects.Write(upper.Path, lowerPath!, IsPrivileged);
        }
        else if (VisibleBelowUpper(to, newName))
        {
            Whiteouts.MakeOpaque(upper.Path);
        }
    }

    /// <summary>Re-resolves a name and every cached object below it (their layer paths depend on their parents'), and
    /// records the result in the kept listings.</summary>
    private void Refresh(OverlayNode directory, string name)
    {
        OverlayNode? node = LookupLocked(directory, name);
        ListingChanged(directory, name, node);
        if (node is { IsDirectory: true })
        {
            foreach (string child in node.Children.Keys.ToList())
            {
                node.Children.Remove(child);
                Refresh(node, child);
            }
        }
    }

    // ------------------------------------------------------------------ files

    /// <summary>
    /// Opens a regular file. Opening for writing copies a lower file up: whole below
    /// <see cref="OverlayOptions.BlockCopyUpThreshold"/>, as a B-CoW file over the lower one above it.
    /// </summary>
    /// <param name="ino">The file.</param>
    /// <param name="write">Open for writing.</param>
    /// <param name="truncate">Truncate to zero (O_TRUNC).</param>
    /// <param name="caller">Checked for read or write permission; null for a trusted caller.</param>
    public OverlayHandle Open(ulong ino, bool write, bool truncate, OverlayCaller? caller = null)
    {
        if (write || truncate)
        {
            RequireWritable();
        }
        _lock.EnterWriteLock();
        try
        {
            CheckAccess(NodeOf(ino), caller, write || truncate ? Permissions.Write : Permissions.Read);
            return OpenLocked(NodeOf(ino), write, truncate);
        }
        finally
        {
            _lock.ExitWriteLock();
        }
    }

    internal NodeData DataOf(OverlayHandle handle) =>
        handle.Node.Data ?? throw new OverlayException(Errno.EBADF, $"{Describe(handle.Node)}: not open");

    internal NodeData WritableDataOf(OverlayHandle handle)
    {
        if (!handle.CanWrite)
        {
            throw new OverlayException(Errno.EBADF, $"{Describe(handle.Node)}: opened read-only");
        }
        if (_upperFailure is { } failure)
        {
            throw new OverlayException(Errno.EROFS, failure);
        }
        return DataOf(handle);
    }

    internal void Release(OverlayHandle handle)
    {
        (OverlayNode Node, NodeData Data) pinned;
        _lock.EnterWriteLock();
        try
        {
            OverlayNode node = handle.Node;
            if (--node.OpenHandles > 0)
            {
                return;
            }
            if (_options.CloseDelay > TimeSpan.Zero && node.Data is NodeData.BCow { CanWrite: true } && !_disposed)
            {
                // Kept open (OverlayOptions.CloseDelay): the release costs no commit; the read-only views kept for
                // handles opened before a copy-up have no commit to make and close now.
                node.CloseDue = DateTime.UtcNow + _options.CloseDelay;
                _idle.Add(node);
                _idleTimer ??= new Timer(static state => ((OverlayFileSystem)state!).CloseIdleFiles(dueOnly: true), this, Timeout.Infinite, Timeout.Infinite);
                TimeSpan period = TimeSpan.FromMilliseconds(Math.Max(50, _options.CloseDelay.TotalMilliseconds / 2));
                _idleTimer.Change(period, period);
                NodeData[] views = [.. node.Retired];
                node.Retired.Clear();
                DisposeAll(node, views);
                if (_idle.Count > MaxIdleFiles)
                {
                    CloseLocked(_idle.MinBy(n => n.CloseDue)!); // too many kept: the oldest goes now
                }
                return;
            }
            if (node.Data is not NodeData.BCow { CanWrite: true } written || _disposed)
            {
                CloseLocked(node);
                return;
            }
            // A written B-CoW file: its commit is made durable outside the lock (below), pinned meanwhile.
            node.OpenHandles++;
            pinned = (node, written);
        }
        finally
        {
            _lock.ExitWriteLock();
        }
        Exception? failure = FlushOutsideLock(pinned.Data);
        _lock.EnterWriteLock();
        try
        {
            UnpinAndClose(pinned.Node, failure);
        }
        finally
        {
            _lock.ExitWriteLock();
        }
    }

    /// <summary>
    /// The costly part of closing a written B-CoW file, making its data and map durable (writes and fsyncs), done
    /// without the overlay's lock, which every other operation needs, while the node is pinned (a handle count of its
    /// own, so that nothing closes it meanwhile; an open may take it up again and write, as on any open file). The
    /// close under the lock then commits what is left: the header's clean mark.
    /// </summary>
    /// <returns>The failure, said and thrown by <see cref="UnpinAndClose"/> (the file is then faulted, and closing it
    /// commits nothing).</returns>
    private static Exception? FlushOutsideLock(NodeData? data)
    {
        try
        {
            data?.Flush();
            return null;
        }
        catch (Exception e) when (e is IOException or BCowFormatException or OverlayException or UnauthorizedAccessException)
        {
            return e;
        }
        catch (ObjectDisposedException)
        {
            return null; // the overlay was disposed meanwhile, which closed it
        }
    }

    /// <summary>Under the write lock: drops the pin of <see cref="FlushOutsideLock"/> and closes the node when nothing
    /// else holds it open. A failure of the flush is logged, and thrown as the close's own would be (an errno) when
    /// this closes the file; an open that took the file up meanwhile meets it in its own writes and close.</summary>
    /// <exception cref="OverlayException">The flush or the close failed.</exception>
    private void UnpinAndClose(OverlayNode node, Exception? flushFailure)
    {
        if (flushFailure is not null)
        {
            _log($"{Describe(node)}: closing failed: {flushFailure.Message}");
        }
        if (--node.OpenHandles > 0 || _disposed)
        {
            return; // open again: its last release closes it
        }
        CloseLocked(node);
        if (flushFailure is not null)
        {
            throw new OverlayException(OverlayException.ErrnoOf(flushFailure, out _), $"{Describe(node)}: closing failed: {flushFailure.Message}");
        }
    }

    /// <summary>The most B-CoW files kept open after their last release (each holds a descriptor and its map).</summary>
    private const int MaxIdleFiles = 256;

    private readonly HashSet<OverlayNode> _idle = [];
    private Timer? _idleTimer;

    /// <summary>
    /// Commits durably and closes every B-CoW file kept open after its last release
    /// (<see cref="OverlayOptions.CloseDelay"/>): what was written through them is durable when this returns. A
    /// failure is logged, and the first one thrown once every file has been tried.
    /// </summary>
    /// <exception cref="OverlayException">A file could not be committed (ENOSPC, EIO).</exception>
    public void CloseIdleFiles() => CloseIdleFiles(dueOnly: false);

    private void CloseIdleFiles(bool dueOnly)
    {
        // Taken off the idle list and pinned, made durable outside the lock, closed under it (FlushOutsideLock).
        List<(OverlayNode Node, NodeData? Data)> closing;
        _lock.EnterWriteLock();
        try
        {
            DateTime now = DateTime.UtcNow;
            closing = [.. _idle.Where(n => !dueOnly || n.CloseDue <= now).Select(n => (n, n.Data))];
            foreach ((OverlayNode node, _) in closing)
            {
                _idle.Remove(node);
                node.CloseDue = null;
                node.OpenHandles++;
            }
        }
        finally
        {
            _lock.ExitWriteLock();
        }
        Exception?[] flushed = [.. closing.Select(c => FlushOutsideLock(c.Data))];
        OverlayException? failure = null;
        _lock.EnterWriteLock();
        try
        {
            for (int i = 0; i < closing.Count; i++)
            {
                try
                {
                    UnpinAndClose(closing[i].Node, flushed[i]);
                }
                catch (OverlayException e)
                {
                    failure ??= e; // logged
                }
            }
            if (_idle.Count == 0)
            {
                _idleTimer?.Change(Timeout.Infinite, Timeout.Infinite);
            }
        }
        finally
        {
            _lock.ExitWriteLock();
        }
        if (failure is not null && !dueOnly)
        {
            throw failure;
        }
    }

    /// <summary>Closes the node's data (a B-CoW file commits durably), under the write lock.</summary>
    private void CloseLocked(OverlayNode node)
    {
        _idle.Remove(node);
        node.CloseDue = null;
        // The node lets go of its data before closing it: when the close fails (a B-CoW commit meeting ENOSPC),
        // the next open must start again from what is on disk, not find a disposed file.
        NodeData? data = node.Data;
        node.Data = null;
        node.ClosedBCowSize = null; // read again from the header just committed
        NodeData[] retired = [.. node.Retired];
        node.Retired.Clear();
        if (node.Lookups == 0 && node.OpenHandles == 0 && node.Ino != RootIno)
        {
            _nodes.Remove(node.Ino);
        }
        DisposeAll(node, data is null ? retired : [data, .. retired]);
    }

    private void DisposeAll(OverlayNode node, NodeData[] closing)
    {
        Exception? failure = null;
        foreach (NodeData one in closing)
        {
            try
            {
                one.Dispose();
            }
            catch (Exception e) when (e is IOException or BCowFormatException)
            {
                failure ??= e;
            }
        }
        if (failure is not null)
        {
            _log($"{Describe(node)}: closing failed: {failure.Message}");
            throw new OverlayException(OverlayException.ErrnoOf(failure, out _), $"{Describe(node)}: closing failed: {failure.Message}");
        }
    }

    /// <summary>Closes every open file's data (B-CoW files commit). Handles still open stop working.</summary>
    public void Dispose()
    {
        _lock.EnterWriteLock();
        try
        {
            if (_disposed)
            {
                return;
            }
            _disposed = true;
            _idleTimer?.Dispose();
            _idle.Clear();
            _layers.Dispose();
            foreach (OverlayNode node in _nodes.Values)
            {
                node.Data?.Dispose();
                node.Data = null;
                foreach (NodeData old in node.Retired)
                {
                    old.Dispose();
                }
                node.Retired.Clear();
            }
        }
        finally
        {
            _lock.ExitWriteLock();
        }
    }

    // ------------------------------------------------------------------ the machinery

    private bool IsPrivileged => Syscall.geteuid() == 0;

    private void CheckAccess(OverlayNode node, OverlayCaller? caller, int mask)
    {
        if (caller is { } c)
        {
            Permissions.Check(StatOf(node), c, mask, Describe(node));
        }
    }

    /// <summary>Search or change access to a directory: ENOTDIR comes first, as in the kernel's path walk.</summary>
    private void CheckDirectoryAccess(OverlayNode directory, OverlayCaller? caller, int mask)
    {
        if (!directory.IsDirectory)
        {
            throw new OverlayException(Errno.ENOTDIR, $"{Describe(directory)}: not a directory");
        }
        CheckAccess(directory, caller, mask);
    }

    private void CheckRemove(OverlayNode directory, OverlayNode entry, OverlayCaller? caller)
    {
        if (caller is { } c)
        {
            OverlayStat directoryStat = StatOf(directory);
            Permissions.Check(directoryStat, c, Permissions.Write | Permissions.Exec, Describe(directory));
            Permissions.CheckSticky(directoryStat, StatOf(entry), c, Describe(entry));
        }
    }

    private static string RequireDirectory(string path, string what, out Stat stat)
    {
        string full = Path.GetFullPath(path);
        if (Syscall.stat(full, out stat) != 0)
        {
            throw OverlayException.FromLastError($"cannot use as {what}", full);
        }
        if ((stat.st_mode & FilePermissions.S_IFMT) != FilePermissions.S_IFDIR)
        {
            throw new OverlayException(Errno.ENOTDIR, $"{full}: the {what} is not a directory");
        }
        return full;
    }

    private static void RecoverScratch(string scratch)
    {
        // Whatever is here is a copy-up or creation that a crash interrupted before its rename: never visible, so
        // it can go.
        if (Directory.Exists(scratch))
        {
            foreach (string entry in Directory.EnumerateFileSystemEntries(scratch))
            {
                if (Syscall.lstat(entry, out Stat st) == 0 && (st.st_mode & FilePermissions.S_IFMT) == FilePermissions.S_IFDIR)
                {
                    Directory.Delete(entry, recursive: true);
                }
                else
                {
                    File.Delete(entry);
                }
            }
        }
        else
        {
            Directory.CreateDirectory(scratch);
        }
    }

    private void ResolveRoot()
    {
        for (int layer = 0; layer < _layers.Count; layer++)
        {
            _root.Layers.Add((layer, ""));
            if (Whiteouts.IsOpaque(_layers.Root(layer).Self))
            {
                break;
            }
        }
    }

    private OverlayNode NodeOf(ulong ino)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        return _nodes.TryGetValue(ino, out OverlayNode? node)
            ? node
            : throw new OverlayException(Errno.ESTALE, $"inode {ino} is not known (forgotten or never looked up)");
    }

    /// <summary>Resolves <paramref name="name"/> in <paramref name="directory"/> through the layers, or null.</summary>
    private OverlayNode? LookupLocked(OverlayNode directory, string name) => LookupLocked(directory, name, out _);

    /// <summary>Resolves <paramref name="name"/> in <paramref name="directory"/> through the layers, or null;
    /// <paramref name="top"/> is the lstat of its top layer's object.</summary>
    private OverlayNode? LookupLocked(OverlayNode directory, string name, out Stat top)
    {
        if (!directory.IsDirectory)
        {
            throw new OverlayException(Errno.ENOTDIR, $"{Describe(directory)}: not a directory");
        }
        top = default;
        if (Whiteouts.IsReservedName(name))
        {
            return null;
        }
        List<(int Layer, string Path)> layers = MergeLayers(directory.Layers, name, out top);
        uint type = (uint)top.st_mode & S_IFMT;
        if (layers.Count == 0)
        {
            return null;
        }
        bool inUpper = layers[0].Layer == _upper;
        bool? isBCow = null;
        ulong ino;
        if (inUpper && directory.Children.TryGetValue(name, out OverlayNode? known) && !known.Removed &&
            known.InoReadFrom == top.st_ino && known.Layers.Count > 0 && known.Layers[0] == layers[0])
        {
            ino = known.Ino; // the same upper object as last time: its number xattr has not changed
        }
        else if (inUpper)
        {
            using LayerPath topPath = _layers.Locate(layers[0].Layer, layers[0].Path);
            ino = InoOf(layers[0].Layer, top, topPath.Path, layers[0].Path, out isBCow);
        }
        else
        {
            ino = InoOf(layers[0].Layer, top, path: "", layers[0].Path, out isBCow); // a lower object's number reads no xattr
        }
        if (!_nodes.TryGetValue(ino, out OverlayNode? node))
        {
            node = new OverlayNode(ino, directory, name, LayerPaths.Child(directory.Path, name));
            _nodes[ino] = node;
        }
        if (node.Removed || node.Type != type || !SameLayers(node.Layers, layers))
        {
            // Read for other layers, or for another object that had this number: nothing read before holds.
            node.Listing = null;
            node.BCowMark = null;
            node.ClosedBCowSize = null;
            node.ForgetPrivileges();
        }
        node.InoReadFrom = inUpper ? top.st_ino : 0;
        if (isBCow is bool read && type == S_IFREG)
        {
            node.BCowMark = new UpperMark<bool>(top.st_ino, 0, 0, read);
        }
        node.Parent = directory;
        node.Name = name;
        node.Path = LayerPaths.Child(directory.Path, name);
        node.Removed = false;
        node.Layers = layers;
        node.Type = type;
        directory.Children[name] = node;
        if (inUpper && type != S_IFDIR && top.st_nlink > 1)
        {
            // One of several names of an upper object (all share its kept number, so one node): remembered, so that
            // removing the name the node was last seen under leaves it reachable through the others.
            node.Aliases ??= [];
            if (!node.Aliases.Exists(a => a.Directory == directory && a.Name == name))
            {
                node.Aliases.Add((directory, name));
            }
        }
        return node;
    }

    /// <summary>
    /// Where <paramref name="name"/> lives below a directory made of <paramref name="directoryLayers"/>, by the
    /// overlay's rules (whiteouts, opaque directories, a non-directory hiding what is below it, redirects read in every
    /// layer): its layers topmost first, empty when nothing is shown; <paramref name="top"/> is the lstat of the first.
    /// Reads the layers only: no node is made or changed.
    /// </summary>
    private List<(int Layer, string Path)> MergeLayers(List<(int Layer, string Path)> directoryLayers, string name, out Stat top)
    {
        var layers = new List<(int Layer, string Path)>();
        top = default;
        foreach (var (layer, directoryPath) in directoryLayers)
        {
            if (IndexOf(layer) is { } index)
            {
                IndexedMerge step = MergeIndexed(index, layer, directoryPath, name, layers, ref top);
                if (step == IndexedMerge.Stop)
                {
                    break;
                }
                if (step == IndexedMerge.Continue)
                {
                    continue;
                }
            }
            Errno errno = _layers.TryOpenDirectory(layer, directoryPath, out LayerDir dir);
            if (errno != 0)
            {
                if (errno is Errno.ENOENT or Errno.ENOTDIR)
                {
                    continue;
                }
                _log($"{_layers.Describe(layer, directoryPath)}: {Stdlib.strerror(errno)}");
                throw new OverlayException(errno, $"{_layers.Describe(layer, directoryPath)}: {Stdlib.strerror(errno)}");
            }
            using (dir)
            {
                string path = dir.At(name);
                if (LayerStack.Lstat(dir, name, out Stat st) != 0)
                {
                    errno = Stdlib.GetLastError();
                    if (errno != Errno.ENOENT && errno != Errno.ENOTDIR)
                    {
                        string where = _layers.Describe(layer, LayerPaths.Child(directoryPath, name));
                        _log($"{where}: {Stdlib.strerror(errno)}");
                        throw new OverlayException(errno, $"{where}: {Stdlib.strerror(errno)}");
                    }
                    if (LayerStack.Lstat(dir, Whiteouts.Prefix + name, out _) == 0)
                    {
                        break; // whited out here: nothing below counts
                    }
                    continue;
                }
                if (Whiteouts.IsWhiteoutStat(st))
                {
                    break;
                }
                uint t = (uint)st.st_mode & S_IFMT;
                if (layers.Count > 0 && t != S_IFDIR)
                {
                    break; // a non-directory below a directory is hidden
                }
                if (layers.Count == 0)
                {
                    top = st;
                }
                layers.Add((layer, LayerPaths.Child(directoryPath, name)));
                if (t != S_IFDIR)
                {
                    break;
                }
                // One listxattr says whether the directory is opaque or redirected (five names to ask about).
                var (opaque, redirected) = Whiteouts.DirectoryXattrs(path);
                if (opaque || LayerStack.Lstat(dir, name + "/" + Whiteouts.OpaqueMarker, out _) == 0)
                {
                    break;
                }
                if (redirected && Redirects.Read(path, directoryPath, _layers.Describe(layer, LayerPaths.Child(directoryPath, name)), _log) is { } redirect)
                {
                    // A renamed directory: its parts in the layers below live at the recorded path, not under this
                    // name. Read in every layer, so an upper layer stacked as a lower one keeps its renames.
                    AddRedirectedLayers(layers, redirect, layer + 1);
                    break;
                }
            }
        }
        return layers;
    }

    /// <summary>The parts of a renamed directory in the layers from <paramref name="below"/> down, at
    /// <paramref name="redirect"/> (a path checked by <see cref="Redirects"/>: relative, no <c>..</c>), each reached
    /// beneath its layer root.</summary>
    private void AddRedirectedLayers(List<(int Layer, string Path)> layers, string redirect, int below)
    {
        for (int layer = below; layer < _layers.Count; layer++)
        {
            if (_layers.TryLocate(layer, redirect, out LayerPath located) != 0)
            {
                continue;
            }
            using (located)
            {
                if (LayerStack.Lstat(located, out Stat st) != 0)
                {
                    continue;
                }
                if (((uint)st.st_mode & S_IFMT) != S_IFDIR)
                {
                    break;
                }
                layers.Add((layer, redirect));
                if (Whiteouts.IsOpaque(located.Path))
                {
                    break;
                }
                // Renamed again in this layer (it was once an upper one): the layers below hold it at its older path.
                string parent = redirect.Contains('/') ? redirect[..redirect.LastIndexOf('/')] : "";
                if (Redirects.Read(located.Path, parent, _layers.Describe(layer, redirect), _log) is { } older)
                {
                    redirect = older;
                }
            }
        }
    }

    private OverlayStat StatOf(OverlayNode node)
    {
        if (node == _root && node.Layers.Count > 0)
        {
            int layer = node.Layers[0].Layer;
            if (LayerStack.Lstat(_layers.Root(layer), "", out Stat rootStat) != 0)
            {
                throw OverlayException.FromLastError("stat", _layers.NameOf(layer));
            }
            return MergedLinks(node, ToStat(RootIno, rootStat, null));
        }
        if (node.Removed)
        {
            return node.Data is { } data && node.OpenStat is { } last
                ? last.Value with { Size = data.Length, Nlink = 0 } // unlinked while open
                : throw new OverlayException(Errno.ENOENT, $"{Describe(node)}: removed");
        }
        if (IndexedStatOf(node) is { } indexed)
        {
            return indexed;
        }
        using LayerPath top = Top(node);
        if (LayerStack.Lstat(top, out Stat st) != 0)
        {
            throw OverlayException.FromLastError("stat", Describe(node));
        }
        return StatOf(node, top, st);
    }

    /// <summary>The attributes of a node that is not removed, from <paramref name="st"/>, the lstat of its top object
    /// at <paramref name="at"/> just taken.</summary>
    private OverlayStat StatOf(OverlayNode node, in LayerPath at, in Stat st)
    {
        long? logicalSize = null;
        if (node.Type == S_IFREG && IsBCow(node, at, st)) // in a lower layer too: an upper stacked as a lower one
        {
            logicalSize = node.Data is NodeData.BCow open ? open.Length : ClosedBCowSize(node, at.Path, st);
        }
        OverlayStat stat = MergedLinks(node, ToStat(node.Ino, st, logicalSize));
        if (node.Data is not null)
        {
            node.OpenStat = new StrongBox<OverlayStat>(stat);
        }
        return stat;
    }

    /// <summary>
    /// A directory merged from more than one layer reports one link, as kernel overlayfs does: the top layer's count
    /// would miss the subdirectories below it, and tools such as find take a count of 1 to mean "unknown" rather
    /// than trust it to skip the stat of entries.
    /// </summary>
    private static OverlayStat MergedLinks(OverlayNode node, OverlayStat stat) =>
        node.IsDirectory && node.Layers.Count > 1 ? stat with { Nlink = 1 } : stat;

    private static OverlayStat ToStat(ulong ino, in Stat st, long? logicalSize) =>
        new(ino, (uint)st.st_mode, st.st_nlink, st.st_uid, st.st_gid, st.st_rdev, logicalSize ?? st.st_size, st.st_blocks,
            (st.st_atime * 1_000_000_000L) + st.st_atime_nsec, (st.st_mtime * 1_000_000_000L) + st.st_mtime_nsec, (st.st_ctime * 1_000_000_000L) + st.st_ctime_nsec);

    private static bool IsBCowFile(in LayerPath at) =>
        LibC.HasXattr(at.Directory.Fd, at.Name.Length == 0 ? "." : at.Name, at.Path, LayerPaths.BCowXattr);

    /// <summary>Whether the node's upper object is a B-CoW file: its marker xattr, read once per upper object.</summary>
    private static bool IsBCow(OverlayNode node, in LayerPath at, in Stat st)
    {
        if (node.BCowMark is { } mark && mark.StIno == st.st_ino)
        {
            return mark.Value;
        }
        bool isBCow = IsBCowFile(at);
        node.BCowMark = new UpperMark<bool>(st.st_ino, 0, 0, isBCow);
        return isBCow;
    }

    /// <summary>
    /// The logical size of a closed B-CoW file: its header's, read once and kept while the upper file is the same
    /// (inode number, size and mtime) and nothing opened or truncated it, which drops the kept value. Without it every
    /// getattr would read the header (8 KiB).
    /// </summary>
    private long ClosedBCowSize(OverlayNode node, string path, in Stat st)
    {
        long mtimeNs = (st.st_mtime * 1_000_000_000L) + st.st_mtime_nsec;
        if (node.ClosedBCowSize is { } kept && kept.StIno == st.st_ino && kept.StSize == st.st_size && kept.MTimeNs == mtimeNs)
        {
            return kept.Value;
        }
        string described = _layers.Describe(node.Layers[0].Layer, node.Layers[0].Path);
        long size;
        try
        {
            size = BCowVirtualSize(path, described);
        }
        catch (OverlayException e)
        {
            // An unfinished copy-up (LayerPaths.PendingXattr) is made again by opening it; anything else stands.
            using LayerPath top = Top(node);
            if (node.Layers[0].Layer != _upper || IsReadOnly || !IsPendingCopyUp(top))
            {
                _log(e.Message);
                throw;
            }
            lock (node)
            {
                using BCowFile opened = OpenBCow(node, top, described, readOnly: true);
                size = opened.Length;
            }
        }
        node.ClosedBCowSize = new UpperMark<long>(st.st_ino, st.st_size, mtimeNs, size);
        return size;
    }

    private long BCowVirtualSize(string path, string described)
    {
        try
        {
            using SafeFileHandle handle = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
            using var storage = new FileStorage(handle, described, canWrite: false, ownsHandle: false);
            return BCowFile.ReadHeader(storage).VirtualSize;
        }
        catch (IOException e)
        {
            throw new OverlayException(OverlayException.ErrnoOf(e, out _), e.Message); // logged by the caller
        }
    }

    /// <summary>The node's object in its top layer. Dispose it: it may hold its directory open.</summary>
    private LayerPath Top(OverlayNode node) => _layers.Locate(node.Layers[0].Layer, node.Layers[0].Path);

    /// <summary>The node's object in the upper layer (where it is or will be after copy-up).</summary>
    private LayerPath Upper(OverlayNode node) => _layers.Locate(_upper, node.Path);

    private static string Describe(OverlayNode node) => node.Path.Length == 0 ? "/" : "/" + node.Path;

    private static OverlayException NoEntry(OverlayNode directory, string name) =>
        new(Errno.ENOENT, $"{LayerPaths.Join(Describe(directory), name)}: no such file or directory");

    private void RequireWritable()
    {
        if (_upper < 0)
        {
            throw new OverlayException(Errno.EROFS, "the overlay has no upper directory: read-only");
        }
        if (_upperFailure is { } failure)
        {
            throw new OverlayException(Errno.EROFS, failure);
        }
    }

    /// <summary>A new name in the work directory (reached through its handle, which lives as long as the overlay).</summary>
    private string NewScratchPath() => _layers.Work.At($"tmp-{Environment.ProcessId}-{Interlocked.Increment(ref _scratchCounter)}");

    /// <summary>
    /// Runs <paramref name="make"/> on a scratch path in the work directory, gives the object the caller's ownership
    /// and <paramref name="mode"/> (plus <paramref name="untilOpened"/>), and renames it into place, replacing a
    /// whiteout if there is one (a directory made over a whiteout is opaque, so the lower directory it replaces does
    /// not show through). In a set-group-ID directory the object takes the directory's group, a new directory the
    /// set-group-ID bit too, and a group-executable set-group-ID file made by a caller outside that group loses the
    /// bit (the kernel's inode_init_owner and mode_strip_sgid). The mode is set by chmod after the chown, never by
    /// <paramref name="make"/>: chown clears the set-ID bits, and mkdir, mknod and open apply this process's umask,
    /// which is not the caller's. <paramref name="mode"/> holds the permission and special bits with the caller's
    /// umask applied; null for a symbolic link.
    /// </summary>
    // inPlace, for a regular file: makes it in the upper directory itself, already owned and with its final mode (given
    // the directory, the name as described, uid, gid and mode), and returns true; false when it cannot there (the file
    // system has no unnamed files): make then makes it in the work directory. Used only when no whiteout is to be
    // replaced (nothing to swap atomically).
    private OverlayStat CreateObject(ulong parent, string name, OverlayCaller caller, Action<string> make, uint? mode, bool isDirectory, uint untilOpened = 0,
        Func<LayerDir, string, uint, uint, uint, bool>? inPlace = null)
    {
        RequireWritable();
        LayerPaths.ValidateName(name);
        if (Whiteouts.IsReservedName(name))
        {
            throw new OverlayException(Errno.EINVAL, $"{name}: names starting with {Whiteouts.Prefix} are reserved for whiteouts");
        }
        _lock.EnterWriteLock();
        OverlayNode? changing = null;
        try
        {
            OverlayNode directory = NodeOf(parent);
            CheckDirectoryAccess(directory, caller, Permissions.Write | Permissions.Exec);
            if (LookupLocked(directory, name) is { } existing)
            {
                throw new OverlayException(Errno.EEXIST, $"{Describe(existing)}: exists");
            }
            changing = directory;
            EnsureUpperDirectory(directory);
            using LayerDir upperDirectory = _layers.OpenDirectory(_upper, directory.Path);
            if (Syscall.lstat(upperDirectory.Self, out Stat parentStat) != 0)
            {
                throw OverlayException.FromLastError("stat", Describe(directory));
            }
            bool inheritsGroup = ((uint)parentStat.st_mode & S_ISGID) != 0;
            uint gid = inheritsGroup ? parentStat.st_gid : caller.Gid;
            uint? finalMode = mode switch
            {
                null => null,
                uint m when inheritsGroup && isDirectory => m | S_ISGID,
                uint m when inheritsGroup && (m & (S_ISGID | S_IXGRP)) == (S_ISGID | S_IXGRP) && caller.Uid != 0 && !caller.AccessChecked && !Permissions.InGroup(caller, gid) => m & ~S_ISGID,
                uint m => m,
            };
            string destination = upperDirectory.At(name);
            bool replacesWhiteout = Syscall.lstat(destination, out Stat old) == 0 && Whiteouts.IsWhiteoutStat(old);
            // Only a directory needs to know (it is made opaque): files hide what is below by being there.
            bool hidesLower = isDirectory && (replacesWhiteout || VisibleBelowUpperIgnoringWhiteouts(directory, name));
            if (!replacesWhiteout && finalMode is uint inPlaceMode
                && inPlace?.Invoke(upperDirectory, LayerPaths.Join(Describe(directory), name), caller.Uid, gid, inPlaceMode) == true)
            {
                return Created(parent, directory, name, isDirectory, upperDirectory);
            }
            string scratch = NewScratchPath();
            make(scratch);
            try
            {
                if (Syscall.lchown(scratch, caller.Uid, gid) != 0)
                {
                    Errno errno = Stdlib.GetLastError(); // before geteuid overwrites it
                    if (IsPrivileged)
                    {
                        throw new OverlayException(errno, $"{LayerPaths.Join(Describe(directory), name)}: chown: {Stdlib.strerror(errno)}");
                    }
                }
                if (isDirectory && hidesLower)
                {
                    Whiteouts.MakeOpaque(scratch);
                }
                // Last: without privilege, marking the directory opaque needs it writable.
                if (finalMode is uint given && Syscall.chmod(scratch, (FilePermissions)(given | untilOpened)) != 0)
                {
                    throw OverlayException.FromLastError("chmod", LayerPaths.Join(Describe(directory), name));
                }
                if (replacesWhiteout && isDirectory)
                {
                    // A directory cannot be renamed over a device: swap them, then remove the whiteout.
                    if (LibC.renameat2(LibC.AT_FDCWD, scratch, LibC.AT_FDCWD, destination, LibC.RENAME_EXCHANGE) != 0)
                    {
                        throw new OverlayException(ToErrno(Marshal.GetLastPInvokeError()), $"{LayerPaths.Join(Describe(directory), name)}: cannot replace the whiteout");
                    }
                    Syscall.unlink(scratch);
                }
                else if (Syscall.rename(scratch, destination) != 0)
                {
                    throw OverlayException.FromLastError("rename into place", LayerPaths.Join(Describe(directory), name));
                }
            }
            catch
            {
                RemoveTree(scratch);
                throw;
            }
            return Created(parent, directory, name, isDirectory, upperDirectory);
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

    /// <summary>After <see cref="CreateObject"/> made <paramref name="name"/> in the upper directory: its node, looked
    /// up, counted and listed.</summary>
    private OverlayStat Created(ulong parent, OverlayNode directory, string name, bool isDirectory, LayerDir upperDirectory)
    {
        Syscall.unlink(upperDirectory.At(Whiteouts.Prefix + name));
        OverlayNode node = LookupLocked(directory, name, out Stat top) ?? throw NoEntry(directory, name);
        ListingChanged(directory, name, node);
        OnNameChanged(parent, name);
        if (isDirectory && node.Layers.Count == 1)
        {
            // Made empty in the work directory, and nothing below shows through (opaque, or nothing there).
            node.Listing = new DirectoryListing(node.Ino, directory.Ino, []);
        }
        node.Lookups++;
        using LayerPath created = Top(node);
        OverlayStat stat = StatOf(node, created, top);
        if (node.Type == S_IFREG)
        {
            // A file just made has no security.capability (only a setxattr gives one, which forgets this) and, made
            // without set-id bits, nothing a write or chown would clear: the kernel's capability read before its first
            // write and the privilege check of its first chown (every chown of a file asks) cost no I/O.
            node.HasNoCapabilityXattr = true;
            node.HasNoPrivileges = (stat.Mode & (S_ISUID | S_ISGID)) == 0;
        }
        return stat;
    }

    /// <summary>
    /// Makes a regular file <paramref name="name"/> in the upper directory as an unnamed file (O_TMPFILE), owned by
    /// <paramref name="uid"/>:<paramref name="gid"/> with <paramref name="mode"/>, then links it in: it appears
    /// whole, as the rename of one made in the work directory does, without that file's reopen. Null, and nothing
    /// made, when the file system has no unnamed files or refuses the link for another reason than the name (then
    /// the work directory's way reports what is wrong).
    /// </summary>
    /// <exception cref="OverlayException">EEXIST: the name was taken meanwhile; the owner or mode cannot be set.</exception>
    private SafeFileHandle? CreateFileInPlace(LayerDir directory, string name, string described, uint uid, uint gid, uint mode)
    {
        int fd = LibC.openat(directory.Fd, ".", LibC.O_TMPFILE | LibC.O_RDWR | LibC.O_CLOEXEC, 0x180);
        if (fd < 0)
        {
            return null; // EOPNOTSUPP, EISDIR (no O_TMPFILE here), or what the work directory's way will say again
        }
        var file = new SafeFileHandle(fd, ownsHandle: true);
        try
        {
            if (Syscall.fchown(fd, uid, gid) != 0)
            {
                Errno errno = Stdlib.GetLastError();
                if (IsPrivileged)
                {
                    throw new OverlayException(errno, $"{described}: chown: {Stdlib.strerror(errno)}");
                }
            }
            if (Syscall.fchmod(fd, (FilePermissions)mode) != 0)
            {
                throw OverlayException.FromLastError("chmod", described);
            }
            if (LibC.linkat(LibC.AT_FDCWD, $"/proc/self/fd/{fd}", directory.Fd, name, LibC.AT_SYMLINK_FOLLOW) != 0)
            {
                int errno = Marshal.GetLastPInvokeError();
                if (errno == (int)Errno.EEXIST)
                {
                    throw new OverlayException(Errno.EEXIST, $"{described}: exists");
                }
                file.Dispose();
                return null;
            }
            return file;
        }
        catch
        {
            file.Dispose();
            throw;
        }
    }

    /// <summary>True when a layer below the upper one shows <paramref name="name"/> in <paramref name="directory"/>.</summary>
    private bool VisibleBelowUpper(OverlayNode directory, string name)
    {
        foreach (var (layer, directoryPath) in directory.Layers)
        {
            if (layer == _upper)
            {
                continue;
            }
            if (_layers.TryOpenDirectory(layer, directoryPath, out LayerDir dir) != 0)
            {
                continue;
            }
            bool whitedOut;
            bool exists;
            using (dir)
            {
                whitedOut = Whiteouts.IsWhitedOut(dir.Self, name, out exists);
            }
            if (whitedOut)
            {
                return false;
            }
            if (exists)
            {
                return true;
            }
        }
        return false;
    }

    private bool VisibleBelowUpperIgnoringWhiteouts(OverlayNode directory, string name) => VisibleBelowUpper(directory, name);

    private void RemoveName(OverlayNode directory, string name, OverlayNode node)
    {
        bool hide = VisibleBelowUpper(directory, name);
        if (node.Layers[0].Layer == _upper)
        {
            using LayerPath upper = Upper(node);
            string path = upper.Path;
            // Atomically replace the upper object by a whiteout: a fresh whiteout swapped in, the old object removed.
            // A 0/0 device needs no privilege since Linux 5.8; where mknod is refused, the OCI form below.
            string scratch = NewScratchPath();
            if (hide && Syscall.mknod(scratch, FilePermissions.S_IFCHR, 0) == 0)
            {
                if (LibC.renameat2(LibC.AT_FDCWD, scratch, LibC.AT_FDCWD, path, LibC.RENAME_EXCHANGE) != 0)
                {
                    Errno errno = ToErrno(Marshal.GetLastPInvokeError()); // before unlink overwrites it
                    Syscall.unlink(scratch);
                    throw new OverlayException(errno, $"{Describe(node)}: cannot replace by a whiteout");
                }
                RemoveTree(scratch);
            }
            else
            {
                if (hide)
                {
                    Whiteouts.Create(upper.Directory.Self, name);
                }
                if (node.IsDirectory)
                {
                    ClearUpperDirectory(path); // the whiteouts it still holds (the swap above takes them along instead)
                }
                if ((node.IsDirectory ? Syscall.rmdir(path) : Syscall.unlink(path)) != 0)
                {
                    throw OverlayException.FromLastError("remove", Describe(node));
                }
            }
        }
        else
        {
            EnsureUpperDirectory(directory);
            using LayerDir upperDirectory = _layers.OpenDirectory(_upper, directory.Path);
            Whiteouts.Create(upperDirectory.Self, name);
        }
        if (node.IsDirectory)
        {
            _layers.ForgetDirectories(_upper); // it (and what it held) is gone: a new one may take its path
        }
        directory.Children.Remove(name);
        ListingChanged(directory, name, null);
        NameGone(node, directory, name);
    }

    /// <summary>
    /// <paramref name="name"/> in <paramref name="directory"/>, one name of <paramref name="node"/>, is gone. A
    /// hard-linked object lives on under its other names: the node is re-pointed at one that still leads to it (looked
    /// up again, which sets its path and layers), so every operation through the kernel's inode keeps working. Only
    /// when no known name is left is it removed.
    /// </summary>
    private void NameGone(OverlayNode node, OverlayNode directory, string name)
    {
        node.Aliases?.RemoveAll(a => a.Directory == directory && a.Name == name);
        while (node.Aliases is { Count: > 0 } aliases)
        {
            var (parent, other) = aliases[^1];
            OverlayNode? found = null;
            try
            {
                found = LookupLocked(parent, other);
            }
            catch (OverlayException)
            {
                // that directory is gone or unreadable: not a way to the object
            }
            if (found == node)
            {
                return;
            }
            aliases.RemoveAt(aliases.Count - 1);
        }
        MarkRemoved(node);
    }

    /// <summary>
    /// The object's last known name is gone. Its node answers from the open file while one is open (fstat after
    /// unlink), else ENOENT.
    /// </summary>
    private static void MarkRemoved(OverlayNode node)
    {
        node.Removed = true;
        node.Listing = null;
    }

    /// <summary>Removes the whiteouts an (otherwise empty) upper directory still holds.</summary>
    private static void ClearUpperDirectory(string path)
    {
        foreach (string entry in Directory.EnumerateFileSystemEntries(path))
        {
            RemoveTree(entry);
        }
    }

    private static void RemoveTree(string path)
    {
        if (Syscall.lstat(path, out Stat st) != 0)
        {
            return;
        }
        if ((st.st_mode & FilePermissions.S_IFMT) == FilePermissions.S_IFDIR)
        {
            foreach (string entry in Directory.EnumerateFileSystemEntries(path))
            {
                RemoveTree(entry);
            }
            Syscall.rmdir(path);
        }
        else
        {
            Syscall.unlink(path);
        }
    }

    private void EnsureUpperDirectory(OverlayNode directory)
    {
        if (directory.Layers[0].Layer == _upper)
        {
            return;
        }
        EnsureUpperDirectory(directory.Parent!);
        CopyUp(directory, truncateToZero: false);
    }

    /// <summary>
    /// Brings a lower object into the upper layer, atomically (built in the work directory, renamed into place).
    /// Regular files below the threshold are copied; larger ones become a B-CoW file over the lower file, with no data
    /// copied (metadata-only copy-up and block-level copy-up are then the same thing). Owner, mode, times and user
    /// xattrs are carried over; so is the inode number.
    /// </summary>
    private void CopyUp(OverlayNode node, bool truncateToZero)
    {
        if (node.Layers[0].Layer == _upper)
        {
            return;
        }
        if (node.Parent is { } parent)
        {
            EnsureUpperDirectory(parent);
        }
        using LayerPath lowerPath = Top(node);
        string lower = lowerPath.Path;
        string described = _layers.Describe(node.Layers[0].Layer, node.Layers[0].Path);
        if (Syscall.lstat(lower, out Stat st) != 0)
        {
            throw OverlayException.FromLastError("stat for copy-up", described);
        }
        string scratch = NewScratchPath();
        uint type = (uint)st.st_mode & S_IFMT;
        bool keptIno;
        try
        {
            switch (type)
            {
                case S_IFREG when truncateToZero:
                    File.WriteAllBytes(scratch, []);
                    break;
                case S_IFREG when st.st_size >= _options.BlockCopyUpThreshold && !IsBCowFile(lowerPath):
                    using (IBlockStorage lowerFile = BCowLowerThroughCache(lowerPath, st, node.Layers[0].Layer, node.Layers[0].Path, described))
                    using (var upperFile = new FileStorage(scratch, FileMode.CreateNew, FileAccess.ReadWrite))
                    {
                        // The header records where the lower file was, for `bcow` and people; the overlay itself finds
                        // it by position (the redirect below), never by a path read back from disk.
                        // Not flushed: the open that copies up pays no fsync. Marked pending until its first durable
                        // commit; a crash before that may leave it without a header, and it is then made again
                        // (OpenBCow), since nothing written into it was made durable.
                        BCowFile.CreateClosed(upperFile, lowerFile, new BCowCreateOptions { LowerPath = described, BlockSize = _options.BlockSize }, durable: false);
                    }
                    if (Syscall.lsetxattr(scratch, LayerPaths.BCowXattr, "1"u8.ToArray(), XattrFlags.XATTR_AUTO) != 0
                        || Syscall.lsetxattr(scratch, LayerPaths.PendingXattr, "1"u8.ToArray(), XattrFlags.XATTR_AUTO) != 0)
                    {
                        throw OverlayException.FromLastError("mark as B-CoW (user xattrs needed on the upper file system)", Describe(node));
                    }
                    ForeignMarks.Write(scratch, Describe(node));
                    Redirects.WriteLowerPosition(scratch, node.Layers[0].Path, Describe(node));
                    break;
                case S_IFREG:
                    // A whole copy of what the file reads as: a plain lower file, or a B-CoW file of a layer that was
                    // once an upper one, read through its own lower (chains are not kept: the copy is flat).
                    using (NodeData source = OpenData(node, write: false))
                    using (var copy = new FileStorage(scratch, FileMode.CreateNew, FileAccess.Write))
                    {
                        CopyWhole(source, copy);
                        copy.Flush();
                    }
                    break;
                case S_IFDIR:
                    if (Syscall.mkdir(scratch, (FilePermissions)((uint)st.st_mode & 0xFFF)) != 0)
                    {
                        throw OverlayException.FromLastError("mkdir for copy-up", Describe(node));
                    }
                    break;
                case S_IFLNK:
                    if (Syscall.symlink(Mono.Unix.UnixPath.ReadLink(lower), scratch) != 0)
                    {
                        throw OverlayException.FromLastError("symlink for copy-up", Describe(node));
                    }
                    break;
                default:
                    if (Syscall.mknod(scratch, st.st_mode, st.st_rdev) != 0)
                    {
                        throw OverlayException.FromLastError("mknod for copy-up", Describe(node));
                    }
                    break;
            }
            keptIno = CopyMetadata(lower, scratch, st, type, node.Ino, node.Layers[0].Path, Describe(node));
            using LayerPath upper = Upper(node);
            if (Syscall.rename(scratch, upper.Path) != 0)
            {
                throw OverlayException.FromLastError("rename copy-up into place", Describe(node));
            }
        }
        catch (Exception e) when (e is UnauthorizedAccessException or (IOException and not OverlayException))
        {
            // From the .NET file APIs (B-CoW creation, whole copy): a FUSE reply needs the errno.
            RemoveTree(scratch);
            OverlayErrno errno = OverlayException.ErrnoOf(e, out bool unexpected);
            if (unexpected)
            {
                _log($"{described}: copy-up failed: {e.Message}");
            }
            throw new OverlayException(errno, $"{described}: copy-up failed: {e.Message}");
        }
        catch
        {
            RemoveTree(scratch);
            throw;
        }
        if (!keptIno && node.Parent is { } holder)
        {
            holder.Listing = null; // its entry for this name now has another inode number
        }
        node.InoReadFrom = 0; // a new upper object: read its xattrs again
        node.BCowMark = null;
        node.ClosedBCowSize = null;
        if (node.IsDirectory)
        {
            node.Layers.Insert(0, (_upper, node.Path));
            node.Listing = null; // kept for the old layers (the content is the same, but the rule stays simple)
            // Now merged from two layers, it counts one link (as kernel overlayfs): a kernel that cached its real
            // count (a FUSE mount's attributes) must ask again, even when it asked for the change below it.
            AttributesChangedAside?.Invoke(node.Ino);
        }
        else
        {
            node.Layers = [(_upper, node.Path)];
            if (node.Data is { } old)
            {
                // Handles opened before the copy-up now read the upper copy (which they see through the node).
                node.Retired.Add(old);
                node.Data = OpenData(node, write: true);
            }
        }
    }

    /// <returns>False when the inode number could not be kept (logged).</returns>
    private bool CopyMetadata(string from, string to, in Stat st, uint type, ulong ino, string origin, string described)
    {
        // The owner first: chown(2) drops security.capability (and set-id bits, which the chmod below restores), so the
        // attributes are copied after it, as kernel overlayfs keeps a file's capabilities across copy-up.
        if (Syscall.lchown(to, st.st_uid, st.st_gid) != 0)
        {
            // EINVAL as root of a user namespace when the owner is outside its id map (shown as the overflow id)
            Errno errno = Stdlib.GetLastError(); // before geteuid overwrites it
            if (IsPrivileged)
            {
                throw new OverlayException(errno, $"{described}: chown for copy-up: {Stdlib.strerror(errno)}");
            }
        }
        if (Syscall.llistxattr(from, out string[] names) >= 0)
        {
            foreach (string name in names)
            {
                if (!Whiteouts.IsPrivateXattr(name) && Syscall.lgetxattr(from, name, out byte[] value) >= 0)
                {
                    Syscall.lsetxattr(to, name, value, XattrFlags.XATTR_AUTO);
                }
            }
        }
        // The number with the path it was made from: a later lookup honours it only while that origin still holds it.
        byte[] inoBytes = KeptInoRecord(ino, origin);
        bool keptIno = true;
        if (Syscall.lsetxattr(to, LayerPaths.InoXattr, inoBytes, XattrFlags.XATTR_AUTO) != 0)
        {
            Errno errno = Stdlib.GetLastError(); // before geteuid overwrites it
            if (!IsPrivileged || Syscall.lsetxattr(to, LayerPaths.TrustedInoXattr, inoBytes, XattrFlags.XATTR_AUTO) != 0)
            {
                _log($"{described}: cannot keep the inode number across copy-up: {Stdlib.strerror(errno)}");
                keptIno = false;
            }
        }
        if (type != S_IFLNK && Syscall.chmod(to, (FilePermissions)((uint)st.st_mode & 0xFFF)) != 0)
        {
            throw OverlayException.FromLastError("chmod for copy-up", described);
        }
        var times = new Timespec[]
        {
            new() { tv_sec = st.st_atime, tv_nsec = st.st_atime_nsec },
            new() { tv_sec = st.st_mtime, tv_nsec = st.st_mtime_nsec },
        };
        Syscall.utimensat(LibC.AT_FDCWD, to, times, AtFlags.AT_SYMLINK_NOFOLLOW);
        return keptIno;
    }

    private OverlayHandle OpenLocked(OverlayNode node, bool write, bool truncate)
    {
        if (node.IsDirectory)
        {
            throw new OverlayException(Errno.EISDIR, $"{Describe(node)}: is a directory");
        }
        if (node.Type != S_IFREG)
        {
            throw new OverlayException(Errno.EINVAL, $"{Describe(node)}: not a regular file");
        }
        if (write || truncate)
        {
            CopyUp(node, truncateToZero: false); // truncated below, once opened: a failed open changes nothing visible
        }
        if (node.Data is null)
        {
            node.Data = OpenData(node, write);
        }
        else if ((write || truncate) && !node.Data.CanWrite)
        {
            node.Retired.Add(node.Data);
            node.Data = OpenData(node, write: true);
        }
        if (truncate && node.Data.Length != 0)
        {
            node.Data.SetLength(0);
            OnChanged(node.Ino, 0, 0);
        }
        node.ClosedBCowSize = null; // while open, the open file answers; after, its header may say another size
        if (node.CloseDue is not null)
        {
            node.CloseDue = null; // kept open since its last release: in use again
            _idle.Remove(node);
        }
        node.OpenHandles++;
        StatOf(node); // remembered for fstat after an unlink
        return new OverlayHandle(this, node, write);
    }

    private NodeData OpenData(OverlayNode node, bool write)
    {
        if (node.Layers[0].Layer != _upper && IndexedLowerData(node) is { } indexed)
        {
            return indexed;
        }
        using LayerPath top = Top(node);
        string path = top.Path;
        int layer = node.Layers[0].Layer;
        string described = _layers.Describe(layer, node.Layers[0].Path);
        try
        {
            if (layer != _upper)
            {
                if (IsBCowFile(top))
                {
                    // A layer that was an upper one: its B-CoW files read through their own lower files.
                    return new NodeData.BCow(OpenBCow(node, top, described, readOnly: true));
                }
                return new NodeData.Plain(OpenLowerData(top, null, layer, node.Layers[0].Path, described));
            }
            if (IsBCowFile(top))
            {
                // Read-only until something writes: a reader must not commit (and so touch the file's mtime) at close.
                // OpenLocked swaps in a writable one at the first open for writing. A file a crash left dirty is opened
                // writable even for reading: that open reclaims the space the crash leaked.
                BCowFile file = OpenBCow(node, top, described, readOnly: !write);
                if (!write && file.OpenedDirty)
                {
                    file.Dispose();
                    file = OpenBCow(node, top, described, readOnly: false);
                }
                return new NodeData.BCow(file, file.CanWrite ? PendingMark(top) : null, _log);
            }
            try
            {
                return new NodeData.Plain(new FileStorage(path, FileMode.Open, FileAccess.ReadWrite));
            }
            catch (UnauthorizedAccessException) when (!write)
            {
                return new NodeData.Plain(new FileStorage(path, FileMode.Open, FileAccess.Read));
            }
        }
        catch (BCowFileInUseException e)
        {
            _log(e.Message);
            throw new OverlayException(Errno.EBUSY, e.Message);
        }
        catch (BCowFormatException e)
        {
            _log(e.Message);
            throw new OverlayException(Errno.EIO, e.Message);
        }
        catch (UnauthorizedAccessException e)
        {
            throw new OverlayException(Errno.EACCES, $"{described}: {e.Message}");
        }
    }

    /// <summary>
    /// Opens the B-CoW file at <paramref name="top"/> over its lower file, found by position: the next layer below
    /// the B-CoW file's own that holds the path recorded at copy-up (<see cref="Redirects.ReadLowerPosition"/>), or,
    /// for a file made before that record existed, the same name in the parent directory's lower layers. The path
    /// in the header is never opened: it is only what the file says, and the identity check still applies.
    /// </summary>
    private BCowFile OpenBCow(OverlayNode node, LayerPath top, string described, bool readOnly)
    {
        try
        {
            return OpenBCowOnce(node, top, described, readOnly);
        }
        catch (BCowFormatException e) when (node.Layers[0].Layer == _upper && !IsReadOnly && IsPendingCopyUp(top))
        {
            if (!RemakeUnfinishedCopyUp(node, top, described, e))
            {
                throw;
            }
            return OpenBCowOnce(node, top, described, readOnly);
        }
    }

    /// <summary>Whether the upper B-CoW file at <paramref name="top"/> carries <see cref="LayerPaths.PendingXattr"/>:
    /// no durable commit has completed since the copy-up that made it.</summary>
    private static bool IsPendingCopyUp(in LayerPath top) =>
        LibC.HasXattr(top.Directory.Fd, top.Name, top.Path, LayerPaths.PendingXattr);

    /// <summary>A descriptor for removing <see cref="LayerPaths.PendingXattr"/> from the upper B-CoW file at
    /// <paramref name="top"/> after its first durable commit, or null when it has none (one getxattr).</summary>
    private SafeFileHandle? PendingMark(in LayerPath top)
    {
        if (!IsPendingCopyUp(top))
        {
            return null;
        }
        int fd = LibC.openat(top.Directory.Fd, top.Name,
            NativeConvert.FromOpenFlags(OpenFlags.O_RDONLY | OpenFlags.O_CLOEXEC | OpenFlags.O_NOFOLLOW | OpenFlags.O_NONBLOCK), 0);
        return fd < 0 ? null : new SafeFileHandle(fd, ownsHandle: true);
    }

    /// <summary>
    /// An upper B-CoW file marked pending that does not open (<paramref name="problem"/>): a crash came after its
    /// copy-up was renamed into place and before its first durable commit, so the file lacks a header or the table it
    /// points to. Nothing written into it was made durable (a flush would have removed the mark), so it is made again
    /// as the copy-up made it, a B-CoW file over the same lower file with no block of its own, this time flushed; the
    /// object's metadata (the upper file's inode) is kept. Then the mark is removed.
    /// </summary>
    /// <returns>False when no layer below holds its lower file: nothing to make it over, and the problem stands.</returns>
    private bool RemakeUnfinishedCopyUp(OverlayNode node, LayerPath top, string described, BCowFormatException problem)
    {
        IBlockStorage? lower = OpenBCowLower(node, top, described, out string? lowerDescribed);
        if (lower is null)
        {
            return false;
        }
        using (lower)
        {
            SafeFileHandle handle = File.OpenHandle(top.Path, FileMode.Open, FileAccess.ReadWrite, FileShare.Read);
            using var upper = new FileStorage(handle, described, canWrite: true, FileLockMode.Exclusive);
            int fd = (int)handle.DangerousGetHandle();
            bool timed = Syscall.fstat(fd, out Stat before) == 0;
            BCowFile.CreateClosed(upper, lower, new BCowCreateOptions { LowerPath = lowerDescribed, BlockSize = _options.BlockSize });
            if (timed)
            {
                // The times the copy-up gave it (the lower file's, or a change's since), not the remaking's.
                Syscall.futimens(fd, [
                    new Timespec { tv_sec = before.st_atime, tv_nsec = before.st_atime_nsec },
                    new Timespec { tv_sec = before.st_mtime, tv_nsec = before.st_mtime_nsec },
                ]);
            }
            if (LibC.fremovexattr(handle, LayerPaths.PendingXattr) != 0 && Marshal.GetLastPInvokeError() != LibC.ENODATA)
            {
                _log($"{described}: removing {LayerPaths.PendingXattr}: {Marshal.GetPInvokeErrorMessage(Marshal.GetLastPInvokeError())}");
            }
        }
        node.ClosedBCowSize = null;
        _log($"{described}: an unfinished copy-up (a crash before its first write was made durable: {problem.Message}); made again over {lowerDescribed}");
        return true;
    }

    private BCowFile OpenBCowOnce(OverlayNode node, LayerPath top, string described, bool readOnly)
    {
        IBlockStorage? lower = OpenBCowLower(node, top, described, out _);
        FileStorage upper;
        try
        {
            SafeFileHandle handle = File.OpenHandle(top.Path, FileMode.Open, readOnly ? FileAccess.Read : FileAccess.ReadWrite,
                readOnly ? FileShare.ReadWrite : FileShare.Read);
            // Locked as bcow and other processes expect (a reader shares, a writer excludes them).
            upper = new FileStorage(handle, described, canWrite: !readOnly, readOnly ? FileLockMode.Shared : FileLockMode.Exclusive);
        }
        catch
        {
            lower?.Dispose();
            throw;
        }
        try
        {
            BCowFile opened = BCowFile.Open(upper, lower, new BCowOpenOptions { ReadOnly = readOnly }, ownsStorage: true);
            CountHeat(lower); // the identity check is done: what is read from now on is a reader's
            return opened;
        }
        catch (BCowFormatException e) when (lower is null)
        {
            throw new BCowFormatException(described, $"its lower file is not in the layers below it ({e.Message})");
        }
    }

    /// <summary>The lower file of the B-CoW file at <paramref name="top"/> (see <see cref="OpenBCow"/>), opened, or
    /// null when no layer below holds it.</summary>
    private IBlockStorage? OpenBCowLower(OverlayNode node, LayerPath top, string described, out string? lowerDescribed)
    {
        lowerDescribed = null;
        int layer = node.Layers[0].Layer;
        // A plain list, not a LINQ chain over (int, string) tuples: those are generic instantiations ReadyToRun cannot
        // precompile, and this runs at the first write into a lower file.
        var candidates = new List<(int Layer, string Path)>();
        if (Redirects.ReadLowerPosition(top.Path, described, _log) is { } recorded)
        {
            for (int l = layer + 1; l < _layers.Count; l++)
            {
                candidates.Add((l, recorded));
            }
        }
        else
        {
            foreach ((int parentLayer, string parentPath) in node.Parent?.Layers ?? [])
            {
                if (parentLayer > layer)
                {
                    candidates.Add((parentLayer, LayerPaths.Child(parentPath, node.Name)));
                }
            }
        }
        IBlockStorage? lower = null;
        foreach (var (candidate, relative) in candidates)
        {
            if (_layers.TryLocate(candidate, relative, out LayerPath located) != 0)
            {
                continue;
            }
            using (located)
            {
                if (LayerStack.Lstat(located, out Stat st) != 0)
                {
                    continue;
                }
                if ((st.st_mode & FilePermissions.S_IFMT) != FilePermissions.S_IFREG)
                {
                    if (!Whiteouts.IsWhiteoutStat(st))
                    {
                        _log($"{_layers.Describe(candidate, relative)}: not a regular file, refused as the lower file of {described}");
                    }
                    break; // a whiteout or anything else hides whatever lies below
                }
                lowerDescribed = _layers.Describe(candidate, relative);
                lower = BCowLowerThroughCache(located, st, candidate, relative, lowerDescribed);
                break;
            }
        }
        return lower;
    }

    /// <summary>
    /// Opens a lower file for reading without following a symbolic link and without blocking (a fifo or device put
    /// where a regular file is expected would otherwise hang the open, with the overlay's lock held); anything but a
    /// regular file is refused with EIO and a log line.
    /// </summary>
    private FileStorage OpenLowerFile(LayerPath located, string described) =>
        new(OpenLowerHandle(located, described), described, canWrite: false, ownsHandle: true);

    /// <summary>The descriptor <see cref="OpenLowerFile"/> wraps: the same checks, for callers that keep a handle.</summary>
    private SafeFileHandle OpenLowerHandle(LayerPath located, string described)
    {
        int flags = NativeConvert.FromOpenFlags(OpenFlags.O_RDONLY | OpenFlags.O_NOFOLLOW | OpenFlags.O_NONBLOCK | OpenFlags.O_CLOEXEC);
        int fd = located.Name.Length == 0 ? -1 : LibC.openat(located.Directory.Fd, located.Name, flags, 0);
        if (fd < 0)
        {
            throw OverlayException.FromLastError("open", described);
        }
        var handle = new SafeFileHandle(fd, ownsHandle: true);
        if (Syscall.fstat(fd, out Stat st) != 0 || (st.st_mode & FilePermissions.S_IFMT) != FilePermissions.S_IFREG)
        {
            handle.Dispose();
            _log($"{described}: not a regular file, refused as file data");
            throw new OverlayException(Errno.EIO, $"{described}: not a regular file");
        }
        return handle;
    }

    /// <summary>Copies what <paramref name="source"/> reads as into <paramref name="copy"/>, holes left as holes.</summary>
    private static void CopyWhole(NodeData source, FileStorage copy)
    {
        long length = source.Length;
        byte[] buffer = System.Buffers.ArrayPool<byte>.Shared.Rent(1 << 20);
        try
        {
            foreach (var (offset, count) in source.DataRanges(0, length))
            {
                for (long done = 0; done < count;)
                {
                    int n = source.Read(buffer.AsSpan(0, (int)Math.Min(buffer.Length, count - done)), offset + done);
                    if (n == 0)
                    {
                        break;
                    }
                    copy.WriteAt(buffer.AsSpan(0, n), offset + done);
                    done += n;
                }
            }
            copy.SetLength(length);
        }
        finally
        {
            System.Buffers.ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    private void TruncateLocked(OverlayNode node, long size)
    {
        node.ClosedBCowSize = null;
        if (node.Data is { } data)
        {
            if (!data.CanWrite)
            {
                // Open handles read through the node's data: it must be the instance that changes.
                node.Retired.Add(data);
                node.Data = data = OpenData(node, write: true);
            }
            data.SetLength(size);
            return;
        }
        using NodeData temporary = OpenData(node, write: true);
        temporary.SetLength(size);
    }

    private static Timespec ToTimespec(long? ns) => ns switch
    {
        null => new Timespec { tv_sec = 0, tv_nsec = UtimeOmit },
        OverlaySetAttr.Now => new Timespec { tv_sec = 0, tv_nsec = UtimeNow },
        long value => new Timespec { tv_sec = value / 1_000_000_000L, tv_nsec = value % 1_000_000_000L },
    };

    private const long UtimeNow = (1L << 30) - 1;
    private const long UtimeOmit = (1L << 30) - 2;

    private static Errno ToErrno(int errno) => NativeConvert.ToErrno(errno);
}

/// <summary>Attribute changes for <see cref="OverlayFileSystem.SetAttr"/>; null fields stay as they are.</summary>
public sealed record OverlaySetAttr
{
    /// <summary>Pass as a time to mean "now" (UTIME_NOW).</summary>
    public const long Now = long.MinValue;

    /// <summary>Permission bits (the file type bits are ignored).</summary>
    public uint? Mode { get; init; }

    /// <summary>New owner.</summary>
    public uint? Uid { get; init; }

    /// <summary>New group.</summary>
    public uint? Gid { get; init; }

    /// <summary>New size (truncate or extend).</summary>
    public long? Size { get; init; }

    /// <summary>Access time in ns since the epoch, or <see cref="Now"/>.</summary>
    public long? ATimeNs { get; init; }

    /// <summary>Modification time in ns since the epoch, or <see cref="Now"/>.</summary>
    public long? MTimeNs { get; init; }
}

/// <summary>renameat2 flags.</summary>
[Flags]
public enum OverlayRenameFlags
{
    /// <summary>Replace the target if it exists.</summary>
    None = 0,

    /// <summary>Fail with EEXIST if the target exists (RENAME_NOREPLACE).</summary>
    NoReplace = 1,

    /// <summary>Swap source and target, which must both exist (RENAME_EXCHANGE).</summary>
    Exchange = 2,
}
