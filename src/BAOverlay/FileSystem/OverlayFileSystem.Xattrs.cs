using BAOverlay.Interop;
using Mono.Unix.Native;

namespace BAOverlay.FileSystem;

/// <summary>Extended attributes: read from the object's top layer; changes copy the object's metadata up first.
/// The overlay's own attributes (<c>trusted.overlay.*</c>, <c>user.overlay.*</c>, <c>user.fuseoverlayfs.*</c>,
/// <c>user.baoverlay.*</c>) are hidden: they do not list, read as absent, and cannot be set.</summary>
public sealed partial class OverlayFileSystem
{
    /// <summary>The value of extended attribute <paramref name="name"/>.</summary>
    /// <exception cref="OverlayException">ENODATA when absent (or private to the overlay).</exception>
    /// <param name="ino">The object.</param>
    /// <param name="name">The attribute.</param>
    /// <param name="caller">Checked as the kernel checks xattr access; null for a trusted caller.</param>
    public byte[] GetXattr(ulong ino, string name, OverlayCaller? caller = null) =>
        TryGetXattr(ino, name, caller) ?? throw new OverlayException(Errno.ENODATA, $"{DescribeIno(ino)}: xattr {name}: {Stdlib.strerror(Errno.ENODATA)}");

    /// <summary>
    /// The value of extended attribute <paramref name="name"/>, or null when the object has none by that name (or it
    /// is private to the overlay). The kernel asks for <c>security.capability</c> before every write to a file, and
    /// the answer is nearly always "none": this path costs one system call and throws nothing for it.
    /// </summary>
    /// <exception cref="OverlayException">The attribute could not be read (other than being absent), or access is denied.</exception>
    /// <param name="ino">The object.</param>
    /// <param name="name">The attribute.</param>
    /// <param name="caller">Checked as the kernel checks xattr access; null for a trusted caller.</param>
    public byte[]? TryGetXattr(ulong ino, string name, OverlayCaller? caller = null)
    {
        _lock.EnterReadLock();
        try
        {
            OverlayNode node = NodeOf(ino);
            CheckXattrAccess(node, name, caller, Permissions.Read);
            bool capability = name == CapabilityXattr;
            if (capability && node.HasNoCapabilityXattr)
            {
                return null;
            }
            byte[]? value = null;
            if (!Whiteouts.IsPrivateXattr(name))
            {
                if (name != SelinuxXattr && TryIndexedXattrs(node, out IReadOnlyList<(string Name, byte[] Value)> indexed))
                {
                    // An object of an indexed layer: from its index, no call to the share.
                    value = indexed.FirstOrDefault(x => x.Name == name).Value?.ToArray();
                }
                else
                {
                    using LayerPath top = Top(node);
                    value = ReadXattr(top.Path, name, node);
                }
            }
            if (capability && value is null)
            {
                node.HasNoCapabilityXattr = true; // under the read lock: a change to the node's xattrs waits for it
            }
            return value;
        }
        finally
        {
            _lock.ExitReadLock();
        }
    }

    /// <summary>The attribute the kernel asks for before every write (to drop file capabilities on it).</summary>
    private const string CapabilityXattr = "security.capability";

    private string DescribeIno(ulong ino)
    {
        _lock.EnterReadLock();
        try
        {
            return _nodes.TryGetValue(ino, out OverlayNode? node) ? Describe(node) : $"inode {ino}";
        }
        finally
        {
            _lock.ExitReadLock();
        }
    }

    /// <summary>lgetxattr into a stack buffer first (one call for the usual small or absent value), then sized exactly.</summary>
    private unsafe byte[]? ReadXattr(string path, string name, OverlayNode node)
    {
        const int Small = 256;
        byte* small = stackalloc byte[Small];
        while (true)
        {
            nint n = LibC.lgetxattr(path, name, small, Small);
            if (n >= 0)
            {
                return new ReadOnlySpan<byte>(small, (int)n).ToArray();
            }
            int errno = System.Runtime.InteropServices.Marshal.GetLastPInvokeError();
            if (errno == LibC.ENODATA)
            {
                return null;
            }
            if (errno != LibC.ERANGE)
            {
                throw new OverlayException(NativeConvert.ToErrno(errno), $"{Describe(node)}: xattr {name}: {Stdlib.strerror(NativeConvert.ToErrno(errno))}");
            }
            nint size = LibC.lgetxattr(path, name, null, 0);
            if (size < 0)
            {
                continue; // changed between the calls: start again
            }
            byte[] value = new byte[size];
            fixed (byte* p = value)
            {
                n = LibC.lgetxattr(path, name, p, (nuint)value.Length);
            }
            if (n >= 0)
            {
                return n == value.Length ? value : value[..(int)n];
            }
        }
    }

