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
        Assert.That(ToolFiles.AllocatedBytes(flat), Is.LessThan(4L << 20), "only the written block is allocated");
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
        string path = ToolFiles.MakePair(dir, out string lower);
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
        Assert.That(Directory.GetFiles(dir.Path, "flat.tmp*"), Is.Empty, "no temporary file left");
        Checks.AssertClean(path);
    }

    /// <summary>flatten used to write to, and on failure delete, OUT.tmp: a file it did not make.</summary>
    [Test]
    public void AnUnrelatedOutTmpIsNeverTouchedOnSuccessOrFailure()
    {
        using var dir = new TempDir();
        string path = ToolFiles.MakeStandalone(dir, size: "4M", blockSize: "64k");
        Assert.That(Bcow.Run("io", path, "-c", "write -P 0x42 0 1M").ExitCode, Is.Zero);
        string flat = dir.File("flat");
        File.WriteAllText(flat + ".tmp", "someone else's");

        using (var cancelled = new CancellationTokenSource())
        {
            cancelled.Cancel();
            int exit = BcowCli.Run(["flatten", path, flat], new StringWriter(), new StringWriter(), errorIsTerminal: false, cancelled.Token);
            Assert.That(exit, Is.EqualTo(BcowCli.Interrupted));
        }
        Assert.That(File.ReadAllText(flat + ".tmp"), Is.EqualTo("someone else's"), "after a failure");

        BcowResult result = Bcow.Run("flatten", path, flat);
        Assert.That(result.ExitCode, Is.Zero, result.ToString());
        Assert.That(File.ReadAllText(flat + ".tmp"), Is.EqualTo("someone else's"), "after a success");
        Assert.That(File.ReadAllBytes(flat).AsSpan(0, 1 << 20).IndexOfAnyExcept((byte)0x42), Is.EqualTo(-1));
        Assert.That(Directory.GetFiles(dir.Path, "flat.tmp-*"), Is.Empty, "no temporary file of its own left");
    }

    [Test]
    public void AnOutputThatCannotBeMadeIsNamedWithItsErrno()
    {
        using var dir = new TempDir();
        string path = ToolFiles.MakeStandalone(dir);
        Directory.CreateDirectory(dir.File("adir"));

        BcowResult noFolder = Bcow.Run("flatten", path, dir.File("missing/out"));
        Assert.That(noFolder.Error, Is.EqualTo($"bcow: {dir.File("missing/out")}: No such file or directory\n"));
        BcowResult directory = Bcow.Run("flatten", path, dir.File("adir"));
        Assert.That(directory.ExitCode, Is.EqualTo(1));
        Assert.That(directory.Error, Is.EqualTo($"bcow: {dir.File("adir")}: Is a directory\n"));
        Assert.That(Directory.GetFiles(dir.Path, "*.tmp-*"), Is.Empty);
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
        string path = ToolFiles.MakePair(dir, out string lower);
        Assert.That(Bcow.Run("flatten", path, path).ExitCode, Is.EqualTo(1));
        BcowResult onLower = Bcow.Run("flatten", path, lower);
        Assert.That(onLower.ExitCode, Is.EqualTo(1));
        Assert.That(onLower.Error, Does.Contain("lower file"));
        Assert.That(new FileInfo(lower).Length, Is.EqualTo(ToolFiles.LowerSize));
        Checks.AssertClean(path);
    }
}
