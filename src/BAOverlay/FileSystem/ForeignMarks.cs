using Mono.Unix.Native;

namespace BAOverlay.FileSystem;

/// <summary>
/// Answers "how does another overlay implementation know a B-CoW file is not its content?". A B-CoW file holds only
/// the written blocks; any other overlay mounted over the same upper directory would otherwise serve those raw bytes as
/// the file (a 512 MiB file read as 90 112 bytes) and a container engine would commit them. So every B-CoW file also
/// carries a kernel overlayfs metacopy record with a deliberately invalid value: one byte, below the kernel's 4-byte
/// minimum (<c>OVL_METACOPY_MIN_SIZE</c>). Linux 6.18 then fails lookup of the file with <c>EIO</c> ("metacopy file
/// 'NAME' has too small xattr" in the kernel log) with or without <c>metacopy=on</c>, <c>redirect_dir</c>,
/// <c>index</c>, <c>xino</c>, in the upper layer and in a lower one. An empty or well-sized value would not do: with
/// <c>metacopy=on</c> the kernel would serve the lower file's bytes under the upper size, wrong bytes again.
/// <c>trusted.overlay.metacopy</c> is read by a default mount, <c>user.overlay.metacopy</c> by a <c>userxattr</c>
/// (rootless) mount; both are written where allowed (trusted.* needs root of the initial namespace).
/// fuse-overlayfs 1.10 reads no per-file record that could stop it (it reads only opaque, origin and a per-layer
/// override_stat) and shows the raw bytes whatever is written: the remedy there is <c>bcow export --in-place</c>
/// (<see cref="UpperExport.ToPlainInPlace"/>). See docs/overlay-semantics.md.
/// This overlay never reads these records (trusted.overlay.* and user.overlay.* are private, hidden from users);
/// the upper export recognises them on a B-CoW file as this mark, not as a kernel metacopy file.
/// </summary>
internal static class ForeignMarks
{
    public const string KernelXattr = "trusted.overlay.metacopy";
    public const string KernelUserXattr = "user.overlay.metacopy";

    /// <summary>The mark's value: one byte, an invalid metacopy record for every kernel that knows metacopy.</summary>
    private static readonly byte[] s_value = "B"u8.ToArray();

    public static bool IsMetacopyXattr(string name) => name is KernelXattr or KernelUserXattr;

    /// <summary>True when <paramref name="value"/> of a metacopy xattr is this mark (and not a kernel record).</summary>
    public static bool IsMark(ReadOnlySpan<byte> value) => value.SequenceEqual(s_value);

    /// <summary>Marks a new B-CoW file. The user.* form is required (the file already carries user.baoverlay.bcow, so
    /// user xattrs work there); the trusted.* form is written when allowed and skipped with EPERM (not root).</summary>
    /// <exception cref="OverlayException">The user.* mark cannot be written.</exception>
    public static void Write(string path, string described)
    {
        if (Syscall.lsetxattr(path, KernelXattr, s_value, XattrFlags.XATTR_AUTO) != 0)
        {
            Errno errno = Stdlib.GetLastError();
            if (errno is not (Errno.EPERM or Errno.EACCES or Errno.EOPNOTSUPP))
            {
                throw new OverlayException(errno, $"{described}: mark the B-CoW file for kernel overlayfs: {Stdlib.strerror(errno)}");
            }
        }
        if (Syscall.lsetxattr(path, KernelUserXattr, s_value, XattrFlags.XATTR_AUTO) != 0)
        {
            throw OverlayException.FromLastError("mark the B-CoW file for kernel overlayfs (user xattrs needed on the upper file system)", described);
        }
    }
}
