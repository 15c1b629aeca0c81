namespace BAOverlay.Tests.Tool;

/// <summary><c>bcow info</c> and <c>bcow map</c>.</summary>
public class InfoAndMapTests
{
    [Test]
    public void InfoShowsSizesHumanAndExactAsQemuImgDoes()
    {
        using var dir = new TempDir();
        string path = ToolFiles.MakeStandalone(dir, size: "1G", blockSize: "64k");
        BcowResult result = Bcow.Run("info", path);
        Assert.That(result.ExitCode, Is.Zero, result.ToString());
        Assert.That(result.Out, Does.Contain($"image: {path}\n"));
        Assert.That(result.Out, Does.Contain("virtual size: 1 GiB (1073741824 bytes)\n"));
        Assert.That(result.Out, Does.Contain("block size: 64 KiB (65536 bytes)\n"));
        Assert.That(result.Out, Does.Contain("blocks: 16384 (lower 16384, zero 0, present 0, partial 0)\n"));
        Assert.That(result.Out, Does.Contain("dirty: no\n"));
        Assert.That(result.Out, Does.Not.Contain("lower file:"));
    }

    [Test]
    public void InfoJsonUsesKebabCaseNamesAndNullForNoLowerFile()
    {
        using var dir = new TempDir();
        string path = ToolFiles.MakeStandalone(dir, size: "1M", blockSize: "4k");
        Assert.That(Bcow.Run("io", path, "-c", "write 0 8k", "-c", "discard 64k 4k").ExitCode, Is.Zero);
        BcowResult result = Bcow.Run("info", "--json", path);
        Assert.That(result.ExitCode, Is.Zero, result.ToString());
        var json = result.Json;
        Assert.That(json.GetProperty("virtual-size").GetInt64(), Is.EqualTo(1L << 20));
        Assert.That(json.GetProperty("block-size").GetInt64(), Is.EqualTo(4096));
        Assert.That(json.GetProperty("lower-file").ValueKind, Is.EqualTo(System.Text.Json.JsonValueKind.Null));
        Assert.That(json.GetProperty("allocated-bytes").GetInt64(), Is.GreaterThanOrEqualTo(8192));
        Assert.That(json.GetProperty("blocks").GetProperty("present").GetInt64(), Is.EqualTo(2));
        Assert.That(json.GetProperty("blocks").GetProperty("lower").GetInt64() + json.GetProperty("blocks").GetProperty("zero").GetInt64(), Is.EqualTo(254));
        Assert.That(json.GetProperty("dirty").GetBoolean(), Is.False);
        Checks.AssertClean(path);
    }

    [Test]
    public void InfoWorksWithoutTheLowerFileAndChangesNothing()
    {
        using var dir = new TempDir();
        string path = ToolFiles.MakePair(dir, out string lower);
        File.Delete(lower);
        byte[] before = File.ReadAllBytes(path);
        BcowResult result = Bcow.Run("info", path);
        Assert.That(result.ExitCode, Is.Zero, result.ToString());
        Assert.That(result.Out, Does.Contain($"lower file: {lower}\n"));
        Assert.That(result.Out, Does.Contain("lower size: 64 MiB (67108864 bytes)\n"));
        Assert.That(File.ReadAllBytes(path), Is.EqualTo(before));
    }

    [Test]
    public void MapShowsLowerUpperAndZeroRangesInOrder()
    {
        using var dir = new TempDir();
        string lower = dir.File("big.img");
        string path = dir.File("x.bcow");
        ToolFiles.MakeLower(lower);
        Assert.That(Bcow.Run("create", "-b", "64k", "--lower", lower, path).ExitCode, Is.Zero);
        Assert.That(Bcow.Run("io", path, "-c", "write -P 1 128k 64k", "-c", "discard 256k 64k", "-c", "truncate 1M", "-c", "truncate 2M").ExitCode, Is.Zero);

        BcowResult json = Bcow.Run("map", "--json", path);
        Assert.That(json.ExitCode, Is.Zero, json.ToString());
        var extents = json.Json.EnumerateArray()
            .Select(e => (Start: e.GetProperty("start").GetInt64(), Length: e.GetProperty("length").GetInt64(), Source: e.GetProperty("source").GetString()))
            .ToList();
        Assert.That(extents, Is.EqualTo(new[]
        {
            (0L, 128L << 10, "lower"),
            (128L << 10, 64L << 10, "upper"),
            (192L << 10, 64L << 10, "lower"),
            (256L << 10, 64L << 10, "zero"),
            (320L << 10, (1L << 20) - (320L << 10), "lower"),
            (1L << 20, 1L << 20, "zero"),
        }));
        foreach (var element in json.Json.EnumerateArray())
        {
            bool upper = element.GetProperty("source").GetString() == "upper";
            Assert.That(element.TryGetProperty("offset", out _), Is.EqualTo(upper), "offset only for upper extents");
        }

        BcowResult text = Bcow.Run("map", path);
        Assert.That(text.ExitCode, Is.Zero, text.ToString());
        string[] lines = text.Out.TrimEnd('\n').Split('\n');
        Assert.That(lines[0], Does.StartWith("Offset          Length          Source  Mapped to       File"));
        Assert.That(lines, Has.Length.EqualTo(7));
        Assert.That(lines[1], Does.Match($@"^0 +0x20000 +lower +0 +{System.Text.RegularExpressions.Regex.Escape(lower)}$"));
        Assert.That(lines[2], Does.Match($@"^0x20000 +0x10000 +upper +0x[0-9a-f]+ +{System.Text.RegularExpressions.Regex.Escape(path)}$"));
        Assert.That(lines[4], Does.Match(@"^0x40000 +0x10000 +zero$"));
        Checks.AssertClean(path);
    }

    /// <summary>qemu-img users type --output=json; info and map take it as they take --json.</summary>
    [TestCase("info")]
    [TestCase("map")]
    public void OutputJsonAsQemuImgSpellsItIsTheSameAsJson(string verb)
    {
        using var dir = new TempDir();
        string path = ToolFiles.MakeStandalone(dir);
        Assert.That(Bcow.Run("io", path, "-c", "write 0 8k").ExitCode, Is.Zero);
        string json = Bcow.Run(verb, "--json", path).Out;
        Assert.That(Bcow.Run(verb, "--output=json", path).Out, Is.EqualTo(json));
        Assert.That(Bcow.Run(verb, "--output", "json", path).Out, Is.EqualTo(json));
        Assert.That(Bcow.Run(verb, "--output=human", path).Out, Is.EqualTo(Bcow.Run(verb, path).Out));
    }
}
