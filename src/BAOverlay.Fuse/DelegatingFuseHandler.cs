using BAOverlay.FileSystem;

namespace BAOverlay.Fuse;

/// <summary>
/// A handler that passes every request to another one: derive from it and override only what changes (id mapping,
/// fault injection in tests), instead of writing out every member of <see cref="IFuseLowLevelHandler"/> again.
/// </summary>
/// <param name="inner">The handler requests go to; not disposed by this one.</param>
public abstract class DelegatingFuseHandler(IFuseLowLevelHandler inner) : IFuseLowLevelHandler
{
    /// <summary>The handler requests go to.</summary>
    public IFuseLowLevelHandler Inner { get; } = inner;

    /// <inheritdoc/>
    public virtual double EntryTimeout => Inner.EntryTimeout;

    /// <inheritdoc/>
    public virtual double AttributeTimeout => Inner.AttributeTimeout;

    /// <inheritdoc/>
    public virtual double NegativeTimeout => Inner.NegativeTimeout;

    /// <inheritdoc/>
    public virtual bool WantsGroups => Inner.WantsGroups;

    /// <inheritdoc/>
    public virtual OverlayStat? LookupForListing(ulong parent, string name, FuseContext context) => Inner.LookupForListing(parent, name, context);

    /// <inheritdoc/>
    public virtual OverlayStat Lookup(ulong parent, string name, FuseContext context) => Inner.Lookup(parent, name, context);

    /// <summary>Through this handler's <see cref="Lookup"/> (so that a subclass changing lookups is obeyed), its ENOENT
    /// answered null; a subclass may forward to the inner handler's instead, which answers without an exception.</summary>
    public virtual OverlayStat? TryLookup(ulong parent, string name, FuseContext context) => FuseChannel.LookupOrNull(this, parent, name, context);

    /// <inheritdoc/>
    public virtual void Forget(ulong ino, ulong count) => Inner.Forget(ino, count);

    /// <inheritdoc/>
    public virtual OverlayStat GetAttr(ulong ino, ulong? handle, FuseContext context) => Inner.GetAttr(ino, handle, context);

    /// <inheritdoc/>
    public virtual OverlayStat SetAttr(ulong ino, OverlaySetAttr change, ulong? handle, FuseContext context) => Inner.SetAttr(ino, change, handle, context);

    /// <inheritdoc/>
    public virtual string ReadLink(ulong ino, FuseContext context) => Inner.ReadLink(ino, context);

    /// <inheritdoc/>
    public virtual OverlayStat MakeNode(ulong parent, string name, uint mode, ulong rdev, FuseContext context) => Inner.MakeNode(parent, name, mode, rdev, context);

    /// <inheritdoc/>
    public virtual OverlayStat MakeDirectory(ulong parent, string name, uint mode, FuseContext context) => Inner.MakeDirectory(parent, name, mode, context);

    /// <inheritdoc/>
    public virtual void Unlink(ulong parent, string name, FuseContext context) => Inner.Unlink(parent, name, context);

    /// <inheritdoc/>
    public virtual void RemoveDirectory(ulong parent, string name, FuseContext context) => Inner.RemoveDirectory(parent, name, context);

    /// <inheritdoc/>
    public virtual OverlayStat MakeSymbolicLink(string target, ulong parent, string name, FuseContext context) => Inner.MakeSymbolicLink(target, parent, name, context);

    /// <inheritdoc/>
    public virtual void Rename(ulong parent, string name, ulong newParent, string newName, uint flags, FuseContext context) => Inner.Rename(parent, name, newParent, newName, flags, context);

    /// <inheritdoc/>
    public virtual OverlayStat Link(ulong ino, ulong newParent, string newName, FuseContext context) => Inner.Link(ino, newParent, newName, context);

    /// <inheritdoc/>
    public virtual FuseOpenResult Open(ulong ino, int flags, FuseContext context) => Inner.Open(ino, flags, context);

    /// <inheritdoc/>
    public virtual int Read(ulong ino, ulong handle, Span<byte> buffer, long offset) => Inner.Read(ino, handle, buffer, offset);

