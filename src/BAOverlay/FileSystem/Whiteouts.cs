using Mono.Unix.Native;

namespace BAOverlay.FileSystem;

/// <summary>
/// The on-disk conventions that hide lower objects, shared with kernel overlayfs, fuse-overlayfs and OCI layers.
/// Read in every layer: a 0/0 character device named NAME, or a file <c>.wh.NAME</c>, hides NAME in the layers
/// below; a directory is opaque (hides everything below it) with <c>trusted.overlay.opaque=y</c>,
/// <c>user.overlay.opaque=y</c>, <c>user.fuseoverlayfs.opaque=y</c>, or a <c>.wh..wh..opq</c> entry.
/// Written: a 0/0 character device where mknod is allowed, else <c>.wh.NAME</c>; opaque as
/// <c>trusted.overlay.opaque</c> when running as root, else <c>user.overlay.opaque</c>.
/// </summary>
internal static class Whiteouts
{
    public const string Prefix = ".wh.";
    public const string OpaqueMarker = ".wh..wh..opq";
    public static readonly string[] OpaqueXattrs = ["trusted.overlay.opaque", "user.overlay.opaque", "user.fuseoverlayfs.opaque"];

    /// <summary>Extended attributes of the overlay itself, hidden from users.</summary>
    public static bool IsPrivateXattr(string name) =>
        name.StartsWith("trusted.overlay.", StringComparison.Ordinal) ||
        name.StartsWith("user.overlay.", StringComparison.Ordinal) ||
        name.StartsWith("user.fuseoverlayfs.", StringComparison.Ordinal) ||
        name.StartsWith(LayerPaths.XattrPrefix, StringComparison.Ordinal) ||
        name.StartsWith("trusted.baoverlay.", StringComparison.Ordinal);

    /// <summary>A name that only the whiteout convention may use.</summary>
    public static bool IsReservedName(string name) => name.StartsWith(Prefix, StringComparison.Ordinal);

    public static bool IsWhiteoutStat(in Stat st) =>
        (st.st_mode & FilePermissions.S_IFMT) == FilePermissions.S_IFCHR && st.st_rdev == 0;

    /// <summary>True when <paramref name="name"/> is whited out in <paramref name="directory"/> of one layer.</summary>
    public static bool IsWhitedOut(string directory, string name, out bool exists)
    {
        exists = false;
        string path = LayerPaths.Join(directory, name);
        if (Syscall.lstat(path, out Stat st) == 0)
        {
            exists = true;
            return IsWhiteoutStat(st);
        }
        return Syscall.lstat(LayerPaths.Join(directory, Prefix + name), out _) == 0;
    }

    public static bool IsOpaque(string directory)
    {
        return IsOpaqueByXattr(directory) || Syscall.lstat(LayerPaths.Join(directory, OpaqueMarker), out _) == 0;
    }

    private static readonly string[] RedirectXattrs = ["user.baoverlay.redirect", "trusted.overlay.redirect", "user.overlay.redirect"];
    private static readonly byte[][] OpaqueNames = [.. OpaqueXattrs.Select(System.Text.Encoding.UTF8.GetBytes)];
    private static readonly byte[][] RedirectNames = [.. RedirectXattrs.Select(System.Text.Encoding.UTF8.GetBytes)];

    /// <summary>
    /// What a directory's xattrs tell a lookup, from one listxattr: whether an opaque xattr says exactly <c>y</c>, and
    /// whether a redirect xattr is there (read by <see cref="Redirects.Read"/>). The <c>.wh..wh..opq</c> entry is the
    /// caller's to check.
    /// </summary>
    public static unsafe (bool Opaque, bool Redirected) DirectoryXattrs(string directory)
    {
        const int Small = 1024;
        byte* small = stackalloc byte[Small];
        nint length = BAOverlay.Interop.LibC.llistxattr(directory, small, Small);
        if (length < 0)
        {
            // Too many to list in the small buffer, or no listing at all: ask for each name.
            bool opaqueByName = IsOpaqueByXattr(directory);
            bool redirected = false;
            foreach (string name in RedirectXattrs)
            {
                redirected |= BAOverlay.Interop.LibC.lgetxattr(directory, name, null, 0) >= 0;
            }
            return (opaqueByName, redirected);
        }
        var list = new ReadOnlySpan<byte>(small, (int)length);
        bool opaque = false, redirect = false;
        while (!list.IsEmpty)
        {
            int end = list.IndexOf((byte)0);
            ReadOnlySpan<byte> entry = end < 0 ? list : list[..end];
            foreach (byte[] name in OpaqueNames)
            {
                opaque |= entry.SequenceEqual(name);
            }
            foreach (byte[] name in RedirectNames)
            {
                redirect |= entry.SequenceEqual(name);
            }
            list = end < 0 ? default : list[(end + 1)..];
        }
        return (opaque && IsOpaqueByXattr(directory), redirect);
    }

    private static bool IsOpaqueByXattr(string directory)
    {
        foreach (string xattr in OpaqueXattrs)
        {
            if (Syscall.lgetxattr(directory, xattr, out byte[] value) == 1 && value[0] == (byte)'y') // exactly "y", as the kernel reads it
            {
                return true;
            }
        }
        return false;
    }

    /// <summary>Hides <paramref name="name"/> in the layers below <paramref name="directory"/> (an upper directory).</summary>
    public static void Create(string directory, string name)
    {
        string path = LayerPaths.Join(directory, name);
        if (Syscall.mknod(path, FilePermissions.S_IFCHR, 0) == 0)
        {
            return;
        }
        Errno errno = Stdlib.GetLastError();
        if (errno != Errno.EPERM && errno != Errno.EACCES && errno != Errno.EEXIST) // EEXIST: the object is still there
        {
            throw new OverlayException(errno, $"{path}: cannot create a whiteout: {Stdlib.strerror(errno)}");
        }
        // No CAP_MKNOD (rootless), or the object to hide is removed after: the OCI form, which every layer reader here
        // understands too.
        int fd = Syscall.open(LayerPaths.Join(directory, Prefix + name), OpenFlags.O_CREAT | OpenFlags.O_WRONLY | OpenFlags.O_EXCL, FilePermissions.S_IRUSR);
        if (fd < 0)
        {
            throw OverlayException.FromLastError("cannot create a whiteout", LayerPaths.Join(directory, Prefix + name));
        }
        Syscall.close(fd);
    }

    /// <summary>Removes a whiteout for <paramref name="name"/> in <paramref name="directory"/>, in either form, if present.</summary>
    public static void Remove(string directory, string name)
    {
        string path = LayerPaths.Join(directory, name);
        if (Syscall.lstat(path, out Stat st) == 0 && IsWhiteoutStat(st))
        {
            Syscall.unlink(path);
        }
        Syscall.unlink(LayerPaths.Join(directory, Prefix + name));
    }

    public static void MakeOpaque(string directory)
    {
        byte[] y = "y"u8.ToArray();
        if (Syscall.lsetxattr(directory, "trusted.overlay.opaque", y, XattrFlags.XATTR_AUTO) == 0 ||
            Syscall.lsetxattr(directory, "user.overlay.opaque", y, XattrFlags.XATTR_AUTO) == 0)
        {
            return;
        }
        int fd = Syscall.open(LayerPaths.Join(directory, OpaqueMarker), OpenFlags.O_CREAT | OpenFlags.O_WRONLY, FilePermissions.S_IRUSR);
        if (fd < 0)
        {
            throw OverlayException.FromLastError("cannot mark the directory opaque", directory);
        }
        Syscall.close(fd);
    }
}
