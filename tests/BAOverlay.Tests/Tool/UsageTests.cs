namespace BAOverlay.Tests.Tool;

/// <summary>Help, version and the answers to a wrong command line.</summary>
public class UsageTests
{
    private static readonly string[] s_verbs = ["create", "info", "map", "check", "flatten", "io", "convert", "compare", "resize", "measure"];

    [TestCase("--help")]
    [TestCase("-h")]
    [TestCase("help")]
    public void OverallHelpListsEveryVerbAndExitsZero(string flag)
    {
        BcowResult result = Bcow.Run(flag);
        Assert.That(result.ExitCode, Is.Zero);
        Assert.That(result.Error, Is.Empty);
        foreach (string verb in s_verbs)
        {
            Assert.That(result.Out, Does.Contain($"  bcow {verb} "), verb);
        }
    }

    [TestCaseSource(nameof(s_verbs))]
    public void EachVerbHasHelpBothWays(string verb)
    {
        BcowResult viaHelp = Bcow.Run("help", verb);
        BcowResult viaFlag = Bcow.Run(verb, "--help");
        Assert.That(viaHelp.ExitCode, Is.Zero);
        Assert.That(viaHelp.Out, Does.StartWith($"Usage: bcow {verb} "));
        Assert.That(viaFlag.Out, Is.EqualTo(viaHelp.Out));
        Assert.That(Bcow.Run(verb, "-h").Out, Is.EqualTo(viaHelp.Out));
    }

    [Test]
    public void CreateHelpNamesEveryOptionTheParserAccepts()
    {
        string help = Bcow.Run("help", "create").Out;
        foreach (string option in new[] { "-b", "--block-size", "-l", "--lower", "-s", "--size", "-f", "--force" })
        {
            Assert.That(help, Does.Contain(option), option);
        }
    }

    [Test]
    public void VersionNamesTheToolAndExitsZero()
    {
        BcowResult result = Bcow.Run("--version");
        Assert.That(result.ExitCode, Is.Zero);
        Assert.That(result.Out, Does.Match(@"^bcow version \d+\.\d+\.\d+"));
    }

    [Test]
    public void NoArgumentsIsBadUsage()
    {
        BcowResult result = Bcow.Run();
        Assert.That(result.ExitCode, Is.EqualTo(1));
        Assert.That(result.Out, Is.Empty);
        Assert.That(result.Error, Does.StartWith("bcow: no command given\nUsage: bcow "));
    }

    [TestCase(new[] { "frobnicate" }, "bcow: unknown command 'frobnicate'")]
    [TestCase(new[] { "--frob" }, "bcow: unknown option '--frob'")]
    [TestCase(new[] { "info" }, "bcow: info: missing FILE")]
    [TestCase(new[] { "info", "a", "b" }, "bcow: info: unexpected argument 'b'")]
    [TestCase(new[] { "info", "--jsn", "a" }, "bcow: info: unknown option '--jsn'")]
    [TestCase(new[] { "info", "--json=yes", "a" }, "bcow: info: option '--json' takes no value")]
    [TestCase(new[] { "create", "x.bcow" }, "bcow: create: a size is needed without --lower")]
    [TestCase(new[] { "create", "--size" }, "bcow: create: option '--size' needs a value (SIZE)")]
    [TestCase(new[] { "create", "--size", "12q", "x.bcow" }, "bcow: create: invalid size '12q'")]
    [TestCase(new[] { "create", "-b", "3k", "--size", "1M", "x.bcow" }, "bcow: create: invalid block size '3k'")]
    [TestCase(new[] { "create", "--size", "1M", "x.bcow", "2M" }, "bcow: create: the size is given twice")]
    [TestCase(new[] { "flatten", "x.bcow" }, "bcow: flatten: missing OUT")]
    [TestCase(new[] { "io", "x.bcow" }, "bcow: io: no command")]
    [TestCase(new[] { "io", "x.bcow", "-c", "scribble 0 1" }, "bcow: io: -c 'scribble 0 1': unknown command 'scribble'")]
    [TestCase(new[] { "io", "x.bcow", "-c", "read 0" }, "bcow: io: -c 'read 0': missing LENGTH")]
    [TestCase(new[] { "io", "x.bcow", "-c", "write -P 256 0 1" }, "bcow: io: -c 'write -P 256 0 1': 256 is not a valid pattern byte")]
    [TestCase(new[] { "io", "x.bcow", "-c", "write -X 0 1" }, "bcow: io: -c 'write -X 0 1': unknown option '-X'")]
    [TestCase(new[] { "io", "x.bcow", "-c", "truncate -1" }, "bcow: io: -c 'truncate -1': invalid size '-1'")]
    [TestCase(new[] { "help", "frob" }, "bcow: no help for 'frob'")]
    public void BadUsageExitsOneWithTheProblemAndAUsageHint(string[] args, string problem)
    {
        BcowResult result = Bcow.Run(args);
        Assert.That(result.ExitCode, Is.EqualTo(1), result.ToString());
        Assert.That(result.Out, Is.Empty);
        string[] lines = result.Error.TrimEnd('\n').Split('\n');
        Assert.That(lines, Has.Length.EqualTo(2), result.Error);
        Assert.That(lines[0], Does.StartWith(problem));
        Assert.That(lines[1], Does.StartWith("Usage: bcow "));
    }

