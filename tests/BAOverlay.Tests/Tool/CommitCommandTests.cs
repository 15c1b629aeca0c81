using BAOverlay.Engine;

namespace BAOverlay.Tests.Tool;

/// <summary>
/// <c>bcow commit</c>: FILE's blocks go into its lower file, which then holds the merged content; FILE is emptied
/// (or kept with -d) and records the lower file's new identity. An interrupted commit is refused until run again.
/// </summary>
[Platform("Linux")]
public class CommitCommandTests
{
    private const int Size = 4 << 20;

    private static (string Path, string Lower) MakePair(TempDir dir)
    {
        string lower = dir.File("base.img");
        File.WriteAllBytes(lower, Checks.RandomBytes(new Random(5), Size));
        string path = dir.File("x.bcow");
        Assert.That(Bcow.RunProcess(dir.Path, "create", "--lower", "base.img", "x.bcow").ExitCode, Is.Zero); // recorded relative
        Assert.That(Bcow.Run("io", path, "-c", "write -P 0x55 0 2M", "-c", "write -P 0x66 3M 100", "-c", "discard 3584k 64k").ExitCode, Is.Zero);
        return (path, lower);
    }

    private static byte[] Read(string path)
    {
        using BCowFile file = BCowFile.Open(path, new BCowOpenOptions { ReadOnly = true });
        byte[] all = new byte[file.Length];
        Assert.That(file.ReadAt(all, 0), Is.EqualTo(all.Length));
        return all;
    }

    [Test]
    public void CommitWritesTheBlocksIntoTheLowerAndEmptiesTheFile()
    {
        using var dir = new TempDir();
        var (path, lower) = MakePair(dir);
        byte[] merged = Read(path);

        BcowResult result = Bcow.Run("commit", path);

        Assert.That(result.ExitCode, Is.Zero, result.ToString());
        Assert.That(result.Out, Is.EqualTo($"Image committed into {lower}.\n"));
        Assert.That(File.ReadAllBytes(lower), Is.EqualTo(merged), "the lower file has the merged content");
        Assert.That(Read(path), Is.EqualTo(merged));
        var info = Bcow.Run("info", "--json", path).Json;
        Assert.That(info.GetProperty("data-bytes").GetInt64(), Is.Zero, "emptied");
        Assert.That(info.GetProperty("blocks").GetProperty("zero").GetInt64(), Is.Zero);
        Assert.That(info.GetProperty("lower-file").GetString(), Is.EqualTo("base.img"), "the recorded path is kept");
        Checks.AssertClean(path);
    }

    [Test]
    public void CommitWithKeepLeavesTheBlocksInTheFile()
    {
        using var dir = new TempDir();
        var (path, lower) = MakePair(dir);
        byte[] merged = Read(path);
        long data = Bcow.Run("info", "--json", path).Json.GetProperty("data-bytes").GetInt64();

        Assert.That(Bcow.Run("commit", "-d", path).ExitCode, Is.Zero);

        Assert.That(File.ReadAllBytes(lower), Is.EqualTo(merged));
        Assert.That(Read(path), Is.EqualTo(merged));
        Assert.That(Bcow.Run("info", "--json", path).Json.GetProperty("data-bytes").GetInt64(), Is.EqualTo(data));
        Checks.AssertClean(path);
    }

    /// <summary>Shrunk (lower bytes hidden) then grown past the lower file: the lower file gets zeros where they were
    /// hidden and grows to the file's size.</summary>
    [Test]
    public void CommitOfAShrunkAndGrownFileWritesTheHiddenZerosAndGrowsTheLower()
    {
        using var dir = new TempDir();
        var (path, lower) = MakePair(dir);
        Assert.That(Bcow.Run("io", path, "-c", "truncate 3M", "-c", "truncate 5M", "-c", "write -P 0x77 4600k 4k").ExitCode, Is.Zero);
        byte[] merged = Read(path);
        Assert.That(merged.Length, Is.EqualTo(5 << 20));

        Assert.That(Bcow.Run("commit", path).ExitCode, Is.Zero);

        Assert.That(File.ReadAllBytes(lower), Is.EqualTo(merged));
        Assert.That(Read(path), Is.EqualTo(merged));
    }

    /// <summary>Stopped after the first MiB was written into the lower file (as a crash would leave it): the pair is
    /// refused with the way out, and running commit again finishes it.</summary>
    [Test]
    public void AnInterruptedCommitIsRefusedUntilRunAgain()
    {
        using var dir = new TempDir();
        var (path, lower) = MakePair(dir);
        byte[] merged = Read(path);
        using var stop = new CancellationTokenSource();
        Assert.Throws<OperationCanceledException>(() => LowerCommit.Run(path, keep: false, (done, _) =>
        {
            if (done >= 1 << 20)
            {
                stop.Cancel();
            }
        }, stop.Token));

        var e = Assert.Throws<BCowFormatException>(() => BCowFile.Open(path).Dispose());
        Assert.That(e!.Message, Does.Contain("was interrupted").And.Contain($"run 'bcow commit {path}' again"));
        BcowResult io = Bcow.Run("io", path, "-c", "read 0 4k");
        Assert.That(io.ExitCode, Is.EqualTo(1));

        AssertRunAgainFinishes(path, lower, merged);
    }

