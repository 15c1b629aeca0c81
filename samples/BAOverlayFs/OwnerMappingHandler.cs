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
    IReadOnlyList<IdMapping> uidMappings, IReadOnlyList<IdMapping> gidMappings) : DelegatingFuseHandler(inner)
{
    /// <summary>What an id outside every mapping becomes (the kernel's overflowuid/overflowgid).</summary>
    public const uint Overflow = 65534;

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

    /// <summary>Owners are mapped, bytes are not: reads are spliced from the file as without a mapping.</summary>
    public override Microsoft.Win32.SafeHandles.SafeFileHandle? ReadFile(ulong ino, ulong handle) => Inner.ReadFile(ino, handle);

    /// <inheritdoc/>
    public override bool QuickIo(ulong ino, ulong handle) => Inner.QuickIo(ino, handle);

    public override OverlayStat Lookup(ulong parent, string name, FuseContext context) => Squash(Inner.Lookup(parent, name, context));

    /// <inheritdoc/>
    public override OverlayStat? TryLookup(ulong parent, string name, FuseContext context) =>
        Inner.TryLookup(parent, name, context) is { } stat ? Squash(stat) : null;

    public override OverlayStat GetAttr(ulong ino, ulong? handle, FuseContext context) => Squash(Inner.GetAttr(ino, handle, context));

    public override OverlayStat SetAttr(ulong ino, OverlaySetAttr change, ulong? handle, FuseContext context) => Squash(Inner.SetAttr(ino, change with { Uid = change.Uid is uint u ? Stored(u, uidMappings) : null, Gid = change.Gid is uint g ? Stored(g, gidMappings) : null }, handle, Stored(context)));

    public override bool DropPrivileges(ulong ino, FuseContext context) =>
        Inner.DropPrivileges(ino, Stored(context) with { Groups = context.Groups?.Select(g => Stored(g, gidMappings)).ToArray() });

    /// <inheritdoc/>
    public override OverlayStat MakeNode(ulong parent, string name, uint mode, ulong rdev, FuseContext context) => Squash(Inner.MakeNode(parent, name, mode, rdev, Stored(context)));

    public override OverlayStat MakeDirectory(ulong parent, string name, uint mode, FuseContext context) => Squash(Inner.MakeDirectory(parent, name, mode, Stored(context)));

    public override OverlayStat MakeSymbolicLink(string target, ulong parent, string name, FuseContext context) => Squash(Inner.MakeSymbolicLink(target, parent, name, Stored(context)));

    public override OverlayStat Link(ulong ino, ulong newParent, string newName, FuseContext context) => Squash(Inner.Link(ino, newParent, newName, context));

    public override (OverlayStat Stat, FuseOpenResult Open) Create(ulong parent, string name, uint mode, int flags, FuseContext context)
    {
        (OverlayStat stat, FuseOpenResult open) = Inner.Create(parent, name, mode, flags, Stored(context));
        return (Squash(stat), open);
    }

}
