using System.Runtime.InteropServices;
using System.Text;
using BAOverlay.Interop;
using Microsoft.Win32.SafeHandles;
using Mono.Unix.Native;

namespace BAOverlay.Store;

/// <summary>
/// An open directory of a tree, and the one-name operations relative to it. A child directory is opened with
/// <c>openat(O_DIRECTORY | O_NOFOLLOW)</c> and everything else is reached as <c>/proc/self/fd/N/NAME</c> with the calls
/// that do not follow a final symbolic link (<c>lstat</c>, <c>lgetxattr</c>, <c>readlink</c>, <c>open(O_NOFOLLOW)</c>):
/// so a walk never leaves the directory it started from, whatever the tree holds (symbolic links to <c>/</c>, names
/// swapped while it runs), and no path is ever longer than one name.
/// </summary>
internal sealed class StoreDirectory : IDisposable
{
    private static readonly UTF8Encoding s_strictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    private readonly SafeFileHandle _handle;

    private StoreDirectory(SafeFileHandle handle, string described)
    {
        _handle = handle;
        Described = described;
    }

    /// <summary>The directory's path as messages name it (the path it was opened by, for a child its parent's plus its name).</summary>
    public string Described { get; }

    public int Fd => (int)_handle.DangerousGetHandle();

    /// <summary>The directory itself, for calls on it (its xattrs).</summary>
    public string Self => $"/proc/self/fd/{Fd}/.";

    /// <summary>A name in the directory, for a call that does not follow a final symbolic link.</summary>
    public string At(string name) => $"/proc/self/fd/{Fd}/{name}";

    public string Describe(string name) => Described + "/" + name;

    private static readonly int DirectoryFlags = NativeConvert.FromOpenFlags(OpenFlags.O_RDONLY | OpenFlags.O_DIRECTORY | OpenFlags.O_NOFOLLOW | OpenFlags.O_CLOEXEC);

    /// <summary>Opens <paramref name="path"/> (its last component must not be a symbolic link).</summary>
    /// <exception cref="LayerStoreException">It does not exist, is not a directory, or cannot be opened.</exception>
    public static StoreDirectory Open(string path)
    {
        int fd = LibC.openat(LibC.AT_FDCWD, path, DirectoryFlags, 0);
        if (fd < 0)
        {
            throw Failure(path, "cannot open the directory");
        }
        return new StoreDirectory(new SafeFileHandle(fd, ownsHandle: true), path);
    }

    /// <summary>Opens the child directory <paramref name="name"/>, or returns null when it does not exist.</summary>
    /// <exception cref="LayerStoreException">It is a symbolic link or not a directory, or cannot be opened.</exception>
    public StoreDirectory? TryOpenChild(string name)
    {
        int fd = LibC.openat(Fd, name, DirectoryFlags, 0);
        if (fd >= 0)
        {
            return new StoreDirectory(new SafeFileHandle(fd, ownsHandle: true), Describe(name));
        }
        Errno errno = NativeConvert.ToErrno(Marshal.GetLastPInvokeError());
        if (errno == Errno.ENOENT)
        {
            return null;
        }
        if (errno is Errno.ELOOP or Errno.ENOTDIR)
        {
            throw new LayerStoreException(Describe(name), "not a directory (a symbolic link or another kind of file): the store never follows one");
        }
        throw new LayerStoreException(Describe(name), $"cannot open the directory: {Stdlib.strerror(errno)}");
    }

    /// <summary>A second handle on the same directory, described as this one.</summary>
    public StoreDirectory Reopen()
    {
        int fd = LibC.openat(Fd, ".", DirectoryFlags, 0);
        if (fd < 0)
        {
            throw Failure(Described, "cannot open the directory");
        }
        return new StoreDirectory(new SafeFileHandle(fd, ownsHandle: true), Described);
    }

    public StoreDirectory OpenChild(string name) =>
        TryOpenChild(name) ?? throw new LayerStoreException(Describe(name), "No such file or directory");

    /// <summary>The names in the directory (not <c>.</c> and <c>..</c>), sorted by their UTF-8 bytes.</summary>
    /// <exception cref="LayerStoreException">It cannot be listed, or a name is not valid UTF-8.</exception>
    public List<string> Names()
    {
        var names = new List<string>();
        try
        {
            foreach (string path in Directory.EnumerateFileSystemEntries($"/proc/self/fd/{Fd}"))
            {
                string name = path[(path.LastIndexOf('/') + 1)..];
                // .NET decodes file names as UTF-8 and replaces what is not with U+FFFD: such a name could neither be
                // reopened nor hashed as it is, so it is refused rather than guessed.
                if (name.Contains('\uFFFD'))
                {
                    throw new LayerStoreException(Describe(name), "the name is not valid UTF-8 (not supported by the store)");
                }
                names.Add(name);
            }
        }
        catch (Exception e) when (e is IOException and not LayerStoreException or UnauthorizedAccessException)
        {
            throw new LayerStoreException(Described, $"cannot list the directory: {e.Message}", e);
        }
        names.Sort(CompareUtf8);
        return names;
    }

    /// <summary>Ordinal order of the UTF-8 bytes (which is not UTF-16 ordinal order past U+FFFF).</summary>
    public static int CompareUtf8(string a, string b)
    {
        Span<byte> x = stackalloc byte[Encoding.UTF8.GetMaxByteCount(Math.Min(a.Length, 256))];
        Span<byte> y = stackalloc byte[Encoding.UTF8.GetMaxByteCount(Math.Min(b.Length, 256))];
        if (a.Length > 256 || b.Length > 256)
        {
            return Encoding.UTF8.GetBytes(a).AsSpan().SequenceCompareTo(Encoding.UTF8.GetBytes(b));
        }
        int nx = Encoding.UTF8.GetBytes(a, x);
        int ny = Encoding.UTF8.GetBytes(b, y);
        return x[..nx].SequenceCompareTo(y[..ny]);
    }

