using System.Reflection;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Text;
using BAOverlay.Fuse.Interop;

namespace BAOverlay.Tests.Fuse;

/// <summary>
/// The FUSE wire protocol structs and constants of <c>Interop/FuseKernel.cs</c> against the kernel's own header,
/// <c>/usr/include/linux/fuse.h</c>: a C program prints sizeof and offsetof of every field the managed structs declare
/// (found by reflection, so a field added to a struct is checked too) and the value of every constant. Items newer than
/// the installed header are compared only where the header has them. Needs cc and the Linux headers (Debian:
/// linux-libc-dev, which gcc pulls in); ignored, saying what to install, without them.
/// </summary>
[TestFixture]
[Platform("Linux")]
public sealed class FuseKernelLayoutTests
{
    private static readonly Type[] Structs =
    [
        typeof(fuse_in_header), typeof(fuse_out_header), typeof(fuse_init_in), typeof(fuse_init_out), typeof(fuse_attr),
        typeof(fuse_entry_out), typeof(fuse_attr_out), typeof(fuse_getattr_in), typeof(fuse_setattr_in),
        typeof(fuse_mknod_in), typeof(fuse_mkdir_in), typeof(fuse_rename2_in), typeof(fuse_link_in), typeof(fuse_open_in),
        typeof(fuse_create_in), typeof(fuse_open_out), typeof(fuse_release_in), typeof(fuse_flush_in), typeof(fuse_read_in),
        typeof(fuse_write_in), typeof(fuse_write_out), typeof(fuse_fsync_in), typeof(fuse_kstatfs),
        typeof(fuse_setxattr_in), typeof(fuse_getxattr_in), typeof(fuse_getxattr_out), typeof(fuse_forget_in),
        typeof(fuse_batch_forget_in), typeof(fuse_forget_one), typeof(fuse_fallocate_in), typeof(fuse_lseek_in),
        typeof(fuse_lseek_out), typeof(fuse_dirent), typeof(fuse_direntplus), typeof(fuse_notify_inval_inode_out),
        typeof(fuse_notify_inval_entry_out), typeof(fuse_backing_map),
    ];

    /// <summary>Constants and opcodes the installed header may predate: compared only from that protocol minor on.</summary>
    private static readonly Dictionary<string, int> NewerThan738 = new()
    {
        ["FUSE_STATX"] = 39,
        ["FUSE_CREATE_SUPP_GROUP"] = 39, // bit 34 was taken in 6.3 with protocol 7.38, but the 7.38 header some distributions ship predates it
        ["FUSE_DIRECT_IO_ALLOW_MMAP"] = 39,
        ["FUSE_PASSTHROUGH"] = 40,
        ["FUSE_NO_EXPORT_SUPPORT"] = 40,
        ["FUSE_HAS_RESEND"] = 40,
        ["FOPEN_PASSTHROUGH"] = 40,
    };

    /// <summary>Fields 7.40 gave names to (they were padding before): in an older header they are compared at the
    /// offset of the field they took over, so the 7.40 layout is checked against the installed header either way.</summary>
    private static readonly Dictionary<string, (int Minor, string Before)> NamedIn = new()
    {
        ["fuse_open_out backing_id"] = (40, "padding"),
        ["fuse_init_out max_stack_depth"] = (40, "unused"),
    };

    /// <summary>What a header older than 7.40 lacks of passthrough, as Linux 6.9's include/uapi/linux/fuse.h declares
    /// it, so the program still checks the ioctl numbers' arithmetic and the struct's layout.</summary>
    private const string Before740 = """
        #if FUSE_KERNEL_MINOR_VERSION < 40
        #include <stdint.h>
        #include <sys/ioctl.h>
        struct fuse_backing_map { int32_t fd; uint32_t flags; uint64_t padding; };
        #define FUSE_DEV_IOC_BACKING_OPEN _IOW(FUSE_DEV_IOC_MAGIC, 1, struct fuse_backing_map)
        #define FUSE_DEV_IOC_BACKING_CLOSE _IOW(FUSE_DEV_IOC_MAGIC, 2, uint32_t)
        #endif
        """;

    /// <summary>Fields whose 7.40 shape differs from 7.38's (fuse_init_out's unused words start after max_stack_depth):
    /// compared only against a header of that minor or newer.</summary>
    private static readonly Dictionary<string, int> ChangedIn = new()
    {
        ["fuse_init_out unused"] = 40,
    };

    private static Dictionary<string, long>? s_native;
    private static string? s_unavailable;

    public static IEnumerable<string> StructNames() => Structs.Select(t => t.Name);

    private static string[] Fields(Type t) =>
        t.GetFields(BindingFlags.Instance | BindingFlags.Public).Select(f => f.Name).ToArray();

