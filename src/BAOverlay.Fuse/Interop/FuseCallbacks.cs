using System.Buffers;
using System.Runtime.InteropServices;
using System.Text;
using BAOverlay.FileSystem;
using Mono.Unix.Native;

namespace BAOverlay.Fuse.Interop;

/// <summary>
/// The <c>struct fuse_lowlevel_ops</c> callbacks: <c>[UnmanagedCallersOnly]</c> entry points that libfuse's worker
/// threads call. Each finds its <see cref="FuseSession"/> through the GCHandle in the session userdata, calls the
/// <see cref="IFuseLowLevelHandler"/>, and replies. Every one catches everything and answers the errno of
/// <see cref="OverlayException.ErrnoOf"/> (with a log line for corruption, bugs and I/O errors), so no exception ever
/// unwinds into libfuse.
/// </summary>
internal static unsafe class FuseCallbacks
{
    // Linux x86_64 numbers used in the replies and flag conversions.
    private const int EIO = 5;
    private const int ERANGE = 34;
    private const int ENOENT = 2;
    private const int ENODATA = 61;
    private const int O_TRUNC = 0x200;

    private const int FUSE_SET_ATTR_MODE = 1 << 0;
    private const int FUSE_SET_ATTR_UID = 1 << 1;
    private const int FUSE_SET_ATTR_GID = 1 << 2;
    private const int FUSE_SET_ATTR_SIZE = 1 << 3;
    private const int FUSE_SET_ATTR_ATIME = 1 << 4;
    private const int FUSE_SET_ATTR_MTIME = 1 << 5;
    private const int FUSE_SET_ATTR_ATIME_NOW = 1 << 7;
    private const int FUSE_SET_ATTR_MTIME_NOW = 1 << 8;

    public const uint FUSE_CAP_AUTO_INVAL_DATA = 1 << 12;
    public const uint FUSE_CAP_WRITEBACK_CACHE = 1 << 16;

    /// <summary>The ops table with every implemented member set; the others stay null.</summary>
    public static FuseLowLevelOps Build(bool flush) => new()
    {
        init = &Init,
        lookup = &Lookup,
        forget = &Forget,
        getattr = &GetAttr,
        setattr = &SetAttr,
        readlink = &ReadLink,
        mknod = &MkNod,
        mkdir = &MkDir,
        unlink = &Unlink,
        rmdir = &RmDir,
        symlink = &Symlink,
        rename = &Rename,
        link = &Link,
        open = &Open,
        read = &Read,
        write = &Write,
        flush = flush ? &Flush : null, // none: libfuse answers ENOSYS, and the kernel sends no more
        release = &Release,
        fsync = &Fsync,
        opendir = &OpenDir,
        readdir = &ReadDir,
        releasedir = &ReleaseDir,
        statfs = &StatFs,
        setxattr = &SetXattr,
        getxattr = &GetXattr,
        listxattr = &ListXattr,
        removexattr = &RemoveXattr,
        create = &Create,
        forget_multi = &ForgetMulti,
        fallocate = &Fallocate,
        lseek = &Lseek,
    };

    // ------------------------------------------------------------------ helpers

    private static FuseSession SessionOf(nint req) => (FuseSession)GCHandle.FromIntPtr(LibFuse.fuse_req_userdata(req)).Target!;

    private static string Str(byte* s) => Marshal.PtrToStringUTF8((nint)s) ?? "";

    private static FuseContext ContextOf(nint req, IFuseLowLevelHandler handler)
    {
        FuseCtx* ctx = LibFuse.fuse_req_ctx(req);
        var context = new FuseContext(ctx->uid, ctx->gid, ctx->pid, ctx->umask);
        if (handler.WantsGroups)
        {
            uint* list = stackalloc uint[64];
            int n = LibFuse.fuse_req_getgroups(req, 64, list);
            if (n > 64)
            {
                uint[] more = new uint[n];
                fixed (uint* p = more)
                {
                    n = Math.Min(n, LibFuse.fuse_req_getgroups(req, n, p));
                }
                context = context with { Groups = more.AsSpan(0, Math.Max(0, n)).ToArray() };
            }
            else if (n >= 0)
            {
                context = context with { Groups = new ReadOnlySpan<uint>(list, n).ToArray() };
            }
        }
        return context;
    }

