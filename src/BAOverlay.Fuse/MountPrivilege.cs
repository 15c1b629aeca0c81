using System.Globalization;
using System.Runtime.InteropServices;
using BAOverlay.Fuse.Interop;

namespace BAOverlay.Fuse;

/// <summary>
/// Why this process may not open <c>/dev/fuse</c> or mount, and what to do: the second half of the messages
/// <see cref="FuseSession.Mount"/> throws. A FUSE mount made with <c>mount(2)</c> needs read-write access to
/// <c>/dev/fuse</c> and CAP_SYS_ADMIN in the user namespace that owns the process's mount namespace: root, or root of a
/// user namespace made together with its mount namespace (as rootless Podman runs its mount program; the kernel allows
/// FUSE mounts there since Linux 4.18).
/// </summary>
internal static class MountPrivilege
{
    private const int CapSysAdmin = 21;

    /// <summary>What to do when opening <c>/dev/fuse</c> failed with EACCES or EPERM.</summary>
    public static string DevFuseDenied(int errno)
    {
        if (errno == LibC.EPERM)
        {
            // the permission bits say EACCES; EPERM is the device cgroup (or an LSM) saying no
            return "the device is not allowed to this process (a container? give it the device: --device /dev/fuse)";
        }
        string mode = "unknown";
        try
        {
            mode = "0" + Convert.ToString((int)File.GetUnixFileMode("/dev/fuse"), 8);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // the mode is only a detail of the message
        }
        return $"its mode is {mode}, but users, and root of a user namespace as rootless containers run, need read and "
            + "write access, which udev grants on most systems (mode 0666): chmod 0666 /dev/fuse";
    }

    /// <summary>What to do when <c>mount(2)</c> failed with EPERM or EACCES, from where this process stands.</summary>
    public static string MountDenied()
    {
        bool initial = InInitialUserNamespace();
        bool capable = HasCapSysAdmin();
        if (initial && !capable)
        {
            return LibC.geteuid() == 0
                ? "this root lacks CAP_SYS_ADMIN (a container? give it --cap-add SYS_ADMIN --device /dev/fuse)"
                : "mounting needs CAP_SYS_ADMIN: run as root, or rootless as root of new user and mount namespaces "
                  + "(unshare --user --map-root-user --mount, podman unshare); mounting through fusermount3 is not "
                  + "supported (libfuse would fork the .NET process to run it)";
        }
        if (!initial && OwnsMountNamespace() == false)
        {
            return "this process is in a user namespace, but its mount namespace belongs to an outer one: make a mount "
                + "namespace inside it too (unshare --user --map-root-user --mount)";
        }
        if (!capable)
        {
            return "mounting needs CAP_SYS_ADMIN in this user namespace: run as its root (uid 0 inside, with its capabilities)";
        }
        return "the process has CAP_SYS_ADMIN, yet the kernel refused: a security module or seccomp profile, or, "
            + "inside a user namespace, a kernel older than Linux 4.18";
    }

    /// <summary>Whether this process is in the initial user namespace (its uid map is the identity over every id).</summary>
    internal static bool InInitialUserNamespace()
    {
        try
        {
            string[] map = File.ReadAllText("/proc/self/uid_map").Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries);
            return map is ["0", "0", "4294967295"];
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return true;
        }
    }

    private static bool HasCapSysAdmin()
    {
        try
        {
            string? line = File.ReadLines("/proc/self/status").FirstOrDefault(l => l.StartsWith("CapEff:", StringComparison.Ordinal));
            return line is not null
                && ulong.TryParse(line["CapEff:".Length..].Trim(), NumberStyles.HexNumber, CultureInfo.InvariantCulture, out ulong caps)
                && (caps & (1UL << CapSysAdmin)) != 0;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return LibC.geteuid() == 0;
        }
    }

    /// <summary>Whether this process's user namespace owns its mount namespace (<c>NS_GET_USERNS</c>); null when the
    /// kernel cannot tell (before Linux 4.9).</summary>
    private static bool? OwnsMountNamespace()
    {
        int mnt = LibC.open("/proc/self/ns/mnt", LibC.O_RDONLY | LibC.O_CLOEXEC);
        if (mnt < 0)
        {
            return null;
        }
        try
        {
            int owner = LibC.ioctl(mnt, LibC.NS_GET_USERNS);
            if (owner < 0)
            {
                // EPERM: the owner is outside this process's user namespace, so it is an outer one
                return Marshal.GetLastPInvokeError() == LibC.EPERM ? false : null;
            }
            try
            {
                // a namespace descriptor's link reads "user:[INODE]", as /proc/self/ns/user does
                string? ownerLink = new FileInfo($"/proc/self/fd/{owner}").LinkTarget;
                string? ownLink = new FileInfo("/proc/self/ns/user").LinkTarget;
                return ownerLink is null || ownLink is null ? null : ownerLink == ownLink;
            }
            finally
            {
                LibC.close(owner);
            }
        }
        finally
        {
            LibC.close(mnt);
        }
    }
}
