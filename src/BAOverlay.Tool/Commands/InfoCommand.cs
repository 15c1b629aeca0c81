using System.Globalization;
using BAOverlay.Tool.Cli;
using BAOverlay.Tool.Text;

namespace BAOverlay.Tool.Commands;

/// <summary><c>bcow info</c>: what qemu-img info tells about an image, for a B-CoW file.</summary>
internal sealed class InfoCommand : ICommand
{
    public string Name => "info";

    public string Summary => "show sizes, block size, lower file, blocks by state and the dirty flag";

    public string Synopsis => "info [-U] [--json] [--backing-chain] FILE";

    public string Help => $$"""
        Shows what FILE holds. The file is opened read-only and without its lower file,
        so info works on a file whose lower file is missing, and never changes anything
        (not even the dirty flag).

          virtual size   the size of the merged file
          disk size      bytes of FILE actually allocated on disk (holes excluded)
          block size     the copy-up and allocation unit
          lower file     the lower file as recorded (relative to FILE's folder)
          blocks         blocks by state: lower (read from the lower file, or zeros past
                         its end), zero (read as zeros, no space), present (wholly in
                         FILE), partial (in FILE in part; the rest still reads from lower
                         until the background copy-up fills it)
          dirty          yes if FILE was not closed cleanly (or is open now)

        A file another process has open for writing is refused ("in use"), unless -U.

        Options:
        {{ForceShare.HelpLine}}
          --backing-chain
                   also show every lower file below FILE, as qemu-img info --backing-chain:
                   a lower file that is itself a B-CoW file (a backing chain, read through its
                   own map) is shown in full, then its lower file, down to the plain file at
                   the bottom (file format: raw). Entries are separated by a blank line; with
                   --json, the output is an array of the entries, top first
          --json, --output=json (qemu-img's spelling; --output=human is the default)
                   print a JSON object with kebab-case names, as qemu-img --output=json:
                   virtual-size, block-size, lower-file, lower-size, allocated-bytes,
                   data-bytes, file-length, blocks {lower, zero, present, partial},
                   dirty, generation; with -U also "force-share": true

        Exit status: 0 shown, 1 error (not a B-CoW file, cannot be read).
        """;

    public IReadOnlyList<OptionSpec> Options { get; } = [OutputFormat.Json, OutputFormat.Output, ForceShare.Option, OptionSpec.Flag("--backing-chain")];

    public int Run(ParsedArguments args, CommandContext context)
    {
        Operands.Expect(args, "FILE");
        string path = args.Operands[0];
        if (args.Has("--backing-chain"))
        {
            return RunChain(path, args, context);
        }
        bool json = OutputFormat.IsJson(args);
        BCowInfo info;
        using (BCowFile file = BCowFile.Open(path, ForceShare.InspectOptions(args)))
        {
            info = file.GetInfo();
        }
        if (json)
        {
            WriteJson(context.Out, path, info, ForceShare.Requested(args));
        }
        else
        {
            WriteText(context.Out, path, info);
            if (ForceShare.Requested(args))
            {
                context.Out.WriteLine(ForceShare.Warning(path));
            }
        }
        return 0;
    }

    /// <summary>
    /// The chain from FILE down: each B-CoW member opened on its own (read-only, without its lower file, locked as
    /// info locks), its recorded lower path followed to the next. Guards as the library's chain open does: a loop or
    /// more than <see cref="BCowFile.MaxChainDepth"/> B-CoW files ends with an error.
    /// </summary>
    private static int RunChain(string path, ParsedArguments args, CommandContext context)
    {
        var entries = new List<(string Path, BCowInfo? Info, long RawSize)>();
        var seen = new HashSet<string>(StringComparer.Ordinal);
        string current = path;
        while (true)
        {
            string full = Path.GetFullPath(current);
            if (!seen.Add(full))
            {
                throw new BCowFormatException(entries[^1].Path, $"backing chain loop: {string.Join(" -> ", entries.Select(e => e.Path))} -> {current}");
            }
            bool bcow;
            using (var storage = new BAOverlay.Storage.FileStorage(current, FileMode.Open, FileAccess.Read))
            {
                bcow = BCowFile.IsBCowFile(storage);
                if (!bcow)
                {
                    entries.Add((current, null, storage.Length));
                    break;
                }
            }
            if (entries.Count == BCowFile.MaxChainDepth)
            {
                throw new BCowFormatException(path, $"the backing chain is deeper than {BCowFile.MaxChainDepth} B-CoW files");
            }
            BCowInfo info;
            using (BCowFile file = BCowFile.Open(current, ForceShare.InspectOptions(args)))
            {
                info = file.GetInfo();
            }
            entries.Add((current, info, 0));
            if (info.LowerPath is null)
            {
                break;
            }
            // Shown as recorded (relative to the member's folder), opened through the resolved path.
            string resolved = BCowFile.ResolveLowerPath(current, info.LowerPath);
            current = Path.IsPathRooted(info.LowerPath) ? info.LowerPath : Path.GetRelativePath(Environment.CurrentDirectory, resolved);
            if (current.StartsWith("..", StringComparison.Ordinal))
            {
                current = resolved;
            }
        }
        if (OutputFormat.IsJson(args))
        {
            JsonOutput.Write(context.Out, json =>
            {
                json.WriteStartArray();
                foreach (var (member, info, rawSize) in entries)
                {
                    if (info is null)
                    {
                        json.WriteStartObject();
                        json.WriteString("filename", member);
                        json.WriteString("format", "raw");
                        json.WriteNumber("virtual-size", rawSize);
                        json.WriteEndObject();
                    }
                    else
                    {
                        WriteJsonObject(json, member, info, ForceShare.Requested(args));
                    }
                }
                json.WriteEndArray();
            });
            return 0;
        }
        for (int i = 0; i < entries.Count; i++)
        {
            if (i > 0)
            {
                context.Out.WriteLine();
            }
            var (member, info, rawSize) = entries[i];
            if (info is null)
            {
                context.Out.WriteLine($"image: {member}");
                context.Out.WriteLine("file format: raw");
                context.Out.WriteLine($"virtual size: {SizeFormatter.HumanAndExact(rawSize)}");
            }
            else
            {
                WriteText(context.Out, member, info);
            }
        }
        if (ForceShare.Requested(args))
        {
            context.Out.WriteLine(ForceShare.Warning(path));
        }
        return 0;
    }

