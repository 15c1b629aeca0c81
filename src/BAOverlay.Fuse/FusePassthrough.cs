using System.Collections.Concurrent;
using System.Globalization;
using System.Runtime.InteropServices;
using BAOverlay.Fuse.Interop;
using Microsoft.Win32.SafeHandles;
using static BAOverlay.Fuse.Interop.FuseKernel;

namespace BAOverlay.Fuse;

/// <summary>
/// Which opens of a FUSE session the kernel serves from a backing file (FUSE passthrough, protocol 7.40), kept as the
/// kernel keeps it (<c>fs/fuse/iomode.c</c>): an inode has at most one backing file at a time, shared by all of its
/// passthrough opens, and while an inode has a passthrough open every other open of it must be passthrough with the
/// same backing file, and while it has an open served by the daemon (page cache or direct I/O) none may be
/// passthrough; an open that breaks these rules fails in the caller with EIO. So the first open of an inode decides,
/// the later ones follow until the last of them is released, and a backing file is registered
/// (<c>FUSE_DEV_IOC_BACKING_OPEN</c>) once per such run and unregistered at its end.
/// <para>
/// A backing file the handler opened read-only (a lower file: the layer must never be written) serves read-only opens
/// only. The kernel opens the backing file again for each passthrough open with that open's flags and this process's
/// credentials, so a write open passed through to it would write the read-only layer; and the bytes of a file copied
/// up under a reader would differ from the bytes that reader goes on reading from the backing file. So while a
/// read-only backing file is registered for an inode, opens of it for writing and truncates fail with ETXTBSY (as
/// writing a running program does), and while such a change is being made (<see cref="BeginChange"/>) no read-only
/// backing file is registered for it: the opens of that run are served.
/// </para>
/// </summary>
internal sealed class FusePassthrough(FuseSession session, int fd)
{
    private const int CapSysAdmin = 21;

    private readonly ConcurrentDictionary<ulong, Node> _nodes = new();
    private readonly ConcurrentDictionary<ulong, ulong> _passedThrough = new(); // fh -> node, for passthrough opens
    private int _refusedLogged;
    private int _servedOpens;
    private volatile bool _refused;

    private sealed class Node
    {
        public int BackingId;
        public bool ReadOnlyBacking;
        public int Changing;
        public int PassthroughOpens;
        public int ServedOpens;
        public bool Gone;
    }

    /// <summary>Passthrough opens now (for tests and diagnostics).</summary>
    public int PassthroughOpens => _passedThrough.Count;

    /// <summary>Opens the daemon serves now, while passthrough is in use (for tests and diagnostics).</summary>
    public int ServedOpens => Volatile.Read(ref _servedOpens);

    /// <summary>True when this process may register backing files: CAP_SYS_ADMIN in the initial user namespace (the
    /// kernel's condition in <c>fuse_backing_open</c>). A rootless mount (root of a user namespace) may not.</summary>
    public static bool Allowed()
    {
        try
        {
            string uidMap = File.ReadAllText("/proc/self/uid_map").Trim();
            string[] map = uidMap.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries);
            bool initialNamespace = map.Length == 3 && map[0] == "0" && map[1] == "0" && map[2] == "4294967295";
            if (!initialNamespace)
            {
                return false;
            }
            foreach (string line in File.ReadLines("/proc/self/status"))
            {
                if (line.StartsWith("CapEff:", StringComparison.Ordinal))
                {
                    ulong caps = ulong.Parse(line.AsSpan(7).Trim(), NumberStyles.HexNumber, CultureInfo.InvariantCulture);
                    return (caps & (1UL << CapSysAdmin)) != 0;
                }
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException or OverflowException)
        {
            // unknown: do not ask
        }
        return false;
    }

    /// <summary>
    /// An open of <paramref name="node"/> was made (handle <paramref name="fh"/>): returns the backing id to answer it
    /// with FOPEN_PASSTHROUGH, or 0 to serve it. <paramref name="backing"/> is asked only when this open decides.
    /// <paramref name="writable"/>: the open may write (its access mode is not O_RDONLY); it never passes through to a
    /// read-only backing file.
    /// </summary>
    public int Opened(ulong node, ulong fh, bool writable, Func<SafeFileHandle?> backing)
    {
        while (true)
        {
            Node n = Get(node);
            lock (n)
            {
                if (n.Gone)
                {
                    continue; // released and dropped between the lookup and the lock
                }
                if (n.BackingId == 0 && n.ServedOpens == 0 && !_refused)
                {
                    (n.BackingId, n.ReadOnlyBacking) = Register(backing, refuseReadOnly: writable || n.Changing > 0);
                }
                if (n.BackingId != 0 && !(n.ReadOnlyBacking && writable))
                {
                    n.PassthroughOpens++;
                    _passedThrough[fh] = node;
                    return n.BackingId;
                }
                if (n.BackingId != 0)
                {
                    // A write open while a read-only backing file is registered: BeginChange refuses these before the
                    // handler opens, so only a caller that skipped it gets here. Served, the kernel fails the open
                    // with EIO (an inode with passthrough opens takes no other): never a write into the backing file.
                    session.LogLine($"passthrough: node {node} was opened for writing while a read-only backing file serves it; the open fails");
                }
                n.ServedOpens++;
                Interlocked.Increment(ref _servedOpens);
                return 0;
            }
        }
    }

