using System.Runtime.CompilerServices;

namespace BAOverlay.FileSystem;

/// <summary>
/// One object of the merged tree, known to the kernel by <see cref="Ino"/> until forgotten. Its layers are
/// re-resolved on every lookup (lower layers never change; the upper one changes only through this file system).
/// </summary>
internal sealed class OverlayNode(ulong ino, OverlayNode? parent, string name, string path)
{
    public ulong Ino { get; } = ino;

    public OverlayNode? Parent { get; set; } = parent;

    public string Name { get; set; } = name;

    /// <summary>Path in the merged tree, relative to its root ("" for the root).</summary>
    public string Path { get; set; } = path;

    /// <summary>Where the object lives, topmost first: (layer index, path in that layer). A non-directory has one
    /// entry; a directory has every layer that contributes to it, down to the first opaque one.</summary>
    public List<(int Layer, string Path)> Layers { get; set; } = new();

    public uint Type { get; set; }

    public bool IsDirectory => Type == 0x4000;

    public long Lookups { get; set; }

    public Dictionary<string, OverlayNode> Children { get; } = new(StringComparer.Ordinal);

    /// <summary>The inode number, in the upper file system, of the upper object this node's <see cref="Ino"/> was read
    /// from (its xattr), or 0. A later lookup that finds the same upper object under the same name reuses the number
    /// instead of reading the xattr again: the overlay writes that xattr only before it renames a new object into
    /// place, and users cannot set it.</summary>
    public ulong InoReadFrom { get; set; }

    /// <summary>Whether the upper object is a B-CoW file (its marker xattr, also written only before the object is
    /// renamed into place), for the upper inode number it was read from; null when not read. Replaced whole: getattr
    /// sets it under the read lock, on several threads at once.</summary>
    public UpperMark<bool>? BCowMark { get; set; }

    /// <summary>The logical size of the closed B-CoW file, read from its header, for the upper file as it was then
    /// (inode number, size, mtime); null when not read. Dropped when the file is opened or truncated, so it is used only
    /// while nothing can change the header. Replaced whole, as <see cref="BCowMark"/>.</summary>
    public UpperMark<long>? ClosedBCowSize { get; set; }

    /// <summary>A directory's merged entries as last read or kept up to date since, or null: read them at the next
    /// listing. Valid for the current <see cref="Layers"/> only (see <see cref="DirectoryListing"/>).</summary>
    /// <remarks>Written under the write lock, and also under the read lock by a listing that builds it (readers may
    /// race to publish equal listings), hence the volatile access.</remarks>
    public DirectoryListing? Listing
    {
        get => Volatile.Read(ref _listing);
        set => Volatile.Write(ref _listing, value);
    }

    private DirectoryListing? _listing;

    /// <summary>Open data shared by all handles (so a reader opened before a copy-up sees later writes).</summary>
    public NodeData? Data { get; set; }

    /// <summary>Data replaced by a copy-up while handles were open; released with the last handle.</summary>
    public List<NodeData> Retired { get; } = new();

    public int OpenHandles { get; set; }

    /// <summary>When its data, kept open after the last release (<see cref="OverlayOptions.CloseDelay"/>), is due to
    /// be closed; null while handles are open or when nothing is kept.</summary>
    public DateTime? CloseDue { get; set; }

    /// <summary>The names (directory node, name) under which lookups found this object when it has several (hard
    /// links in upper), or null. Checked when used: an entry may have been renamed or removed since.</summary>
    public List<(OverlayNode Directory, string Name)>? Aliases { get; set; }

    /// <summary>Its last name was removed (unlinked, or replaced by a rename): its paths now name something else.</summary>
    public bool Removed { get; set; }

    /// <summary>The attributes last seen while the file was open: what <c>fstat</c> of an open file answers once its
    /// name is gone (a boxed copy, replaced whole, so readers never see half of one).</summary>
    public StrongBox<OverlayStat>? OpenStat { get; set; }

    /// <summary>Known to have no <c>security.capability</c> attribute, which the kernel asks for before every write.
    /// Set under the overlay's read lock when a read finds none; cleared (under the write lock) by any change to the
    /// object's attributes. Its other attributes are not cached.</summary>
    public bool HasNoCapabilityXattr { get; set; }

    /// <summary>Known to have nothing a write by an unprivileged caller would clear (set-user-ID, set-group-ID,
    /// <c>security.capability</c>): set by <c>DropPrivileges</c>, cleared with <see cref="ForgetPrivileges"/>. Lets the
    /// kernel's per-write FUSE_WRITE_KILL_SUIDGID (every write of a caller without CAP_FSETID) cost no I/O.</summary>
    public bool HasNoPrivileges { get; set; }

    /// <summary>Its mode or attributes may have changed: nothing known about capabilities or set-id bits holds.</summary>
    public void ForgetPrivileges()
    {
        HasNoCapabilityXattr = false;
        HasNoPrivileges = false;
    }
}

/// <summary>A value read from an upper object, with what identifies the object as it was then.</summary>
internal sealed record UpperMark<T>(ulong StIno, long StSize, long MTimeNs, T Value);