    /// <summary>lstat of a name; false when it does not exist.</summary>
    public bool TryLstat(string name, out Stat stat)
    {
        if (Syscall.lstat(At(name), out stat) == 0)
        {
            return true;
        }
        Errno errno = Stdlib.GetLastError();
        if (errno == Errno.ENOENT)
        {
            return false;
        }
        throw new LayerStoreException(Describe(name), $"cannot read its attributes: {Stdlib.strerror(errno)}");
    }

    public Stat StatSelf()
    {
        if (Syscall.fstat(Fd, out Stat stat) != 0)
        {
            throw Failure(Described, "cannot read its attributes");
        }
        return stat;
    }

    /// <summary>The target of the symbolic link <paramref name="name"/>, as UTF-8.</summary>
    public string ReadLink(string name)
    {
        byte[] buffer = new byte[4096];
        long length = Syscall.readlink(At(name), buffer);
        if (length < 0)
        {
            throw Failure(Describe(name), "cannot read the symbolic link");
        }
        try
        {
            return s_strictUtf8.GetString(buffer, 0, (int)length);
        }
        catch (DecoderFallbackException)
        {
            throw new LayerStoreException(Describe(name), "the symbolic link's target is not valid UTF-8 (not supported by the store)");
        }
    }

    private static readonly int ReadFlags = NativeConvert.FromOpenFlags(OpenFlags.O_RDONLY | OpenFlags.O_NOFOLLOW | OpenFlags.O_NONBLOCK | OpenFlags.O_CLOEXEC);

    /// <summary>Opens the regular file <paramref name="name"/> for reading; checks, on the open file, that it is one
    /// (so a name swapped for a FIFO or a device between a listing and the open is refused, not read).</summary>
    public SafeFileHandle OpenFileForReading(string name, out long length)
    {
        int fd = LibC.openat(Fd, name, ReadFlags, 0);
        if (fd < 0)
        {
            throw Failure(Describe(name), "cannot open the file");
        }
        var handle = new SafeFileHandle(fd, ownsHandle: true);
        if (Syscall.fstat(fd, out Stat stat) != 0 || (stat.st_mode & FilePermissions.S_IFMT) != FilePermissions.S_IFREG)
        {
            handle.Dispose();
            throw new LayerStoreException(Describe(name), "not a regular file");
        }
        length = stat.st_size;
        return handle;
    }

    private static readonly int CreateFlags = NativeConvert.FromOpenFlags(OpenFlags.O_WRONLY | OpenFlags.O_CREAT | OpenFlags.O_EXCL | OpenFlags.O_NOFOLLOW | OpenFlags.O_CLOEXEC);

    /// <summary>Creates the regular file <paramref name="name"/> (which must not exist) for writing, mode 0600.</summary>
    public SafeFileHandle CreateFile(string name)
    {
        int fd = LibC.openat(Fd, name, CreateFlags, 0x180);
        if (fd < 0)
        {
            throw Failure(Describe(name), "cannot create the file");
        }
        return new SafeFileHandle(fd, ownsHandle: true);
    }

    /// <summary>The extended attributes of a name (or of the directory itself when <paramref name="name"/> is null),
    /// sorted by name; null when the file system has none (EOPNOTSUPP). <c>security.selinux</c> is left out: a label
    /// is the host's policy, not the layer's content.</summary>
    public List<(string Name, byte[] Value)>? Xattrs(string? name)
    {
        string path = name is null ? Self : At(name);
        if (Syscall.llistxattr(path, out string[] names) < 0)
        {
            Errno errno = Stdlib.GetLastError();
            if (errno == Errno.EOPNOTSUPP)
            {
                return null;
            }
            throw new LayerStoreException(name is null ? Described : Describe(name), $"cannot list extended attributes: {Stdlib.strerror(errno)}");
        }
        var result = new List<(string, byte[])>();
        foreach (string xattr in names.Where(n => n.Length > 0 && n != "security.selinux").Order(StringComparer.Ordinal))
        {
            if (Syscall.lgetxattr(path, xattr, out byte[] value) < 0)
            {
                Errno errno = Stdlib.GetLastError();
                if (errno == Errno.ENODATA)
                {
                    continue; // removed between the listing and the read
                }
                throw new LayerStoreException(name is null ? Described : Describe(name), $"cannot read extended attribute {xattr}: {Stdlib.strerror(errno)}");
            }
            result.Add((xattr, value ?? []));
        }
        return result;
    }

    /// <summary>fsync of the directory (its entries durable).</summary>
    public void Sync()
    {
        if (Syscall.fsync(Fd) != 0)
        {
            Errno errno = Stdlib.GetLastError();
            // Some network file systems answer EINVAL/ENOSYS for fsync of a directory; their entries are made
            // durable by the server as each operation completes (NFS's COMMIT is for data, not names).
            if (errno is not (Errno.EINVAL or Errno.ENOSYS or Errno.EOPNOTSUPP))
            {
                throw new LayerStoreException(Described, $"cannot make the directory durable (fsync): {Stdlib.strerror(errno)}");
            }
        }
    }

    public static LayerStoreException Failure(string path, string what)
    {
        Errno errno = Stdlib.GetLastError();
        return new LayerStoreException(path, $"{what}: {Stdlib.strerror(errno)}");
    }

    public void Dispose() => _handle.Dispose();
}
