using System.Diagnostics;
using System.Runtime.InteropServices;

namespace BAOverlay.Tests.Fuse;

/// <summary>
/// Compiles a C program that prints "KEY VALUE" lines (sizeof, offsetof, constants) and reads them back, for the
/// tests that check managed layouts against C headers. Ignores the test, saying what to install, when there is no
/// compiler or the header is missing.
/// </summary>
internal static class CLayoutProgram
{
    /// <summary>The program's KEY VALUE lines.</summary>
    /// <param name="source">The C program.</param>
    /// <param name="cflags">Compiler flags before the source file.</param>
    /// <param name="missingHeader">The header whose absence means "not installed", and what to install then.</param>
    /// <param name="unavailable">Where a reason to ignore is kept, so later tests of the fixture skip at once.</param>
    public static Dictionary<string, long> Values(string source, string cflags, (string Header, string Install) missingHeader, ref string? unavailable)
    {
        if (unavailable is not null)
        {
            Assert.Ignore(unavailable);
        }
        if (RuntimeInformation.ProcessArchitecture != Architecture.X64)
        {
            Assert.Ignore($"the layouts are declared for x86_64 only, not {RuntimeInformation.ProcessArchitecture}");
        }
        using var temp = new TempDir();
        string file = temp.File("layout.c");
        File.WriteAllText(file, source);
        string? output = Run("cc", $"{cflags} -o {temp.File("layout")} {file}", out int ccStatus, stderr: true);
        if (output is null)
        {
            unavailable = $"cc is not installed: install a C compiler and the headers ({missingHeader.Install})";
            Assert.Ignore(unavailable);
        }
        if (ccStatus != 0)
        {
            if (output.Contains($"{missingHeader.Header}: No such file", StringComparison.Ordinal))
            {
                unavailable = $"{missingHeader.Header} is missing: {missingHeader.Install}";
                Assert.Ignore(unavailable);
            }
            Assert.Fail($"the layout program did not compile:{Environment.NewLine}{output}");
        }
        string result = Run(temp.File("layout"), "", out int status) ?? "";
        Assert.That(status, Is.Zero, "the layout program ran");
        var values = new Dictionary<string, long>();
        foreach (string line in result.Split('\n', StringSplitOptions.RemoveEmptyEntries))
        {
            int space = line.LastIndexOf(' ');
            values[line[..space]] = long.Parse(line[(space + 1)..], System.Globalization.CultureInfo.InvariantCulture);
        }
        return values;
    }

    /// <summary>Runs a program; null when it is not installed.</summary>
    public static string? Run(string program, string arguments, out int status, bool stderr = false)
    {
        status = -1;
        try
        {
            using var process = Process.Start(new ProcessStartInfo(program, arguments)
            {
                RedirectStandardOutput = true,
                RedirectStandardError = true,
                UseShellExecute = false,
            })!;
            Task<string> err = process.StandardError.ReadToEndAsync();
            string output = process.StandardOutput.ReadToEnd();
            process.WaitForExit();
            status = process.ExitCode;
            return stderr ? output + err.Result : output;
        }
        catch (System.ComponentModel.Win32Exception)
        {
            return null;
        }
    }
}
