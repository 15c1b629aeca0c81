using System.Numerics;
using BAOverlay.Tool.Cli;
using BAOverlay.Tool.Images;
using BAOverlay.Tool.Text;

namespace BAOverlay.Tool.Commands;

/// <summary><c>bcow measure</c>: the space <c>bcow convert</c> would need for an image, as qemu-img measure.</summary>
internal sealed class MeasureCommand : ICommand
{
    // The B-CoW layout's sizes (docs/bcow-format.md); the library keeps its copies internal.
    private const long HeaderBytes = 8192;
    private const long PageSize = 4096;
    private const int EntrySize = 16;
    private const int BlocksPerL2Shift = 8;  // an L2 page holds 256 block entries
    private const int BlocksPerL1Shift = 16; // an L1 page points at 256 L2 pages

    public string Name => "measure";

    public string Summary => "show the space a convert to raw or B-CoW would need";

    public string Synopsis => "measure [-O raw|bcow] [--json] (IN | --size SIZE)";

    public string Help => $$"""
        Shows how much space "bcow convert -O FORMAT IN OUT" would need for OUT, as
        qemu-img measure prints it:

          required size: N          the file as convert writes it
          fully allocated size: N   the file once every block of it is written

        For -O raw both are the virtual size, as qemu-img says for raw (convert's raw
        output is sparse, so it takes less until its holes are written). For -O bcow,
        required counts the header, the root table, the map pages and a block for
        every block of IN that holds data (a B-CoW file's blocks and the ranges of its
        lower file that are not holes; a plain file's ranges that are not holes). A
        block of zeros that is allocated is counted, though convert would not write
        it: an upper bound, found without reading the data. The block size
        is IN's when IN is a B-CoW file, else 64 KiB, as convert chooses. With --size
        instead of IN, an empty image of that size is measured.

        Options:
          -O FORMAT        raw (the default) or bcow
          -s, --size SIZE  measure an empty image of SIZE instead of IN
        {{OutputFormat.HelpLines}}
                   JSON fields: required, fully-allocated (bytes)

        Exit status: 0 shown, 1 error.
        """;

    public IReadOnlyList<OptionSpec> Options { get; } =
    [
        OptionSpec.Valued("FORMAT", "-O"),
        OptionSpec.Valued("SIZE", "-s", "--size"),
        OutputFormat.Json,
        OutputFormat.Output,
    ];

    public int Run(ParsedArguments args, CommandContext context)
    {
        Operands.Expect(args, 0, "IN");
        string format = ConvertCommand.OutputFormatOf(args);
        bool json = OutputFormat.IsJson(args);
        string? sizeText = args.Value("-s");
        if (sizeText is not null && args.Operands.Count > 0)
        {
            throw new UsageException("IN and --size cannot be combined");
        }
        if (sizeText is null && args.Operands.Count == 0)
        {
            throw new UsageException("missing IN (or --size SIZE)");
        }
        (long required, long full) = sizeText is not null
            ? Measure(format, Operands.Size(sizeText, "size"), ConvertCommand.OutputBlockSize(null), [])
            : MeasureImage(format, args.Operands[0]);
        if (json)
        {
            JsonOutput.Write(context.Out, w =>
            {
                w.WriteStartObject();
                w.WriteNumber("required", required);
                w.WriteNumber("fully-allocated", full);
                w.WriteEndObject();
            });
        }
        else
        {
            context.Out.WriteLine(FormattableString.Invariant($"required size: {required}"));
            context.Out.WriteLine(FormattableString.Invariant($"fully allocated size: {full}"));
        }
        return 0;
    }

    private static (long Required, long Full) MeasureImage(string format, string path)
    {
        using InputImage input = InputImage.Open(path);
        return Measure(format, input.Length, ConvertCommand.OutputBlockSize(input), input.Data().Ranges);
    }

    private static (long Required, long Full) Measure(string format, long size, int blockSize, IReadOnlyList<(long Offset, long Length)> data)
    {
        if (format == "raw")
        {
            return (size, size);
        }
        int log2 = BitOperations.Log2((uint)blockSize);
        long blocks = (size + blockSize - 1) >> log2;
        long rootEntries = (blocks + (1L << BlocksPerL1Shift) - 1) >> BlocksPerL1Shift;
        long rootTable = Math.Max(PageSize, ((rootEntries * EntrySize) + PageSize - 1) & ~(PageSize - 1));
        long fixedPart = HeaderBytes + rootTable;
        long full = fixedPart
            + (rootEntries * PageSize)
            + (((blocks + (1L << BlocksPerL2Shift) - 1) >> BlocksPerL2Shift) * PageSize)
            + (blocks * blockSize);
        long required = fixedPart
            + (Distinct(data, log2 + BlocksPerL1Shift) * PageSize)
            + (Distinct(data, log2 + BlocksPerL2Shift) * PageSize)
            + (Distinct(data, log2) * blockSize);
        return (required, full);
    }

    /// <summary>How many distinct units of 2^<paramref name="shift"/> bytes the (sorted, disjoint) ranges touch.</summary>
    private static long Distinct(IReadOnlyList<(long Offset, long Length)> ranges, int shift)
    {
        long count = 0;
        long lastCounted = -1;
        foreach (var (offset, length) in ranges)
        {
            if (length <= 0)
            {
                continue;
            }
            long first = Math.Max(offset >> shift, lastCounted + 1);
            long last = (offset + length - 1) >> shift;
            if (first <= last)
            {
                count += last - first + 1;
                lastCounted = last;
            }
        }
        return count;
    }
}
