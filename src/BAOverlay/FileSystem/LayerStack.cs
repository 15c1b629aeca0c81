using System.Runtime.InteropServices;
using System.Text;
using BAOverlay.Interop;
using Microsoft.Win32.SafeHandles;
using Mono.Unix.Native;

namespace BAOverlay.FileSystem;

/// <summary>
/// Where a path of a layer is, reached without leaving the layer. Each layer root (and the overlay's work directory)
/// is opened once, as an <c>O_PATH</c> handle, when the overlay opens; every later access starts from one of those
/// handles. A directory inside a layer is opened with <c>openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)</c>, so no
/// <c>..</c> and no symbolic link (absolute or relative) in a layer can lead outside it, and the object itself is then
/// named by one component under <c>/proc/self/fd/N/</c>. Hence: a path is never longer than a directory handle plus
/// one name (no PATH_MAX limit from the root's own length); a layer unmounted or detached from the namespace after
/// the overlay opened stays reachable; and "nothing outside the layer roots" holds for every call, not only those
/// that remember to check.
/// </summary>
internal sealed class LayerStack : IDisposable
{
    private readonly SafeFileHandle[] _roots;
    private readonly string[] _names;
    private readonly SafeFileHandle? _work;
    private readonly string? _workName;
    private static int s_noOpenat2;

    /// <summary>
    /// Directories opened before, kept open by (layer, path) so that a lookup costs one <c>statx</c> rather than an
    /// <c>openat2</c> and a <c>close</c> besides. Filled under the overlay's read or write lock (readers may race to
    /// add one; the loser closes its own); emptied only under the write lock (<see cref="ForgetDirectories"/>), so a
    /// borrowed handle is never closed while in use. Lower layers never change, so their entries stay valid. One table
    /// per layer keyed by path: a table keyed by a (layer, path) tuple is a generic instantiation over a framework
    /// value type, which ReadyToRun cannot precompile, and the first lookups of a fresh mount paid its JIT.
    /// </summary>
    private readonly System.Collections.Concurrent.ConcurrentDictionary<string, SafeFileHandle>[] _directories;

    /// <summary>How many handles <see cref="_directories"/> holds, all layers together.</summary>
    private int _keptCount;

    /// <summary>At most this many kept directory handles (file descriptors); past it, directories are opened per use.</summary>
    private const int MaxKeptDirectories = 4096;

    /// <summary>The most bytes of path opened in one call (PATH_MAX is 4096 with its NUL).</summary>
    private const int MaxPart = 3800;

    private LayerStack(SafeFileHandle[] roots, string[] names, SafeFileHandle? work, string? workName)
    {
        _roots = roots;
        _directories = new System.Collections.Concurrent.ConcurrentDictionary<string, SafeFileHandle>[roots.Length];
        for (int i = 0; i < roots.Length; i++)
        {
            _directories[i] = new System.Collections.Concurrent.ConcurrentDictionary<string, SafeFileHandle>(StringComparer.Ordinal);
        }
        _names = names;
        _work = work;
        _workName = workName;
    }

    /// <summary>Opens each root (absolute paths, checked to be directories by the caller) and the work directory.</summary>
    /// <exception cref="OverlayException">A directory cannot be opened.</exception>
    public static LayerStack Open(IReadOnlyList<string> roots, string? work)
    {
        var handles = new List<SafeFileHandle>();
        try
        {
            foreach (string root in roots)
            {
                handles.Add(OpenRoot(root));
            }
            SafeFileHandle? workHandle = work is null ? null : OpenRoot(work);
            return new LayerStack(handles.ToArray(), roots.ToArray(), workHandle, work);
        }
        catch
        {
            foreach (SafeFileHandle handle in handles)
            {
                handle.Dispose();
            }
            throw;
        }
    }