    /// <summary>Answers a failed request with the errno <see cref="OverlayException.ErrnoOf"/> maps the exception to,
    /// logging the classes that are no POSIX condition of the request (corruption, a bug, an I/O error); never throws.</summary>
    private static void Fail(nint req, Exception e, string operation)
    {
        int errno = EIO;
        try
        {
            errno = SessionOf(req).ErrnoFor(e, operation);
        }
        catch
        {
            // The session itself could not be found: EIO.
        }
        LibFuse.fuse_reply_err(req, errno);
    }

    /// <summary>Cleanup after a request is answered (the request must not be answered twice): failures are logged.</summary>
    private static void AfterReply(FuseSession session, string operation, Action cleanup)
    {
        try
        {
            cleanup();
        }
        catch (Exception e)
        {
            session.LogLine($"{operation}: cleanup after an interrupted request: {e.GetType().Name}: {e.Message}");
        }
    }

    private static void Fill(NativeStat* st, in OverlayStat s)
    {
        *st = default;
        st->st_ino = s.Ino;
        st->st_mode = s.Mode;
        st->st_nlink = s.Nlink;
        st->st_uid = s.Uid;
        st->st_gid = s.Gid;
        st->st_rdev = s.Rdev;
        st->st_size = s.Size;
        st->st_blocks = s.Blocks;
        st->st_blksize = 4096;
        st->st_atim = Time(s.ATimeNs);
        st->st_mtim = Time(s.MTimeNs);
        st->st_ctim = Time(s.CTimeNs);
    }

    private static NativeTimespec Time(long ns) => new() { tv_sec = Math.DivRem(ns, 1_000_000_000L, out long rem) - (rem < 0 ? 1 : 0), tv_nsec = rem < 0 ? rem + 1_000_000_000L : rem };

    private static void ReplyEntry(nint req, FuseSession session, in OverlayStat stat)
    {
        FuseEntryParam e = default;
        e.ino = stat.Ino;
        e.generation = 0;
        Fill(&e.attr, stat);
        e.attr_timeout = session.Handler.AttributeTimeout;
        e.entry_timeout = session.Handler.EntryTimeout;
        LibFuse.fuse_reply_entry(req, &e);
    }

    /// <summary>Writes <paramref name="s"/> NUL-terminated into <paramref name="buffer"/>, renting a larger one when needed.</summary>
    private static Span<byte> Utf8z(string s, Span<byte> buffer, ref byte[]? rented)
    {
        int count = Encoding.UTF8.GetByteCount(s);
        if (count + 1 > buffer.Length)
        {
            rented = ArrayPool<byte>.Shared.Rent(count + 1);
            buffer = rented;
        }
        Encoding.UTF8.GetBytes(s, buffer);
        buffer[count] = 0;
        return buffer[..(count + 1)];
    }

    // ------------------------------------------------------------------ connection

    // void (*init) (void *userdata, struct fuse_conn_info *conn);
    [UnmanagedCallersOnly]
    private static void Init(nint userdata, FuseConnInfo* conn)
    {
        try
        {
            var session = (FuseSession)GCHandle.FromIntPtr(userdata).Target!;
            if (session.Options.WritebackCache && (conn->capable & FUSE_CAP_WRITEBACK_CACHE) != 0)
            {
                conn->want |= FUSE_CAP_WRITEBACK_CACHE;
            }
            if (session.Options.MaxReadahead is uint readahead)
            {
                conn->max_readahead = Math.Min(readahead, conn->max_readahead);
            }
            if (session.Options.MaxWrite is uint maxWrite)
            {
                conn->max_write = Math.Min(maxWrite, conn->max_write);
            }
            session.OnInit(new FuseConnection(conn->proto_major, conn->proto_minor, conn->capable, conn->want, conn->max_write, conn->max_readahead));
        }
        catch
        {
            // init has no reply: keep libfuse's defaults.
        }
    }

