namespace BAOverlay.Tool.Cli;

/// <summary>
/// <c>-U</c>/<c>--force-share</c>, as qemu-img's: the reading verbs (info, map, check) may read a file another process
/// has open for writing, without taking the lock, and then say that what they show may be inconsistent.
/// </summary>
internal static class ForceShare
{
    public static readonly OptionSpec Option = OptionSpec.Flag("-U", "--force-share");

    public const string HelpLine = """
          -U, --force-share
                   read FILE even while another process has it open for writing (no
                   lock is taken, nothing is written); the output may then be inconsistent
        """;

    public static bool Requested(ParsedArguments args) => args.Has("-U");

    /// <summary>The open options of a read-only inspection.</summary>
    public static BCowOpenOptions InspectOptions(ParsedArguments args) =>
        new() { ReadOnly = true, WithoutLower = true, ForceShare = Requested(args) };

    /// <summary>The line that marks output read without the lock (on standard output, with the output it qualifies).</summary>
    public static string Warning(string path) =>
        $"warning: {path} was read without a lock (-U): if another process is writing it, this may be inconsistent";
}
