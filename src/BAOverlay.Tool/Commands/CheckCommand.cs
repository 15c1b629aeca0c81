using System.Globalization;
using BAOverlay.Checking;
using BAOverlay.Tool.Cli;
using BAOverlay.Tool.Text;

namespace BAOverlay.Tool.Commands;

/// <summary><c>bcow check</c>: the checker, with qemu-img check's report wording and exit codes.</summary>
internal sealed class CheckCommand : ICommand
{
    public string Name => "check";

    public string Summary => "check a B-CoW file for corruption and leaked space; --repair reclaims leaks";

    public string Synopsis => "check [--repair | -U] [--json] FILE";

    public string Help => $$"""
        Checks FILE as qemu-img check checks an image: both header slots, the root table,
        every map page and entry (checksums, states, ranges, overlaps), and space that
        holds data but is referenced by nothing (leaks, left by a crash). The lower file
        is not needed.

        A file another process has open for writing is not checked (its uncommitted
        blocks would look like leaks): exit 1, "in use". --repair also needs FILE
        not to be open anywhere else.

        Options:
          -r, --repair   reclaim leaked space and clear the dirty flag, then check again.
                         Only leaks are repaired; a corrupt file is left as it is.
        {{ForceShare.HelpLine}}
        {{OutputFormat.HelpLines}}
                   JSON fields, as qemu-img check's: filename, format, check-errors (0),
                   corruptions, leaks (counts), and after --repair corruptions-fixed and
                   leaks-fixed (the second check's counts are the others); and bcow's
                   own: leaked-bytes, errors (the ERROR lines), leaked-ranges [{offset,
                   length}], notes; with -U also "force-share": true. A file that cannot
                   be checked gives the one-line error, not JSON, as qemu-img does.

        Exit status, as qemu-img check:
          0  no errors (or every leak was repaired)
          1  the check could not be done (FILE cannot be opened or read)
          2  corruption found
          3  leaks found, no corruption
        """;

    public IReadOnlyList<OptionSpec> Options { get; } =
        [OptionSpec.Flag("-r", "--repair"), ForceShare.Option, OutputFormat.Json, OutputFormat.Output];

    public int Run(ParsedArguments args, CommandContext context)
    {
        Operands.Expect(args, "FILE");
        string path = args.Operands[0];
        bool forceShare = ForceShare.Requested(args);
        bool json = OutputFormat.IsJson(args);
        if (forceShare && args.Has("-r"))
        {
            throw new UsageException("--repair and -U cannot be combined: a repair needs the file to itself");
        }
        BCowCheckResult result = BCowChecker.Check(path, repair: args.Has("-r"), forceShare);
        BCowCheckResult? repair = null;
        if (result.Repaired)
        {
            repair = result;
            if (!json)
            {
                ReportRepair(context.Out, result);
            }
            result = BCowChecker.Check(path);
        }
        if (result.Failure is not null)
        {
            // The checker reports the framework's wording for a missing file; say it the way every other verb does.
            Exception problem = Path.Exists(path) ? new IOException(result.Failure) : new FileNotFoundException($"Could not find file '{path}'.");
            context.Error.WriteLine($"bcow: {ErrorMessages.Describe(problem, path)}");
            return result.ExitCode;
        }
        if (json)
        {
            WriteJson(context.Out, path, result, repair, forceShare);
            return result.ExitCode;
        }
        Report(context.Out, result);
        if (forceShare)
        {
            context.Out.WriteLine(ForceShare.Warning(path));
        }
        return result.ExitCode;
    }

    private static void ReportRepair(TextWriter output, BCowCheckResult result)
    {
        foreach (var (offset, length) in result.Leaks)
        {
            output.WriteLine(Invariant($"Repairing leaked data at offset 0x{offset:x}, {length} bytes"));
        }
        output.WriteLine("The following inconsistencies were found and repaired:");
        output.WriteLine();
        output.WriteLine(Invariant($"    {result.Leaks.Count} leaked ranges ({result.LeakedBytes} bytes)"));
        output.WriteLine("    0 corruptions");
        output.WriteLine("    the dirty flag is clear");
        output.WriteLine();
        output.WriteLine("Double checking the fixed file now...");
    }

    private static void Report(TextWriter output, BCowCheckResult result)
    {
        foreach (string corruption in result.Corruptions)
        {
            output.WriteLine($"ERROR {corruption}");
        }
        foreach (var (offset, length) in result.Leaks)
        {
            output.WriteLine(Invariant($"Leaked data at offset 0x{offset:x}, {length} bytes"));
        }
        if (result.Corruptions.Count > 0)
        {
            output.WriteLine();
            output.WriteLine(Invariant($"{result.Corruptions.Count} errors were found on the file."));
            output.WriteLine("Data may be corrupted, or further writes to the file may corrupt it.");
        }
        if (result.Leaks.Count > 0)
        {
            output.WriteLine();
            output.WriteLine(Invariant($"{result.Leaks.Count} leaked ranges ({result.LeakedBytes} bytes) were found on the file."));
            output.WriteLine("This means waste of disk space, but no harm to data.");
        }
        if (result.Corruptions.Count == 0 && result.Leaks.Count == 0)
        {
            output.WriteLine("No errors were found on the file.");
        }
        foreach (string note in result.Notes)
        {
            output.WriteLine($"Note: {note}");
        }
    }

    private static void WriteJson(TextWriter output, string path, BCowCheckResult result, BCowCheckResult? repair, bool forceShare) =>
        JsonOutput.Write(output, json =>
        {
            json.WriteStartObject();
            json.WriteString("filename", path);
            json.WriteString("format", "bcow");
            // qemu-img's check-errors counts checks that could not be done; such a result is reported as an error line.
            json.WriteNumber("check-errors", 0);
            json.WriteNumber("corruptions", result.Corruptions.Count);
            json.WriteNumber("leaks", result.Leaks.Count);
            if (repair is not null)
            {
                json.WriteNumber("corruptions-fixed", 0); // a repair never touches a corrupt file
                json.WriteNumber("leaks-fixed", repair.Leaks.Count);
            }
            json.WriteNumber("leaked-bytes", result.LeakedBytes);
            json.WriteStartArray("errors");
            foreach (string corruption in result.Corruptions)
            {
                json.WriteStringValue(corruption);
            }
            json.WriteEndArray();
            json.WriteStartArray("leaked-ranges");
            foreach (var (offset, length) in result.Leaks)
            {
                json.WriteStartObject();
                json.WriteNumber("offset", offset);
                json.WriteNumber("length", length);
                json.WriteEndObject();
            }
            json.WriteEndArray();
            json.WriteStartArray("notes");
            foreach (string note in result.Notes)
            {
                json.WriteStringValue(note);
            }
            json.WriteEndArray();
            if (forceShare)
            {
                json.WriteBoolean("force-share", true); // read without the lock: may be inconsistent
            }
            json.WriteEndObject();
        });

    private static string Invariant(FormattableString text) => text.ToString(CultureInfo.InvariantCulture);
}