    // ------------------------------------------------------------------ names and attributes

    [UnmanagedCallersOnly]
    private static void Lookup(nint req, ulong parent, byte* name)
    {
        try
        {
            FuseSession s = SessionOf(req);
            OverlayStat stat = s.Handler.Lookup(parent, Str(name), ContextOf(req, s.Handler));
            ReplyEntry(req, s, stat);
        }
        catch (Exception e) when (SessionOf(req).Handler.NegativeTimeout > 0 && FuseChannel.IsNoEntry(e))
        {
            FuseEntryParam negative = default; // ino 0: a negative entry, kept for the negative timeout
            negative.entry_timeout = SessionOf(req).Handler.NegativeTimeout;
            LibFuse.fuse_reply_entry(req, &negative);
        }
        catch (Exception e)
        {
            Fail(req, e, "lookup");
        }
    }

    [UnmanagedCallersOnly]
    private static void Forget(nint req, ulong ino, ulong nlookup)
    {
        try
        {
            SessionOf(req).Handler.Forget(ino, nlookup);
        }
        catch (Exception e)
        {
            try
            {
                SessionOf(req).LogLine($"forget: {e.GetType().Name}: {e.Message}");
            }
            catch
            {
                // nothing more to do
            }
        }
        LibFuse.fuse_reply_none(req);
    }

    [UnmanagedCallersOnly]
    private static void ForgetMulti(nint req, nuint count, FuseForgetData* forgets)
    {
        try
        {
            IFuseLowLevelHandler handler = SessionOf(req).Handler;
            for (nuint i = 0; i < count; i++)
            {
                handler.Forget(forgets[i].ino, forgets[i].nlookup);
            }
        }
        catch (Exception e)
        {
            try
            {
                SessionOf(req).LogLine($"forget_multi: {e.GetType().Name}: {e.Message}");
            }
            catch
            {
                // nothing more to do
            }
        }
        LibFuse.fuse_reply_none(req);
    }

    [UnmanagedCallersOnly]
    private static void GetAttr(nint req, ulong ino, FuseFileInfo* fi)
    {
        try
        {
            FuseSession s = SessionOf(req);
            OverlayStat stat = s.Handler.GetAttr(ino, fi == null ? null : fi->fh, ContextOf(req, s.Handler));
            NativeStat st;
            Fill(&st, stat);
            LibFuse.fuse_reply_attr(req, &st, s.Handler.AttributeTimeout);
        }
        catch (Exception e)
        {
            Fail(req, e, "getattr");
        }
    }

    [UnmanagedCallersOnly]
    private static void SetAttr(nint req, ulong ino, NativeStat* attr, int toSet, FuseFileInfo* fi)
    {
        try
        {
            FuseSession s = SessionOf(req);
            var change = new OverlaySetAttr
            {
                Mode = (toSet & FUSE_SET_ATTR_MODE) != 0 ? attr->st_mode : null,
                Uid = (toSet & FUSE_SET_ATTR_UID) != 0 ? attr->st_uid : null,
                Gid = (toSet & FUSE_SET_ATTR_GID) != 0 ? attr->st_gid : null,
                Size = (toSet & FUSE_SET_ATTR_SIZE) != 0 ? attr->st_size : null,
                ATimeNs = (toSet & FUSE_SET_ATTR_ATIME_NOW) != 0 ? OverlaySetAttr.Now
                    : (toSet & FUSE_SET_ATTR_ATIME) != 0 ? attr->st_atim.tv_sec * 1_000_000_000L + attr->st_atim.tv_nsec : null,
                MTimeNs = (toSet & FUSE_SET_ATTR_MTIME_NOW) != 0 ? OverlaySetAttr.Now
                    : (toSet & FUSE_SET_ATTR_MTIME) != 0 ? attr->st_mtim.tv_sec * 1_000_000_000L + attr->st_mtim.tv_nsec : null,
            };
            OverlayStat stat = s.Handler.SetAttr(ino, change, fi == null ? null : fi->fh, ContextOf(req, s.Handler));
            NativeStat st;
            Fill(&st, stat);
            LibFuse.fuse_reply_attr(req, &st, s.Handler.AttributeTimeout);
        }
        catch (Exception e)
        {
            Fail(req, e, "setattr");
        }
    }

