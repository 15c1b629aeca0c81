using System.Runtime.InteropServices;

namespace BAOverlay.Fuse.Interop;

/// <summary>
/// libfuse3, opened with <see cref="NativeLibrary"/> (<c>libfuse3.so.4</c> from 3.17 on, else <c>libfuse3.so.3</c>),
/// every function resolved with <c>dlvsym</c> at an explicit symbol version and called through an unmanaged function
/// pointer. The C prototype is above each pointer.
/// </summary>
internal static unsafe class LibFuse
{
    /// <summary>The sonames tried, newest first.</summary>
    public static readonly string[] LibraryNames = ["libfuse3.so.4", "libfuse3.so.3"];

    private static readonly object s_gate = new();
    private static bool s_loaded;

    /// <summary>The soname that was opened.</summary>
    public static string LoadedLibrary { get; private set; } = "";

    /// <summary>"symbol@version" for every symbol resolved, in resolution order.</summary>
    public static List<string> Resolved { get; } = new();

    /// <summary>True when fuse_session_loop_mt@FUSE_3.12 (with the fuse_loop_cfg_* functions) is used, false for FUSE_3.2.</summary>
    public static bool LoopConfig312 { get; private set; }

    // struct fuse_session *fuse_session_new(struct fuse_args *args, const struct fuse_lowlevel_ops *op, size_t op_size, void *userdata);
    public static delegate* unmanaged<FuseArgs*, FuseLowLevelOps*, nuint, nint, nint> fuse_session_new;

    // int fuse_session_mount(struct fuse_session *se, const char *mountpoint);
    public static delegate* unmanaged<nint, byte*, int> fuse_session_mount;


    // void fuse_session_destroy(struct fuse_session *se);
    public static delegate* unmanaged<nint, void> fuse_session_destroy;

    // void fuse_session_exit(struct fuse_session *se);
    public static delegate* unmanaged<nint, void> fuse_session_exit;



    // FUSE_3.12: int fuse_session_loop_mt(struct fuse_session *se, struct fuse_loop_config *config);
    // FUSE_3.2:  int fuse_session_loop_mt(struct fuse_session *se, struct fuse_loop_config_v1 *config);
    public static delegate* unmanaged<nint, nint, int> fuse_session_loop_mt;

    // struct fuse_loop_config *fuse_loop_cfg_create(void);
    public static delegate* unmanaged<nint> fuse_loop_cfg_create;

    // void fuse_loop_cfg_destroy(struct fuse_loop_config *config);
    public static delegate* unmanaged<nint, void> fuse_loop_cfg_destroy;

    // void fuse_loop_cfg_set_max_threads(struct fuse_loop_config *config, unsigned int value);
    public static delegate* unmanaged<nint, uint, void> fuse_loop_cfg_set_max_threads;

    // void fuse_loop_cfg_set_idle_threads(struct fuse_loop_config *config, unsigned int value);
    public static delegate* unmanaged<nint, uint, void> fuse_loop_cfg_set_idle_threads;

    // void fuse_loop_cfg_set_clone_fd(struct fuse_loop_config *config, unsigned int value);
    public static delegate* unmanaged<nint, uint, void> fuse_loop_cfg_set_clone_fd;

    // void fuse_opt_free_args(struct fuse_args *args);
    public static delegate* unmanaged<FuseArgs*, void> fuse_opt_free_args;

    // void *fuse_req_userdata(fuse_req_t req);
    public static delegate* unmanaged<nint, nint> fuse_req_userdata;

    // const struct fuse_ctx *fuse_req_ctx(fuse_req_t req);
    public static delegate* unmanaged<nint, FuseCtx*> fuse_req_ctx;

    // int fuse_req_getgroups(fuse_req_t req, int size, gid_t list[]);
    public static delegate* unmanaged<nint, int, uint*, int> fuse_req_getgroups;

    // int fuse_reply_err(fuse_req_t req, int err);
    public static delegate* unmanaged<nint, int, int> fuse_reply_err;

    // void fuse_reply_none(fuse_req_t req);
    public static delegate* unmanaged<nint, void> fuse_reply_none;

    // int fuse_reply_entry(fuse_req_t req, const struct fuse_entry_param *e);
    public static delegate* unmanaged<nint, FuseEntryParam*, int> fuse_reply_entry;

    // int fuse_reply_create(fuse_req_t req, const struct fuse_entry_param *e, const struct fuse_file_info *fi);
    public static delegate* unmanaged<nint, FuseEntryParam*, FuseFileInfo*, int> fuse_reply_create;

    // int fuse_reply_attr(fuse_req_t req, const struct stat *attr, double attr_timeout);
    public static delegate* unmanaged<nint, NativeStat*, double, int> fuse_reply_attr;

    // int fuse_reply_readlink(fuse_req_t req, const char *link);
    public static delegate* unmanaged<nint, byte*, int> fuse_reply_readlink;