    private static void WriteText(TextWriter output, string path, BCowInfo info)
    {
        long blocks = info.BlocksLower + info.BlocksZero + info.BlocksPresent + info.BlocksPartial;
        output.WriteLine($"image: {path}");
        output.WriteLine("file format: bcow");
        output.WriteLine($"virtual size: {SizeFormatter.HumanAndExact(info.VirtualSize)}");
        output.WriteLine($"disk size: {SizeFormatter.HumanAndExact(info.AllocatedBytes)}");
        output.WriteLine($"block size: {SizeFormatter.HumanAndExact(info.BlockSize)}");
        if (info.LowerPath is not null)
        {
            output.WriteLine($"lower file: {info.LowerPath}");
            output.WriteLine($"lower size: {SizeFormatter.HumanAndExact(info.LowerSize)}");
            if (info.LowerLimit < info.LowerSize)
            {
                output.WriteLine($"lower bytes hidden from: {info.LowerLimit.ToString(CultureInfo.InvariantCulture)} (the file was shrunk)");
            }
        }
        output.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"blocks: {blocks} (lower {info.BlocksLower}, zero {info.BlocksZero}, present {info.BlocksPresent}, partial {info.BlocksPartial})"));
        output.WriteLine($"data size: {SizeFormatter.HumanAndExact(info.DataBytes)}");
        output.WriteLine($"file length: {SizeFormatter.HumanAndExact(info.FileLength)}");
        output.WriteLine($"dirty: {(info.Dirty ? "yes" : "no")}");
        output.WriteLine(string.Create(CultureInfo.InvariantCulture, $"generation: {info.Generation}"));
    }

    private static void WriteJson(TextWriter output, string path, BCowInfo info, bool forceShare) =>
        JsonOutput.Write(output, json => WriteJsonObject(json, path, info, forceShare));

    private static void WriteJsonObject(System.Text.Json.Utf8JsonWriter json, string path, BCowInfo info, bool forceShare)
    {
        json.WriteStartObject();
        json.WriteString("filename", path);
        json.WriteString("format", "bcow");
        json.WriteNumber("virtual-size", info.VirtualSize);
        json.WriteNumber("block-size", info.BlockSize);
        if (info.LowerPath is null)
        {
            json.WriteNull("lower-file");
        }
        else
        {
            json.WriteString("lower-file", info.LowerPath);
            json.WriteNumber("lower-size", info.LowerSize);
            json.WriteNumber("lower-limit", info.LowerLimit);
        }
        json.WriteNumber("allocated-bytes", info.AllocatedBytes);
        json.WriteNumber("data-bytes", info.DataBytes);
        json.WriteNumber("file-length", info.FileLength);
        json.WriteStartObject("blocks");
        json.WriteNumber("lower", info.BlocksLower);
        json.WriteNumber("zero", info.BlocksZero);
        json.WriteNumber("present", info.BlocksPresent);
        json.WriteNumber("partial", info.BlocksPartial);
        json.WriteEndObject();
        json.WriteBoolean("dirty", info.Dirty);
        json.WriteNumber("generation", info.Generation);
        if (forceShare)
        {
            json.WriteBoolean("force-share", true); // read without the lock: may be inconsistent
        }
        json.WriteEndObject();
    }
}
