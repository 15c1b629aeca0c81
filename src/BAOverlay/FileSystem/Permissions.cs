using Mono.Unix.Native;

namespace BAOverlay.FileSystem;

/// <summary>
/// Access checks as the kernel makes them for a FUSE mount with <c>default_permissions</c> (generic_permission):
/// owner, then group, then other bits; root passes read and write checks, and exec checks where any exec bit is
/// set (directories are always searchable by root); a sticky directory lets only the owner of an entry, the owner of
/// the directory, or root remove or rename it.
/// </summary>
internal static class Permissions
{
    public const int Read = 4;
    public const int Write = 2;
    public const int Exec = 1;

    public static void Check(in OverlayStat stat, OverlayCaller caller, int mask, string path)
    {
        if (!Allows(stat, caller, mask))
        {
            throw new OverlayException(Errno.EACCES, $"{path}: permission denied");
        }
    }

    public static bool Allows(in OverlayStat stat, OverlayCaller caller, int mask)
    {
        if (caller.AccessChecked)
        {
            return true;
        }
        uint mode = stat.Mode;
        if (caller.Uid == 0)
        {
            return (mask & Exec) == 0 || stat.IsDirectory || (mode & 0x49) != 0; // 0111
        }
        uint bits = caller.Uid == stat.Uid ? (mode >> 6) & 7 : InGroup(caller, stat.Gid) ? (mode >> 3) & 7 : mode & 7;
        return (bits & (uint)mask) == (uint)mask;
    }

    public static bool InGroup(OverlayCaller caller, uint gid) => caller.Gid == gid || (caller.Groups?.Contains(gid) ?? false);

    /// <summary>The sticky-directory rule for removing or renaming <paramref name="entry"/> out of <paramref name="directory"/>.</summary>
    public static void CheckSticky(in OverlayStat directory, in OverlayStat entry, OverlayCaller caller, string path)
    {
        const uint sticky = 0x200; // S_ISVTX
        if (!caller.AccessChecked && (directory.Mode & sticky) != 0 && caller.Uid != 0 && caller.Uid != entry.Uid && caller.Uid != directory.Uid)
        {
            throw new OverlayException(Errno.EPERM, $"{path}: the directory is sticky and the caller owns neither it nor the entry");
        }
    }

    /// <summary>What <c>chmod</c>, <c>chown</c>, <c>utimens</c> and <c>truncate</c> require (notify_change/setattr_prepare).</summary>
    public static void CheckSetAttr(in OverlayStat stat, OverlaySetAttr change, OverlayCaller caller, string path)
    {
        if (caller.AccessChecked)
        {
            return;
        }
        bool owner = caller.Uid == 0 || caller.Uid == stat.Uid;
        if (change.Mode is not null && !owner)
        {
            throw new OverlayException(Errno.EPERM, $"{path}: only the owner may change the mode");
        }
        if (change.Uid is uint uid && uid != stat.Uid && caller.Uid != 0)
        {
            throw new OverlayException(Errno.EPERM, $"{path}: only root may change the owner");
        }
        if (change.Gid is uint gid && gid != stat.Gid && caller.Uid != 0 && !(caller.Uid == stat.Uid && InGroup(caller, gid)))
        {
            throw new OverlayException(Errno.EPERM, $"{path}: the owner may only change the group to one of its own");
        }
        bool explicitTime = change.ATimeNs is long a && a != OverlaySetAttr.Now || change.MTimeNs is long m && m != OverlaySetAttr.Now;
        bool nowTime = change.ATimeNs == OverlaySetAttr.Now || change.MTimeNs == OverlaySetAttr.Now;
        if (explicitTime && !owner)
        {
            throw new OverlayException(Errno.EPERM, $"{path}: only the owner may set explicit times");
        }
        if (nowTime && !owner && !Allows(stat, caller, Write))
        {
            throw new OverlayException(Errno.EACCES, $"{path}: permission denied");
        }
        if (change.Size is not null && !Allows(stat, caller, Write))
        {
            throw new OverlayException(Errno.EACCES, $"{path}: permission denied");
        }
    }
}
