namespace BAOverlay.Tool.Cli;

/// <summary>
/// <c>--json</c>, and qemu-img's spelling of the same, <c>--output=json</c> / <c>--output json</c> (with
/// <c>--output=human</c> for the default), so a qemu-img command line works unchanged.
/// </summary>
internal static class OutputFormat
{
    public static readonly OptionSpec Json = OptionSpec.Flag("--json");
    public static readonly OptionSpec Output = OptionSpec.Valued("FORMAT", "--output");

    public const string HelpLines = """
          --json, --output=json
                   print JSON (kebab-case names, as qemu-img --output=json);
                   --output=human is the default text
        """;

    /// <summary>True when JSON was asked for; the last of --json and --output wins, as getopt users expect.</summary>
    public static bool IsJson(ParsedArguments args)
    {
        string? output = args.Value("--output");
        if (output is not null and not "json" and not "human")
        {
            throw new UsageException($"--output must be 'json' or 'human', not '{output}'");
        }
        return output == "json" || (output is null && args.Has("--json"));
    }
}