    [UnmanagedCallersOnly]
    private static void ReadLink(nint req, ulong ino)
    {
        byte[]? rented = null;
        try
        {
            FuseSession s = SessionOf(req);
            string target = s.Handler.ReadLink(ino, ContextOf(req, s.Handler));
            Span<byte> z = Utf8z(target, stackalloc byte[512], ref rented);
            fixed (byte* p = z)
            {
                LibFuse.fuse_reply_readlink(req, p);
            }
        }
        catch (Exception e)
        {
            Fail(req, e, "readlink");
        }
        finally
        {
            if (rented is not null)
            {
                ArrayPool<byte>.Shared.Return(rented);
            }
        }
    }

    [UnmanagedCallersOnly]
    private static void MkNod(nint req, ulong parent, byte* name, uint mode, ulong rdev)
    {
        try
        {
            FuseSession s = SessionOf(req);
            ReplyEntry(req, s, s.Handler.MakeNode(parent, Str(name), mode, rdev, ContextOf(req, s.Handler)));
        }
        catch (Exception e)
        {
            Fail(req, e, "mknod");
        }
    }

    [UnmanagedCallersOnly]
    private static void MkDir(nint req, ulong parent, byte* name, uint mode)
    {
        try
        {
            FuseSession s = SessionOf(req);
            ReplyEntry(req, s, s.Handler.MakeDirectory(parent, Str(name), mode, ContextOf(req, s.Handler)));
        }
        catch (Exception e)
        {
            Fail(req, e, "mkdir");
        }
    }

    [UnmanagedCallersOnly]
    private static void Unlink(nint req, ulong parent, byte* name)
    {
        try
        {
            FuseSession s = SessionOf(req);
            s.Handler.Unlink(parent, Str(name), ContextOf(req, s.Handler));
            LibFuse.fuse_reply_err(req, 0);
        }
        catch (Exception e)
        {
            Fail(req, e, "unlink");
        }
    }

    [UnmanagedCallersOnly]
    private static void RmDir(nint req, ulong parent, byte* name)
    {
        try
        {
            FuseSession s = SessionOf(req);
            s.Handler.RemoveDirectory(parent, Str(name), ContextOf(req, s.Handler));
            LibFuse.fuse_reply_err(req, 0);
        }
        catch (Exception e)
        {
            Fail(req, e, "rmdir");
        }
    }

    [UnmanagedCallersOnly]
    private static void Symlink(nint req, byte* link, ulong parent, byte* name)
    {
        try
        {
            FuseSession s = SessionOf(req);
            ReplyEntry(req, s, s.Handler.MakeSymbolicLink(Str(link), parent, Str(name), ContextOf(req, s.Handler)));
        }
        catch (Exception e)
        {
            Fail(req, e, "symlink");
        }
    }

    [UnmanagedCallersOnly]
    private static void Rename(nint req, ulong parent, byte* name, ulong newParent, byte* newName, uint flags)
    {
        try
        {
            FuseSession s = SessionOf(req);
            s.Handler.Rename(parent, Str(name), newParent, Str(newName), flags, ContextOf(req, s.Handler));
            LibFuse.fuse_reply_err(req, 0);
        }
        catch (Exception e)
        {
            Fail(req, e, "rename");
        }
    }

    [UnmanagedCallersOnly]
    private static void Link(nint req, ulong ino, ulong newParent, byte* newName)
    {
        try
        {
            FuseSession s = SessionOf(req);
            ReplyEntry(req, s, s.Handler.Link(ino, newParent, Str(newName), ContextOf(req, s.Handler)));
        }
        catch (Exception e)
        {
            Fail(req, e, "link");
        }
    }

    // ------------------------------------------------------------------ files

