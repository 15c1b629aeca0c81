using BAOverlay.FileSystem;
using BAOverlay.Fuse;
using Mono.Unix.Native;

namespace BAOverlayFs;

/// <summary>
/// fuse-overlayfs's owner options. <c>uidmapping</c>/<c>gidmapping</c> (<c>STORED:SHOWN:LEN</c> ranges, as
/// containers-storage writes <c>ContainerID:HostID:Size</c>): an owner stored in the layers as STORED+i is shown as
/// SHOWN+i, an owner outside every range as 65534; the other way, a caller SHOWN+i creates objects (and chowns to
/// ids) stored as STORED+i. <c>squash_to_uid=N</c>, <c>squash_to_gid=N</c> and <c>squash_to_root</c> (0:0) show every
/// object as owned by N, before any mapping. Only ids change; every call is passed through.
/// </summary>
internal sealed class OwnerMappingHandler(IFuseLowLevelHandler inner, uint? squashUid, uint? squashGid,
    IReadOnlyList<IdMapping> uidMappings, IReadOnlyList<IdMapping> gidMappings) : IFuseLowLevelHandler
{
    /// <summary>What an id outside every mapping becomes (the kernel's overflowuid/overflowgid).</summary>
    public const uint Overflow = 65534;

    public double EntryTimeout => inner.EntryTimeout;

    public double AttributeTimeout => inner.AttributeTimeout;

    public bool WantsGroups => inner.WantsGroups;

    private OverlayStat Squash(OverlayStat stat) => stat with
    {
        Uid = squashUid ?? Shown(stat.Uid, uidMappings),
        Gid = squashGid ?? Shown(stat.Gid, gidMappings),
    };

    /// <summary>The caller as the layers store owners: its ids mapped back.</summary>
    private FuseContext Stored(FuseContext context) => context with { Uid = Stored(context.Uid, uidMappings), Gid = Stored(context.Gid, gidMappings) };

    /// <summary>A stored id as shown (fuse-overlayfs searches the ranges last given first).</summary>
    internal static uint Shown(uint id, IReadOnlyList<IdMapping> mappings)
    {
        if (mappings.Count == 0)
        {
            return id;
        }
        for (int i = mappings.Count - 1; i >= 0; i--)
        {
            IdMapping m = mappings[i];
            if (id >= m.Id && (ulong)id < (ulong)m.Id + m.Length)
            {
                return m.Host + (id - m.Id);
            }
        }
        return Overflow;
    }

    /// <summary>A shown (caller's) id as stored.</summary>
    internal static uint Stored(uint id, IReadOnlyList<IdMapping> mappings)
    {
        if (mappings.Count == 0)
        {
            return id;
        }
        for (int i = mappings.Count - 1; i >= 0; i--)
        {
            IdMapping m = mappings[i];
            if (id >= m.Host && (ulong)id < (ulong)m.Host + m.Length)
            {
                return m.Id + (id - m.Host);
            }
        }
        return Overflow;
    }

    public OverlayStat Lookup(ulong parent, string name, FuseContext context) => Squash(inner.Lookup(parent, name, context));

    public void Forget(ulong ino, ulong count) => inner.Forget(ino, count);

    public OverlayStat GetAttr(ulong ino, ulong? handle, FuseContext context) => Squash(inner.GetAttr(ino, handle, context));

    public OverlayStat SetAttr(ulong ino, OverlaySetAttr change, ulong? handle, FuseContext context) => Squash(inner.SetAttr(ino, change with { Uid = change.Uid is uint u ? Stored(u, uidMappings) : null, Gid = change.Gid is uint g ? Stored(g, gidMappings) : null }, handle, Stored(context)));

    public string ReadLink(ulong ino, FuseContext context) => inner.ReadLink(ino, context);

    public OverlayStat MakeNode(ulong parent, string name, uint mode, ulong rdev, FuseContext context) => Squash(inner.MakeNode(parent, name, mode, rdev, Stored(context)));

    public OverlayStat MakeDirectory(ulong parent, string name, uint mode, FuseContext context) => Squash(inner.MakeDirectory(parent, name, mode, Stored(context)));

    public void Unlink(ulong parent, string name, FuseContext context) => inner.Unlink(parent, name, context);

    public void RemoveDirectory(ulong parent, string name, FuseContext context) => inner.RemoveDirectory(parent, name, context);

    public OverlayStat MakeSymbolicLink(string target, ulong parent, string name, FuseContext context) => Squash(inner.MakeSymbolicLink(target, parent, name, Stored(context)));

    public void Rename(ulong parent, string name, ulong newParent, string newName, uint flags, FuseContext context) => inner.Rename(parent, name, newParent, newName, flags, context);

    public OverlayStat Link(ulong ino, ulong newParent, string newName, FuseContext context) => Squash(inner.Link(ino, newParent, newName, context));

    public FuseOpenResult Open(ulong ino, int flags, FuseContext context) => inner.Open(ino, flags, context);

    public int Read(ulong ino, ulong handle, Span<byte> buffer, long offset) => inner.Read(ino, handle, buffer, offset);

    public int Write(ulong ino, ulong handle, ReadOnlySpan<byte> data, long offset) => inner.Write(ino, handle, data, offset);

    public void Flush(ulong ino, ulong handle) => inner.Flush(ino, handle);

    public void Release(ulong ino, ulong handle) => inner.Release(ino, handle);

    public void Fsync(ulong ino, ulong handle, bool dataOnly) => inner.Fsync(ino, handle, dataOnly);

    public ulong OpenDirectory(ulong ino, FuseContext context) => inner.OpenDirectory(ino, context);

    public IReadOnlyList<OverlayDirEntry> ReadDirectory(ulong ino, ulong handle) => inner.ReadDirectory(ino, handle);

    public void ReleaseDirectory(ulong ino, ulong handle) => inner.ReleaseDirectory(ino, handle);

    public Statvfs StatFs(ulong ino) => inner.StatFs(ino);

    public void SetXattr(ulong ino, string name, ReadOnlySpan<byte> value, int flags, FuseContext context) => inner.SetXattr(ino, name, value, flags, context);

    public byte[] GetXattr(ulong ino, string name, FuseContext context) => inner.GetXattr(ino, name, context);

    public IReadOnlyList<string> ListXattrs(ulong ino, FuseContext context) => inner.ListXattrs(ino, context);

    public void RemoveXattr(ulong ino, string name, FuseContext context) => inner.RemoveXattr(ino, name, context);

    public (OverlayStat Stat, FuseOpenResult Open) Create(ulong parent, string name, uint mode, int flags, FuseContext context)
    {
        (OverlayStat stat, FuseOpenResult open) = inner.Create(parent, name, mode, flags, Stored(context));
        return (Squash(stat), open);
    }

    public void Allocate(ulong ino, ulong handle, int mode, long offset, long length) => inner.Allocate(ino, handle, mode, offset, length);

    public long Seek(ulong ino, ulong handle, long offset, int whence) => inner.Seek(ino, handle, offset, whence);
}