    private static IEnumerable<(string Name, long Value)> Constants() =>
        typeof(FuseKernel).GetFields(BindingFlags.Static | BindingFlags.Public)
            .Where(f => f.IsLiteral && (f.Name.StartsWith("FUSE_", StringComparison.Ordinal) || f.Name.StartsWith("FOPEN_", StringComparison.Ordinal) || f.Name.StartsWith("FATTR_", StringComparison.Ordinal)))
            .Where(f => f.Name != nameof(FuseKernel.FUSE_KERNEL_MINOR_VERSION)) // ours may be older than the header's
            .Select(f => (f.Name, Convert.ToInt64(f.GetRawConstantValue() is ulong u ? unchecked((long)u) : f.GetRawConstantValue(), System.Globalization.CultureInfo.InvariantCulture)))
            .Concat(Enum.GetValues<FuseOpcode>().Select(o => (o.ToString(), (long)(uint)o)));

    [TestCaseSource(nameof(StructNames))]
    public void SizeAndOffsetsMatchTheKernelHeader(string name)
    {
        Dictionary<string, long> native = Native();
        Type managed = Structs.Single(t => t.Name == name);
        Assert.Multiple(() =>
        {
            Assert.That(SizeOf(managed), Is.EqualTo(native[$"sizeof {name}"]), $"sizeof(struct {name})");
            foreach (string field in Fields(managed))
            {
                string key = $"offsetof {name} {field}";
                if (!native.ContainsKey(key) && ChangedIn.ContainsKey($"{name} {field}"))
                {
                    continue; // the installed header is older than the shape declared here
                }
                Assert.That(native.ContainsKey(key), Is.True, $"struct {name} has a field {field}");
                Assert.That((long)Marshal.OffsetOf(managed, field), Is.EqualTo(native[key]), $"offsetof(struct {name}, {field})");
            }
        });
    }

    [Test]
    public void ConstantsAndOpcodesMatchTheKernelHeader()
    {
        Dictionary<string, long> native = Native();
        int checkedCount = 0;
        Assert.Multiple(() =>
        {
            foreach ((string name, long value) in Constants())
            {
                if (!native.TryGetValue($"const {name}", out long expected))
                {
                    Assert.That(NewerThan738.ContainsKey(name), Is.True, $"{name} is in the header");
                    continue;
                }
                Assert.That(value, Is.EqualTo(expected), name);
                checkedCount++;
            }
        });
        Assert.That(checkedCount, Is.GreaterThan(60), "the constants were found and compared");
        Assert.That(native["const FUSE_KERNEL_MINOR_VERSION"], Is.GreaterThanOrEqualTo(38L),
            "the header has at least 7.38's layouts (the newer fields are checked at the positions they took over)");
    }

    private static long SizeOf(Type type) =>
        (int)typeof(Unsafe).GetMethod(nameof(Unsafe.SizeOf))!.MakeGenericMethod(type).Invoke(null, null)!;

    private static Dictionary<string, long> Native() =>
        s_native ??= CLayoutProgram.Values(Program(), "",
            ("linux/fuse.h", "apt-get install gcc linux-libc-dev (Debian/Ubuntu), dnf install kernel-headers (Fedora)"), ref s_unavailable);

    private static string Program()
    {
        var c = new StringBuilder();
        c.AppendLine("#include <linux/fuse.h>");
        c.AppendLine("#include <stddef.h>");
        c.AppendLine("#include <stdio.h>");
        c.AppendLine(Before740);
        c.AppendLine("int main(void) {");
        foreach (Type t in Structs)
        {
            c.AppendLine($"  printf(\"sizeof {t.Name} %zu\\n\", sizeof(struct {t.Name}));");
            foreach (string field in Fields(t))
            {
                string line = $"  printf(\"offsetof {t.Name} {field} %zu\\n\", offsetof(struct {t.Name}, {field}));";
                if (NamedIn.TryGetValue($"{t.Name} {field}", out (int Minor, string Before) named))
                {
                    string before = $"  printf(\"offsetof {t.Name} {field} %zu\\n\", offsetof(struct {t.Name}, {named.Before}));";
                    c.AppendLine($"#if FUSE_KERNEL_MINOR_VERSION >= {named.Minor}\n{line}\n#else\n{before}\n#endif");
                    continue;
                }
                c.AppendLine(ChangedIn.TryGetValue($"{t.Name} {field}", out int minor)
                    ? $"#if FUSE_KERNEL_MINOR_VERSION >= {minor}\n{line}\n#endif" : line);
            }
        }
        c.AppendLine("  printf(\"const FUSE_KERNEL_MINOR_VERSION %lld\\n\", (long long)FUSE_KERNEL_MINOR_VERSION);");
        foreach ((string name, long value) in Constants())
        {
            // 32-bit flags such as (1 << 31) are ints in the header: compare their bits, not their sign.
            string cast = value is >= 0 and <= uint.MaxValue ? "(long long)(unsigned int)" : "(long long)";
            string line = $"  printf(\"const {name} %lld\\n\", {cast}({name}));";
            c.AppendLine(NewerThan738.TryGetValue(name, out int minor)
                ? $"#if FUSE_KERNEL_MINOR_VERSION >= {minor}\n{line}\n#endif" : line);
        }
        c.AppendLine("  return 0;");
        c.AppendLine("}");
        return c.ToString();
    }
}