    [UnmanagedCallersOnly]
    private static void Open(nint req, ulong ino, FuseFileInfo* fi)
    {
        try
        {
            FuseSession s = SessionOf(req);
            FuseOpenResult result = s.Handler.Open(ino, fi->flags, ContextOf(req, s.Handler));
            fi->fh = result.Handle;
            fi->DirectIo = result.DirectIo;
            fi->KeepCache = result.KeepCache;
            if (LibFuse.fuse_reply_open(req, fi) == -ENOENT)
            {
                // The open was interrupted: the kernel will never release this handle. The request is answered
                // already, so a failure here is only logged.
                AfterReply(s, "open", () => s.Handler.Release(ino, result.Handle));
            }
        }
        catch (Exception e)
        {
            Fail(req, e, "open");
        }
    }

    [UnmanagedCallersOnly]
    private static void Create(nint req, ulong parent, byte* name, uint mode, FuseFileInfo* fi)
    {
        try
        {
            FuseSession s = SessionOf(req);
            (OverlayStat stat, FuseOpenResult result) = s.Handler.Create(parent, Str(name), mode, fi->flags, ContextOf(req, s.Handler));
            fi->fh = result.Handle;
            fi->DirectIo = result.DirectIo;
            fi->KeepCache = result.KeepCache;
            FuseEntryParam e = default;
            e.ino = stat.Ino;
            Fill(&e.attr, stat);
            e.attr_timeout = s.Handler.AttributeTimeout;
            e.entry_timeout = s.Handler.EntryTimeout;
            if (LibFuse.fuse_reply_create(req, &e, fi) == -ENOENT)
            {
                AfterReply(s, "create", () =>
                {
                    s.Handler.Release(stat.Ino, result.Handle);
                    s.Handler.Forget(stat.Ino, 1);
                });
            }
        }
        catch (Exception e)
        {
            Fail(req, e, "create");
        }
    }

    [UnmanagedCallersOnly]
    private static void Read(nint req, ulong ino, nuint size, long off, FuseFileInfo* fi)
    {
        byte[]? buffer = null;
        try
        {
            FuseSession s = SessionOf(req);
            int length = (int)Math.Min(size, (nuint)(64 << 20));
            buffer = ArrayPool<byte>.Shared.Rent(Math.Max(1, length));
            int n = s.Handler.Read(ino, fi->fh, buffer.AsSpan(0, length), off);
            fixed (byte* p = buffer)
            {
                LibFuse.fuse_reply_buf(req, p, (nuint)n);
            }
        }
        catch (Exception e)
        {
            Fail(req, e, "read");
        }
        finally
        {
            if (buffer is not null)
            {
                ArrayPool<byte>.Shared.Return(buffer);
            }
        }
    }

    [UnmanagedCallersOnly]
    private static void Write(nint req, ulong ino, byte* buf, nuint size, long off, FuseFileInfo* fi)
    {
        try
        {
            FuseSession s = SessionOf(req);
            int n = s.Handler.Write(ino, fi->fh, new ReadOnlySpan<byte>(buf, checked((int)size)), off);
            LibFuse.fuse_reply_write(req, (nuint)n);
        }
        catch (Exception e)
        {
            Fail(req, e, "write");
        }
    }

    [UnmanagedCallersOnly]
    private static void Flush(nint req, ulong ino, FuseFileInfo* fi)
    {
        try
        {
            SessionOf(req).Handler.Flush(ino, fi->fh);
            LibFuse.fuse_reply_err(req, 0);
        }
        catch (Exception e)
        {
            Fail(req, e, "flush");
        }
    }

    [UnmanagedCallersOnly]
    private static void Release(nint req, ulong ino, FuseFileInfo* fi)
    {
        try
        {
            SessionOf(req).Handler.Release(ino, fi->fh);
            LibFuse.fuse_reply_err(req, 0);
        }
        catch (Exception e)
        {
            Fail(req, e, "release");
        }
    }

    [UnmanagedCallersOnly]
    private static void Fsync(nint req, ulong ino, int datasync, FuseFileInfo* fi)
    {
        try
        {
            SessionOf(req).Handler.Fsync(ino, fi->fh, datasync != 0);
            LibFuse.fuse_reply_err(req, 0);
        }
        catch (Exception e)
        {
            Fail(req, e, "fsync");
        }
    }

