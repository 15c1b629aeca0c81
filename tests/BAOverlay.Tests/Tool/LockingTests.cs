using BAOverlay.Checking;

namespace BAOverlay.Tests.Tool;

/// <summary>
/// Two processes and one B-CoW file: a writer holds an exclusive lock, a reader a shared one, a conflicting open fails
/// at once (<see cref="BCowFileInUseException"/>; bcow: exit 1, one line), and <c>-U</c> reads anyway, saying the
/// result may be inconsistent. The holder is a real <c>bcow io ... -c "sleep N"</c> process: OFD locks are per open,
/// so only another process shows what users see.
/// </summary>
[Platform("Linux")]
public class LockingTests
{
    private const string InUse = "the file is in use by another process";

    /// <summary>A bcow io process that wrote 64 KiB of 0x11 at 0 and then sleeps with the file open for writing.</summary>
    private static BcowProcess StartWriter(TempDir dir, string path, int sleepMs = 60_000, params string[] after)
    {
        var args = new List<string> { "io", path, "-c", "write -P 0x11 0 64k", "-c", $"sleep {sleepMs}" };
        foreach (string command in after)
        {
            args.Add("-c");
            args.Add(command);
        }
        BcowProcess holder = Bcow.Start(dir.Path, args.ToArray());
        holder.WaitForLine("wrote ");
        return holder;
    }

    private static void AssertRefused(BcowResult result, string path)
    {
        Assert.That(result.ExitCode, Is.EqualTo(1), result.ToString());
        Assert.That(result.Error, Does.StartWith($"bcow: {path}: {InUse}"), result.ToString());
        Assert.That(result.Error.TrimEnd('\n'), Does.Not.Contain("\n"), "one line");
    }

    [Test]
    public void WhileAnotherProcessWritesEveryOtherOpenIsRefusedButInfoWithForceShareWorks()
    {
        using var dir = new TempDir();
        string path = ToolFiles.MakeStandalone(dir);
        using BcowProcess writer = StartWriter(dir, path);

        Assert.Multiple(() =>
        {
            AssertRefused(Bcow.Run("io", path, "-c", "write 0 4k"), path);
            AssertRefused(Bcow.Run("io", path, "-c", "read 0 4k"), path);
            AssertRefused(Bcow.Run("check", "--repair", path), path);
            AssertRefused(Bcow.Run("check", path), path);
            AssertRefused(Bcow.Run("info", path), path);
            AssertRefused(Bcow.Run("map", path), path);
            AssertRefused(Bcow.Run("flatten", path, dir.File("out")), path);
            AssertRefused(Bcow.Run("create", "--force", "--size", "1M", path), path);
            Assert.That(File.Exists(dir.File("out")), Is.False);

            var open = Assert.Throws<BCowFileInUseException>(() => BCowFile.Open(path).Dispose());
            Assert.That(open!.Message, Is.EqualTo($"{path}: {InUse}, which has it open for writing"));
            Assert.That(open.FilePath, Is.EqualTo(path));
            Assert.Throws<BCowFileInUseException>(() => BCowFile.Open(path, new BCowOpenOptions { ReadOnly = true }).Dispose());
            Assert.That(BCowChecker.Check(path, repair: true).Failure, Does.Contain(InUse));

            BcowResult info = Bcow.Run("info", "-U", path);
            Assert.That(info.ExitCode, Is.Zero, info.ToString());
            Assert.That(info.Out, Does.Contain("dirty: yes").And.Contain("read without a lock (-U)").And.Contain("may be inconsistent"));
            BcowResult json = Bcow.Run("info", "--force-share", "--json", path);
            Assert.That(json.Json.GetProperty("force-share").GetBoolean(), Is.True);
            BcowResult map = Bcow.Run("map", "-U", path);
            Assert.That(map.ExitCode, Is.Zero, map.ToString());
            Assert.That(map.Out, Does.Contain("may be inconsistent"));
            BcowResult check = Bcow.Run("check", "-U", path);
            Assert.That(check.ExitCode, Is.Not.EqualTo(1), check.ToString());
            Assert.That(check.Out, Does.Contain("may be inconsistent"));
            BcowResult both = Bcow.Run("check", "-U", "--repair", path);
            Assert.That(both.ExitCode, Is.EqualTo(1));
            Assert.That(both.Error, Does.Contain("cannot be combined"));

            using BCowFile shared = BCowFile.Open(path, new BCowOpenOptions { ReadOnly = true, ForceShare = true });
            Assert.That(shared.Length, Is.EqualTo(1 << 20));
            Assert.Throws<ArgumentException>(() => BCowFile.Open(path, new BCowOpenOptions { ForceShare = true }));
        });
    }

