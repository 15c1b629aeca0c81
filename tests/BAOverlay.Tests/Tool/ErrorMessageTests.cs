namespace BAOverlay.Tests.Tool;

/// <summary>Every verb names the file that failed and the errno's words, as the shell's tools do.</summary>
public class ErrorMessageTests
{
    /// <summary>A directory given as FILE was "Permission denied" (or, for check, "No such file or directory").</summary>
    [Test]
    public void ADirectoryGivenAsFileIsADirectoryForEveryVerb()
    {
        using var dir = new TempDir();
        string folder = dir.File("adir");
        Directory.CreateDirectory(folder);
        string expected = $"bcow: {folder}: Is a directory\n";
        Assert.Multiple(() =>
        {
            foreach (string[] args in new[]
            {
                new[] { "info", folder },
                ["map", folder],
                ["check", folder],
                ["check", "--repair", folder],
                ["io", folder, "-c", "read 0 1"],
                ["io", folder, "-c", "write 0 1"],
                ["create", "--size", "1M", folder],
                ["create", "--force", "--size", "1M", folder],
                ["flatten", folder, dir.File("out")],
            })
            {
                BcowResult result = Bcow.Run(args);
                Assert.That(result.ExitCode, Is.EqualTo(1), string.Join(' ', args));
                Assert.That(result.Error, Is.EqualTo(expected), string.Join(' ', args));
            }
            BcowResult lower = Bcow.Run("create", "--lower", folder, dir.File("x.bcow"));
            Assert.That(lower.Error, Is.EqualTo(expected), "a directory as the lower file");
            Assert.That(File.Exists(dir.File("x.bcow")), Is.False);
        });
        Assert.That(Directory.Exists(folder), Is.True, "the directory is untouched");
    }
}
