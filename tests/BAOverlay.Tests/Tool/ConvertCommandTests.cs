using BAOverlay.Tool;

namespace BAOverlay.Tests.Tool;

/// <summary><c>bcow convert</c>: raw or B-CoW in, raw or B-CoW out, zeros never written, never a half file under OUT.</summary>
public class ConvertCommandTests
{
    [Test]
    public void BCowToRawHoldsTheMergedContentAndIsSparseWhereItIsZeros()
    {
        using var dir = new TempDir();
        string path = ToolFiles.MakePair(dir, out string lower);
        BcowResult written = Bcow.Run("io", path, "-c", "write -P 0x5a 1000000 4k", "-c", "discard 0 64k", "-c", "write -P 0x11 40M 64k");
        Assert.That(written.ExitCode, Is.Zero, written.ToString());

        string raw = dir.File("out.raw");
        BcowResult result = Bcow.Run("convert", "-O", "raw", path, raw);
        Assert.That(result.ExitCode, Is.Zero, result.ToString());
        Assert.That(result.Out, Is.Empty);
        Assert.That(File.ReadAllBytes(raw), Is.EqualTo(ToolFiles.MergedContent(path)));
        // Lower data (300000 bytes around 1000000) and the 64 KiB at 40M; the 64 MiB of zeros are holes.
        Assert.That(ToolFiles.AllocatedBytes(raw), Is.LessThan(1L << 20));
        Checks.AssertClean(path);
    }

    [Test]
    public void RawToBCowWritesOnlyTheBlocksThatHoldANonZeroByte()
    {
        using var dir = new TempDir();
        string raw = dir.File("in.raw");
        using (var stream = new FileStream(raw, FileMode.CreateNew, FileAccess.Write))
        {
            stream.SetLength(16L << 20);
            stream.Position = 1L << 20;
            stream.Write(Enumerable.Repeat((byte)0x33, 100_000).ToArray()); // 2 blocks of 64k, the second in part
            stream.Position = 8L << 20;
            stream.Write(new byte[1L << 20]); // allocated, but zeros: no block for it
            stream.Position = (15L << 20) + 5;
            stream.WriteByte(7);
        }

        string path = dir.File("out.bcow");
        BcowResult result = Bcow.Run("convert", "-O", "bcow", raw, path);
        Assert.That(result.ExitCode, Is.Zero, result.ToString());
        var info = Bcow.Run("info", "--json", path).Json;
        Assert.That(info.GetProperty("virtual-size").GetInt64(), Is.EqualTo(16L << 20));
        Assert.That(info.GetProperty("lower-file").ValueKind, Is.EqualTo(System.Text.Json.JsonValueKind.Null));
        Assert.That(info.GetProperty("blocks").GetProperty("present").GetInt64(), Is.EqualTo(3));
        Assert.That(info.GetProperty("blocks").GetProperty("partial").GetInt64(), Is.Zero);
        Assert.That(ToolFiles.AllocatedBytes(path), Is.LessThan(512L << 10), "3 blocks and the map, not the zero MiB");
        Assert.That(ToolFiles.MergedContent(path), Is.EqualTo(File.ReadAllBytes(raw)));
        Checks.AssertClean(path);
    }

    [Test]
    public void BCowToBCowKeepsTheBlockSizeAndTheContent()
    {
        using var dir = new TempDir();
        string path = ToolFiles.MakeStandalone(dir, size: "4M", blockSize: "16k");
        Assert.That(Bcow.Run("io", path, "-c", "write -P 0x42 100k 20k", "-c", "discard 1M 64k").ExitCode, Is.Zero);
        string copy = dir.File("copy.bcow");
        BcowResult result = Bcow.Run("convert", "-O", "bcow", path, copy);
        Assert.That(result.ExitCode, Is.Zero, result.ToString());
        var info = Bcow.Run("info", "--json", copy).Json;
        Assert.That(info.GetProperty("block-size").GetInt32(), Is.EqualTo(16384));
        Assert.That(info.GetProperty("blocks").GetProperty("present").GetInt64(), Is.EqualTo(2), "100k..120k spans two 16k blocks");
        Assert.That(ToolFiles.MergedContent(copy), Is.EqualTo(ToolFiles.MergedContent(path)));
        Checks.AssertClean(copy);
    }