    /// <summary>The issue: <c>check --repair</c> while another process writes reclaimed that writer's uncommitted
    /// blocks as leaks (and the writer's next commit then pointed at holes). Now it is refused, and the writer's
    /// data survives.</summary>
    [Test]
    public void RepairWhileAnotherProcessWritesIsRefusedAndTheWritersDataSurvives()
    {
        using var dir = new TempDir();
        string path = ToolFiles.MakeStandalone(dir);
        const int sleepMs = 6000;
        var clock = System.Diagnostics.Stopwatch.StartNew();
        using BcowProcess writer = StartWriter(dir, path, sleepMs, "flush", "read -P 0x11 0 64k");
        clock.Restart();

        BcowResult repair = Bcow.Run("check", "--repair", path);
        if (clock.ElapsedMilliseconds > sleepMs - 1000)
        {
            Assert.Inconclusive("the machine was too slow to run the repair while the writer slept");
        }
        AssertRefused(repair, path);

        BcowResult finished = writer.WaitForExit();
        Assert.That(finished.ExitCode, Is.Zero, finished.ToString());
        Assert.That(finished.Out, Does.Not.Contain("Pattern verification failed"));
        Assert.That(Bcow.Run("io", path, "-c", "read -P 0x11 0 64k").Out, Does.Not.Contain("Pattern verification failed"));
        Checks.AssertClean(path);
    }

    [Test]
    public void AReaderInThisProcessKeepsOtherProcessesFromWritingButNotFromReading()
    {
        using var dir = new TempDir();
        string path = ToolFiles.MakeStandalone(dir);
        using (BCowFile reader = BCowFile.Open(path, new BCowOpenOptions { ReadOnly = true }))
        {
            AssertRefused(Bcow.RunProcess(dir.Path, "io", path, "-c", "write 0 4k"), path);
            BcowResult info = Bcow.RunProcess(dir.Path, "info", path);
            Assert.That(info.ExitCode, Is.Zero, info.ToString());
        }
        Assert.That(Bcow.RunProcess(dir.Path, "io", path, "-c", "write 0 4k").ExitCode, Is.Zero);
    }

    /// <summary>The overlay keeps a read-only view open while it opens the same file for writing: in one process a
    /// reader and one writer coexist, a second writer does not, and the kernel lock follows the strongest open.</summary>
    [Test]
    public void InOneProcessReadersCoexistWithOneWriterAndTheLockFollowsTheStrongestOpen()
    {
        using var dir = new TempDir();
        string path = ToolFiles.MakeStandalone(dir);
        using BCowFile reader = BCowFile.Open(path, new BCowOpenOptions { ReadOnly = true });
        using (BCowFile writer = BCowFile.Open(path))
        {
            var second = Assert.Throws<BCowFileInUseException>(() => BCowFile.Open(path).Dispose());
            Assert.That(second!.Message, Does.Contain("already open for writing in this process"));
            using (BCowFile another = BCowFile.Open(path, new BCowOpenOptions { ReadOnly = true }))
            {
                Assert.That(another.Length, Is.EqualTo(1 << 20));
            }
            AssertRefused(Bcow.RunProcess(dir.Path, "info", path), path); // the writer's exclusive lock
            writer.WriteAt(new byte[] { 1 }, 0);
        }
        // The writer closed: the reader's shared lock speaks for this process again.
        Assert.That(Bcow.RunProcess(dir.Path, "info", path).ExitCode, Is.Zero);
        AssertRefused(Bcow.RunProcess(dir.Path, "io", path, "-c", "write 0 4k"), path);
    }

    /// <summary>The overlay (and so a mount) locks the B-CoW files it opens as bcow does: a repair is refused while the
    /// overlay writes, and the overlay answers EBUSY for a file another process is writing.</summary>
    [Test]
    public void TheOverlayLocksTheBCowFilesItOpens()
    {
        using var fixture = new BAOverlay.Tests.FileSystem.OverlayFixture(lowers: 1);
        BAOverlay.Tests.FileSystem.OverlayFixture.WriteFile(Path.Combine(fixture.Lowers[0], "big"), new byte[1 << 20]);
        string upper = Path.Combine(fixture.Upper!, "big");
        using (BAOverlay.FileSystem.OverlayFileSystem fs = fixture.Open())
        {
            ulong ino = BAOverlay.Tests.FileSystem.OverlayFixture.Resolve(fs, "big").Ino;
            using (BAOverlay.FileSystem.OverlayHandle handle = fs.Open(ino, write: true, truncate: false))
            {
                handle.Write(new byte[] { 1 }, 0);
                AssertRefused(Bcow.RunProcess(fixture.Root, "check", "--repair", upper), upper);
            }
            Assert.That(Bcow.RunProcess(fixture.Root, "check", upper).ExitCode, Is.Zero, "clean once the overlay closed it");

            using var dir = new TempDir();
            using BcowProcess writer = StartWriter(dir, upper);
            var busy = Assert.Throws<BAOverlay.FileSystem.OverlayException>(() => fs.Open(ino, write: false, truncate: false).Dispose());
            Assert.That(busy!.Errno, Is.EqualTo(BAOverlay.FileSystem.OverlayErrno.EBUSY));
        }
    }
}
