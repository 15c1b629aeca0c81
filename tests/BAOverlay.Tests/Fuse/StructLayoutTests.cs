using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Text;
using BAOverlay.Fuse.Interop;

namespace BAOverlay.Tests.Fuse;

/// <summary>
/// Compiles a small C program against the installed libfuse3 headers that prints sizeof/offsetof of every struct and
/// field the binding declares (and the bit of each fuse_file_info bitfield, and the constants it hard-codes), and
/// compares them with the managed layouts. Needs cc and libfuse3-dev; ignored, saying what to install, without them.
/// </summary>
[TestFixture]
[Platform("Linux")]
public sealed class StructLayoutTests
{
    private static readonly (string C, Type Managed, string[] Fields)[] Structs =
    [
        ("struct fuse_args", typeof(FuseArgs), ["argc", "argv", "allocated"]),
        ("struct fuse_file_info", typeof(FuseFileInfo), ["flags", "fh", "lock_owner", "poll_events"]),
        ("struct timespec", typeof(NativeTimespec), ["tv_sec", "tv_nsec"]),
        ("struct stat", typeof(NativeStat), ["st_dev", "st_ino", "st_nlink", "st_mode", "st_uid", "st_gid", "__pad0", "st_rdev", "st_size", "st_blksize", "st_blocks", "st_atim", "st_mtim", "st_ctim", "__glibc_reserved"]),
        ("struct statvfs", typeof(NativeStatvfs), ["f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree", "f_favail", "f_fsid", "f_flag", "f_namemax", "__f_spare"]),
        ("struct fuse_entry_param", typeof(FuseEntryParam), ["ino", "generation", "attr", "attr_timeout", "entry_timeout"]),
        ("struct fuse_ctx", typeof(FuseCtx), ["uid", "gid", "pid", "umask"]),
        ("struct fuse_forget_data", typeof(FuseForgetData), ["ino", "nlookup"]),
        ("struct fuse_conn_info", typeof(FuseConnInfo), ["proto_major", "proto_minor", "max_write", "max_read", "max_readahead", "capable", "want", "max_background", "congestion_threshold", "time_gran", "reserved"]),
        ("struct fuse_loop_config_v1", typeof(FuseLoopConfigV1), ["clone_fd", "max_idle_threads"]),
        ("struct fuse_lowlevel_ops", typeof(FuseLowLevelOps), OpsFields()),
    ];

    private static readonly (string Bitfield, ulong Managed)[] FileInfoBits =
    [
        ("writepage", FuseFileInfo.WritePageBit),
        ("direct_io", FuseFileInfo.DirectIoBit),
        ("keep_cache", FuseFileInfo.KeepCacheBit),
        ("flush", FuseFileInfo.FlushBit),
        ("nonseekable", FuseFileInfo.NonSeekableBit),
        ("flock_release", FuseFileInfo.FlockReleaseBit),
        ("cache_readdir", FuseFileInfo.CacheReaddirBit),
        ("noflush", FuseFileInfo.NoFlushBit),
    ];

    private static readonly (string C, long Managed)[] Constants =
    [
        ("FUSE_CAP_WRITEBACK_CACHE", FuseCallbacks.FUSE_CAP_WRITEBACK_CACHE),
        ("FUSE_CAP_AUTO_INVAL_DATA", FuseCallbacks.FUSE_CAP_AUTO_INVAL_DATA),
        ("MS_NOEXEC", (long)LibC.MS_NOEXEC),
        ("MS_NOATIME", (long)LibC.MS_NOATIME),
        ("O_RDWR", LibC.O_RDWR),
        ("O_CLOEXEC", LibC.O_CLOEXEC),
        ("O_TRUNC", 0x200),
        ("MS_RDONLY", (long)LibC.MS_RDONLY),
        ("MS_NOSUID", (long)LibC.MS_NOSUID),
        ("MS_NODEV", (long)LibC.MS_NODEV),
        ("MNT_DETACH", LibC.MNT_DETACH),
        ("FUSE_SET_ATTR_MODE", 1 << 0),
        ("FUSE_SET_ATTR_UID", 1 << 1),
        ("FUSE_SET_ATTR_GID", 1 << 2),
        ("FUSE_SET_ATTR_SIZE", 1 << 3),
        ("FUSE_SET_ATTR_ATIME", 1 << 4),
        ("FUSE_SET_ATTR_MTIME", 1 << 5),
        ("FUSE_SET_ATTR_ATIME_NOW", 1 << 7),
        ("FUSE_SET_ATTR_MTIME_NOW", 1 << 8),
    ];

    private static Dictionary<string, long>? s_native;
    private static string? s_unavailable;

    private static string[] OpsFields() =>
        typeof(FuseLowLevelOps).GetFields(System.Reflection.BindingFlags.Instance | System.Reflection.BindingFlags.Public)
            .Select(f => f.Name).ToArray();