    private static SafeFileHandle OpenRoot(string path)
    {
        int flags = LibC.O_PATH | NativeConvert.FromOpenFlags(OpenFlags.O_DIRECTORY | OpenFlags.O_CLOEXEC);
        int fd = LibC.openat(LibC.AT_FDCWD, path, flags, 0);
        if (fd < 0)
        {
            throw OverlayException.FromLastError("open layer directory", path);
        }
        var handle = new SafeFileHandle(fd, ownsHandle: true);
        if (Syscall.lstat($"/proc/self/fd/{fd}/.", out _) != 0)
        {
            handle.Dispose();
            throw new OverlayException(Errno.ENOSYS, $"{path}: /proc/self/fd is not usable (is /proc mounted?); the overlay reaches its layers through it");
        }
        return handle;
    }

    /// <summary>How many layers.</summary>
    public int Count => _roots.Length;

    /// <summary>The path a layer was given as, for messages.</summary>
    public string NameOf(int layer) => _names[layer];

    /// <summary>A layer's path as given plus <paramref name="relative"/>, for messages and log lines only.</summary>
    public string Describe(int layer, string relative) => relative.Length == 0 ? _names[layer] : LayerPaths.Join(_names[layer], relative);

    /// <summary>The root of a layer (borrowed: disposing it does nothing).</summary>
    public LayerDir Root(int layer) => new(RootFd(layer), owned: false);

    /// <summary>The work directory's scratch folder (borrowed).</summary>
    public LayerDir Work => new((int)(_work ?? throw new InvalidOperationException("no work directory")).DangerousGetHandle(), owned: false);

    /// <summary>The work directory as given, for messages.</summary>
    public string WorkName => _workName ?? "";

    private int RootFd(int layer) => (int)_roots[layer].DangerousGetHandle();

    /// <summary>
    /// Opens directory <paramref name="relative"/> of <paramref name="layer"/> ("" is the root, borrowed) beneath its
    /// root, following no symbolic link; the errno on failure (ENOENT, ENOTDIR, ELOOP for a link on the way, EXDEV
    /// for an escape).
    /// </summary>
    public Errno TryOpenDirectory(int layer, string relative, out LayerDir directory)
    {
        directory = Root(layer);
        if (relative.Length == 0)
        {
            return 0;
        }
        var kept = _directories[layer];
        if (kept.TryGetValue(relative, out SafeFileHandle? known))
        {
            directory = new LayerDir((int)known.DangerousGetHandle(), owned: false);
            return 0;
        }
        Errno errno = OpenUncached(layer, relative, out LayerDir opened);
        if (errno != 0 || Volatile.Read(ref _keptCount) >= MaxKeptDirectories)
        {
            directory = opened;
            return errno;
        }
        var handle = new SafeFileHandle(opened.Fd, ownsHandle: true);
        SafeFileHandle winner = kept.GetOrAdd(relative, handle);
        if (winner != handle)
        {
            handle.Dispose(); // another reader opened it at the same time
        }
        else
        {
            Interlocked.Increment(ref _keptCount);
        }
        directory = new LayerDir((int)winner.DangerousGetHandle(), owned: false);
        return 0;
    }

    /// <summary>
    /// Drops the kept handles of <paramref name="layer"/>'s directories. Call it, under the overlay's write lock (no
    /// reader holds a borrowed handle then), after a directory of that layer was renamed, removed or replaced: a kept
    /// handle follows its directory, and the path it was kept under may now name another one, or none.
    /// </summary>
    public void ForgetDirectories(int layer)
    {
        var kept = _directories[layer];
        foreach (string key in kept.Keys)
        {
            if (kept.TryRemove(key, out SafeFileHandle? handle))
            {
                Interlocked.Decrement(ref _keptCount);
                handle.Dispose();
            }
        }
    }