    /// <summary>The names of the object's extended attributes, the overlay's own left out.</summary>
    public IReadOnlyList<string> ListXattrs(ulong ino)
    {
        _lock.EnterReadLock();
        try
        {
            OverlayNode node = NodeOf(ino);
            if (TryIndexedXattrs(node, out IReadOnlyList<(string Name, byte[] Value)> indexed))
            {
                // From the index: the names the layer's walk read (security.selinux is not recorded there).
                return [.. indexed.Select(x => x.Name).Where(n => !Whiteouts.IsPrivateXattr(n))];
            }
            using LayerPath top = Top(node);
            if (Syscall.llistxattr(top.Path, out string[] names) < 0)
            {
                throw OverlayException.FromLastError("listxattr", Describe(node));
            }
            return names.Where(n => !Whiteouts.IsPrivateXattr(n)).ToList();
        }
        finally
        {
            _lock.ExitReadLock();
        }
    }

    /// <summary>Sets an extended attribute (copying the object's metadata up first).</summary>
    /// <exception cref="OverlayException">EPERM for the overlay's own names; EEXIST/ENODATA for <see cref="OverlayXattrFlags"/> conflicts.</exception>
    /// <param name="ino">The object.</param>
    /// <param name="name">The attribute.</param>
    /// <param name="value">Its value.</param>
    /// <param name="flags">Create or replace only.</param>
    /// <param name="caller">Checked as the kernel checks xattr access; null for a trusted caller.</param>
    public void SetXattr(ulong ino, string name, ReadOnlySpan<byte> value, OverlayXattrFlags flags = OverlayXattrFlags.None, OverlayCaller? caller = null)
    {
        RequireWritable();
        if (Whiteouts.IsPrivateXattr(name))
        {
            throw new OverlayException(Errno.EPERM, $"xattr {name} belongs to the overlay");
        }
        _lock.EnterWriteLock();
        try
        {
            OverlayNode node = NodeOf(ino);
            CheckXattrAccess(node, name, caller, Permissions.Write);
            node.ForgetPrivileges();
            CopyUp(node, truncateToZero: false);
            XattrFlags native = flags switch
            {
                OverlayXattrFlags.Create => XattrFlags.XATTR_CREATE,
                OverlayXattrFlags.Replace => XattrFlags.XATTR_REPLACE,
                _ => XattrFlags.XATTR_AUTO,
            };
            using LayerPath upper = Upper(node);
            if (Syscall.lsetxattr(upper.Path, name, value.ToArray(), native) != 0)
            {
                throw OverlayException.FromLastError($"setxattr {name}", Describe(node));
            }
        }
        finally
        {
            _lock.ExitWriteLock();
        }
    }

    /// <summary>Removes an extended attribute (copying the object's metadata up first).</summary>
    /// <param name="ino">The object.</param>
    /// <param name="name">The attribute.</param>
    /// <param name="caller">Checked as the kernel checks xattr access; null for a trusted caller.</param>
    public void RemoveXattr(ulong ino, string name, OverlayCaller? caller = null)
    {
        RequireWritable();
        if (Whiteouts.IsPrivateXattr(name))
        {
            throw new OverlayException(Errno.ENODATA, $"xattr {name}: no such attribute");
        }
        _lock.EnterWriteLock();
        try
        {
            OverlayNode node = NodeOf(ino);
            CheckXattrAccess(node, name, caller, Permissions.Write);
            node.ForgetPrivileges();
            using (LayerPath top = Top(node))
            {
                if (Syscall.lgetxattr(top.Path, name, out byte[] _) < 0)
                {
                    throw OverlayException.FromLastError($"removexattr {name}", Describe(node));
                }
            }
            CopyUp(node, truncateToZero: false);
            using LayerPath upper = Upper(node);
            if (Syscall.lremovexattr(upper.Path, name) != 0)
            {
                throw OverlayException.FromLastError($"removexattr {name}", Describe(node));
            }
        }
        finally
        {
            _lock.ExitWriteLock();
        }
    }

    /// <summary>xattr_permission: trusted.* is root's; user.* follows the object's read/write permission.</summary>
    private void CheckXattrAccess(OverlayNode node, string name, OverlayCaller? caller, int mask)
    {
        if (caller is not { } c)
        {
            return;
        }
        if (name.StartsWith("trusted.", StringComparison.Ordinal) && c.Uid != 0)
        {
            throw new OverlayException(Errno.EPERM, $"{Describe(node)}: trusted.* attributes are root's");
        }
        if (name.StartsWith("user.", StringComparison.Ordinal))
        {
            Permissions.Check(StatOf(node), c, mask, Describe(node));
        }
    }
}

/// <summary>setxattr flags.</summary>
public enum OverlayXattrFlags
{
    /// <summary>Create or replace.</summary>
    None,

    /// <summary>Fail with EEXIST if it exists (XATTR_CREATE).</summary>
    Create,

    /// <summary>Fail with ENODATA if it does not exist (XATTR_REPLACE).</summary>
    Replace,
}
