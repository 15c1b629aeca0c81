namespace BAOverlay.Tests.Tool;

/// <summary>The issue's "Done when": the tool round trip over a 64 MiB lower file, one 4 KiB write at 1000000.</summary>
public class IssueScenarioTests
{
    [Test]
    public void AWriteThroughTheToolIsVerifiedCheckedAndFlattenedOverTheLowerFile()
    {
        using var dir = new TempDir();
        string lower = dir.File("big.img");
        string bcow = dir.File("x.bcow");
        string flat = dir.File("out");
        byte[] expected = ToolFiles.MakeLower(lower);
        expected.AsSpan(1_000_000, 4096).Fill(0xab);

        BcowResult created = Bcow.Run("create", "--lower", lower, bcow);
        Assert.That(created.ExitCode, Is.Zero, created.ToString());

        BcowResult wrote = Bcow.Run("io", bcow, "-c", "write -P 0xab 1000000 4096");
        Assert.That(wrote.ExitCode, Is.Zero, wrote.ToString());
        Assert.That(wrote.Out, Does.StartWith("wrote 4096/4096 bytes at offset 1000000\n4 KiB, 1 ops; "));

        BcowResult info = Bcow.Run("info", "--json", bcow);
        Assert.That(info.ExitCode, Is.Zero, info.ToString());
        var blocks = info.Json.GetProperty("blocks");
        long allocated = blocks.GetProperty("present").GetInt64() + blocks.GetProperty("partial").GetInt64();
        Assert.That(allocated, Is.InRange(1, 2), info.Out);
        Assert.That(info.Json.GetProperty("virtual-size").GetInt64(), Is.EqualTo(ToolFiles.LowerSize));
        Assert.That(info.Json.GetProperty("dirty").GetBoolean(), Is.False);

        BcowResult verified = Bcow.Run("io", bcow, "-c", "read -P 0xab 1000000 4096");
        Assert.That(verified.ExitCode, Is.Zero, verified.ToString());
        Assert.That(verified.Out, Does.Not.Contain("Pattern verification failed"));

        BcowResult mismatch = Bcow.Run("io", bcow, "-c", "read -P 0xcc 1000000 4096");
        Assert.That(mismatch.ExitCode, Is.Not.Zero, mismatch.ToString());
        Assert.That(mismatch.Out, Does.Contain("Pattern verification failed at offset 1000000, 4096 bytes"));

        BcowResult check = Bcow.Run("check", bcow);
        Assert.That(check.ExitCode, Is.Zero, check.ToString());

        BcowResult flattened = Bcow.Run("flatten", bcow, flat);
        Assert.That(flattened.ExitCode, Is.Zero, flattened.ToString());
        Assert.That(File.ReadAllBytes(flat), Is.EqualTo(expected));
        Assert.That(File.Exists(flat + ".tmp"), Is.False);

        Checks.AssertClean(bcow);
    }

    [Test]
    public void TheSameScenarioWorksAsARealProcessWithRelativePaths()
    {
        using var dir = new TempDir();
        byte[] expected = ToolFiles.MakeLower(dir.File("big.img"));
        expected.AsSpan(1_000_000, 4096).Fill(0xab);

        Assert.That(Bcow.RunProcess(dir.Path, "create", "--lower", "big.img", "x.bcow").ExitCode, Is.Zero);
        Assert.That(Bcow.RunProcess(dir.Path, "io", "x.bcow", "-c", "write -P 0xab 1000000 4096").ExitCode, Is.Zero);

        BcowResult info = Bcow.RunProcess(dir.Path, "info", "--json", "x.bcow");
        Assert.That(info.ExitCode, Is.Zero, info.ToString());
        Assert.That(info.Json.GetProperty("lower-file").GetString(), Is.EqualTo("big.img"), "a relative lower path is kept relative");

        Assert.That(Bcow.RunProcess(dir.Path, "io", "x.bcow", "-c", "read -P 0xab 1000000 4096").ExitCode, Is.Zero);
        BcowResult mismatch = Bcow.RunProcess(dir.Path, "io", "x.bcow", "-c", "read -P 0xcc 1000000 4096");
        Assert.That(mismatch.ExitCode, Is.EqualTo(1), mismatch.ToString());
        Assert.That(Bcow.RunProcess(dir.Path, "check", "x.bcow").ExitCode, Is.Zero);

        BcowResult flattened = Bcow.RunProcess(dir.Path, "flatten", "x.bcow", "out");
        Assert.That(flattened.ExitCode, Is.Zero, flattened.ToString());
        Assert.That(flattened.Error, Is.Empty, "no progress bar when standard error is not a terminal");
        Assert.That(File.ReadAllBytes(dir.File("out")), Is.EqualTo(expected));

        Checks.AssertClean(dir.File("x.bcow"));
    }
}
