using System.Text;
using Mono.Unix.Native;

namespace BAOverlay.FileSystem;

/// <summary>
/// Where the parts of a renamed object lie in the layers below it. A renamed directory that has parts in lower
/// layers carries the path of those parts (relative to the layer roots) in <c>user.baoverlay.redirect</c>; lookups
/// find its lower parts there instead of under its new name. Kernel overlayfs' <c>trusted.overlay.redirect</c> (and
/// <c>user.overlay.redirect</c> of a <c>userxattr</c> mount) is read too: absolute from the root with a leading
/// <c>/</c>, or one name relative to the parent. A B-CoW file records the same way where its lower file lies, so the
/// overlay finds it by position in the layers after a rename or a hard link. Every value is read from disk and so is
/// untrusted: it must be a relative path of plain names (no <c>..</c>, <c>.</c>, empty names or NUL), and it is then
/// only ever opened beneath a layer root (<see cref="LayerStack"/>). A value that is not is ignored with a log line
/// naming the file that carries it.
/// </summary>
internal static class Redirects
{
    public const string Xattr = LayerPaths.XattrPrefix + "redirect";
    private const string KernelXattr = "trusted.overlay.redirect";
    private const string KernelUserXattr = "user.overlay.redirect";

    /// <summary>The lower path a directory at <paramref name="path"/> redirects to, checked, or null.</summary>
    /// <param name="path">A path reaching the directory.</param>
    /// <param name="parentPath">Its parent's path in the same layer (for the kernel's relative form).</param>
    /// <param name="described">The directory, as named in a log line.</param>
    /// <param name="log">Where a refused value is reported.</param>
    public static string? Read(string path, string parentPath, string described, Action<string> log)
    {
        if (Syscall.lgetxattr(path, Xattr, out byte[] value) > 0)
        {
            return Checked(Encoding.UTF8.GetString(value), described, log);
        }
        foreach (string kernel in (ReadOnlySpan<string>)[KernelXattr, KernelUserXattr])
        {
            if (Syscall.lgetxattr(path, kernel, out value) > 0)
            {
                string redirect = Encoding.UTF8.GetString(value);
                if (redirect.StartsWith('/'))
                {
                    return Checked(redirect[1..], described, log);
                }
                // Relative: one name in the same parent directory.
                return redirect.Contains('/') ? Refuse(redirect, "a relative redirect must be one name", described, log)
                    : Checked(LayerPaths.Child(parentPath, redirect), described, log);
            }
        }
        return null;
    }

    /// <summary>Records the redirect; as root also in the kernel's form (absolute), so a kernel overlayfs mounted with
    /// <c>redirect_dir=on</c> over the same upper directory finds the lower parts too. Root of a user namespace
    /// (rootless containers) may not write trusted.* (EPERM): it keeps the user xattr alone, which is all this overlay
    /// reads first.</summary>
    public static void Write(string upperPath, string lowerPath, bool privileged)
    {
        if (Syscall.lsetxattr(upperPath, Xattr, Encoding.UTF8.GetBytes(lowerPath), XattrFlags.XATTR_AUTO) != 0)
        {
            throw OverlayException.FromLastError("record the directory's redirect (user xattrs needed on the upper file system)", upperPath);
        }
        if (privileged && Syscall.lsetxattr(upperPath, KernelXattr, Encoding.UTF8.GetBytes("/" + lowerPath), XattrFlags.XATTR_AUTO) != 0
            && Stdlib.GetLastError() != Errno.EPERM)
        {
            throw OverlayException.FromLastError("record the directory's redirect", upperPath);
        }
    }

    /// <summary>Records where a B-CoW file's lower file lies (its path in the layers below the file's own).</summary>
    public static void WriteLowerPosition(string bcowPath, string lowerPath, string described)
    {
        if (Syscall.lsetxattr(bcowPath, Xattr, Encoding.UTF8.GetBytes(lowerPath), XattrFlags.XATTR_AUTO) != 0)
        {
            throw OverlayException.FromLastError("record where the B-CoW file's lower file lies", described);
        }
    }

    /// <summary>Where a B-CoW file's lower file lies, checked; null when not recorded (or refused).</summary>
    public static string? ReadLowerPosition(string bcowPath, string described, Action<string> log) =>
        Syscall.lgetxattr(bcowPath, Xattr, out byte[] value) > 0 ? Checked(Encoding.UTF8.GetString(value), described, log) : null;

    /// <summary>The value if it is a relative path of plain names, else null with a log line.</summary>
    internal static string? Checked(string value, string described, Action<string> log)
    {
        if (value.Length == 0 || value.Contains('\0'))
        {
            return Refuse(value, "empty or holds a NUL", described, log);
        }
        foreach (string name in value.Split('/'))
        {
            if (name is "" or "." or "..")
            {
                return Refuse(value, "not a path of plain names inside the layers", described, log);
            }
            if (Encoding.UTF8.GetByteCount(name) > LayerPaths.MaxNameBytes)
            {
                return Refuse(value, "a name longer than 255 bytes", described, log);
            }
        }
        return value;
    }

    private static string? Refuse(string value, string why, string described, Action<string> log)
    {
        log($"{described}: redirect \"{value}\" refused ({why}); its lower parts are not followed");
        return null;
    }
}