    // int fuse_reply_open(fuse_req_t req, const struct fuse_file_info *fi);
    public static delegate* unmanaged<nint, FuseFileInfo*, int> fuse_reply_open;

    // int fuse_reply_write(fuse_req_t req, size_t count);
    public static delegate* unmanaged<nint, nuint, int> fuse_reply_write;

    // int fuse_reply_buf(fuse_req_t req, const char *buf, size_t size);
    public static delegate* unmanaged<nint, byte*, nuint, int> fuse_reply_buf;

    // int fuse_reply_statfs(fuse_req_t req, const struct statvfs *stbuf);
    public static delegate* unmanaged<nint, NativeStatvfs*, int> fuse_reply_statfs;

    // int fuse_reply_xattr(fuse_req_t req, size_t count);
    public static delegate* unmanaged<nint, nuint, int> fuse_reply_xattr;

    // int fuse_reply_lseek(fuse_req_t req, off_t off);
    public static delegate* unmanaged<nint, long, int> fuse_reply_lseek;

    // int fuse_lowlevel_notify_inval_inode(struct fuse_session *se, fuse_ino_t ino, off_t off, off_t len);
    public static delegate* unmanaged<nint, ulong, long, long, int> fuse_lowlevel_notify_inval_inode;

    // int fuse_lowlevel_notify_inval_entry(struct fuse_session *se, fuse_ino_t parent, const char *name, size_t namelen);
    public static delegate* unmanaged<nint, ulong, byte*, nuint, int> fuse_lowlevel_notify_inval_entry;

    // size_t fuse_add_direntry(fuse_req_t req, char *buf, size_t bufsize, const char *name, const struct stat *stbuf, off_t off);
    public static delegate* unmanaged<nint, byte*, nuint, byte*, NativeStat*, long, nuint> fuse_add_direntry;

    /// <summary>Opens libfuse3 and resolves every symbol once.</summary>
    /// <exception cref="FuseUnavailableException">libfuse3 is not installed, or lacks a symbol version the binding needs.</exception>
    public static void EnsureLoaded()
    {
        lock (s_gate)
        {
            if (s_loaded)
            {
                return;
            }
            if (!OperatingSystem.IsLinux())
            {
                throw new FuseUnavailableException("the FUSE binding runs on Linux only");
            }
            if (RuntimeInformation.ProcessArchitecture != Architecture.X64)
            {
                throw new FuseUnavailableException(
                    $"the FUSE binding's struct layouts are done for x86_64 only, not {RuntimeInformation.ProcessArchitecture}");
            }
            (nint handle, string name) = OpenLibrary(LibraryNames);
            LoadedLibrary = name;
            Resolve(handle);
            s_loaded = true;
        }
    }

    /// <summary>Opens the first of <paramref name="names"/> that loads.</summary>
    /// <exception cref="FuseUnavailableException">None loads; the message says how to install libfuse3.</exception>
    internal static (nint Handle, string Name) OpenLibrary(IReadOnlyList<string> names)
    {
        foreach (string name in names)
        {
            if (NativeLibrary.TryLoad(name, out nint handle))
            {
                return (handle, name);
            }
        }
        throw new FuseUnavailableException(
            $"libfuse3 was not found ({string.Join(", ", names)}); install it: apt-get install fuse3 (Debian/Ubuntu), dnf install fuse3 (Fedora)");
    }

