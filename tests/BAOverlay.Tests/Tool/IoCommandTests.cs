namespace BAOverlay.Tests.Tool;

/// <summary><c>bcow io</c>: qemu-io's commands and report.</summary>
public class IoCommandTests
{
    [Test]
    public void WriteWithoutAPatternWritesCdAsQemuIoDoes()
    {
        using var dir = new TempDir();
        string path = ToolFiles.MakeStandalone(dir);
        Assert.That(Bcow.Run("io", path, "-c", "write 4k 4k").ExitCode, Is.Zero);
        Assert.That(Bcow.Run("io", path, "-c", "read -P 0xcd 4k 4k").ExitCode, Is.Zero);
        Assert.That(Bcow.Run("io", path, "-c", "read -P 205 0x1000 4096").ExitCode, Is.Zero, "decimal and hex name the same byte");
        Checks.AssertClean(path);
    }

    [Test]
    public void EachCommandPrintsQemuIosTwoLineReport()
    {
        using var dir = new TempDir();
        string path = ToolFiles.MakeStandalone(dir);
        BcowResult result = Bcow.Run("io", path, "-c", "write -P 0xab 0 64k", "-c", "read -P 0xab 0 64k", "-c", "discard 0 4k");
        Assert.That(result.ExitCode, Is.Zero, result.ToString());
        string[] lines = result.Out.TrimEnd('\n').Split('\n');
        Assert.That(lines, Has.Length.EqualTo(6));
        Assert.That(lines[0], Is.EqualTo("wrote 65536/65536 bytes at offset 0"));
        Assert.That(lines[1], Does.Match(@"^64 KiB, 1 ops; \d\d\.\d\d sec \([0-9.]+ [KMGT]?i?B(ytes)?/sec and [0-9]+\.[0-9]{4} ops/sec\)$"));
        Assert.That(lines[2], Is.EqualTo("read 65536/65536 bytes at offset 0"));
        Assert.That(lines[4], Is.EqualTo("discard 4096/4096 bytes at offset 0"));
        Checks.AssertClean(path);
    }

    [Test]
    public void QuietCommandsPrintNothing()
    {
        using var dir = new TempDir();
        string path = ToolFiles.MakeStandalone(dir);
        BcowResult result = Bcow.Run("io", path, "-c", "write -q 0 4k", "-c", "read -q -P 0xcd 0 4k", "-c", "flush", "-c", "wait");
        Assert.That(result.ExitCode, Is.Zero, result.ToString());
        Assert.That(result.Out, Is.Empty);
        Checks.AssertClean(path);
    }

    [Test]
    public void AFailedVerificationStillRunsTheRemainingCommandsAndExitsOne()
    {
        using var dir = new TempDir();
        string path = ToolFiles.MakeStandalone(dir);
        BcowResult result = Bcow.Run("io", path, "-c", "read -P 1 0 4k", "-c", "write -P 7 8k 4k");
        Assert.That(result.ExitCode, Is.EqualTo(1));
        Assert.That(result.Out, Does.StartWith("Pattern verification failed at offset 0, 4096 bytes\nread 4096/4096 bytes at offset 0\n"));
        Assert.That(Bcow.Run("io", path, "-c", "read -P 7 8k 4k").ExitCode, Is.Zero, "the write after the failed read ran");
        Checks.AssertClean(path);
    }

    [Test]
    public void ReadingPastTheEndFailsWithOneLine()
    {
        using var dir = new TempDir();
        string path = ToolFiles.MakeStandalone(dir, size: "1M");
        BcowResult result = Bcow.Run("io", path, "-c", "read 1020k 8k");
        Assert.That(result.ExitCode, Is.EqualTo(1));
        Assert.That(result.Error, Does.StartWith($"bcow: {path}: read failed: ").And.Contain("beyond the end"));
    }

    [Test]
    public void ReadOnlyCommandsOpenTheFileReadOnly()
    {
        using var dir = new TempDir();
        string path = ToolFiles.MakeStandalone(dir);
        // A writable open commits the dirty flag at once (a new generation), so unchanged bytes prove a read-only open.
        byte[] before = File.ReadAllBytes(path);
        BcowResult result = Bcow.Run("io", path, "-c", "read -P 0 0 64k", "-c", "length");
        Assert.That(result.ExitCode, Is.Zero, result.ToString());
        Assert.That(result.Out, Does.EndWith("1 MiB\n"));
        Assert.That(File.ReadAllBytes(path), Is.EqualTo(before), "not even the dirty flag is written");
    }

