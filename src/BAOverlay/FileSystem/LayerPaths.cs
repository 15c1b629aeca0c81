using System.Text;

namespace BAOverlay.FileSystem;

/// <summary>
/// Paths inside layer roots. The overlay never follows a symbolic link itself, never resolves <c>..</c>, and every
/// component it appends is a single validated name, so nothing it touches lies outside a layer root.
/// </summary>
internal static class LayerPaths
{
    /// <summary>Extended attributes the overlay keeps on upper objects.</summary>
    public const string XattrPrefix = "user.baoverlay.";

    /// <summary>The overlay inode number an object had before copy-up (kept so it never changes).</summary>
    public const string InoXattr = XattrPrefix + "ino";

    /// <summary>The same for objects that cannot carry user.* xattrs (symbolic links, device nodes, fifos), as root.</summary>
    public const string TrustedInoXattr = "trusted.baoverlay.ino";

    /// <summary>Marks an upper regular file that is a B-CoW file over a lower file.</summary>
    public const string BCowXattr = XattrPrefix + "bcow";

    /// <summary>
    /// Marks a B-CoW file a copy-up made without flushing it (so that the open that copies up pays no fsync): until
    /// its first durable commit (fsync, or the commit that closes it) it has no header on stable storage, and a crash
    /// may leave it with none. The overlay removes the mark after that commit; a marked file that cannot be opened is
    /// an unfinished copy-up, which the overlay makes again over its lower file (nothing written into it was made
    /// durable, so nothing acknowledged is lost). An unmarked file that cannot be opened is damaged: EIO.
    /// </summary>
    public const string PendingXattr = XattrPrefix + "pending";

    public const int MaxNameBytes = 255;

    public static string Join(string directory, string name) => directory.EndsWith('/') ? directory + name : directory + "/" + name;

    public static string Join(string root, string relative, string name) =>
        relative.Length == 0 ? Join(root, name) : Join(Join(root, relative), name);

    public static string Child(string relative, string name) => relative.Length == 0 ? name : relative + "/" + name;

    /// <summary>Checks a name from a caller: one component, not <c>.</c> or <c>..</c>, at most 255 bytes.</summary>
    public static void ValidateName(string name)
    {
        if (name.Length == 0 || name.Contains('/') || name.Contains('\0') || name is "." or "..")
        {
            throw new OverlayException(Mono.Unix.Native.Errno.EINVAL, $"invalid name \"{name}\"");
        }
        if (Encoding.UTF8.GetByteCount(name) > MaxNameBytes)
        {
            throw new OverlayException(Mono.Unix.Native.Errno.ENAMETOOLONG, $"name longer than {MaxNameBytes} bytes: {name[..16]}...");
        }
    }
}
