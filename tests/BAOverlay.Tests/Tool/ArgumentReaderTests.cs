using BAOverlay.Tool.Cli;

namespace BAOverlay.Tests.Tool;

public class ArgumentReaderTests
{
    private static readonly OptionSpec[] s_specs =
    [
        OptionSpec.Valued("SIZE", "-s", "--size"),
        OptionSpec.Valued("COMMAND", "-c"),
        OptionSpec.Flag("-f", "--force"),
    ];

    [Test]
    public void OptionsMayComeBeforeOrAfterOperandsInEverySpelling()
    {
        ParsedArguments args = ArgumentReader.Parse(["a", "--size=4k", "-c", "read 0 1", "-cflush", "-f", "b"], s_specs);
        Assert.That(args.Operands, Is.EqualTo(new[] { "a", "b" }));
        Assert.That(args.Value("-s"), Is.EqualTo("4k"));
        Assert.That(args.Values("-c"), Is.EqualTo(new[] { "read 0 1", "flush" }));
        Assert.That(args.Has("-f"), Is.True);
    }

    [Test]
    public void LongAndShortNamesAreTheSameOptionAndTheLastValueWins()
    {
        ParsedArguments args = ArgumentReader.Parse(["-s", "1M", "--size", "2M", "--force"], s_specs);
        Assert.That(args.Value("-s"), Is.EqualTo("2M"));
        Assert.That(args.Has("-f"), Is.True);
    }

    [Test]
    public void DoubleDashEndsOptionsSoAFileMayStartWithADash()
    {
        ParsedArguments args = ArgumentReader.Parse(["-f", "--", "-weird-name", "--size"], s_specs);
        Assert.That(args.Operands, Is.EqualTo(new[] { "-weird-name", "--size" }));
        Assert.That(args.Has("-s"), Is.False);
    }

    [Test]
    public void ANegativeNumberIsAnOperandNotAnOption()
    {
        Assert.That(ArgumentReader.Parse(["-1"], s_specs).Operands, Is.EqualTo(new[] { "-1" }));
    }

    [TestCase(new[] { "--nope" }, "unknown option '--nope'")]
    [TestCase(new[] { "-x" }, "unknown option '-x'")]
    [TestCase(new[] { "-fx" }, "unknown option '-fx'")]
    [TestCase(new[] { "--size" }, "option '--size' needs a value (SIZE)")]
    [TestCase(new[] { "--force=yes" }, "option '--force' takes no value")]
    public void MistakesAreUsageErrorsThatSayWhatIsWrong(string[] args, string message)
    {
        var error = Assert.Throws<UsageException>(() => ArgumentReader.Parse(args, s_specs));
        Assert.That(error!.Message, Is.EqualTo(message));
    }
}