    [UnmanagedCallersOnly]
    private static void Fallocate(nint req, ulong ino, int mode, long offset, long length, FuseFileInfo* fi)
    {
        try
        {
            SessionOf(req).Handler.Allocate(ino, fi->fh, mode, offset, length);
            LibFuse.fuse_reply_err(req, 0);
        }
        catch (Exception e)
        {
            Fail(req, e, "fallocate");
        }
    }

    [UnmanagedCallersOnly]
    private static void Lseek(nint req, ulong ino, long off, int whence, FuseFileInfo* fi)
    {
        try
        {
            long result = SessionOf(req).Handler.Seek(ino, fi->fh, off, whence);
            LibFuse.fuse_reply_lseek(req, result);
        }
        catch (Exception e)
        {
            Fail(req, e, "lseek");
        }
    }

    // ------------------------------------------------------------------ directories

    [UnmanagedCallersOnly]
    private static void OpenDir(nint req, ulong ino, FuseFileInfo* fi)
    {
        try
        {
            FuseSession s = SessionOf(req);
            ulong handle = s.Handler.OpenDirectory(ino, ContextOf(req, s.Handler));
            fi->fh = handle;
            if (LibFuse.fuse_reply_open(req, fi) == -ENOENT)
            {
                AfterReply(s, "opendir", () => s.Handler.ReleaseDirectory(ino, handle));
            }
        }
        catch (Exception e)
        {
            Fail(req, e, "opendir");
        }
    }

    [UnmanagedCallersOnly]
    private static void ReadDir(nint req, ulong ino, nuint size, long off, FuseFileInfo* fi)
    {
        byte[]? buffer = null;
        try
        {
            FuseSession s = SessionOf(req);
            IReadOnlyList<OverlayDirEntry> entries = s.Handler.ReadDirectory(ino, fi->fh);
            int capacity = (int)Math.Min(size, (nuint)(1 << 20));
            buffer = ArrayPool<byte>.Shared.Rent(Math.Max(1, capacity));
            int start = FuseDirectoryOffsets.StartIndex(entries, off);
            nuint used = 0;
            Span<byte> nameBuffer = stackalloc byte[1024];
            fixed (byte* p = buffer)
            {
                NativeStat st = default;
                for (int i = start; i < entries.Count; i++)
                {
                    OverlayDirEntry entry = entries[i];
                    byte[]? rentedName = null;
                    Span<byte> z = Utf8z(entry.Name, nameBuffer, ref rentedName);
                    st.st_ino = entry.Ino;
                    st.st_mode = entry.Type;
                    nuint need;
                    fixed (byte* pz = z)
                    {
                        need = LibFuse.fuse_add_direntry(req, p + used, (nuint)capacity - used, pz, &st, entry.NextOffset);
                    }
                    if (rentedName is not null)
                    {
                        ArrayPool<byte>.Shared.Return(rentedName);
                    }
                    if (need > (nuint)capacity - used)
                    {
                        break; // this entry did not fit; the kernel asks again from its offset
                    }
                    used += need;
                }
                LibFuse.fuse_reply_buf(req, p, used);
            }
        }
        catch (Exception e)
        {
            Fail(req, e, "readdir");
        }
        finally
        {
            if (buffer is not null)
            {
                ArrayPool<byte>.Shared.Return(buffer);
            }
        }
    }

    [UnmanagedCallersOnly]
    private static void ReleaseDir(nint req, ulong ino, FuseFileInfo* fi)
    {
        try
        {
            SessionOf(req).Handler.ReleaseDirectory(ino, fi->fh);
            LibFuse.fuse_reply_err(req, 0);
        }
        catch (Exception e)
        {
            Fail(req, e, "releasedir");
        }
    }

