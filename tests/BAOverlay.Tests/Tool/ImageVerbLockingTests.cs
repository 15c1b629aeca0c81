namespace BAOverlay.Tests.Tool;

/// <summary>
/// convert, compare, measure and resize against a B-CoW file another process has open for writing (a real
/// <c>bcow io ... -c "sleep N"</c> process, since OFD locks are per open): all refuse it at once in one line, and
/// resize, the one that writes, also refuses a file another process only reads.
/// </summary>
[Platform("Linux")]
public class ImageVerbLockingTests
{
    private const string InUse = "the file is in use by another process";

    [Test]
    public void EveryImageVerbRefusesAFileAnotherProcessWrites()
    {
        using var dir = new TempDir();
        string path = ToolFiles.MakeStandalone(dir);
        string other = ToolFiles.MakeStandalone(dir, "other.bcow");
        using (BcowProcess writer = Bcow.Start(dir.Path, "io", path, "-c", "write -P 0x11 0 64k", "-c", "sleep 60000"))
        {
            writer.WaitForLine("wrote ");
            Assert.Multiple(() =>
            {
                AssertRefused(Bcow.Run("convert", path, dir.File("out")), path, exit: 1);
                AssertRefused(Bcow.Run("convert", "-O", "bcow", path, dir.File("out")), path, exit: 1);
                AssertRefused(Bcow.Run("compare", other, path), path, exit: 2);
                AssertRefused(Bcow.Run("measure", "-O", "bcow", path), path, exit: 1);
                AssertRefused(Bcow.Run("resize", path, "2M"), path, exit: 1);
                Assert.That(Directory.GetFiles(dir.Path, "out*"), Is.Empty, "convert made nothing");
            });
        }
        // The writer was killed before its close: the size its session committed last is what is on disk.
        Assert.That(Bcow.Run("info", "--json", path).Json.GetProperty("virtual-size").GetInt64(), Is.EqualTo(1L << 20), "not resized");
    }

    [Test]
    public void ResizeRefusesAFileAnotherProcessReads()
    {
        using var dir = new TempDir();
        string path = ToolFiles.MakeStandalone(dir);
        using BcowProcess reader = Bcow.Start(dir.Path, "io", path, "-c", "read 0 4k", "-c", "sleep 60000");
        reader.WaitForLine("read ");
        AssertRefused(Bcow.Run("resize", path, "2M"), path, exit: 1);
        Assert.That(Bcow.Run("compare", path, path).ExitCode, Is.Zero, "readers share");
    }

    private static void AssertRefused(BcowResult result, string path, int exit)
    {
        Assert.That(result.ExitCode, Is.EqualTo(exit), result.ToString());
        Assert.That(result.Error, Does.StartWith($"bcow: {path}: {InUse}"), result.ToString());
        Assert.That(result.Error.TrimEnd('\n'), Does.Not.Contain("\n"), "one line");
    }
}