    [Test]
    public void BadUsageInIoTouchesNoFileBecauseCommandsAreCheckedFirst()
    {
        using var dir = new TempDir();
        string path = ToolFiles.MakeStandalone(dir);
        BcowResult result = Bcow.Run("io", path, "-c", "write -P 0x11 0 4k", "-c", "write 0 nonsense");
        Assert.That(result.ExitCode, Is.EqualTo(1));
        Assert.That(Bcow.Run("io", path, "-c", "read -P 0 0 4k").ExitCode, Is.Zero, "the first write must not have run");
        Checks.AssertClean(path);
    }

    [Test]
    public void ANonBCowFileGivesOneLineNamingTheFile()
    {
        using var dir = new TempDir();
        string path = dir.File("plain.img");
        File.WriteAllBytes(path, new byte[10_000]);
        BcowResult result = Bcow.Run("info", path);
        Assert.That(result.ExitCode, Is.EqualTo(1));
        Assert.That(result.Out, Is.Empty);
        Assert.That(result.Error, Does.Match($"^bcow: {System.Text.RegularExpressions.Regex.Escape(path)}: .+\n$"));
    }

    [Test]
    public void AMissingFileGivesOneLineNamingItAsTyped()
    {
        using var dir = new TempDir();
        string path = dir.File("missing.bcow");
        BcowResult result = Bcow.Run("info", path);
        Assert.That(result.ExitCode, Is.EqualTo(1));
        Assert.That(result.Error, Is.EqualTo($"bcow: {path}: No such file or directory\n"));
    }

    [Test]
    public void DebugAddsTheStackTraceAndOnlyThen()
    {
        using var dir = new TempDir();
        string path = dir.File("plain.img");
        File.WriteAllBytes(path, new byte[10_000]);
        Assert.That(Bcow.Run("info", path).Error, Does.Not.Contain("   at "));
        BcowResult debug = Bcow.Run("--debug", "info", path);
        Assert.That(debug.ExitCode, Is.EqualTo(1));
        Assert.That(debug.Error, Does.Contain("BCowFormatException").And.Contain("   at "));
        Assert.That(Bcow.Run("info", path, "--debug").Error, Does.Contain("   at "), "--debug is accepted after the verb too");
    }

    [Test]
    public void CreateRefusesToReplaceAFileUnlessForced()
    {
        using var dir = new TempDir();
        string path = ToolFiles.MakeStandalone(dir);
        BcowResult again = Bcow.Run("create", "--size", "2M", path);
        Assert.That(again.ExitCode, Is.EqualTo(1));
        Assert.That(again.Error, Is.EqualTo($"bcow: {path}: already exists (--force replaces it)\n"));
        BcowResult forced = Bcow.Run("create", "--force", "--size", "2M", path);
        Assert.That(forced.ExitCode, Is.Zero, forced.ToString());
        Assert.That(Bcow.Run("info", "--json", path).Json.GetProperty("virtual-size").GetInt64(), Is.EqualTo(2L << 20));
        Checks.AssertClean(path);
    }

    [Test]
    public void CreateOverAMissingLowerFileLeavesNothingBehind()
    {
        using var dir = new TempDir();
        string path = dir.File("x.bcow");
        BcowResult result = Bcow.Run("create", "--lower", dir.File("nope.img"), path);
        Assert.That(result.ExitCode, Is.EqualTo(1));
        Assert.That(result.Error, Does.Contain("nope.img").And.Contain("not found"));
        Assert.That(File.Exists(path), Is.False);
    }
}
