using System.Text;
using Mono.Unix.Native;

namespace BAOverlay.FileSystem;

/// <summary>
/// A renamed directory that has parts in lower layers carries the path of those parts (relative to the layer roots)
/// in <c>user.baoverlay.redirect</c>; lookups find its lower parts there instead of under its new name. Kernel
/// overlayfs' <c>trusted.overlay.redirect</c> (absolute from the root with a leading <c>/</c>, or a name relative to
/// the parent) is read too.
/// </summary>
internal static class Redirects
{
    public const string Xattr = LayerPaths.XattrPrefix + "redirect";
    private const string KernelXattr = "trusted.overlay.redirect";

    /// <summary>The lower path a directory at <paramref name="upperPath"/> redirects to, or null.</summary>
    public static string? Read(string upperPath, string parentPath)
    {
        if (Syscall.lgetxattr(upperPath, Xattr, out byte[] value) > 0)
        {
            return Encoding.UTF8.GetString(value);
        }
        if (Syscall.lgetxattr(upperPath, KernelXattr, out value) > 0)
        {
            string redirect = Encoding.UTF8.GetString(value);
            return redirect.StartsWith('/') ? redirect.TrimStart('/') : LayerPaths.Child(parentPath, redirect);
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
}
