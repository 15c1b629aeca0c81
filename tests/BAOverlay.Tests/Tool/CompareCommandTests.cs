namespace BAOverlay.Tests.Tool;

/// <summary><c>bcow compare</c>: qemu-img compare's answers and exit codes for any two images, raw or B-CoW.</summary>
public class CompareCommandTests
{
    [Test]
    public void ABCowFileAndItsFlatCopyAreIdentical()
    {
        using var dir = new TempDir();
        string path = ToolFiles.MakePair(dir, out string lower);
        Assert.That(Bcow.Run("io", path, "-c", "write -P 0x5a 1000000 4k", "-c", "discard 0 64k").ExitCode, Is.Zero);
        string flat = dir.File("flat.raw");
        Assert.That(Bcow.Run("flatten", path, flat).ExitCode, Is.Zero);

        BcowResult result = Bcow.Run("compare", path, flat);
        Assert.That(result.ExitCode, Is.Zero, result.ToString());
        Assert.That(result.Out, Is.EqualTo("Images are identical.\n"));
        Assert.That(Bcow.Run("compare", flat, path).ExitCode, Is.Zero, "either order");
        Assert.That(Bcow.Run("compare", path, lower).Out, Is.EqualTo("Content mismatch at offset 0!\n"), "the discarded first block");
    }

    [Test]
    public void TheFirstDifferenceIsReportedAtItsSectorAsQemuImgDoes()
    {
        using var dir = new TempDir();
        string a = ToolFiles.MakeStandalone(dir, "a.bcow", size: "4M");
        string b = ToolFiles.MakeStandalone(dir, "b.bcow", size: "4M");
        Assert.That(Bcow.Run("io", a, "-c", "write -P 1 3M 1").ExitCode, Is.Zero);
        Assert.That(Bcow.Run("io", b, "-c", "write -P 2 1000 1", "-c", "write -P 1 3M 1").ExitCode, Is.Zero);

        BcowResult result = Bcow.Run("compare", a, b);
        Assert.That(result.ExitCode, Is.EqualTo(1), result.ToString());
        // qemu-img compare reports the 512-byte sector the first difference is in: byte 1000 is in the one at 512.
        Assert.That(result.Out, Is.EqualTo("Content mismatch at offset 512!\n"));
        Assert.That(result.Error, Is.Empty);
    }

    [Test]
    public void ImagesOfDifferentSizesAreTheSameWhenTheExtraPartIsZeroUnlessStrict()
    {
        using var dir = new TempDir();
        string small = ToolFiles.MakeStandalone(dir, "small.bcow", size: "3M");
        string big = dir.File("big.raw");
        using (var stream = new FileStream(big, FileMode.CreateNew, FileAccess.Write))
        {
            stream.SetLength(5L << 20);
        }

        BcowResult lenient = Bcow.Run("compare", small, big);
        Assert.That(lenient.ExitCode, Is.Zero, lenient.ToString());
        Assert.That(lenient.Out, Is.EqualTo("Warning: Image size mismatch!\nImages are identical.\n"));

        BcowResult strict = Bcow.Run("compare", "-s", small, big);
        Assert.That(strict.ExitCode, Is.EqualTo(1), strict.ToString());
        Assert.That(strict.Out, Is.EqualTo("Strict mode: Image size mismatch!\n"));

        using (var stream = new FileStream(big, FileMode.Open, FileAccess.Write))
        {
            stream.Position = (4L << 20) + 700;
            stream.WriteByte(9);
        }
        BcowResult extra = Bcow.Run("compare", big, small);
        Assert.That(extra.ExitCode, Is.EqualTo(1), extra.ToString());
        Assert.That(extra.Out, Is.EqualTo("Warning: Image size mismatch!\nContent mismatch at offset 4194816!\n"));
    }

    [Test]
    public void ErrorsExitTwoSoTheyAreNeverTakenForADifference()
    {
        using var dir = new TempDir();
        string a = ToolFiles.MakeStandalone(dir, "a.bcow");
        BcowResult missing = Bcow.Run("compare", a, dir.File("missing"));
        Assert.That(missing.ExitCode, Is.EqualTo(2), missing.ToString());
        Assert.That(missing.Error, Is.EqualTo($"bcow: {dir.File("missing")}: No such file or directory\n"));
        Assert.That(missing.Out, Is.Empty);

        BcowResult usage = Bcow.Run("compare", a);
        Assert.That(usage.ExitCode, Is.EqualTo(2), usage.ToString());
        Assert.That(usage.Error, Does.StartWith("bcow: compare: missing B\nUsage: bcow compare "));

        string corrupt = dir.File("corrupt.bcow");
        byte[] bytes = File.ReadAllBytes(a);
        bytes.AsSpan(0, 8192).Clear();
        "BCoW\r\n\u001a\n"u8.CopyTo(bytes); // the magic, but no valid header: not to be compared as raw bytes
        File.WriteAllBytes(corrupt, bytes);
        BcowResult bad = Bcow.Run("compare", a, corrupt);
        Assert.That(bad.ExitCode, Is.EqualTo(2), bad.ToString());
        Assert.That(bad.Error, Does.StartWith($"bcow: {corrupt}: "));
    }

    [Test]
    public void OnATerminalAProgressBarReachesOneHundredPercent()
    {
        using var dir = new TempDir();
        string a = ToolFiles.MakeStandalone(dir, "a.bcow", size: "4M");
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        int exit = BAOverlay.Tool.BcowCli.Run(["compare", a, a], stdout, stderr, errorIsTerminal: true, CancellationToken.None);
        Assert.That(exit, Is.Zero, stderr.ToString());
        Assert.That(stderr.ToString(), Does.StartWith("\r[").And.Contain("100.0%").And.EndWith("\n"));
        Assert.That(stdout.ToString(), Is.EqualTo("Images are identical.\n"));
    }
}
