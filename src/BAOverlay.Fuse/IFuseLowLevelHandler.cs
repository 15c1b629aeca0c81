using BAOverlay.FileSystem;

namespace BAOverlay.Fuse;

/// <summary>
/// The requests of libfuse's low-level (inode-based) API, in managed form. A <see cref="FuseSession"/> calls these
/// from libfuse's worker threads, concurrently; each method either returns the answer, which the session sends back
/// to the kernel, or throws: the exception is answered with the errno <see cref="OverlayException.ErrnoOf"/> maps it to
/// (an <see cref="OverlayException"/> with its own, ENOSPC for a full upper file system, ...), and corruption, bugs and
/// I/O errors also with a log line. Nothing thrown here ever reaches native code.
/// </summary>
public interface IFuseLowLevelHandler
{
    /// <summary>How long the kernel may cache a name lookup, in seconds.</summary>
    double EntryTimeout { get; }

    /// <summary>How long the kernel may cache attributes, in seconds.</summary>
    double AttributeTimeout { get; }

    /// <summary>How long the kernel may remember that a name does not exist (a lookup that failed with ENOENT), in
    /// seconds; 0 (the default) to ask again every time.</summary>
    double NegativeTimeout => 0;

    /// <summary>True when the requests' <see cref="FuseContext.Groups"/> are needed (read from <c>/proc/PID/status</c>
    /// at their first use in a request, so only permission-checking handlers should ask).</summary>
    bool WantsGroups { get; }

    /// <summary>lookup: the attributes of <paramref name="name"/> in <paramref name="parent"/>; counts one reference.</summary>
    OverlayStat Lookup(ulong parent, string name, FuseContext context);

    /// <summary>lookup, answering null instead of throwing when there is no such name (nothing counted then): the
    /// kernel looks up each name before it makes it, and an exception per create is a cost a handler can spare.
    /// Default: <see cref="Lookup"/>, its ENOENT answered null.</summary>
    OverlayStat? TryLookup(ulong parent, string name, FuseContext context) => FuseChannel.LookupOrNull(this, parent, name, context);

    /// <summary>The lookup a READDIRPLUS entry carries: as <see cref="Lookup"/>, or null to send the entry without
    /// attributes (the kernel then looks the name up itself when it needs it), which a handler may answer for names the
    /// kernel already knows. Default: <see cref="Lookup"/>.</summary>
    OverlayStat? LookupForListing(ulong parent, string name, FuseContext context) => Lookup(parent, name, context);

    /// <summary>forget: drops <paramref name="count"/> references.</summary>
    void Forget(ulong ino, ulong count);

    /// <summary>getattr.</summary>
    OverlayStat GetAttr(ulong ino, ulong? handle, FuseContext context);

    /// <summary>setattr: mode, owner, size, times.</summary>
    OverlayStat SetAttr(ulong ino, OverlaySetAttr change, ulong? handle, FuseContext context);

    /// <summary>readlink.</summary>
    string ReadLink(ulong ino, FuseContext context);

    /// <summary>mknod (mode includes the file type).</summary>
    OverlayStat MakeNode(ulong parent, string name, uint mode, ulong rdev, FuseContext context);

    /// <summary>mkdir.</summary>
    OverlayStat MakeDirectory(ulong parent, string name, uint mode, FuseContext context);

    /// <summary>unlink.</summary>
    void Unlink(ulong parent, string name, FuseContext context);

    /// <summary>rmdir.</summary>
    void RemoveDirectory(ulong parent, string name, FuseContext context);

    /// <summary>symlink: makes <paramref name="name"/> in <paramref name="parent"/> pointing at <paramref name="target"/>.</summary>
    OverlayStat MakeSymbolicLink(string target, ulong parent, string name, FuseContext context);

    /// <summary>rename, with renameat2 flags (RENAME_NOREPLACE = 1, RENAME_EXCHANGE = 2).</summary>
    void Rename(ulong parent, string name, ulong newParent, string newName, uint flags, FuseContext context);

    /// <summary>link: a hard link to <paramref name="ino"/>.</summary>
    OverlayStat Link(ulong ino, ulong newParent, string newName, FuseContext context);

    /// <summary>open: <paramref name="flags"/> are the open(2) flags.</summary>
    FuseOpenResult Open(ulong ino, int flags, FuseContext context);

    /// <summary>read into <paramref name="buffer"/>; returns the bytes read (fewer only at the end of the file).</summary>
    int Read(ulong ino, ulong handle, Span<byte> buffer, long offset);

    /// <summary>
    /// Reads without copying (splice): the open file whose bytes at each offset are what <see cref="Read"/> of
    /// <paramref name="handle"/> returns at that offset, or null (the default) when the handler must compose them. The
    /// handler keeps owning it; the caller takes a reference for the read (<c>DangerousAddRef</c>) and calls
    /// <see cref="Read"/> instead when it cannot, or when reading the file fails.
    /// </summary>
    Microsoft.Win32.SafeHandles.SafeFileHandle? ReadFile(ulong ino, ulong handle) => null;

    /// <summary>write; returns the bytes written.</summary>
    int Write(ulong ino, ulong handle, ReadOnlySpan<byte> data, long offset);

    /// <summary>flush (called at each close of a file descriptor).</summary>
    void Flush(ulong ino, ulong handle);