    private static void Resolve(nint h)
    {
        Resolved.Clear();
        fuse_session_new = (delegate* unmanaged<FuseArgs*, FuseLowLevelOps*, nuint, nint, nint>)Get(h, "fuse_session_new", "FUSE_3.0");
        fuse_session_mount = (delegate* unmanaged<nint, byte*, int>)Get(h, "fuse_session_mount", "FUSE_3.0");
        fuse_session_destroy = (delegate* unmanaged<nint, void>)Get(h, "fuse_session_destroy", "FUSE_3.0");
        fuse_session_exit = (delegate* unmanaged<nint, void>)Get(h, "fuse_session_exit", "FUSE_3.0");
        fuse_opt_free_args = (delegate* unmanaged<FuseArgs*, void>)Get(h, "fuse_opt_free_args", "FUSE_3.0");
        fuse_req_userdata = (delegate* unmanaged<nint, nint>)Get(h, "fuse_req_userdata", "FUSE_3.0");
        fuse_req_ctx = (delegate* unmanaged<nint, FuseCtx*>)Get(h, "fuse_req_ctx", "FUSE_3.0");
        fuse_req_getgroups = (delegate* unmanaged<nint, int, uint*, int>)Get(h, "fuse_req_getgroups", "FUSE_3.0");
        fuse_reply_err = (delegate* unmanaged<nint, int, int>)Get(h, "fuse_reply_err", "FUSE_3.0");
        fuse_reply_none = (delegate* unmanaged<nint, void>)Get(h, "fuse_reply_none", "FUSE_3.0");
        fuse_reply_entry = (delegate* unmanaged<nint, FuseEntryParam*, int>)Get(h, "fuse_reply_entry", "FUSE_3.0");
        fuse_reply_create = (delegate* unmanaged<nint, FuseEntryParam*, FuseFileInfo*, int>)Get(h, "fuse_reply_create", "FUSE_3.0");
        fuse_reply_attr = (delegate* unmanaged<nint, NativeStat*, double, int>)Get(h, "fuse_reply_attr", "FUSE_3.0");
        fuse_reply_readlink = (delegate* unmanaged<nint, byte*, int>)Get(h, "fuse_reply_readlink", "FUSE_3.0");
        fuse_reply_open = (delegate* unmanaged<nint, FuseFileInfo*, int>)Get(h, "fuse_reply_open", "FUSE_3.0");
        fuse_reply_write = (delegate* unmanaged<nint, nuint, int>)Get(h, "fuse_reply_write", "FUSE_3.0");
        fuse_reply_buf = (delegate* unmanaged<nint, byte*, nuint, int>)Get(h, "fuse_reply_buf", "FUSE_3.0");
        fuse_reply_statfs = (delegate* unmanaged<nint, NativeStatvfs*, int>)Get(h, "fuse_reply_statfs", "FUSE_3.0");
        fuse_reply_xattr = (delegate* unmanaged<nint, nuint, int>)Get(h, "fuse_reply_xattr", "FUSE_3.0");
        fuse_reply_lseek = (delegate* unmanaged<nint, long, int>)Get(h, "fuse_reply_lseek", "FUSE_3.0");
        fuse_add_direntry = (delegate* unmanaged<nint, byte*, nuint, byte*, NativeStat*, long, nuint>)Get(h, "fuse_add_direntry", "FUSE_3.0");
        fuse_lowlevel_notify_inval_inode = (delegate* unmanaged<nint, ulong, long, long, int>)Get(h, "fuse_lowlevel_notify_inval_inode", "FUSE_3.0");
        fuse_lowlevel_notify_inval_entry = (delegate* unmanaged<nint, ulong, byte*, nuint, int>)Get(h, "fuse_lowlevel_notify_inval_entry", "FUSE_3.0");

        // fuse_session_loop_mt has three versions in 3.12+: FUSE_3.0 (no config), FUSE_3.2 (struct
        // fuse_loop_config_v1 *) and FUSE_3.12 (opaque struct fuse_loop_config * built with fuse_loop_cfg_*). Prefer
        // FUSE_3.12, which lets us set max_threads; fall back to FUSE_3.2 on 3.2 .. 3.11.
        nint loop312 = LibC.DlvSym(h, "fuse_session_loop_mt", "FUSE_3.12");
        nint cfgCreate = LibC.DlvSym(h, "fuse_loop_cfg_create", "FUSE_3.12");
        if (loop312 != 0 && cfgCreate != 0)
        {
            LoopConfig312 = true;
            fuse_session_loop_mt = (delegate* unmanaged<nint, nint, int>)loop312;
            Resolved.Add("fuse_session_loop_mt@FUSE_3.12");
            fuse_loop_cfg_create = (delegate* unmanaged<nint>)cfgCreate;
            Resolved.Add("fuse_loop_cfg_create@FUSE_3.12");
            fuse_loop_cfg_destroy = (delegate* unmanaged<nint, void>)Get(h, "fuse_loop_cfg_destroy", "FUSE_3.12");
            fuse_loop_cfg_set_max_threads = (delegate* unmanaged<nint, uint, void>)Get(h, "fuse_loop_cfg_set_max_threads", "FUSE_3.12");
            fuse_loop_cfg_set_idle_threads = (delegate* unmanaged<nint, uint, void>)Get(h, "fuse_loop_cfg_set_idle_threads", "FUSE_3.12");
            fuse_loop_cfg_set_clone_fd = (delegate* unmanaged<nint, uint, void>)Get(h, "fuse_loop_cfg_set_clone_fd", "FUSE_3.12");
        }
        else
        {
            LoopConfig312 = false;
            fuse_session_loop_mt = (delegate* unmanaged<nint, nint, int>)Get(h, "fuse_session_loop_mt", "FUSE_3.2");
        }
    }

    private static nint Get(nint handle, string symbol, string version)
    {
        nint address = LibC.DlvSym(handle, symbol, version);
        if (address == 0)
        {
            throw new FuseUnavailableException(
                $"{LoadedLibrary} has no {symbol}@{version}; the binding needs libfuse 3.2 or later (3.14 tested): apt-get install fuse3 (Debian/Ubuntu), dnf install fuse3 (Fedora)");
        }
        Resolved.Add($"{symbol}@{version}");
        return address;
    }
}
