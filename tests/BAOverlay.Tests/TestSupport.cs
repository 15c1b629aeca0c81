using BAOverlay.Checking;
using BAOverlay.Storage;

namespace BAOverlay.Tests;

/// <summary>A temporary folder per test, removed even when the test fails.</summary>
internal sealed class TempDir : IDisposable
{
    public TempDir()
    {
        Path = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "baoverlay-tests", Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(Path);
    }

    public string Path { get; }

    public string File(string name) => System.IO.Path.Combine(Path, name);

    public void Dispose()
    {
        try
        {
            Directory.Delete(Path, recursive: true);
        }
        catch (IOException)
        {
        }
    }
}

internal static class Checks
{
    /// <summary>Runs a program (mount, umount, rm) and asserts it exits 0, its standard error in the message.</summary>
    public static void Run(string program, string arguments)
    {
        using var process = System.Diagnostics.Process.Start(new System.Diagnostics.ProcessStartInfo(program, arguments) { RedirectStandardError = true })!;
        string error = process.StandardError.ReadToEnd();
        process.WaitForExit();
        Assert.That(process.ExitCode, Is.Zero, $"{program} {arguments}: {error}");
    }

    /// <summary>Runs the checker; every test that writes ends with it.</summary>
    public static void AssertClean(IBlockStorage upper)
    {
        BCowCheckResult result = BCowChecker.Check(upper);
        Assert.That(result.Corruptions, Is.Empty, "checker corruptions");
        Assert.That(result.Failure, Is.Null, "checker failure");
        Assert.That(result.Leaks, Is.Empty, "checker leaks");
    }

    public static void AssertClean(string path)
    {
        BCowCheckResult result = BCowChecker.Check(path);
        Assert.That(result.Corruptions, Is.Empty, "checker corruptions");
        Assert.That(result.Failure, Is.Null, "checker failure");
        Assert.That(result.Leaks, Is.Empty, "checker leaks");
    }

    public static byte[] RandomBytes(Random random, int length)
    {
        byte[] bytes = new byte[length];
        random.NextBytes(bytes);
        return bytes;
    }
}
