using System.Diagnostics;
using System.Reflection;
using Mono.Unix.Native;

namespace BAOverlay.Tests.Fuse;

/// <summary>
/// baoverlayfs as installed: the README's <c>dotnet publish samples/BAOverlayFs -c Release -r linux-x64</c>, nothing
/// added, makes a NativeAOT executable (the project's own settings). Published once, into a temporary folder with its own
/// bin and obj (the publish takes 30–80 s on 2 cores: one test, not one per behaviour; every other program test runs the
/// JIT build), it is run as containers-storage runs it (backgrounding, as root) and must mount, read, write (copying a
/// large lower file up by blocks, through Mono.Posix's native helper) and unmount.
/// Needs root, /dev/fuse and a C toolchain (clang, else gcc: the NativeAOT linker driver); ignored, saying which is
/// missing, otherwise.
/// </summary>
[TestFixture]
[Platform("Linux")]
[NonParallelizable]
public sealed class NativeAotTests
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(30);

    [Test]
    public void PublishedBaoverlayfsIsNativeAndMountsReadsWritesAndUnmounts()
    {
        RequireRootFuseAndToolchain();
        using var temp = new TempDir();
        string output = temp.File("out");
        Publish(Path.Combine(RepositoryRoot(), "samples", "BAOverlayFs"), temp.File("artifacts"), output);

        string program = Path.Combine(output, "baoverlayfs");
        byte[] head = new byte[4];
        using (FileStream file = File.OpenRead(program))
        {
            file.ReadExactly(head);
        }
        Assert.That(head, Is.EqualTo(new byte[] { 0x7F, (byte)'E', (byte)'L', (byte)'F' }), "an ELF executable");
        Assert.That(DynamicTags(program), Does.Contain(DtRelr),
            "relative relocations packed (DT_RELR): 900 KB fewer relocation pages read at start and kept in the RSS");
        Assert.That(Directory.GetFiles(output, "*.dll"), Is.Empty, "no managed assembly beside it: not an apphost with its dll");
        Assert.That(File.Exists(Path.Combine(output, "baoverlayfs.runtimeconfig.json")), Is.False, "no runtime to configure");
        string helper = Path.Combine(output, "libMonoPosixHelper.so");
        Assert.That(File.Exists(helper), Is.True, "Mono.Posix's native helper beside it");

        string lower = Dir(temp, "lower"), upper = Dir(temp, "upper"), work = Dir(temp, "work"), mnt = Dir(temp, "merged");
        File.WriteAllText(Path.Combine(lower, "hello.txt"), "from the lower layer");
        byte[] big = new byte[2 << 20]; // over baoverlayfs's 1 MiB threshold: copied up as a B-CoW file
        new Random(7).NextBytes(big);
        File.WriteAllBytes(Path.Combine(lower, "big.bin"), big);
        int pid = 0;
        try
        {
            (int exit, string error) = Run(program, ["-o", $"lowerdir={lower},upperdir={upper},workdir={work}", mnt]);
            Assert.That(exit, Is.Zero, $"baoverlayfs exits 0 once mounted: {error}");
            Assert.That(MountLine(mnt), Does.Contain(" - fuse.baoverlayfs "), "mounted");
            pid = ServingProcess(program);
            Assert.That(pid, Is.Not.Zero, "the serving process runs the published executable");

            Assert.That(File.ReadAllText(Path.Combine(mnt, "hello.txt")), Is.EqualTo("from the lower layer"));
            File.WriteAllText(Path.Combine(mnt, "new.txt"), "written through the native build");
            byte[] patch = new byte[4096];
            new Random(8).NextBytes(patch);
            using (var handle = File.OpenHandle(Path.Combine(mnt, "big.bin"), FileMode.Open, FileAccess.ReadWrite))
            {
                RandomAccess.Write(handle, patch, 1 << 20);
            }
            patch.CopyTo(big, 1 << 20);
            Assert.That(File.ReadAllBytes(Path.Combine(mnt, "big.bin")), Is.EqualTo(big), "the file reads back with the write in it");

            string maps = File.ReadAllText($"/proc/{pid}/maps");
            Assert.That(maps, Does.Contain(helper), "libMonoPosixHelper.so loaded from beside the executable");
            Assert.That(maps, Does.Not.Contain("libcoreclr"), "no CoreCLR runtime: native code only");

            Checks.Run("umount", mnt);
            Assert.That(WaitFor(() => !Directory.Exists($"/proc/{pid}")), Is.True, "the process exits after the unmount");
            pid = 0;
        }
        finally
        {
            if (MountLine(mnt) is not null)
            {
                Checks.Run("umount", $"-l {mnt}");
            }
            if (pid != 0)
            {
                Syscall.kill(pid, Signum.SIGKILL);
            }
        }
        Assert.That(File.ReadAllText(Path.Combine(upper, "new.txt")), Is.EqualTo("written through the native build"));
        Assert.That(Syscall.lgetxattr(Path.Combine(upper, "big.bin"), "user.baoverlay.bcow", out byte[] _), Is.GreaterThanOrEqualTo(0),
            "the written lower file became a B-CoW file in the upper layer");
        Assert.That(new FileInfo(Path.Combine(lower, "big.bin")).Length, Is.EqualTo(big.Length), "the lower file is untouched");
    }

    /// <summary><c>DT_RELR</c> (elf.h): the dynamic-section tag of packed relative relocations.</summary>
    private const long DtRelr = 36;

    /// <summary>The d_tag of each entry of an ELF64 little-endian executable's PT_DYNAMIC segment (elf.h's
    /// Elf64_Ehdr, Elf64_Phdr, Elf64_Dyn).</summary>
    private static List<long> DynamicTags(string program)
    {
        byte[] elf = File.ReadAllBytes(program);
        long programHeaders = BitConverter.ToInt64(elf, 0x20); // e_phoff
        int entrySize = BitConverter.ToUInt16(elf, 0x36), count = BitConverter.ToUInt16(elf, 0x38); // e_phentsize, e_phnum
        var tags = new List<long>();
        for (int i = 0; i < count; i++)
        {
            int header = checked((int)programHeaders + (i * entrySize));
            if (BitConverter.ToUInt32(elf, header) != 2) // p_type == PT_DYNAMIC
            {
                continue;
            }
            long offset = BitConverter.ToInt64(elf, header + 8), size = BitConverter.ToInt64(elf, header + 32); // p_offset, p_filesz
            for (long entry = offset; entry + 16 <= offset + size; entry += 16)
            {
                long tag = BitConverter.ToInt64(elf, checked((int)entry));
                if (tag == 0) // DT_NULL
                {
                    break;
                }
                tags.Add(tag);
            }
        }
        return tags;
    }

    private static void Publish(string project, string artifacts, string output)
    {
        var start = new ProcessStartInfo(Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") ?? "dotnet")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        // The README's command; --artifacts-path keeps this build's bin and obj out of the source tree.
        foreach (string argument in new[] { "publish", project, "-c", "Release", "-r", "linux-x64", "--artifacts-path", artifacts, "-o", output,
            "-nodeReuse:false", "-p:UseSharedCompilation=false" })
        {
            start.ArgumentList.Add(argument);
        }
        // The test host may run under MSBuild's environment; the publish is a fresh command, as a user or CI runs it.
        foreach (string name in start.Environment.Keys.Where(k => k.StartsWith("MSBUILD", StringComparison.OrdinalIgnoreCase)).ToList())
        {
            start.Environment.Remove(name);
        }
        using Process process = Process.Start(start)!;
        Task<string> error = process.StandardError.ReadToEndAsync();
        Task<string> text = process.StandardOutput.ReadToEndAsync();
        if (!process.WaitForExit(TimeSpan.FromMinutes(10)))
        {
            process.Kill(entireProcessTree: true);
            Assert.Fail("dotnet publish did not finish within 10 minutes");
        }
        Assert.That(process.ExitCode, Is.Zero, $"dotnet publish: {text.Result}{error.Result}");
    }

    /// <summary>Runs the program to its exit (the backgrounded mount process keeps no pipe of ours open: it detaches
    /// its standard streams once mounted).</summary>
    private static (int ExitCode, string Error) Run(string program, string[] args)
    {
        var start = new ProcessStartInfo(program) { UseShellExecute = false, RedirectStandardError = true, WorkingDirectory = "/" };
        foreach (string arg in args)
        {
            start.ArgumentList.Add(arg);
        }
        using Process process = Process.Start(start)!;
        Task<string> error = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(Patience))
        {
            process.Kill();
            Assert.Fail($"{program} did not return within {Patience}");
        }
        return (process.ExitCode, error.Wait(Patience) ? error.Result : "");
    }

    /// <summary>The pid of the process running <paramref name="program"/> (the mount process left in the background).</summary>
    private static int ServingProcess(string program)
    {
        foreach (string dir in Directory.GetDirectories("/proc"))
        {
            try
            {
                if (int.TryParse(Path.GetFileName(dir), out int pid) && new FileInfo(Path.Combine(dir, "exe")).LinkTarget == program)
                {
                    return pid;
                }
            }
            catch (IOException)
            {
                // gone meanwhile, or a kernel thread
            }
        }
        return 0;
    }

    private static string Dir(TempDir temp, string name) => Directory.CreateDirectory(temp.File(name)).FullName;

    private static string? MountLine(string mnt) =>
        File.ReadLines("/proc/self/mountinfo").LastOrDefault(l => l.Split(' ') is { Length: > 4 } f && f[4] == mnt);

    private static bool WaitFor(Func<bool> condition)
    {
        var watch = Stopwatch.StartNew();
        while (watch.Elapsed < Patience && !condition())
        {
            Thread.Sleep(20);
        }
        return condition();
    }

    private static string RepositoryRoot() =>
        typeof(NativeAotTests).Assembly.GetCustomAttributes<AssemblyMetadataAttribute>().Single(a => a.Key == "RepositoryRoot").Value!;

    private static void RequireRootFuseAndToolchain()
    {
        if (!File.Exists("/dev/fuse"))
        {
            Assert.Ignore("/dev/fuse does not exist (load the fuse module, or give the container --device /dev/fuse)");
        }
        if (Syscall.geteuid() != 0)
        {
            Assert.Ignore("mounting needs root (CAP_SYS_ADMIN): baoverlayfs mounts with mount(2)");
        }
        string[] path = (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':');
        if (!new[] { "clang", "gcc" }.Any(tool => path.Any(dir => File.Exists(Path.Combine(dir, tool)))))
        {
            Assert.Ignore("a NativeAOT publish links with clang or gcc, and neither is on PATH (apt-get install gcc)");
        }
    }
}
