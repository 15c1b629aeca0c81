using System.Reflection;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Text;
using BAOverlay.Fuse.Interop;

namespace BAOverlay.Tests.Fuse;

/// <summary>
/// The io_uring and FUSE-over-io_uring structs and constants of the ring transport
/// (<c>src/BAOverlay.Fuse/Interop/UringAbi.cs</c>, which the ring transport and the prototype use) against the kernel's headers: a C program prints
/// sizeof and offsetof of every field the managed structs declare (found by reflection) and the value of every constant,
/// from <c>linux/io_uring.h</c>, <c>linux/fuse.h</c> and <c>sys/syscall.h</c>. A <c>linux/fuse.h</c> older than 7.42 (Debian
/// 12 ships 7.38) lacks the ring structs: the program then declares them as Linux 6.14's header does, so the managed
/// layout is still checked against the C compiler's. Needs cc and the Linux headers; ignored, saying what to install,
/// without them.
/// </summary>
[TestFixture]
[Platform("Linux")]
public sealed class UringLayoutTests
{
    private static readonly Type[] Structs =
    [
        typeof(io_sqring_offsets), typeof(io_cqring_offsets), typeof(io_uring_params), typeof(io_uring_sqe),
        typeof(io_uring_cqe), typeof(fuse_uring_ent_in_out), typeof(fuse_uring_req_header), typeof(fuse_uring_cmd_req),
    ];

    /// <summary>What a fuse.h older than 7.42 lacks, as Linux 6.14's include/uapi/linux/fuse.h declares it.</summary>
    private const string Before742 = """
        #ifndef FUSE_OVER_IO_URING
        #include <stdint.h>
        #define FUSE_OVER_IO_URING (1ULL << 41)
        #define FUSE_URING_IN_OUT_HEADER_SZ 128
        #define FUSE_URING_OP_IN_OUT_SZ 128
        struct fuse_uring_ent_in_out { uint64_t flags; uint64_t commit_id; uint32_t payload_sz; uint32_t padding; uint64_t reserved; };
        struct fuse_uring_req_header { char in_out[FUSE_URING_IN_OUT_HEADER_SZ]; char op_in[FUSE_URING_OP_IN_OUT_SZ]; struct fuse_uring_ent_in_out ring_ent_in_out; };
        enum fuse_uring_cmd { FUSE_IO_URING_CMD_INVALID = 0, FUSE_IO_URING_CMD_REGISTER = 1, FUSE_IO_URING_CMD_COMMIT_AND_FETCH = 2 };
        struct fuse_uring_cmd_req { uint64_t flags; uint64_t commit_id; uint16_t qid; uint8_t padding[6]; };
        #endif
        """;

    /// <summary>Fields a header older than Linux 6.5 calls by their former name (IORING_SETUP_NO_MMAP came with the rename).</summary>
    private static readonly Dictionary<string, string> FormerNames = new()
    {
        ["io_sqring_offsets user_addr"] = "resv2",
        ["io_cqring_offsets user_addr"] = "resv2",
    };

    private static Dictionary<string, long>? s_native;
    private static string? s_unavailable;

    public static IEnumerable<string> StructNames() => Structs.Select(t => t.Name);

    private static string[] Fields(Type t) =>
        t.GetFields(BindingFlags.Instance | BindingFlags.Public).Select(f => f.Name).ToArray();

    private static IEnumerable<(string Name, long Value)> Constants() =>
        typeof(UringAbi).GetFields(BindingFlags.Static | BindingFlags.Public)
            .Where(f => f.IsLiteral)
            .Select(f => (f.Name, f.GetRawConstantValue() switch
            {
                ulong u => unchecked((long)u),
                object o => Convert.ToInt64(o, System.Globalization.CultureInfo.InvariantCulture),
                _ => throw new InvalidOperationException(f.Name),
            }));