    /// <summary>
    /// Before an open for writing or with O_TRUNC, or a truncate, of <paramref name="node"/>: false (the change must
    /// fail with ETXTBSY) while a read-only backing file serves it; otherwise no read-only backing file is registered
    /// for it until the matching <see cref="EndChange"/>.
    /// </summary>
    public bool BeginChange(ulong node)
    {
        while (true)
        {
            Node n = Get(node);
            lock (n)
            {
                if (n.Gone)
                {
                    continue;
                }
                if (n.BackingId != 0 && n.ReadOnlyBacking)
                {
                    return false;
                }
                n.Changing++;
                return true;
            }
        }
    }

    /// <summary>The change <see cref="BeginChange"/> allowed is over (made, refused or failed).</summary>
    public void EndChange(ulong node)
    {
        if (!_nodes.TryGetValue(node, out Node? n))
        {
            return;
        }
        lock (n)
        {
            n.Changing--;
            Drop(node, n);
        }
    }

    private Node Get(ulong node) => _nodes.GetOrAdd(node, static _ => new Node());

    /// <summary>Forgets <paramref name="n"/> once nothing holds it (under its lock).</summary>
    private void Drop(ulong node, Node n)
    {
        if (n.PassthroughOpens == 0 && n.ServedOpens == 0 && n.Changing == 0)
        {
            n.Gone = true;
            _nodes.TryRemove(new KeyValuePair<ulong, Node>(node, n));
        }
    }

    /// <summary>Open <paramref name="fh"/> of <paramref name="node"/> was released (or its open never reached the
    /// kernel): the last passthrough open of a run unregisters the backing file.</summary>
    public void Released(ulong node, ulong fh)
    {
        if (!_nodes.TryGetValue(node, out Node? n))
        {
            return;
        }
        lock (n)
        {
            if (_passedThrough.TryRemove(fh, out _))
            {
                if (--n.PassthroughOpens == 0)
                {
                    Unregister(n.BackingId);
                    n.BackingId = 0;
                    n.ReadOnlyBacking = false;
                }
            }
            else if (n.ServedOpens > 0)
            {
                n.ServedOpens--;
                Interlocked.Decrement(ref _servedOpens);
            }
            Drop(node, n);
        }
    }

    /// <summary>Registers the handler's backing file: its id (0: serve) and whether it was opened read-only, which
    /// <paramref name="refuseReadOnly"/> refuses (a write open, or a change under way).</summary>
    private unsafe (int Id, bool ReadOnly) Register(Func<SafeFileHandle?> backing, bool refuseReadOnly)
    {
        using SafeFileHandle? file = backing();
        if (file is null || file.IsInvalid)
        {
            return (0, false);
        }
        int flags = LibC.fcntl(file, LibC.F_GETFL);
        bool readOnly = flags < 0 || (flags & LibC.O_ACCMODE) == LibC.O_RDONLY;
        if (readOnly && refuseReadOnly)
        {
            return (0, false);
        }
        var map = new fuse_backing_map { fd = (int)file.DangerousGetHandle() };
        int id = LibC.ioctl(fd, FUSE_DEV_IOC_BACKING_OPEN, &map);
        if (id > 0)
        {
            return (id, readOnly);
        }
        int errno = Marshal.GetLastPInvokeError();
        if (errno is LibC.EPERM or LibC.ENOTTY or LibC.EOPNOTSUPP)
        {
            _refused = true; // not for this session at all: serve every open from now on
        }
        if (errno != LibC.ELOOP && Interlocked.Exchange(ref _refusedLogged, 1) == 0)
        {
            // ELOOP (a backing file on a stacked file system deeper than the mount allows) is per file, and expected
            session.LogLine($"passthrough: registering a backing file: {Marshal.GetPInvokeErrorMessage(errno)}; "
                + (_refused ? "files are served by the daemon" : "this file is served by the daemon"));
        }
        return (0, false);
    }

    private unsafe void Unregister(int id)
    {
        uint backingId = (uint)id;
        if (LibC.ioctl(fd, FUSE_DEV_IOC_BACKING_CLOSE, &backingId) != 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            if (errno != LibC.ENODEV)
            {
                session.LogLine($"passthrough: unregistering backing file {id}: {Marshal.GetPInvokeErrorMessage(errno)}");
            }
        }
    }
}