    /// <summary>Stopped after every byte is in the lower file but before the file was emptied: the pair opens as it is
    /// (the lower file matches the pending identity) with the same content.</summary>
    [Test]
    public void ACommitStoppedAfterWritingTheLowerStillOpens()
    {
        using var dir = new TempDir();
        var (path, lower) = MakePair(dir);
        byte[] merged = Read(path);
        using var stop = new CancellationTokenSource();
        long total = 0;
        Assert.Throws<OperationCanceledException>(() => LowerCommit.Run(path, keep: false, (done, all) =>
        {
            total = all;
            if (done == all)
            {
                stop.Cancel();
                stop.Token.ThrowIfCancellationRequested(); // as a crash right after the last write
            }
        }, stop.Token));
        Assert.That(total, Is.GreaterThan(0));
        Assert.That(Read(path), Is.EqualTo(merged));
    }

    /// <summary>
    /// A real crash: the commit process killed at some moment. Whatever the moment, the pair then either opens with
    /// the same content (the lower file old or complete) or is refused as an interrupted commit; and running commit
    /// again leaves the lower file with the merged content.
    /// </summary>
    [Test]
    public void ACommitKilledAtAnyMomentLeavesTheContentAndCanBeFinished([Values(30, 120, 400)] int killAfterMs)
    {
        using var dir = new TempDir();
        string lower = dir.File("base.img");
        File.WriteAllBytes(lower, Checks.RandomBytes(new Random(6), 64 << 20));
        string path = dir.File("x.bcow");
        Assert.That(Bcow.RunProcess(dir.Path, "create", "-b", "4k", "--lower", "base.img", "x.bcow").ExitCode, Is.Zero);
        Assert.That(Bcow.Run("io", path, "-c", "write -P 0x55 0 60M").ExitCode, Is.Zero);
        byte[] merged = Read(path);

        using (BcowProcess commit = Bcow.Start(dir.Path, "commit", "x.bcow"))
        {
            Thread.Sleep(killAfterMs);
        } // killed, if it had not finished

        try
        {
            Assert.That(Read(path), Is.EqualTo(merged), $"killed after {killAfterMs} ms: the pair opens with its content");
        }
        catch (BCowFormatException e)
        {
            Assert.That(e.Message, Does.Contain("was interrupted"), $"killed after {killAfterMs} ms");
        }
        AssertRunAgainFinishes(path, lower, merged);
    }

    [Test]
    public void CommitDrawsProgressOnATerminal()
    {
        using var dir = new TempDir();
        var (path, _) = MakePair(dir);
        var stderr = new StringWriter();
        int exit = BAOverlay.Tool.BcowCli.Run(["commit", path], new StringWriter(), stderr, errorIsTerminal: true, CancellationToken.None);
        Assert.That(exit, Is.Zero, stderr.ToString());
        Assert.That(stderr.ToString(), Does.StartWith("\r[").And.Contain("100.0%").And.EndWith("\n"));
    }

    [Test]
    public void CommitRefusesAFileWithoutLowerOrInUse()
    {
        using var dir = new TempDir();
        string standalone = ToolFiles.MakeStandalone(dir);
        BcowResult none = Bcow.Run("commit", standalone);
        Assert.That(none.ExitCode, Is.EqualTo(1));
        Assert.That(none.Error, Is.EqualTo($"bcow: {standalone}: has no lower file to commit into\n"));

        var (path, _) = MakePair(dir);
        using BcowProcess holder = Bcow.Start(dir.Path, "io", path, "-c", "read 0 4k", "-c", "sleep 60000");
        holder.WaitForLine("read ");
        BcowResult busy = Bcow.Run("commit", path);
        Assert.That(busy.ExitCode, Is.EqualTo(1));
        Assert.That(busy.Error, Does.StartWith($"bcow: {path}: the file is in use by another process"));
        Assert.That(Bcow.Run("commit", "--help").Out, Does.StartWith("Usage: bcow commit [-d] FILE"));
    }

    /// <summary>Running the commit again finishes an interrupted one: the lower file holds the merged content, the
    /// pair reads the same, and the file checks clean.</summary>
    private static void AssertRunAgainFinishes(string path, string lower, byte[] merged)
    {
        BcowResult again = Bcow.Run("commit", path);
        Assert.That(again.ExitCode, Is.Zero, again.ToString());
        Assert.That(File.ReadAllBytes(lower), Is.EqualTo(merged));
        Assert.That(Read(path), Is.EqualTo(merged));
        Checks.AssertClean(path);
    }
}
