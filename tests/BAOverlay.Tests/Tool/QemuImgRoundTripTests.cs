using System.Diagnostics;

namespace BAOverlay.Tests.Tool;

/// <summary>
/// <c>bcow convert</c> and <c>bcow compare</c> against qemu-img itself (raw format, Debian's qemu-utils): the raw files
/// bcow writes are what qemu-img reads, and the two compare verbs agree on same/different and on the offset.
/// </summary>
public class QemuImgRoundTripTests
{
    [Test]
    public void BCowConvertedToRawIsTheMergedContentForQemuImg()
    {
        RequireQemu();
        using var dir = new TempDir();
        string lower = dir.File("big.img");
        string path = dir.File("x.bcow");
        ToolFiles.MakeLower(lower);
        Assert.That(Bcow.Run("create", "-b", "16k", "--lower", lower, path).ExitCode, Is.Zero);
        BcowResult written = Bcow.Run("io", path, "-c", "write -P 0x5a 1000000 5000", "-c", "discard 0 32k", "-c", "write -P 0x11 40M 64k", "-c", "truncate 50M");
        Assert.That(written.ExitCode, Is.Zero, written.ToString());
        string merged = dir.File("merged.raw");
        File.WriteAllBytes(merged, ToolFiles.MergedContent(path));

        string raw = dir.File("out.raw");
        Assert.That(Bcow.Run("convert", "-O", "raw", path, raw).ExitCode, Is.Zero);
        (int exit, string output) = Qemu("qemu-img", "compare", "-f", "raw", "-F", "raw", raw, merged);
        Assert.That((exit, output), Is.EqualTo((0, "Images are identical.\n")));
        (exit, output) = Qemu("qemu-img", "info", "--output=json", raw);
        Assert.That(exit, Is.Zero, output);
        Assert.That(System.Text.Json.JsonDocument.Parse(output).RootElement.GetProperty("virtual-size").GetInt64(), Is.EqualTo(50L << 20));
    }

    [Test]
    public void ARawImageWrittenByQemuIoSurvivesARoundTripThroughBCow()
    {
        RequireQemu();
        using var dir = new TempDir();
        string original = dir.File("disk.raw");
        Assert.That(Qemu("qemu-img", "create", "-f", "raw", original, "8M").Exit, Is.Zero);
        (int exit, string output) = Qemu("qemu-io", "-f", "raw", "-c", "write -P 0xab 0 4k", "-c", "write -P 0xcd 3M 100k", "-c", "write -P 0x01 8388607 1", original);
        Assert.That(exit, Is.Zero, output);

        string bcow = dir.File("disk.bcow");
        string back = dir.File("back.raw");
        Assert.That(Bcow.Run("convert", "-O", "bcow", original, bcow).ExitCode, Is.Zero);
        Assert.That(Bcow.Run("convert", bcow, back).ExitCode, Is.Zero);
        Assert.That(Qemu("qemu-img", "compare", "-f", "raw", "-F", "raw", original, back), Is.EqualTo((0, "Images are identical.\n")));
        Assert.That(Bcow.Run("compare", original, bcow).Out, Is.EqualTo("Images are identical.\n"));
        Assert.That(ToolFiles.AllocatedBytes(back), Is.LessThan(1L << 20), "sparse all the way");
        Checks.AssertClean(bcow);
    }

    /// <summary>B differs from an empty 4 MiB A by one byte at OFFSET (or is longer): both tools must give the same answer.</summary>
    [TestCase(0L, 4L << 20, false)]
    [TestCase(1000L, 4L << 20, false)]
    [TestCase(4095L, 4L << 20, false)]
    [TestCase((3L << 20) + 17, 4L << 20, false)]
    [TestCase(-1L, 4L << 20, false)]
    [TestCase(-1L, 5L << 20, false)]
    [TestCase(-1L, 5L << 20, true)]
    [TestCase((4L << 20) + 600, 5L << 20, false)]
    [TestCase(-1L, 3L << 20, false)]
    public void BcowCompareAndQemuImgCompareAgree(long offset, long sizeOfB, bool strict)
    {
        RequireQemu();
        using var dir = new TempDir();
        string a = dir.File("a.raw");
        string b = dir.File("b.raw");
        Assert.That(Qemu("qemu-img", "create", "-f", "raw", a, "4M").Exit, Is.Zero);
        Assert.That(Qemu("qemu-img", "create", "-f", "raw", b, sizeOfB.ToString(System.Globalization.CultureInfo.InvariantCulture)).Exit, Is.Zero);
        if (offset >= 0)
        {
            (int exit, string output) = Qemu("qemu-io", "-f", "raw", "-c", $"write -P 0x77 {offset} 1", b);
            Assert.That(exit, Is.Zero, output);
        }
        string bAsBCow = dir.File("b.bcow");
        Assert.That(Bcow.Run("convert", "-O", "bcow", b, bAsBCow).ExitCode, Is.Zero);

        string[] flags = strict ? ["-s"] : [];
        (int Exit, string Output) qemu = Qemu(["qemu-img", "compare", .. flags, "-f", "raw", "-F", "raw", a, b]);
        foreach (string other in new[] { b, bAsBCow })
        {
            BcowResult ours = Bcow.Run(["compare", .. flags, a, other]);
            Assert.That((ours.ExitCode, ours.Out), Is.EqualTo(qemu), $"bcow compare against {Path.GetFileName(other)}");
        }
    }

    private static void RequireQemu()
    {
        string[] path = (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':');
        if (!path.Any(p => File.Exists(Path.Combine(p, "qemu-img"))) || !path.Any(p => File.Exists(Path.Combine(p, "qemu-io"))))
        {
            Assert.Ignore("qemu-img and qemu-io are not on PATH: install Debian's qemu-utils (CI's .ci/run does) to compare bcow with qemu-img");
        }
    }

    /// <summary>Runs a qemu tool; returns its exit status and standard output (standard error appended on failure).</summary>
    private static (int Exit, string Output) Qemu(params string[] args)
    {
        var start = new ProcessStartInfo(args[0]) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (string arg in args[1..])
        {
            start.ArgumentList.Add(arg);
        }
        using Process process = Process.Start(start)!;
        Task<string> stdout = process.StandardOutput.ReadToEndAsync();
        string stderr = process.StandardError.ReadToEnd();
        process.WaitForExit();
        return (process.ExitCode, process.ExitCode is 0 or 1 ? stdout.Result : stdout.Result + stderr);
    }
}
