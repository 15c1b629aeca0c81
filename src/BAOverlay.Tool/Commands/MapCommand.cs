using System.Globalization;
using BAOverlay.Tool.Cli;
using BAOverlay.Tool.Text;

namespace BAOverlay.Tool.Commands;

/// <summary><c>bcow map</c>: where each range of the merged file is read from, like qemu-img map.</summary>
internal sealed class MapCommand : ICommand
{
    public string Name => "map";

    public string Summary => "list the extents of the merged file: read from lower, upper, or zeros";

    public string Synopsis => "map [-U] [--json] FILE";

    public string Help => $$"""
        Lists the merged file as extents, in order, covering it from 0 to its virtual
        size: where each range is read from. Adjacent ranges from the same place are
        merged. Like info, map opens FILE read-only and without its lower file.

          lower   read from the lower file, at the same offset
          upper   read from FILE, at the offset in "Mapped to"
          zero    reads as zeros (a zero block, or past the end of the lower file)

        Offsets and lengths are printed in hex, as qemu-img map prints them.

        A file another process has open for writing is refused ("in use"), unless -U.

        Options:
        {{ForceShare.HelpLine}}
          --json, --output=json (qemu-img's spelling; --output=human is the default)
                   print a JSON array of {"start", "length", "source", "offset"};
                   source is "lower", "upper" or "zero"; offset (in FILE) only for upper.
                   With -U the warning goes to standard error, keeping the JSON whole.

        Exit status: 0 shown, 1 error.
        """;

    public IReadOnlyList<OptionSpec> Options { get; } = [OutputFormat.Json, OutputFormat.Output, ForceShare.Option];

    public int Run(ParsedArguments args, CommandContext context)
    {
        Operands.Expect(args, "FILE");
        string path = args.Operands[0];
        bool json = OutputFormat.IsJson(args);
        IReadOnlyList<BCowExtent> extents;
        string? lowerPath;
        using (BCowFile file = BCowFile.Open(path, ForceShare.InspectOptions(args)))
        {
            extents = file.GetExtents();
            lowerPath = file.GetInfo().LowerPath;
        }
        if (json)
        {
            if (ForceShare.Requested(args))
            {
                context.Error.WriteLine(ForceShare.Warning(path));
            }
            JsonOutput.Write(context.Out, json =>
            {
                json.WriteStartArray();
                foreach (BCowExtent extent in extents)
                {
                    json.WriteStartObject();
                    json.WriteNumber("start", extent.Offset);
                    json.WriteNumber("length", extent.Length);
                    json.WriteString("source", SourceName(extent.Source));
                    if (extent.Source == ExtentSource.Upper)
                    {
                        json.WriteNumber("offset", extent.UpperOffset);
                    }
                    json.WriteEndObject();
                }
                json.WriteEndArray();
            });
            return 0;
        }
        context.Out.WriteLine($"{"Offset",-15} {"Length",-15} {"Source",-7} {"Mapped to",-15} File");
        foreach (BCowExtent extent in extents)
        {
            (string mapped, string file) = extent.Source switch
            {
                ExtentSource.Upper => (Hex(extent.UpperOffset), path),
                ExtentSource.Lower => (Hex(extent.Offset), lowerPath ?? ""),
                _ => ("", ""),
            };
            context.Out.WriteLine($"{Hex(extent.Offset),-15} {Hex(extent.Length),-15} {SourceName(extent.Source),-7} {mapped,-15} {file}".TrimEnd());
        }
        if (ForceShare.Requested(args))
        {
            context.Out.WriteLine(ForceShare.Warning(path));
        }
        return 0;
    }

    private static string SourceName(ExtentSource source) => source switch
    {
        ExtentSource.Lower => "lower",
        ExtentSource.Upper => "upper",
        _ => "zero",
    };

    /// <summary>C's <c>%#x</c>, which qemu-img map uses: 0x-prefixed, except zero, which is plain <c>0</c>.</summary>
    private static string Hex(long value) => value == 0 ? "0" : "0x" + value.ToString("x", CultureInfo.InvariantCulture);
}