    /// <summary>
    /// Whether <see cref="Flush"/> does anything (the default: true). When false, the first FLUSH is answered
    /// <c>ENOSYS</c> and the kernel sends no more for the connection (<c>fc-&gt;no_flush</c>): a <c>close(2)</c> then
    /// waits for no round trip (it still writes back cached dirty pages first and reports their errors, and the last
    /// close still sends RELEASE, without waiting). fuse-overlayfs answers every flush so.
    /// </summary>
    bool HandlesFlush => true;

    /// <summary>
    /// Whether <see cref="Release"/> returns without waiting for the disk (no commit to make durable), so that the
    /// worker that read a RELEASE may serve it before reading on (<see cref="FuseMountOptions.InlineRequests"/>).
    /// Default false: each release gets a spare worker first.
    /// </summary>
    bool QuickRelease => false;

    /// <summary>
    /// Whether reads and writes of <paramref name="handle"/> are reads and writes of a local file as it is (no merge
    /// of blocks, no copy, no network), so that the worker that read the request may serve it before reading on
    /// (<see cref="FuseMountOptions.InlineRequests"/>); called for each READ and WRITE, so it must be cheap and must not throw.
    /// Default false.
    /// </summary>
    bool QuickIo(ulong ino, ulong handle) => false;

    /// <summary>release: the last close of an open file.</summary>
    void Release(ulong ino, ulong handle);

    /// <summary>
    /// FUSE passthrough: a descriptor of the file that holds the bytes of open file <paramref name="handle"/>, open for
    /// reading and writing, when the kernel may serve its reads, writes and mappings directly from it instead of
    /// sending them here; null (the default) to serve them. Asked only when the kernel granted passthrough and only
    /// for the first of the concurrent opens of <paramref name="ino"/> (the kernel takes one backing file per inode:
    /// the later opens share it); never for an inode some open of which is served. The caller closes it.
    /// </summary>
    Microsoft.Win32.SafeHandles.SafeFileHandle? OpenPassthroughFile(ulong ino, ulong handle) => null;

    /// <summary>
    /// FUSE_HANDLE_KILLPRIV_V2: the kernel leaves to the file system what a write, truncate or change of owner by a
    /// caller without CAP_FSETID does to a regular file's privileges (set-user-ID, set-group-ID with group execute,
    /// <c>security.capability</c>), and calls this first when that is due; <paramref name="context"/> carries the
    /// caller's groups (set-group-ID without group execute goes only for a caller outside the file's group). Returns
    /// true when the attributes changed. Default: nothing is cleared.
    /// </summary>
    bool DropPrivileges(ulong ino, FuseContext context) => false;

    /// <summary>False when <paramref name="ino"/> is known to have nothing <see cref="DropPrivileges"/> would clear, so
    /// the session need not gather the caller's groups for it: the kernel flags every write of a caller without
    /// CAP_FSETID. Cheap (no I/O). Default: true.</summary>
    bool MayHavePrivileges(ulong ino) => true;

    /// <summary>A request failed with <paramref name="exception"/> (answered with its errno just after): a handler
    /// may look at it, e.g. to notice that its storage is failing. Must not throw. Default: nothing.</summary>
    void OnFailure(string operation, Exception exception)
    {
    }

    /// <summary>fsync.</summary>
    void Fsync(ulong ino, ulong handle, bool dataOnly);

    /// <summary>opendir: returns a handle for <see cref="ReadDirectory"/>.</summary>
    ulong OpenDirectory(ulong ino, FuseContext context);

    /// <summary>readdir: the directory's entries as taken at <see cref="OpenDirectory"/>; the session answers the
    /// kernel's offset from <see cref="OverlayDirEntry.NextOffset"/>.</summary>
    IReadOnlyList<OverlayDirEntry> ReadDirectory(ulong ino, ulong handle);

    /// <summary>releasedir.</summary>
    void ReleaseDirectory(ulong ino, ulong handle);

    /// <summary>statfs.</summary>
    OverlayStatFs StatFs(ulong ino);

    /// <summary>setxattr (flags: XATTR_CREATE = 1, XATTR_REPLACE = 2).</summary>
    void SetXattr(ulong ino, string name, ReadOnlySpan<byte> value, int flags, FuseContext context);

    /// <summary>getxattr: the whole value, or null when there is no attribute by that name (answered ENODATA without
    /// an exception: the kernel asks for <c>security.capability</c> before every write).</summary>
    byte[]? GetXattr(ulong ino, string name, FuseContext context);

    /// <summary>listxattr: the names.</summary>
    IReadOnlyList<string> ListXattrs(ulong ino, FuseContext context);

    /// <summary>removexattr.</summary>
    void RemoveXattr(ulong ino, string name, FuseContext context);

    /// <summary>create: makes and opens a regular file.</summary>
    (OverlayStat Stat, FuseOpenResult Open) Create(ulong parent, string name, uint mode, int flags, FuseContext context);

    /// <summary>fallocate (mode bits as fallocate(2): FALLOC_FL_KEEP_SIZE, PUNCH_HOLE, ZERO_RANGE).</summary>
    void Allocate(ulong ino, ulong handle, int mode, long offset, long length);

    /// <summary>lseek with SEEK_DATA (3) or SEEK_HOLE (4); the kernel handles the other whence values itself.</summary>
    long Seek(ulong ino, ulong handle, long offset, int whence);
}