    [Test]
    public void OverALowerOnlyTheBlocksThatDifferFromItAreStoredAndZeroedOnesAreMarkedZero()
    {
        using var dir = new TempDir();
        string lower = dir.File("big.img");
        byte[] content = ToolFiles.MakeLower(lower);
        string raw = dir.File("edited.raw");
        content.AsSpan(0, 65536).Clear();                 // a lower block that now reads zeros
        content.AsSpan(4 << 20, 10).Fill(0xee);           // a block that differs
        File.WriteAllBytes(raw, content);

        string path = dir.File("delta.bcow");
        BcowResult result = Bcow.Run("convert", "-O", "bcow", "--lower", lower, raw, path);
        Assert.That(result.ExitCode, Is.Zero, result.ToString());
        var info = Bcow.Run("info", "--json", path).Json;
        Assert.That(info.GetProperty("lower-file").GetString(), Is.EqualTo(lower), "recorded as given, as create records it");
        Assert.That(info.GetProperty("blocks").GetProperty("present").GetInt64(), Is.EqualTo(1));
        Assert.That(info.GetProperty("blocks").GetProperty("zero").GetInt64(), Is.EqualTo(1));
        Assert.That(ToolFiles.MergedContent(path), Is.EqualTo(content));
        Checks.AssertClean(path);
    }

    [Test]
    public void ARelativeLowerIsRecordedRelativeToOutsFolder()
    {
        using var dir = new TempDir();
        ToolFiles.MakeLower(dir.File("big.img"));
        Directory.CreateDirectory(dir.File("sub"));
        File.Copy(dir.File("big.img"), dir.File("copy.raw"));
        BcowResult result = Bcow.RunProcess(dir.Path, "convert", "-O", "bcow", "--lower", "big.img", "copy.raw", "sub/same.bcow");
        Assert.That(result.ExitCode, Is.Zero, result.ToString());
        var info = Bcow.Run("info", "--json", dir.File("sub/same.bcow")).Json;
        Assert.That(info.GetProperty("lower-file").GetString(), Is.EqualTo("../big.img"));
        Assert.That(info.GetProperty("blocks").GetProperty("present").GetInt64(), Is.Zero, "identical to its lower file");
        Assert.That(Bcow.Run("compare", dir.File("sub/same.bcow"), dir.File("copy.raw")).ExitCode, Is.Zero);
    }

    [Test]
    public void AnInterruptedConvertLeavesNoFileAndNeverTouchesAnOutTmpItDidNotMake()
    {
        using var dir = new TempDir();
        string path = ToolFiles.MakeStandalone(dir, size: "4M", blockSize: "64k");
        Assert.That(Bcow.Run("io", path, "-c", "write 0 4M").ExitCode, Is.Zero);
        string output = dir.File("out");
        File.WriteAllText(output + ".tmp", "someone else's");
        foreach (string format in new[] { "raw", "bcow" })
        {
            using var cancelled = new CancellationTokenSource();
            cancelled.Cancel();
            int exit = BcowCli.Run(["convert", "-O", format, path, output], new StringWriter(), new StringWriter(), errorIsTerminal: false, cancelled.Token);
            Assert.That(exit, Is.EqualTo(BcowCli.Interrupted), format);
            Assert.That(File.Exists(output), Is.False, format);
            Assert.That(Directory.GetFiles(dir.Path, "out.tmp-*"), Is.Empty, $"{format}: no temporary file left");
        }
        Assert.That(File.ReadAllText(output + ".tmp"), Is.EqualTo("someone else's"));
        Checks.AssertClean(path);
    }

