using System.Globalization;
using BAOverlay.Tool.Cli;

namespace BAOverlay.Tool.Io;

/// <summary>The kinds of <c>-c</c> command <c>bcow io</c> understands.</summary>
internal enum IoKind
{
    Read,
    Write,
    Discard,
    Truncate,
    Flush,
    Wait,
    Length,
    Sleep,
}

/// <summary>
/// One <c>-c</c> command, parsed with qemu-io's syntax (<c>write -P 0xab 1000000 4k</c>). All commands are parsed
/// before the file is opened, so a typo in the third command does not leave the first two done.
/// </summary>
internal sealed record IoOperation(IoKind Kind, string Text, long Offset = 0, long Length = 0, byte? Pattern = null, bool Quiet = false, bool Verbose = false)
{
    /// <summary>qemu-io's default pattern for <c>write</c> without -P.</summary>
    public const byte DefaultWritePattern = 0xcd;

    /// <summary>Whether the file must be opened for writing. <c>wait</c> counts: on a read-only open there is no
    /// copier, and on a writable one it finishes the copy-ups an earlier session left.</summary>
    public bool Writes => Kind is not (IoKind.Read or IoKind.Length or IoKind.Sleep);

    public static readonly string Commands = """
          read [-P PATTERN] [-q] [-v] OFFSET LENGTH
                      read; with -P, verify every byte equals PATTERN; -v dumps the bytes
          write [-P PATTERN] [-q] OFFSET LENGTH
                      write PATTERN (default 0xcd, as qemu-io); grows the file if needed
          discard [-q] OFFSET LENGTH
                      punch a hole: the range reads as zeros, whole blocks are freed
          truncate SIZE
                      set the virtual size
          flush       commit: everything written so far becomes durable
          wait        wait until background copy-ups have filled their blocks
          length      print the virtual size
          sleep MILLISECONDS
                      pause, keeping FILE open (and locked), as qemu-io's sleep
        """;

    public static IoOperation Parse(string text)
    {
        string[] words = text.Split([' ', '\t'], StringSplitOptions.RemoveEmptyEntries);
        if (words.Length == 0)
        {
            throw new UsageException("-c: empty command");
        }
        try
        {
            return Parse(text, words[0], words[1..]);
        }
        catch (UsageException e)
        {
            throw new UsageException($"-c '{text}': {e.Message}");
        }
    }

    private static IoOperation Parse(string text, string name, string[] rest)
    {
        OptionSpec pattern = OptionSpec.Valued("PATTERN", "-P");
        OptionSpec quiet = OptionSpec.Flag("-q");
        OptionSpec verbose = OptionSpec.Flag("-v");
        switch (name)
        {
            case "read" or "r":
            {
                ParsedArguments args = ArgumentReader.Parse(rest, [pattern, quiet, verbose]);
                Operands.Expect(args, "OFFSET", "LENGTH");
                return new IoOperation(IoKind.Read, text, ParseOffset(args.Operands[0]), ParseLength(args.Operands[1]),
                    args.Value("-P") is { } p ? ParsePattern(p) : null, args.Has("-q"), args.Has("-v"));
            }
            case "write" or "w":
            {
                ParsedArguments args = ArgumentReader.Parse(rest, [pattern, quiet]);
                Operands.Expect(args, "OFFSET", "LENGTH");
                return new IoOperation(IoKind.Write, text, ParseOffset(args.Operands[0]), ParseLength(args.Operands[1]),
                    args.Value("-P") is { } p ? ParsePattern(p) : DefaultWritePattern, args.Has("-q"));
            }
            case "discard" or "d":
            {
                ParsedArguments args = ArgumentReader.Parse(rest, [quiet]);
                Operands.Expect(args, "OFFSET", "LENGTH");
                return new IoOperation(IoKind.Discard, text, ParseOffset(args.Operands[0]), ParseLength(args.Operands[1]), Quiet: args.Has("-q"));
            }
            case "truncate" or "t":
            {
                ParsedArguments args = ArgumentReader.Parse(rest, []);
                Operands.Expect(args, "SIZE");
                return new IoOperation(IoKind.Truncate, text, Length: Operands.Size(args.Operands[0], "size"));
            }
            case "flush" or "f" or "wait" or "length" or "l":
            {
                Operands.Expect(ArgumentReader.Parse(rest, []));
                IoKind kind = name switch { "wait" => IoKind.Wait, "length" or "l" => IoKind.Length, _ => IoKind.Flush };
                return new IoOperation(kind, text);
            }
            case "sleep":
            {
                ParsedArguments args = ArgumentReader.Parse(rest, []);
                Operands.Expect(args, "MILLISECONDS");
                return long.TryParse(args.Operands[0], NumberStyles.None, CultureInfo.InvariantCulture, out long ms) && ms <= int.MaxValue
                    ? new IoOperation(IoKind.Sleep, text, Length: ms)
                    : throw new UsageException($"invalid time '{args.Operands[0]}': expected milliseconds");
            }
            default:
                throw new UsageException($"unknown command '{name}' (known: read, write, discard, truncate, flush, wait, length, sleep)");
        }
    }

    private static long ParseOffset(string text) => Operands.Size(text, "offset");

    private static long ParseLength(string text) => Operands.Size(text, "length");

    /// <summary>A byte, as qemu-io takes it: decimal or 0x hex.</summary>
    private static byte ParsePattern(string text)
    {
        bool ok = text.StartsWith("0x", StringComparison.OrdinalIgnoreCase)
            ? byte.TryParse(text.AsSpan(2), NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out byte value)
            : byte.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out value);
        return ok ? value : throw new UsageException($"{text} is not a valid pattern byte");
    }
}
