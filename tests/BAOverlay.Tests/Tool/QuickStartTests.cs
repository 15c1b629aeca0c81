using System.Diagnostics;
using Mono.Unix.Native;

namespace BAOverlay.Tests.Tool;

/// <summary>The README's demo on a disk too small for it: one line saying how much it needs, no stack trace, nothing
/// left behind. Runs the built samples/QuickStart over a 64 MiB tmpfs (root needed to mount it).</summary>
[Platform("Linux")]
public class QuickStartTests
{
    [Test]
    public void OnADiskTooSmallTheDemoFailsWithOneLine()
    {
        if (Syscall.geteuid() != 0)
        {
            Assert.Ignore("needs root to mount a small tmpfs");
        }
        string? dll = FindQuickStart();
        if (dll is null)
        {
            Assert.Ignore("samples/QuickStart is not built (dotnet build at the repository root builds it)");
        }
        using var dir = new TempDir();
        string mount = dir.File("small");
        Directory.CreateDirectory(mount);
        Assert.That(Run("mount", "-t", "tmpfs", "-o", "size=64M", "tmpfs", mount), Is.Zero, "mount a 64 MiB tmpfs");
        try
        {
            var start = new ProcessStartInfo(Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") ?? "dotnet")
            {
                RedirectStandardOutput = true,
                RedirectStandardError = true,
            };
            foreach (string arg in new[] { dll!, "--dir", mount, "--size", "256M" })
            {
                start.ArgumentList.Add(arg);
            }
            using Process process = Process.Start(start)!;
            Task<string> stdout = process.StandardOutput.ReadToEndAsync();
            string stderr = process.StandardError.ReadToEnd();
            Assert.That(process.WaitForExit(60_000), Is.True);
            Assert.That(process.ExitCode, Is.EqualTo(1), stdout.Result + stderr);
            Assert.That(stderr, Does.StartWith($"QuickStart: not enough free space in {mount}: the demo needs about 528.0 MiB"));
            Assert.That(stderr.TrimEnd('\n'), Does.Not.Contain("\n"), "one line");
            Assert.That(Directory.GetFileSystemEntries(mount), Is.Empty, "nothing left on the small disk");
        }
        finally
        {
            Run("umount", mount);
        }
    }

    private static int Run(string program, params string[] args)
    {
        using Process process = Process.Start(program, args);
        process.WaitForExit();
        return process.ExitCode;
    }

    private static string? FindQuickStart()
    {
        string configuration = Path.GetFileName(Path.GetDirectoryName(Path.GetDirectoryName(typeof(QuickStartTests).Assembly.Location))!)!;
        for (DirectoryInfo? folder = new(AppContext.BaseDirectory); folder is not null; folder = folder.Parent)
        {
            if (File.Exists(Path.Combine(folder.FullName, "BAOverlay.slnx")))
            {
                string dll = Path.Combine(folder.FullName, "samples", "QuickStart", "bin", configuration, "net10.0", "QuickStart.dll");
                return File.Exists(dll) ? dll : null;
            }
        }
        return null;
    }
}
