using BAOverlay.Tool;

namespace BAOverlay.Tests.Tool;

/// <summary><c>bcow flatten</c>: merged content, sparse where it is zeros, never a half file under OUT.</summary>
public class FlattenCommandTests
{
    [Test]
    public void TheFlatFileIsSparseWhereTheMergedContentIsZeros()
    {
        using var dir = new TempDir();
        string path = ToolFiles.MakeStandalone(dir, size: "256M", blockSize: "64k");
        Assert.That(Bcow.Run("io", path, "-c", "write -P 0x77 100M 64k").ExitCode, Is.Zero);
        string flat = dir.File("flat");
        BcowResult result = Bcow.Run("flatten", path, flat);
        Assert.That(result.ExitCode, Is.Zero, result.ToString());
        var file = new FileInfo(flat);
        Assert.That(file.Length, Is.EqualTo(256L << 20));
        Assert.That(AllocatedBytes(flat), Is.LessThan(4L << 20), "only the written block is allocated");
        using var stream = file.OpenRead();
        byte[] block = new byte[65536];
        stream.Position = 100L << 20;
        stream.ReadExactly(block);
        Assert.That(block, Is.All.EqualTo(0x77));
        Checks.AssertClean(path);
    }

    [Test]
    public void AnExistingOutputIsReplacedOnlyOnSuccess()
    {
        using var dir = new TempDir();
        string lower = dir.File("big.img");
        string path = dir.File("x.bcow");
        ToolFiles.MakeLower(lower);
        Assert.That(Bcow.Run("create", "--lower", lower, path).ExitCode, Is.Zero);
        string flat = dir.File("flat");
        File.WriteAllText(flat, "precious");

        // Change the lower file under the B-CoW file: flatten must refuse, and leave OUT and no OUT.tmp.
        using (var stream = new FileStream(lower, FileMode.Open, FileAccess.Write))
        {
            stream.WriteByte(1);
        }
        BcowResult failed = Bcow.Run("flatten", path, flat);
        Assert.That(failed.ExitCode, Is.EqualTo(1));
        Assert.That(failed.Error, Does.StartWith($"bcow: {path}: lower file").And.Contain("changed"));
        Assert.That(File.ReadAllText(flat), Is.EqualTo("precious"));
        Assert.That(File.Exists(flat + ".tmp"), Is.False);
    }

    [Test]
    public void AFailureWhileCopyingRemovesTheTemporaryFile()
    {
        using var dir = new TempDir();
        string path = ToolFiles.MakeStandalone(dir, size: "4M", blockSize: "64k");
        Assert.That(Bcow.Run("io", path, "-c", "write 0 4M").ExitCode, Is.Zero);
        string flat = dir.File("flat");
        using var cancelled = new CancellationTokenSource();
        cancelled.Cancel();
        int exit = BcowCli.Run(["flatten", path, flat], new StringWriter(), new StringWriter(), errorIsTerminal: false, cancelled.Token);
        Assert.That(exit, Is.EqualTo(BcowCli.Interrupted));
        Assert.That(File.Exists(flat), Is.False);
        Assert.That(File.Exists(flat + ".tmp"), Is.False);
        Checks.AssertClean(path);
    }

    [Test]
    public void OnATerminalAProgressBarReachesOneHundredPercent()
    {
        using var dir = new TempDir();
        string path = ToolFiles.MakeStandalone(dir, size: "4M", blockSize: "64k");
        Assert.That(Bcow.Run("io", path, "-c", "write 1M 2M").ExitCode, Is.Zero);
        var stderr = new StringWriter();
        int exit = BcowCli.Run(["flatten", path, dir.File("flat")], new StringWriter(), stderr, errorIsTerminal: true, CancellationToken.None);
        Assert.That(exit, Is.Zero, stderr.ToString());
        Assert.That(stderr.ToString(), Does.StartWith("\r[").And.Contain("100.0%").And.EndWith("\n"));
        Checks.AssertClean(path);
    }

    [Test]
    public void FlatteningOntoTheInputOrItsLowerFileIsRefused()
    {
        using var dir = new TempDir();
        string lower = dir.File("big.img");
        string path = dir.File("x.bcow");
        ToolFiles.MakeLower(lower);
        Assert.That(Bcow.Run("create", "--lower", lower, path).ExitCode, Is.Zero);
        Assert.That(Bcow.Run("flatten", path, path).ExitCode, Is.EqualTo(1));
        BcowResult onLower = Bcow.Run("flatten", path, lower);
        Assert.That(onLower.ExitCode, Is.EqualTo(1));
        Assert.That(onLower.Error, Does.Contain("lower file"));
        Assert.That(new FileInfo(lower).Length, Is.EqualTo(ToolFiles.LowerSize));
        Checks.AssertClean(path);
    }

    /// <summary>Allocated bytes of a file, from <c>stat</c> (no API for st_blocks in .NET).</summary>
    private static long AllocatedBytes(string path)
    {
        var start = new System.Diagnostics.ProcessStartInfo("stat", ["-c", "%b %B", path]) { RedirectStandardOutput = true };
        using var process = System.Diagnostics.Process.Start(start)!;
        string[] parts = process.StandardOutput.ReadToEnd().Trim().Split(' ');
        process.WaitForExit();
        return long.Parse(parts[0], System.Globalization.CultureInfo.InvariantCulture) * long.Parse(parts[1], System.Globalization.CultureInfo.InvariantCulture);
    }
}