    [UnmanagedCallersOnly]
    private static void StatFs(nint req, ulong ino)
    {
        try
        {
            OverlayStatFs v = SessionOf(req).Handler.StatFs(ino);
            NativeStatvfs n = default;
            n.f_bsize = v.BlockSize;
            n.f_frsize = v.FragmentSize;
            n.f_blocks = v.Blocks;
            n.f_bfree = v.BlocksFree;
            n.f_bavail = v.BlocksAvailable;
            n.f_files = v.Files;
            n.f_ffree = v.FilesFree;
            n.f_favail = v.FilesAvailable;
            n.f_fsid = v.FileSystemId;
            n.f_flag = v.Flags;
            n.f_namemax = v.MaxNameLength;
            LibFuse.fuse_reply_statfs(req, &n);
        }
        catch (Exception e)
        {
            Fail(req, e, "statfs");
        }
    }

    // ------------------------------------------------------------------ extended attributes

    [UnmanagedCallersOnly]
    private static void SetXattr(nint req, ulong ino, byte* name, byte* value, nuint size, int flags)
    {
        try
        {
            FuseSession s = SessionOf(req);
            s.Handler.SetXattr(ino, Str(name), new ReadOnlySpan<byte>(value, checked((int)size)), flags, ContextOf(req, s.Handler));
            LibFuse.fuse_reply_err(req, 0);
        }
        catch (Exception e)
        {
            Fail(req, e, "setxattr");
        }
    }

    [UnmanagedCallersOnly]
    private static void GetXattr(nint req, ulong ino, byte* name, nuint size)
    {
        try
        {
            FuseSession s = SessionOf(req);
            byte[]? value = s.Handler.GetXattr(ino, Str(name), ContextOf(req, s.Handler));
            if (value is null)
            {
                LibFuse.fuse_reply_err(req, ENODATA);
            }
            else if (size == 0)
            {
                LibFuse.fuse_reply_xattr(req, (nuint)value.Length);
            }
            else if ((nuint)value.Length > size)
            {
                LibFuse.fuse_reply_err(req, ERANGE);
            }
            else
            {
                fixed (byte* p = value)
                {
                    LibFuse.fuse_reply_buf(req, p, (nuint)value.Length);
                }
            }
        }
        catch (Exception e)
        {
            Fail(req, e, "getxattr");
        }
    }

    [UnmanagedCallersOnly]
    private static void ListXattr(nint req, ulong ino, nuint size)
    {
        byte[]? buffer = null;
        try
        {
            FuseSession s = SessionOf(req);
            IReadOnlyList<string> names = s.Handler.ListXattrs(ino, ContextOf(req, s.Handler));
            int total = 0;
            foreach (string n in names)
            {
                total += Encoding.UTF8.GetByteCount(n) + 1;
            }
            if (size == 0)
            {
                LibFuse.fuse_reply_xattr(req, (nuint)total);
                return;
            }
            if ((nuint)total > size)
            {
                LibFuse.fuse_reply_err(req, ERANGE);
                return;
            }
            buffer = ArrayPool<byte>.Shared.Rent(Math.Max(1, total));
            int at = 0;
            foreach (string n in names)
            {
                at += Encoding.UTF8.GetBytes(n, buffer.AsSpan(at));
                buffer[at++] = 0;
            }
            fixed (byte* p = buffer)
            {
                LibFuse.fuse_reply_buf(req, p, (nuint)total);
            }
        }
        catch (Exception e)
        {
            Fail(req, e, "listxattr");
        }
        finally
        {
            if (buffer is not null)
            {
                ArrayPool<byte>.Shared.Return(buffer);
            }
        }
    }

    [UnmanagedCallersOnly]
    private static void RemoveXattr(nint req, ulong ino, byte* name)
    {
        try
        {
            FuseSession s = SessionOf(req);
            s.Handler.RemoveXattr(ino, Str(name), ContextOf(req, s.Handler));
            LibFuse.fuse_reply_err(req, 0);
        }
        catch (Exception e)
        {
            Fail(req, e, "removexattr");
        }
    }

    /// <summary>O_TRUNC as the kernel passes it in open flags (with FUSE_CAP_ATOMIC_O_TRUNC, on by default in libfuse 3).</summary>
    public static bool Truncates(int flags) => (flags & O_TRUNC) != 0;
}