    private Errno OpenUncached(int layer, string relative, out LayerDir directory)
    {
        int fd = RootFd(layer);
        bool owned = false;
        string rest = relative;
        while (rest.Length > 0)
        {
            // openat2 takes at most PATH_MAX bytes: a longer path is opened a part at a time.
            string part = rest;
            if (Encoding.UTF8.GetByteCount(rest) > MaxPart)
            {
                int cut = rest.LastIndexOf('/', Math.Min(rest.Length - 1, MaxPart));
                while (cut > 0 && Encoding.UTF8.GetByteCount(rest.AsSpan(0, cut)) > MaxPart)
                {
                    cut = rest.LastIndexOf('/', cut - 1);
                }
                part = cut > 0 ? rest[..cut] : rest;
            }
            rest = part.Length == rest.Length ? "" : rest[(part.Length + 1)..];
            int next = OpenBeneath(fd, part);
            Errno errno = next < 0 ? Stdlib.GetLastError() : 0;
            if (owned)
            {
                LibC.close(fd);
            }
            if (next < 0)
            {
                directory = default;
                return errno;
            }
            fd = next;
            owned = true;
        }
        directory = new LayerDir(fd, owned);
        return 0;
    }

    /// <summary>As <see cref="TryOpenDirectory"/>, throwing an <see cref="OverlayException"/> with the errno.</summary>
    public LayerDir OpenDirectory(int layer, string relative)
    {
        Errno errno = TryOpenDirectory(layer, relative, out LayerDir directory);
        return errno == 0 ? directory : throw new OverlayException(errno, $"{Describe(layer, relative)}: {Stdlib.strerror(errno)}");
    }

    /// <summary>The object at <paramref name="relative"/> of <paramref name="layer"/>: its directory opened, and its name.</summary>
    public Errno TryLocate(int layer, string relative, out LayerPath path)
    {
        int slash = relative.LastIndexOf('/');
        Errno errno = TryOpenDirectory(layer, slash < 0 ? "" : relative[..slash], out LayerDir directory);
        path = errno == 0 ? new LayerPath(directory, slash < 0 ? relative : relative[(slash + 1)..]) : default;
        return errno;
    }

    /// <summary>As <see cref="TryLocate"/>, throwing an <see cref="OverlayException"/> with the errno.</summary>
    public LayerPath Locate(int layer, string relative)
    {
        Errno errno = TryLocate(layer, relative, out LayerPath path);
        return errno == 0 ? path : throw new OverlayException(errno, $"{Describe(layer, relative)}: {Stdlib.strerror(errno)}");
    }

    /// <summary>
    /// lstat of <paramref name="name"/> in <paramref name="directory"/> ("" for the directory itself) with one
    /// <c>statx</c> relative to its handle: no path walk through <c>/proc</c>, which the lookups' hot path would pay.
    /// </summary>
    /// <returns>0, or -1 with the errno set (read it with <see cref="Stdlib.GetLastError"/>).</returns>
    public static unsafe int Lstat(LayerDir directory, string name, out Stat st)
    {
        LibC.Statx x;
        int flags = LibC.AT_SYMLINK_NOFOLLOW | (name.Length == 0 ? LibC.AT_EMPTY_PATH : 0);
        if (LibC.statx(directory.Fd, name, flags, LibC.STATX_BASIC_STATS, &x) != 0)
        {
            st = default;
            return -1;
        }
        st = new Stat
        {
            st_dev = LibC.MakeDev(x.stx_dev_major, x.stx_dev_minor),
            st_ino = x.stx_ino,
            st_mode = (FilePermissions)x.stx_mode,
            st_nlink = x.stx_nlink,
            st_uid = x.stx_uid,
            st_gid = x.stx_gid,
            st_rdev = LibC.MakeDev(x.stx_rdev_major, x.stx_rdev_minor),
            st_size = (long)x.stx_size,
            st_blksize = x.stx_blksize,
            st_blocks = (long)x.stx_blocks,
            st_atime = x.stx_atime.tv_sec,
            st_atime_nsec = x.stx_atime.tv_nsec,
            st_mtime = x.stx_mtime.tv_sec,
            st_mtime_nsec = x.stx_mtime.tv_nsec,
            st_ctime = x.stx_ctime.tv_sec,
            st_ctime_nsec = x.stx_ctime.tv_nsec,
        };
        return 0;
    }