    [Test]
    public void LowLevelOpsHasEveryMemberOfTheHeaderInOrder()
    {
        Dictionary<string, long> native = Native();
        Assert.That(Unsafe.SizeOf<FuseLowLevelOps>(), Is.EqualTo(native["sizeof struct fuse_lowlevel_ops"]),
            "the managed ops table has as many members as libfuse's (a missing or extra member shifts everything after it)");
        Assert.That(OpsFields(), Has.Length.EqualTo(44), "libfuse 3.14 has 44 members, init .. lseek");
    }

    [TestCaseSource(nameof(StructNames))]
    public void SizeAndOffsetsMatchTheHeaders(string cStruct)
    {
        Dictionary<string, long> native = Native();
        (string c, Type managed, string[] fields) = Structs.Single(s => s.C == cStruct);
        Assert.Multiple(() =>
        {
            Assert.That(SizeOf(managed), Is.EqualTo(native[$"sizeof {c}"]), $"sizeof({c})");
            foreach (string field in fields)
            {
                Assert.That((long)Marshal.OffsetOf(managed, field), Is.EqualTo(native[$"offsetof {c} {field}"]), $"offsetof({c}, {field})");
            }
        });
    }

    [Test]
    public void FileInfoBitfieldsSitWhereTheCompilerPutsThem()
    {
        Dictionary<string, long> native = Native();
        Assert.Multiple(() =>
        {
            foreach ((string bitfield, ulong managed) in FileInfoBits)
            {
                Assert.That(unchecked((ulong)native[$"bit fuse_file_info {bitfield}"]), Is.EqualTo(managed), $"fuse_file_info.{bitfield}");
            }
        });
        var fi = new FuseFileInfo { DirectIo = true, KeepCache = true };
        Assert.That(fi.bits, Is.EqualTo(FuseFileInfo.DirectIoBit | FuseFileInfo.KeepCacheBit));
        fi.DirectIo = false;
        Assert.That(fi.KeepCache && !fi.DirectIo && !fi.NonSeekable, Is.True);
    }

    [Test]
    public void HardCodedConstantsMatchTheHeaders()
    {
        Dictionary<string, long> native = Native();
        Assert.Multiple(() =>
        {
            foreach ((string c, long managed) in Constants)
            {
                Assert.That(managed, Is.EqualTo(native[$"const {c}"]), c);
            }
        });
    }

    public static IEnumerable<string> StructNames() => Structs.Select(s => s.C);

    private static long SizeOf(Type type) =>
        (int)typeof(Unsafe).GetMethod(nameof(Unsafe.SizeOf))!.MakeGenericMethod(type).Invoke(null, null)!;

    /// <summary>Compiles and runs the C program once per test run.</summary>
    private static Dictionary<string, long> Native()
    {
        if (s_native is not null)
        {
            return s_native;
        }
        string cflags = CLayoutProgram.Run("pkg-config", "--cflags fuse3", out int pkgStatus) is { } flags && pkgStatus == 0 ? flags.Trim() : "-I/usr/include/fuse3";
        s_native = CLayoutProgram.Values(Program(), $"-D_FILE_OFFSET_BITS=64 {cflags}",
            ("fuse_lowlevel.h", "apt-get install gcc pkg-config libfuse3-dev (Debian/Ubuntu), dnf install fuse3-devel (Fedora)"), ref s_unavailable);
        return s_native;
    }

    private static string Program()
    {
        var c = new StringBuilder();
        c.AppendLine("#define FUSE_USE_VERSION 314");
        c.AppendLine("#include <fuse_lowlevel.h>");
        c.AppendLine("#include <stddef.h>");
        c.AppendLine("#include <stdio.h>");
        c.AppendLine("#include <string.h>");
        c.AppendLine("#include <stdint.h>");
        c.AppendLine("#include <fcntl.h>");
        c.AppendLine("#include <sys/stat.h>");
        c.AppendLine("#include <sys/statvfs.h>");
        c.AppendLine("#include <sys/mount.h>");
        c.AppendLine("int main(void) {");
        foreach ((string name, _, string[] fields) in Structs)
        {
            c.AppendLine($"  printf(\"sizeof {name} %zu\\n\", sizeof({name}));");
            foreach (string field in fields)
            {
                c.AppendLine($"  printf(\"offsetof {name} {field} %zu\\n\", offsetof({name}, {field}));");
            }
        }
        foreach ((string bitfield, _) in FileInfoBits)
        {
            c.AppendLine("  { struct fuse_file_info fi; uint64_t w; memset(&fi, 0, sizeof fi); " +
                $"fi.{bitfield} = 1; memcpy(&w, (char *)&fi + 4, 8); printf(\"bit fuse_file_info {bitfield} %llu\\n\", (unsigned long long)w); }}");
        }
        foreach ((string constant, _) in Constants)
        {
            c.AppendLine($"  printf(\"const {constant} %lld\\n\", (long long)({constant}));");
        }
        c.AppendLine("  return 0;");
        c.AppendLine("}");
        return c.ToString();
    }
}
