namespace BAOverlay.Tests.Tool;

/// <summary><c>bcow measure</c>: the space a convert would need, as qemu-img measure prints it.</summary>
public class MeasureCommandTests
{
    [Test]
    public void ARawOutputNeedsItsVirtualSizeAsQemuImgSays()
    {
        using var dir = new TempDir();
        string path = ToolFiles.MakeStandalone(dir, size: "4M");
        Assert.That(Bcow.Run("io", path, "-c", "write 0 64k").ExitCode, Is.Zero);
        BcowResult result = Bcow.Run("measure", "-O", "raw", path);
        Assert.That(result.ExitCode, Is.Zero, result.ToString());
        Assert.That(result.Out, Is.EqualTo("required size: 4194304\nfully allocated size: 4194304\n"));
        Assert.That(Bcow.Run("measure", path).Out, Is.EqualTo(result.Out), "raw is the default, as for convert");
    }

    [Test]
    public void ABCowOutputNeedsTheHeaderTheMapAndTheBlocksHoldingData()
    {
        using var dir = new TempDir();
        string raw = dir.File("in.raw");
        ToolFiles.MakeLower(raw); // 64 MiB, data in [0, 64k) and [900000, 1200000): 1 + 6 blocks of 64k
        BcowResult result = Bcow.Run("measure", "-O", "bcow", raw);
        Assert.That(result.ExitCode, Is.Zero, result.ToString());
        const long header = 8192, rootTable = 4096, page = 4096;
        long required = header + rootTable + page + page + (7 * 65536);
        long full = header + rootTable + page + (4 * page) + (64L << 20);
        Assert.That(result.Out, Is.EqualTo($"required size: {required}\nfully allocated size: {full}\n"));

        string output = dir.File("out.bcow");
        Assert.That(Bcow.Run("convert", "-O", "bcow", raw, output).ExitCode, Is.Zero);
        long used = ToolFiles.AllocatedBytes(output);
        TestContext.Out.WriteLine($"required {required}, convert's output has {used} bytes allocated, {new FileInfo(output).Length} long");
        Assert.That(used, Is.LessThanOrEqualTo(required), "convert needs no more than measure said");
    }

    [Test]
    public void TheHolesOfABCowFilesLowerFileAreNotCounted()
    {
        using var dir = new TempDir();
        string lower = dir.File("big.img");
        string path = dir.File("x.bcow");
        ToolFiles.MakeLower(lower); // sparse: data in [0, 64k) and [900000, 1200000) only
        Assert.That(Bcow.Run("create", "--lower", lower, path).ExitCode, Is.Zero);
        Assert.That(Bcow.Run("io", path, "-c", "write -P 1 40M 4k").ExitCode, Is.Zero);
        BcowResult result = Bcow.Run("measure", "-O", "bcow", "--json", path);
        Assert.That(result.ExitCode, Is.Zero, result.ToString());
        Assert.That(result.Json.GetProperty("required").GetInt64(), Is.EqualTo(8192 + 4096 + 4096 + (2 * 4096) + (8 * 65536)),
            "the 7 blocks of lower data and the one written (in another L2 page), not 64 MiB");
    }

    [TestCase("--json")]
    [TestCase("--output=json")]
    [TestCase("--output", "json")]
    public void JsonHasQemuImgsFields(params string[] json)
    {
        using var dir = new TempDir();
        string path = ToolFiles.MakeStandalone(dir, size: "4M", blockSize: "64k");
        Assert.That(Bcow.Run("io", path, "-c", "write 0 64k").ExitCode, Is.Zero);
        BcowResult result = Bcow.Run(["measure", "-O", "bcow", .. json, path]);
        Assert.That(result.ExitCode, Is.Zero, result.ToString());
        var root = result.Json;
        Assert.That(root.GetProperty("required").GetInt64(), Is.EqualTo(8192 + 4096 + 4096 + 4096 + 65536));
        Assert.That(root.GetProperty("fully-allocated").GetInt64(), Is.EqualTo(8192 + 4096 + 4096 + 4096 + (4L << 20)));
        Assert.That(root.EnumerateObject().Count(), Is.EqualTo(2));
    }

    [Test]
    public void WithSizeInsteadOfAnImageItMeasuresAnEmptyOne()
    {
        BcowResult result = Bcow.Run("measure", "-O", "bcow", "--size", "1G");
        Assert.That(result.ExitCode, Is.Zero, result.ToString());
        // 16384 blocks of 64k: one L1 page and 64 L2 pages when fully allocated.
        Assert.That(result.Out, Is.EqualTo($"required size: {8192 + 4096}\nfully allocated size: {8192 + 4096 + 4096 + (64 * 4096) + (1L << 30)}\n"));
    }

    [Test]
    public void ErrorsAreOneLine()
    {
        using var dir = new TempDir();
        Assert.That(Bcow.Run("measure", dir.File("missing")).Error, Is.EqualTo($"bcow: {dir.File("missing")}: No such file or directory\n"));
        Assert.That(Bcow.Run("measure").Error, Does.StartWith("bcow: measure: missing IN (or --size SIZE)"));
        Assert.That(Bcow.Run("measure", "--size", "1M", dir.File("x")).Error, Does.StartWith("bcow: measure: IN and --size cannot be combined"));
        Assert.That(Bcow.Run("measure", "-O", "vmdk", "--size", "1M").Error, Does.StartWith("bcow: measure: unknown output format 'vmdk'"));
    }
}