    [Test]
    public void TruncateShrinksAndGrowsWithZerosWhereLowerBytesWere()
    {
        using var dir = new TempDir();
        string lower = dir.File("big.img");
        string path = dir.File("x.bcow");
        byte[] content = ToolFiles.MakeLower(lower);
        Assert.That(Bcow.Run("create", "--lower", lower, path).ExitCode, Is.Zero);

        Assert.That(Bcow.Run("io", path, "-c", "truncate 32k", "-c", "truncate 1M").ExitCode, Is.Zero);
        Assert.That(Bcow.Run("info", "--json", path).Json.GetProperty("virtual-size").GetInt64(), Is.EqualTo(1L << 20));
        Assert.That(Bcow.Run("io", path, "-c", "read -P 0 32k 32k").ExitCode, Is.Zero, "lower bytes beyond a shrink stay hidden");
        Assert.That(Bcow.Run("io", path, "-c", "read -P 0 900000 4096").ExitCode, Is.Zero);

        string flat = dir.File("flat");
        Assert.That(Bcow.Run("flatten", path, flat).ExitCode, Is.Zero);
        byte[] expected = new byte[1 << 20];
        content.AsSpan(0, 32 << 10).CopyTo(expected);
        Assert.That(File.ReadAllBytes(flat), Is.EqualTo(expected));
        Checks.AssertClean(path);
    }

    [Test]
    public void DiscardMakesARangeReadAsZerosAndFreesWholeBlocks()
    {
        using var dir = new TempDir();
        string lower = dir.File("big.img");
        string path = dir.File("x.bcow");
        ToolFiles.MakeLower(lower);
        Assert.That(Bcow.Run("create", "-b", "4k", "--lower", lower, path).ExitCode, Is.Zero);
        Assert.That(Bcow.Run("io", path, "-c", "write -P 0x11 0 16k").ExitCode, Is.Zero);

        BcowResult discard = Bcow.Run("io", path, "-c", "discard 4k 8k", "-c", "discard 20k 1k");
        Assert.That(discard.ExitCode, Is.Zero, discard.ToString());
        Assert.That(discard.Out, Does.StartWith("discard 8192/8192 bytes at offset 4096\n"));

        BcowResult read = Bcow.Run("io", path, "-c", "read -P 0x11 0 4k", "-c", "read -P 0 4k 8k", "-c", "read -P 0x11 12k 4k", "-c", "read -P 0 20k 1k");
        Assert.That(read.ExitCode, Is.Zero, read.ToString());
        var blocks = Bcow.Run("info", "--json", path).Json.GetProperty("blocks");
        long allocated = blocks.GetProperty("present").GetInt64() + blocks.GetProperty("partial").GetInt64();
        Assert.That(allocated, Is.EqualTo(3), "blocks 0 and 3 keep their data; block 5 holds the zeros of a part-block discard");
        Assert.That(blocks.GetProperty("zero").GetInt64(), Is.EqualTo(2), "blocks 1 and 2 were freed");
        Checks.AssertClean(path);
    }

    [Test]
    public void WaitFinishesCopyUpsAndLeavesNoPartialBlock()
    {
        using var dir = new TempDir();
        string lower = dir.File("big.img");
        string path = dir.File("x.bcow");
        byte[] content = ToolFiles.MakeLower(lower);
        Assert.That(Bcow.Run("create", "-b", "1M", "--lower", lower, path).ExitCode, Is.Zero);
        BcowResult result = Bcow.Run("io", path, "-c", "write -P 0xab 1000000 4096", "-c", "wait");
        Assert.That(result.ExitCode, Is.Zero, result.ToString());

        var blocks = Bcow.Run("info", "--json", path).Json.GetProperty("blocks");
        Assert.That(blocks.GetProperty("partial").GetInt64(), Is.Zero);
        Assert.That(blocks.GetProperty("present").GetInt64(), Is.EqualTo(1));
        // The copied-up block must hold the lower bytes around the write.
        string flat = dir.File("flat");
        Assert.That(Bcow.Run("flatten", path, flat).ExitCode, Is.Zero);
        content.AsSpan(1_000_000, 4096).Fill(0xab);
        Assert.That(File.ReadAllBytes(flat), Is.EqualTo(content));
        Checks.AssertClean(path);
    }
}
