using BAOverlay.Tool.Text;

namespace BAOverlay.Tool.Cli;

/// <summary>Checks shared by the verbs for their operands and option values, each failing as bad usage.</summary>
internal static class Operands
{
    public static void Expect(ParsedArguments args, params string[] names) => Expect(args, names.Length, names);

    /// <summary>Exactly the named operands, with the first <paramref name="required"/> of them mandatory.</summary>
    public static void Expect(ParsedArguments args, int required, params string[] names)
    {
        if (args.Operands.Count < required)
        {
            throw new UsageException($"missing {names[args.Operands.Count]}");
        }
        if (args.Operands.Count > names.Length)
        {
            throw new UsageException($"unexpected argument '{args.Operands[names.Length]}'");
        }
    }

    public static long Size(string text, string what) =>
        SizeParser.TryParse(text, out long bytes)
            ? bytes
            : throw new UsageException($"invalid {what} '{text}': expected bytes, 0x hex, or a number with a k, M, G, T, P or E suffix (powers of 1024)");
}