    [TestCaseSource(nameof(StructNames))]
    public void SizeAndOffsetsMatchTheKernelHeaders(string name)
    {
        Dictionary<string, long> native = Native();
        Type managed = Structs.Single(t => t.Name == name);
        Assert.Multiple(() =>
        {
            Assert.That(SizeOf(managed), Is.EqualTo(native[$"sizeof {name}"]), $"sizeof(struct {name})");
            foreach (string field in Fields(managed))
            {
                string key = $"offsetof {name} {field}";
                Assert.That(native.ContainsKey(key), Is.True, $"struct {name} has a field {field}");
                Assert.That((long)Marshal.OffsetOf(managed, field), Is.EqualTo(native[key]), $"offsetof(struct {name}, {field})");
            }
        });
    }

    [Test]
    public void ConstantsMatchTheKernelHeaders()
    {
        Dictionary<string, long> native = Native();
        Assert.Multiple(() =>
        {
            foreach ((string name, long value) in Constants())
            {
                Assert.That(native.ContainsKey($"const {name}"), Is.True, $"{name} is in the headers");
                Assert.That(value, Is.EqualTo(native[$"const {name}"]), name);
            }
        });
        Assert.That(Constants().Count(), Is.GreaterThan(12), "the constants were found and compared");
    }

    /// <summary>What the kernel copies into an entry's header must fit where the prototype reads it: the request header
    /// in in_out, every fixed first argument the prototype serves in op_in; the command in the SQE128's 80 bytes.</summary>
    [Test]
    public unsafe void RequestPartsFitTheRingHeaderAndTheCommandArea()
    {
        Assert.Multiple(() =>
        {
            Assert.That(sizeof(fuse_in_header), Is.LessThanOrEqualTo(UringAbi.FUSE_URING_IN_OUT_HEADER_SZ));
            Assert.That(sizeof(fuse_out_header), Is.LessThanOrEqualTo(UringAbi.FUSE_URING_IN_OUT_HEADER_SZ));
            foreach (int size in new[] { sizeof(fuse_read_in), sizeof(fuse_getattr_in), sizeof(fuse_open_in), sizeof(fuse_release_in), sizeof(fuse_flush_in) })
            {
                Assert.That(size, Is.LessThanOrEqualTo(UringAbi.FUSE_URING_OP_IN_OUT_SZ));
            }
            Assert.That(sizeof(fuse_uring_cmd_req), Is.LessThanOrEqualTo(128 - (int)Marshal.OffsetOf<io_uring_sqe>(nameof(io_uring_sqe.cmd))),
                "the command fits the command area of a 128-byte SQE");
        });
    }

    private static long SizeOf(Type type) =>
        (int)typeof(Unsafe).GetMethod(nameof(Unsafe.SizeOf))!.MakeGenericMethod(type).Invoke(null, null)!;

    private static Dictionary<string, long> Native() =>
        s_native ??= CLayoutProgram.Values(Program(), "",
            ("linux/io_uring.h", "apt-get install gcc linux-libc-dev (Debian/Ubuntu), dnf install kernel-headers (Fedora)"), ref s_unavailable);

    private static string Program()
    {
        var c = new StringBuilder();
        c.AppendLine("#include <linux/io_uring.h>");
        c.AppendLine("#include <linux/fuse.h>");
        c.AppendLine("#include <sys/syscall.h>");
        c.AppendLine("#include <stddef.h>");
        c.AppendLine("#include <stdio.h>");
        c.AppendLine(Before742);
        c.AppendLine("int main(void) {");
        foreach (Type t in Structs)
        {
            c.AppendLine($"  printf(\"sizeof {t.Name} %zu\\n\", sizeof(struct {t.Name}));");
            foreach (string field in Fields(t))
            {
                string line = $"  printf(\"offsetof {t.Name} {field} %zu\\n\", offsetof(struct {t.Name}, {field}));";
                if (FormerNames.TryGetValue($"{t.Name} {field}", out string? former))
                {
                    string before = $"  printf(\"offsetof {t.Name} {field} %zu\\n\", offsetof(struct {t.Name}, {former}));";
                    c.AppendLine($"#ifdef IORING_SETUP_NO_MMAP\n{line}\n#else\n{before}\n#endif");
                    continue;
                }
                c.AppendLine(line);
            }
        }
        foreach ((string name, _) in Constants())
        {
            c.AppendLine($"  printf(\"const {name} %lld\\n\", (long long)({name}));");
        }
        c.AppendLine("  return 0;");
        c.AppendLine("}");
        return c.ToString();
    }
}
