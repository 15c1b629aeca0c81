namespace BAOverlay.Tests.Tool;

/// <summary><c>bcow resize</c>: grow, shrink only when asked, sizes absolute or relative, as qemu-img resize.</summary>
public class ResizeCommandTests
{
    [Test]
    public void GrowingABCowFileKeepsItsContentAndTheNewPartReadsZeros()
    {
        using var dir = new TempDir();
        string path = ToolFiles.MakeStandalone(dir, size: "1M");
        Assert.That(Bcow.Run("io", path, "-c", "write -P 0x42 1020k 4k").ExitCode, Is.Zero);
        BcowResult result = Bcow.Run("resize", path, "3M");
        Assert.That(result.ExitCode, Is.Zero, result.ToString());
        Assert.That(result.Out, Is.EqualTo("Image resized.\n"));
        var info = Bcow.Run("info", "--json", path).Json;
        Assert.That(info.GetProperty("virtual-size").GetInt64(), Is.EqualTo(3L << 20));
        Assert.That(info.GetProperty("dirty").GetBoolean(), Is.False, "closed cleanly: the new size is committed");
        Assert.That(Bcow.Run("io", path, "-c", "read -P 0x42 1020k 4k", "-c", "read -P 0 1M 2M").ExitCode, Is.Zero);
        Checks.AssertClean(path);
    }

    [Test]
    public void ShrinkingIsRefusedWithoutShrinkAndThenHidesTheLowerBytesForGood()
    {
        using var dir = new TempDir();
        string lower = dir.File("big.img");
        string path = dir.File("x.bcow");
        byte[] content = ToolFiles.MakeLower(lower);
        Assert.That(Bcow.Run("create", "--lower", lower, path).ExitCode, Is.Zero);

        BcowResult refused = Bcow.Run("resize", path, "32k");
        Assert.That(refused.ExitCode, Is.EqualTo(1), refused.ToString());
        Assert.That(refused.Error, Is.EqualTo($"bcow: {path}: shrinking from 67108864 to 32768 bytes deletes the data beyond 32768: use the --shrink option to perform a shrink operation\n"));
        Assert.That(refused.Out, Is.Empty);
        Assert.That(Bcow.Run("info", "--json", path).Json.GetProperty("virtual-size").GetInt64(), Is.EqualTo(ToolFiles.LowerSize));

        BcowResult shrunk = Bcow.Run("resize", "--shrink", path, "32k");
        Assert.That(shrunk.ExitCode, Is.Zero, shrunk.ToString());
        Assert.That(Bcow.Run("resize", path, "64k").ExitCode, Is.Zero);
        byte[] merged = ToolFiles.MergedContent(path);
        Assert.That(merged.AsSpan(0, 32768).SequenceEqual(content.AsSpan(0, 32768)), Is.True);
        Assert.That(merged.AsSpan(32768).IndexOfAnyExcept((byte)0), Is.EqualTo(-1), "the lower bytes past the shrink stay hidden");
        Checks.AssertClean(path);
    }

    [Test]
    public void RelativeSizesGrowAndShrinkFromTheCurrentSize()
    {
        using var dir = new TempDir();
        string path = ToolFiles.MakeStandalone(dir, size: "1M");
        Assert.That(Bcow.Run("resize", path, "+1M").ExitCode, Is.Zero);
        Assert.That(Bcow.Run("info", "--json", path).Json.GetProperty("virtual-size").GetInt64(), Is.EqualTo(2L << 20));
        Assert.That(Bcow.Run("resize", path, "-512k").ExitCode, Is.EqualTo(1), "a shrink, even relative, needs --shrink");
        BcowResult shrunk = Bcow.Run("resize", "--shrink", path, "-512k");
        Assert.That(shrunk.ExitCode, Is.Zero, shrunk.ToString());
        Assert.That(Bcow.Run("info", "--json", path).Json.GetProperty("virtual-size").GetInt64(), Is.EqualTo(1536L << 10));
        Assert.That(Bcow.Run("resize", "--shrink", path, "--", "-1M").ExitCode, Is.Zero, "qemu-img's spelling, with --");

        BcowResult negative = Bcow.Run("resize", "--shrink", path, "-1M");
        Assert.That(negative.ExitCode, Is.EqualTo(1));
        Assert.That(negative.Error, Is.EqualTo($"bcow: {path}: the new size would be negative (524288 - 1048576)\n"));
        Checks.AssertClean(path);
    }

    [Test]
    public void APlainFileIsResizedSparselyToo()
    {
        using var dir = new TempDir();
        string raw = dir.File("disk.raw");
        File.WriteAllBytes(raw, Enumerable.Repeat((byte)7, 8192).ToArray());
        BcowResult grown = Bcow.Run("resize", raw, "1G");
        Assert.That(grown.ExitCode, Is.Zero, grown.ToString());
        Assert.That(new FileInfo(raw).Length, Is.EqualTo(1L << 30));
        Assert.That(ToolFiles.AllocatedBytes(raw), Is.LessThan(1L << 20), "grown with a hole, not zeros written");
        Assert.That(Bcow.Run("resize", raw, "4k").ExitCode, Is.EqualTo(1));
        Assert.That(Bcow.Run("resize", "--shrink", raw, "4k").ExitCode, Is.Zero);
        Assert.That(File.ReadAllBytes(raw), Is.EqualTo(Enumerable.Repeat((byte)7, 4096).ToArray()));
    }

    [Test]
    public void ErrorsAreOneLineNamingTheFile()
    {
        using var dir = new TempDir();
        string path = ToolFiles.MakeStandalone(dir, size: "1M");
        Assert.That(Bcow.Run("resize", dir.File("missing"), "1M").Error, Is.EqualTo($"bcow: {dir.File("missing")}: No such file or directory\n"));
        BcowResult tooBig = Bcow.Run("resize", path, "300T");
        Assert.That(tooBig.ExitCode, Is.EqualTo(1));
        Assert.That(tooBig.Error, Does.StartWith($"bcow: {path}: the size must be within 0..").And.Not.Contain("\n  "));
        Assert.That(Bcow.Run("resize", dir.Path, "1M").Error, Is.EqualTo($"bcow: {dir.Path}: Is a directory\n"));
        BcowResult usage = Bcow.Run("resize", path, "12q");
        Assert.That(usage.ExitCode, Is.EqualTo(1));
        Assert.That(usage.Error, Does.StartWith("bcow: resize: invalid size '12q'"));
        Assert.That(Bcow.Run("resize", path).Error, Does.StartWith("bcow: resize: missing SIZE"));
        Checks.AssertClean(path);
    }
}
