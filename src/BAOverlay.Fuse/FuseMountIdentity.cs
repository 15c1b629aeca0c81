using System.Buffers.Binary;
using System.Globalization;
using System.Runtime.InteropServices;
using BAOverlay.Fuse.Interop;

namespace BAOverlay.Fuse;

/// <summary>
/// Which mount is ours: the device number of the FUSE connection's superblock (<c>makedev(0, N)</c>, N the connection
/// number of <c>/sys/fs/fuse/connections/N</c>) and the mount's id, read when the mount is made. A mount point is a
/// path, and once a mount is gone (or lazily detached) the path may name someone else's mount; unmounting goes through
/// <see cref="DetachIfSame"/>, which checks this identity on an <c>O_PATH</c> descriptor of the path and unmounts
/// through that descriptor (<c>umount2("/proc/self/fd/N")</c>: the kernel follows the magic link to exactly the mount
/// the descriptor holds), so what was checked is what is unmounted.
/// </summary>
/// <param name="DeviceMajor">Major of the superblock's device number (0 for FUSE).</param>
/// <param name="DeviceMinor">Minor of the superblock's device number (the FUSE connection number).</param>
/// <param name="MountId">The mount's id: <c>STATX_MNT_ID_UNIQUE</c> (Linux 6.8+, never reused) when
/// <paramref name="UniqueMountId"/>, else mountinfo's id (reused once the mount is gone), 0 when the kernel has neither.</param>
/// <param name="UniqueMountId">True when <paramref name="MountId"/> is never reused.</param>
public readonly record struct FuseMountIdentity(uint DeviceMajor, uint DeviceMinor, ulong MountId, bool UniqueMountId)
{
    /// <summary>The identity as one token (<c>MAJOR:MINOR:MOUNTID:u|r</c>), for another process (the auto_unmount watcher).</summary>
    public override string ToString() =>
        string.Create(CultureInfo.InvariantCulture, $"{DeviceMajor}:{DeviceMinor}:{MountId}:{(UniqueMountId ? 'u' : 'r')}");

    /// <summary>Reads a token made by <see cref="ToString"/>.</summary>
    /// <exception cref="FormatException">Not such a token.</exception>
    public static FuseMountIdentity Parse(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        string[] parts = text.Split(':');
        if (parts.Length != 4 || parts[3] is not ("u" or "r"))
        {
            throw new FormatException($"'{text}' is not a mount identity (MAJOR:MINOR:MOUNTID:u|r)");
        }
        return new FuseMountIdentity(uint.Parse(parts[0], CultureInfo.InvariantCulture), uint.Parse(parts[1], CultureInfo.InvariantCulture),
            ulong.Parse(parts[2], CultureInfo.InvariantCulture), parts[3] == "u");
    }

    /// <summary>
    /// The identity of the mount whose root <paramref name="mountPoint"/> is, or null when it is not the root of a mount.
    /// Makes no FUSE request (<c>AT_STATX_DONT_SYNC</c>), so it is safe on a mount whose server is busy, stopped or dead.
    /// </summary>
    public static FuseMountIdentity? Of(string mountPoint)
    {
        ArgumentNullException.ThrowIfNull(mountPoint);
        int fd = OpenPath(mountPoint);
        if (fd < 0)
        {
            return null;
        }
        try
        {
            return Read(fd);
        }
        finally
        {
            LibC.close(fd);
        }
    }

    /// <summary>
    /// Detaches (<c>MNT_DETACH</c>) the mount on <paramref name="mountPoint"/> if, and only if, it is the one
    /// <paramref name="identity"/> names; another file system mounted there since is left alone. Race-free: the path is
    /// opened once (<c>O_PATH</c>), the identity read from that descriptor, and the unmount made through it.
    /// </summary>
    /// <returns>True when the mount was ours and is detached.</returns>
    /// <exception cref="IOException">It was ours, but the kernel refused the unmount.</exception>
    public static bool DetachIfSame(string mountPoint, FuseMountIdentity identity) => DetachIfStillSame(mountPoint, identity, null);

    /// <summary><see cref="DetachIfSame"/>, with a last check before unmounting.</summary>
    /// <param name="mountPoint">The path the mount was made on.</param>
    /// <param name="identity">Ours.</param>
    /// <param name="stillOurs">Asked after the identity matched, before unmounting: false when the match may be a
    /// reused number (the session's connection ended, so its device number and mount id may belong to a newer mount).</param>
    internal static bool DetachIfStillSame(string mountPoint, FuseMountIdentity identity, Func<bool>? stillOurs)
    {
        int fd = OpenPath(mountPoint);
        if (fd < 0)
        {
            return false; // nothing there any more (or no access): nothing of ours to unmount
        }
        try
        {
            if (Read(fd) is not { } found || !found.Matches(identity) || (stillOurs is not null && !stillOurs()))
            {
                return false;
            }
            string self = string.Create(CultureInfo.InvariantCulture, $"/proc/self/fd/{fd}");
            if (LibC.umount2(self, LibC.MNT_DETACH) != 0)
            {
                int errno = Marshal.GetLastPInvokeError();
                throw new IOException($"umount {mountPoint}: {Marshal.GetPInvokeErrorMessage(errno)}");
            }
            return true;
        }
        finally
        {
            // The last reference to a detached mount: closing it ends the superblock, and with it the FUSE connection.
            LibC.close(fd);
        }
    }

    private bool Matches(FuseMountIdentity other) =>
        DeviceMajor == other.DeviceMajor && DeviceMinor == other.DeviceMinor
        && (MountId == 0 || other.MountId == 0 || (MountId == other.MountId && UniqueMountId == other.UniqueMountId));

    /// <summary>Follows symbolic links, as mount(2) did; a descriptor of the mount (or of whatever is there now) that
    /// keeps that one mount reachable whatever later happens to the path.</summary>
    private static int OpenPath(string path) => LibC.open(path, LibC.O_PATH | LibC.O_DIRECTORY | LibC.O_CLOEXEC);

    private static unsafe FuseMountIdentity? Read(int fd)
    {
        byte* buffer = stackalloc byte[StatxLayout.Size];
        new Span<byte>(buffer, StatxLayout.Size).Clear();
        if (LibC.statx(fd, "", LibC.AT_EMPTY_PATH | LibC.AT_STATX_DONT_SYNC, LibC.STATX_MNT_ID_UNIQUE, buffer) != 0)
        {
            return null;
        }
        var statx = new ReadOnlySpan<byte>(buffer, StatxLayout.Size);
        uint mask = BinaryPrimitives.ReadUInt32LittleEndian(statx[StatxLayout.stx_mask..]);
        ulong attributes = BinaryPrimitives.ReadUInt64LittleEndian(statx[StatxLayout.stx_attributes..]);
        ulong known = BinaryPrimitives.ReadUInt64LittleEndian(statx[StatxLayout.stx_attributes_mask..]);
        if ((known & LibC.STATX_ATTR_MOUNT_ROOT) != 0 && (attributes & LibC.STATX_ATTR_MOUNT_ROOT) == 0)
        {
            return null; // a directory inside some mount, not a mount's root
        }
        bool unique = (mask & LibC.STATX_MNT_ID_UNIQUE) != 0;
        ulong mountId = unique || (mask & LibC.STATX_MNT_ID) != 0 ? BinaryPrimitives.ReadUInt64LittleEndian(statx[StatxLayout.stx_mnt_id..]) : 0;
        return new FuseMountIdentity(
            BinaryPrimitives.ReadUInt32LittleEndian(statx[StatxLayout.stx_dev_major..]),
            BinaryPrimitives.ReadUInt32LittleEndian(statx[StatxLayout.stx_dev_minor..]),
            mountId,
            unique);
    }
}