    /// <inheritdoc/>
    public virtual int Write(ulong ino, ulong handle, ReadOnlySpan<byte> data, long offset) => Inner.Write(ino, handle, data, offset);

    /// <inheritdoc/>
    public virtual void Flush(ulong ino, ulong handle) => Inner.Flush(ino, handle);

    /// <summary>False, as <see cref="ReadFile"/> is null unless a subclass forwards it: a subclass that changes reads
    /// or writes may make them wait.</summary>
    public virtual bool QuickIo(ulong ino, ulong handle) => false;

    /// <summary>The inner handler's: a subclass that makes a release wait says false.</summary>
    public virtual bool QuickRelease => Inner.QuickRelease;

    /// <summary>The inner handler's: a subclass that does something at <see cref="Flush"/> says true.</summary>
    public virtual bool HandlesFlush => Inner.HandlesFlush;

    /// <inheritdoc/>
    public virtual void Release(ulong ino, ulong handle) => Inner.Release(ino, handle);

    /// <summary>Null: every read goes through <see cref="Read"/>, which a subclass may change. A subclass that leaves
    /// the bytes <see cref="Read"/> returns as they are may forward this to <see cref="Inner"/>, so that reads are
    /// spliced from the file (<see cref="IFuseLowLevelHandler.ReadFile"/>).</summary>
    public virtual Microsoft.Win32.SafeHandles.SafeFileHandle? ReadFile(ulong ino, ulong handle) => null;

    /// <inheritdoc/>
    public virtual Microsoft.Win32.SafeHandles.SafeFileHandle? OpenPassthroughFile(ulong ino, ulong handle) => Inner.OpenPassthroughFile(ino, handle);

    /// <inheritdoc/>
    public virtual bool DropPrivileges(ulong ino, FuseContext context) => Inner.DropPrivileges(ino, context);

    /// <inheritdoc/>
    public virtual bool MayHavePrivileges(ulong ino) => Inner.MayHavePrivileges(ino);

    /// <inheritdoc/>
    public virtual void OnFailure(string operation, Exception exception) => Inner.OnFailure(operation, exception);

    /// <inheritdoc/>
    public virtual void Fsync(ulong ino, ulong handle, bool dataOnly) => Inner.Fsync(ino, handle, dataOnly);

    /// <inheritdoc/>
    public virtual ulong OpenDirectory(ulong ino, FuseContext context) => Inner.OpenDirectory(ino, context);

    /// <inheritdoc/>
    public virtual IReadOnlyList<OverlayDirEntry> ReadDirectory(ulong ino, ulong handle) => Inner.ReadDirectory(ino, handle);

    /// <inheritdoc/>
    public virtual void ReleaseDirectory(ulong ino, ulong handle) => Inner.ReleaseDirectory(ino, handle);

    /// <inheritdoc/>
    public virtual OverlayStatFs StatFs(ulong ino) => Inner.StatFs(ino);

    /// <inheritdoc/>
    public virtual void SetXattr(ulong ino, string name, ReadOnlySpan<byte> value, int flags, FuseContext context) => Inner.SetXattr(ino, name, value, flags, context);

    /// <inheritdoc/>
    public virtual byte[]? GetXattr(ulong ino, string name, FuseContext context) => Inner.GetXattr(ino, name, context);

    /// <inheritdoc/>
    public virtual IReadOnlyList<string> ListXattrs(ulong ino, FuseContext context) => Inner.ListXattrs(ino, context);

    /// <inheritdoc/>
    public virtual void RemoveXattr(ulong ino, string name, FuseContext context) => Inner.RemoveXattr(ino, name, context);

    /// <inheritdoc/>
    public virtual (OverlayStat Stat, FuseOpenResult Open) Create(ulong parent, string name, uint mode, int flags, FuseContext context) => Inner.Create(parent, name, mode, flags, context);

    /// <inheritdoc/>
    public virtual void Allocate(ulong ino, ulong handle, int mode, long offset, long length) => Inner.Allocate(ino, handle, mode, offset, length);

    /// <inheritdoc/>
    public virtual long Seek(ulong ino, ulong handle, long offset, int whence) => Inner.Seek(ino, handle, offset, whence);
}