    /// <inheritdoc cref="Lstat(LayerDir, string, out Stat)"/>
    public static int Lstat(LayerPath path, out Stat st) => Lstat(path.Directory, path.Name, out st);

    /// <summary>openat2 with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS; before Linux 5.6, one openat(O_NOFOLLOW) a
    /// component, which is as strict for the names the overlay builds (never "..").</summary>
    private static int OpenBeneath(int dirfd, string relative)
    {
        int flags = LibC.O_PATH | NativeConvert.FromOpenFlags(OpenFlags.O_DIRECTORY | OpenFlags.O_CLOEXEC | OpenFlags.O_NOFOLLOW);
        if (Volatile.Read(ref s_noOpenat2) == 0)
        {
            int fd = LibC.openat2(dirfd, relative, (ulong)(uint)flags,
                LibC.RESOLVE_BENEATH | LibC.RESOLVE_NO_SYMLINKS | LibC.RESOLVE_NO_MAGICLINKS);
            if (fd >= 0 || Marshal.GetLastPInvokeError() != LibC.ENOSYS)
            {
                return fd;
            }
            Volatile.Write(ref s_noOpenat2, 1);
        }
        int current = dirfd;
        foreach (string name in relative.Split('/'))
        {
            if (name is "" or "." or "..")
            {
                if (current != dirfd)
                {
                    LibC.close(current);
                }
                Marshal.SetLastPInvokeError(NativeConvert.FromErrno(Errno.EXDEV));
                return -1;
            }
            int next = LibC.openat(current, name, flags, 0);
            Errno errno = next < 0 ? Stdlib.GetLastError() : 0;
            if (current != dirfd)
            {
                LibC.close(current);
            }
            if (next < 0)
            {
                Marshal.SetLastPInvokeError(NativeConvert.FromErrno(errno));
                return -1;
            }
            current = next;
        }
        return current;
    }

    /// <summary>Closes every handle. Paths handed out before stop working.</summary>
    public void Dispose()
    {
        foreach (var layerTable in _directories)
        {
            foreach (SafeFileHandle kept in layerTable.Values)
            {
                kept.Dispose();
            }
            layerTable.Clear();
        }
        _keptCount = 0;
        foreach (SafeFileHandle root in _roots)
        {
            root.Dispose();
        }
        _work?.Dispose();
    }
}

/// <summary>A directory inside a layer, open as an <c>O_PATH</c> handle; objects in it are named through
/// <c>/proc/self/fd/N/NAME</c>, one component below the handle. Disposing closes the handle if it was opened for
/// this use (a layer root is borrowed).</summary>
internal readonly struct LayerDir(int fd, bool owned) : IDisposable
{
    public int Fd { get; } = fd;

    /// <summary>The directory itself (a path that ends inside it, so l* calls act on the directory).</summary>
    public string Self => $"/proc/self/fd/{Fd}/.";

    /// <summary>The object <paramref name="name"/> (one component) in this directory.</summary>
    public string At(string name) => $"/proc/self/fd/{Fd}/{name}";

    public void Dispose()
    {
        if (owned)
        {
            LibC.close(Fd);
        }
    }
}

/// <summary>An object inside a layer: its directory's handle and its name ("" for the directory itself, a layer root).</summary>
internal readonly struct LayerPath(LayerDir directory, string name) : IDisposable
{
    public LayerDir Directory { get; } = directory;

    public string Name { get; } = name;

    /// <summary>A path to the object, valid while this is not disposed.</summary>
    public string Path => Name.Length == 0 ? Directory.Self : Directory.At(Name);

    public void Dispose() => Directory.Dispose();
}
