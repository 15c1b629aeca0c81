using System.Formats.Tar;
using BAOverlay.FileSystem;
using BAOverlay.Tests.FileSystem;
using Mono.Unix.Native;

namespace BAOverlay.Tests.Tool;

/// <summary><c>bcow export</c>: the upper layer of an overlay as a directory or an OCI tar, through the tool.</summary>
public class ExportCommandTests
{
    private static OverlayFixture ChangedOverlay()
    {
        var f = new OverlayFixture();
        byte[] lower = new byte[2 << 20];
        new Random(7).NextBytes(lower);
        OverlayFixture.WriteFile(Path.Combine(f.Lowers[0], "big"), lower);
        OverlayFixture.WriteFile(Path.Combine(f.Lowers[0], "gone"), "x");
        using OverlayFileSystem fs = f.Open();
        OverlayFixture.WriteAt(fs, "big", 1000, "changed"u8.ToArray());
        fs.Unlink(OverlayFileSystem.RootIno, "gone");
        return f;
    }

    [Test]
    public void ExportToADirectoryWritesOutBCowFilesAndKeepsWhiteouts()
    {
        if (Syscall.geteuid() != 0)
        {
            Assert.Ignore("needs root: the overlay writes 0/0 character-device whiteouts");
        }
        using OverlayFixture f = ChangedOverlay();
        string dest = Path.Combine(f.Root, "exported");
        BcowResult result = Bcow.Run("export", f.Upper!, dest);
        Assert.That(result.ExitCode, Is.Zero, result.ToString());
        Assert.That(result.Out, Does.Contain("1 B-CoW files written out").And.Contain("1 whiteouts"));
        byte[] big = File.ReadAllBytes(Path.Combine(dest, "big"));
        Assert.That(System.Text.Encoding.UTF8.GetString(big, 1000, 7), Is.EqualTo("changed"));
        Assert.That(big, Has.Length.EqualTo(2 << 20));
        Assert.That(Syscall.lstat(Path.Combine(dest, "gone"), out Stat st), Is.Zero);
        Assert.That((st.st_mode & FilePermissions.S_IFMT) == FilePermissions.S_IFCHR && st.st_rdev == 0, Is.True, "a 0/0 whiteout");
        BcowResult refused = Bcow.Run("export", f.Upper!, dest);
        Assert.That(refused.ExitCode, Is.EqualTo(1), "an existing DEST is refused");
        Assert.That(refused.Error, Is.EqualTo($"bcow: {dest}: already exists (--force replaces it)\n"), "the tool's option, not the library's property");
        Assert.That(Bcow.Run("export", "--force", f.Upper!, dest).ExitCode, Is.Zero);
    }

    [Test]
    public void ExportToATarWritesOciWhiteouts()
    {
        if (Syscall.geteuid() != 0)
        {
            Assert.Ignore("needs root: the overlay writes 0/0 character-device whiteouts");
        }
        using OverlayFixture f = ChangedOverlay();
        string dest = Path.Combine(f.Root, "layer.tar");
        BcowResult result = Bcow.Run("export", "--tar", f.Upper!, dest);
        Assert.That(result.ExitCode, Is.Zero, result.ToString());
        var names = new List<string>();
        using (var reader = new TarReader(File.OpenRead(dest)))
        {
            while (reader.GetNextEntry() is { } entry)
            {
                names.Add(entry.Name);
            }
        }
        Assert.That(names, Does.Contain(".wh.gone").And.Contain("big"));
    }

    [Test]
    public void ADirectoryExportToStandardOutputIsAUsageError()
    {
        using var dir = new TempDir();
        BcowResult result = Bcow.Run("export", dir.Path, "-");
        Assert.That(result.ExitCode, Is.EqualTo(1));
        Assert.That(result.Error, Does.Contain("--tar"));
    }
    [Test]
    public void InPlaceExportTurnsTheUpperIntoAPlainOneAndARerunHasNothingToDo()
    {
        if (Syscall.geteuid() != 0)
        {
            Assert.Ignore("needs root: the overlay writes 0/0 character-device whiteouts");
        }
        using OverlayFixture f = ChangedOverlay();
        string lowers = string.Join(':', f.Lowers);
        BcowResult result = Bcow.Run("export", "--in-place", "--lowerdir", lowers, "--workdir", f.Work!, f.Upper!);
        Assert.That(result.ExitCode, Is.Zero, result.ToString());
        Assert.That(result.Out, Does.Contain("1 B-CoW files"));
        string big = Path.Combine(f.Upper!, "big");
        Assert.That(Syscall.lgetxattr(big, "user.baoverlay.bcow", out byte[] _), Is.EqualTo(-1), "a plain file now");
        Assert.That(System.Text.Encoding.UTF8.GetString(File.ReadAllBytes(big), 1000, 7), Is.EqualTo("changed"));
        BcowResult again = Bcow.Run("export", "--in-place", "--lowerdir", lowers, "--workdir", f.Work!, f.Upper!);
        Assert.That(again.Out, Does.Contain("0 B-CoW files"), again.ToString());
    }

    [TestCase("--lowerdir")]
    [TestCase("--workdir")]
    public void InPlaceExportNeedsTheLowerAndWorkDirectories(string missing)
    {
        using var dir = new TempDir();
        var args = new List<string> { "export", "--in-place" };
        if (missing != "--lowerdir")
        {
            args.AddRange(["--lowerdir", dir.Path]);
        }
        if (missing != "--workdir")
        {
            args.AddRange(["--workdir", dir.Path]);
        }
        args.Add(dir.Path);
        BcowResult result = Bcow.Run([.. args]);
        Assert.That(result.ExitCode, Is.EqualTo(1));
        Assert.That(result.Error, Does.Contain(missing));
    }
}