    [Test]
    public void AnExistingOutputIsReplacedOnSuccess()
    {
        using var dir = new TempDir();
        string path = ToolFiles.MakeStandalone(dir, size: "1M");
        Assert.That(Bcow.Run("io", path, "-c", "write -P 0x42 0 4k").ExitCode, Is.Zero);
        string output = dir.File("out");
        File.WriteAllText(output, "old");
        Assert.That(Bcow.Run("convert", path, output).ExitCode, Is.Zero, "raw is the default output format, as in qemu-img");
        Assert.That(new FileInfo(output).Length, Is.EqualTo(1L << 20));
        Assert.That(File.ReadAllBytes(output).AsSpan(0, 4096).IndexOfAnyExcept((byte)0x42), Is.EqualTo(-1));
    }

    [Test]
    public void OnATerminalAProgressBarReachesOneHundredPercent()
    {
        using var dir = new TempDir();
        string path = ToolFiles.MakeStandalone(dir, size: "4M", blockSize: "64k");
        Assert.That(Bcow.Run("io", path, "-c", "write 1M 2M").ExitCode, Is.Zero);
        var stderr = new StringWriter();
        int exit = BcowCli.Run(["convert", "-O", "bcow", path, dir.File("out.bcow")], new StringWriter(), stderr, errorIsTerminal: true, CancellationToken.None);
        Assert.That(exit, Is.Zero, stderr.ToString());
        Assert.That(stderr.ToString(), Does.StartWith("\r[").And.Contain("100.0%").And.EndWith("\n"));
    }

    [Test]
    public void ConvertingOntoTheInputOrALowerFileIsRefused()
    {
        using var dir = new TempDir();
        string path = ToolFiles.MakePair(dir, out string lower);
        byte[] before = File.ReadAllBytes(path);

        BcowResult onInput = Bcow.Run("convert", path, path);
        Assert.That(onInput.ExitCode, Is.EqualTo(1));
        Assert.That(onInput.Error, Does.StartWith("bcow: convert: OUT"));
        BcowResult onLower = Bcow.Run("convert", path, lower);
        Assert.That(onLower.ExitCode, Is.EqualTo(1));
        Assert.That(onLower.Error, Does.Contain("lower file"));
        BcowResult onNewLower = Bcow.Run("convert", "-O", "bcow", "--lower", lower, path, lower);
        Assert.That(onNewLower.ExitCode, Is.EqualTo(1));
        Assert.That(new FileInfo(lower).Length, Is.EqualTo(ToolFiles.LowerSize));
        Assert.That(File.ReadAllBytes(path), Is.EqualTo(before));
    }

    [Test]
    public void MissingInputsAndDirectoriesAreNamedWithTheirErrno()
    {
        using var dir = new TempDir();
        string path = ToolFiles.MakeStandalone(dir);
        Directory.CreateDirectory(dir.File("adir"));
        Assert.That(Bcow.Run("convert", dir.File("missing"), dir.File("out")).Error,
            Is.EqualTo($"bcow: {dir.File("missing")}: No such file or directory\n"));
        Assert.That(Bcow.Run("convert", dir.File("adir"), dir.File("out")).Error,
            Is.EqualTo($"bcow: {dir.File("adir")}: Is a directory\n"));
        Assert.That(Bcow.Run("convert", path, dir.File("adir")).Error,
            Is.EqualTo($"bcow: {dir.File("adir")}: Is a directory\n"));
        Assert.That(Bcow.Run("convert", path, dir.File("missing/out")).Error,
            Is.EqualTo($"bcow: {dir.File("missing/out")}: No such file or directory\n"));
        Assert.That(Directory.GetFiles(dir.Path, "*.tmp-*", SearchOption.AllDirectories), Is.Empty);
    }

    [TestCase(new[] { "convert", "a" }, "bcow: convert: missing OUT")]
    [TestCase(new[] { "convert", "-O", "qcow2", "a", "b" }, "bcow: convert: unknown output format 'qcow2'")]
    [TestCase(new[] { "convert", "--lower", "l", "a", "b" }, "bcow: convert: --lower needs -O bcow")]
    public void BadUsageExitsOne(string[] args, string problem)
    {
        BcowResult result = Bcow.Run(args);
        Assert.That(result.ExitCode, Is.EqualTo(1), result.ToString());
        Assert.That(result.Error, Does.StartWith(problem));
    }
}
