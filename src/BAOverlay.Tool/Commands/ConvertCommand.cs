using BAOverlay.Tool.Cli;
using BAOverlay.Tool.Images;
using BAOverlay.Tool.Text;

namespace BAOverlay.Tool.Commands;

/// <summary><c>bcow convert</c>: an image of either kind to a plain or a B-CoW file, as qemu-img convert.</summary>
internal sealed class ConvertCommand : ICommand
{
    private const int ChunkSize = 1 << 20;

    // A raw output skips zero runs at this granularity, as flatten does: the allocation unit of common file systems.
    private const int DefaultBlockSize = 1 << 16;

    public string Name => "convert";

    public string Summary => "copy an image (raw or B-CoW) to a raw or B-CoW file, writing no zeros";

    public string Synopsis => "convert [-O raw|bcow] [--lower PATH] IN OUT";

    public string Help => """
        Writes the content of IN to OUT in the format -O names. IN may be a plain file
        or a B-CoW file (read as its merged content, through its lower file); the kind
        is told by the B-CoW magic, as qemu-img probes a format.

        Zeros are never written: a raw OUT has holes where the content reads as zeros
        (at 4 KiB granularity), a B-CoW OUT has no block there. With --lower, OUT is a
        B-CoW file over PATH holding only the blocks in which IN differs from PATH
        (blocks that are zeros in IN but not in PATH are marked zero, costing no space),
        as qemu-img convert -B. A B-CoW OUT has IN's block size when IN is a B-CoW
        file, else 64 KiB.

        The data goes to a new file named OUT.tmp-XXXXXXXX (a name no one else uses, in
        OUT's folder), which is flushed to disk and then renamed to OUT: a failure or
        Ctrl+C never leaves a half-written file under OUT (an existing OUT is replaced
        only on success), and no file convert did not make is touched. OUT may not be
        IN, IN's lower file or PATH.

        Options:
          -O FORMAT           raw (the default, as in qemu-img) or bcow
          -l, --lower PATH    with -O bcow: the lower file of OUT

        A progress bar is drawn on standard error when it is a terminal.

        Exit status: 0 written, 1 error, 130 interrupted (Ctrl+C; the temporary file is removed).
        """;

    public IReadOnlyList<OptionSpec> Options { get; } =
    [
        OptionSpec.Valued("FORMAT", "-O"),
        OptionSpec.Valued("PATH", "-l", "--lower"),
    ];

    public int Run(ParsedArguments args, CommandContext context)
    {
        Operands.Expect(args, "IN", "OUT");
        string format = OutputFormatOf(args);
        string? lower = args.Value("-l");
        if (lower is not null && format != "bcow")
        {
            throw new UsageException("--lower needs -O bcow: only a B-CoW file has a lower file");
        }
        string path = args.Operands[0];
        string output = args.Operands[1];
        RefuseOutput(output, path, "IN");
        if (lower is not null)
        {
            RefuseOutput(output, lower, "the lower file given");
        }
        using InputImage input = InputImage.Open(path);
        if (input.BCow?.GetInfo().LowerPath is { Length: > 0 } inputLower)
        {
            // Relative lower paths are recorded relative to the B-CoW file's folder.
            RefuseOutput(output, Path.GetFullPath(inputLower, Path.GetDirectoryName(Path.GetFullPath(path))!), "IN's lower file");
        }
        TemporaryOutput.RefuseDirectory(output);
        string temporary = TemporaryOutput.NameFor(output);
        ProgressBar? progress = context.ErrorIsTerminal ? new ProgressBar(context.Error, input.Length) : null;
        bool created = false;
        try
        {
            // Made here even for a B-CoW OUT, so that a folder that is missing or not writable is reported naming OUT.
            TemporaryOutput.Create(temporary, output).Dispose();
            created = true;
            if (format == "raw")
            {
                WriteRaw(input, temporary, progress, context.Cancellation);
            }
            else
            {
                WriteBCow(input, temporary, lower, progress, context.Cancellation);
            }
            File.Move(temporary, output, overwrite: true);
            progress?.Complete();
            return 0;
        }
        catch
        {
            progress?.Abandon();
            if (created)
            {
                TemporaryOutput.TryDelete(temporary);
            }
            throw;
        }
    }

    internal static string OutputFormatOf(ParsedArguments args) => args.Value("-O") switch
    {
        null or "raw" => "raw",
        "bcow" => "bcow",
        var other => throw new UsageException($"unknown output format '{other}': raw or bcow"),
    };

    /// <summary>The block size a B-CoW OUT gets: IN's, when IN has one.</summary>
    internal static int OutputBlockSize(InputImage? input) => input?.BCow?.BlockSize ?? DefaultBlockSize;

    private static void RefuseOutput(string output, string input, string what)
    {
        if (Path.GetFullPath(output) == Path.GetFullPath(input))
        {
            throw new UsageException($"OUT '{output}' is {what}; convert to another path");
        }
    }

    private static void WriteRaw(InputImage input, string temporary, ProgressBar? progress, CancellationToken cancellation)
    {
        using var stream = new FileStream(temporary, FileMode.Open, FileAccess.Write, FileShare.None);
        byte[] buffer = new byte[ChunkSize];
        InputImage.DataCursor data = input.Data();
        for (long position = 0; position < input.Length; position += ChunkSize)
        {
            cancellation.ThrowIfCancellationRequested();
            int want = (int)Math.Min(ChunkSize, input.Length - position);
            if (data.MayHoldData(position, position + want))
            {
                Span<byte> chunk = buffer.AsSpan(0, want);
                input.ReadExactly(chunk, position);
                SparseWrites.WriteNonZeroRuns(stream, chunk, position);
            }
            progress?.Report(position + want);
        }
        stream.SetLength(input.Length);
        stream.Flush(flushToDisk: true);
    }

    /// <summary>
    /// Writes IN's blocks into a new B-CoW file at <paramref name="temporary"/> (the empty file made for it), skipping
    /// every block the new file already reads right: zeros without a lower file, the lower file's own bytes with one.
    /// </summary>
    private static void WriteBCow(InputImage input, string temporary, string? lowerPath, ProgressBar? progress, CancellationToken cancellation)
    {
        int blockSize = OutputBlockSize(input);
        using InputImage? lower = lowerPath is null ? null : InputImage.Open(lowerPath);
        if (lower?.BCow is not null)
        {
            // The library refuses it too, but only after the temporary file is made; say it in the user's words.
            throw new IOException($"{lowerPath}: is a B-CoW file; a B-CoW file cannot be the lower file of another");
        }
        var options = new BCowCreateOptions
        {
            BlockSize = blockSize,
            VirtualSize = input.Length,
            // The lower path as the user typed it: the library records it relative to OUT's folder, which is also the
            // temporary file's, so the record stays right after the rename.
            LowerPath = lowerPath,
            Overwrite = true, // the empty file made for it a moment ago, never anyone else's
            // Every write here covers whole blocks, so nothing waits for a fill; synchronous mode keeps a partial last
            // block from being left to a background copier that closing would stop.
            Open = new BCowOpenOptions { CopyUpMode = CopyUpMode.Synchronous },
        };
        using BCowFile output = BCowFile.Create(temporary, options);
        byte[] buffer = new byte[ChunkSize];
        byte[]? lowerBuffer = lower is null ? null : new byte[ChunkSize];
        InputImage.DataCursor data = input.Data();
        InputImage.DataCursor? lowerData = lower?.Data();
        for (long position = 0; position < input.Length; position += ChunkSize)
        {
            cancellation.ThrowIfCancellationRequested();
            int want = (int)Math.Min(ChunkSize, input.Length - position);
            bool inputData = data.MayHoldData(position, position + want);
            bool lowerHasData = lowerData?.MayHoldData(position, position + want) ?? false;
            if (inputData || lowerHasData)
            {
                Span<byte> chunk = buffer.AsSpan(0, want);
                if (inputData)
                {
                    input.ReadExactly(chunk, position);
                }
                else
                {
                    chunk.Clear();
                }
                Span<byte> below = lowerHasData ? ReadLower(lower!, lowerBuffer!.AsSpan(0, want), position) : default;
                WriteBlocks(output, chunk, below, position, blockSize);
            }
            progress?.Report(position + want);
        }
        // Disposing commits durably (data, map, header, each fsynced) before the caller renames the file into place.
    }

    /// <summary>The lower file's bytes at <paramref name="position"/>; zeros past its end, as a B-CoW file reads them.</summary>
    private static Span<byte> ReadLower(InputImage lower, Span<byte> buffer, long position)
    {
        int available = (int)Math.Clamp(lower.Length - position, 0, buffer.Length);
        lower.ReadExactly(buffer[..available], position);
        buffer[available..].Clear();
        return buffer;
    }

    /// <summary>One decision per block: skip it (already right), mark it zero (over non-zero lower bytes), or write it.</summary>
    private static void WriteBlocks(BCowFile output, ReadOnlySpan<byte> chunk, ReadOnlySpan<byte> lower, long position, int blockSize)
    {
        for (int start = 0; start < chunk.Length; start += blockSize)
        {
            int length = Math.Min(blockSize, chunk.Length - start);
            ReadOnlySpan<byte> block = chunk.Slice(start, length);
            bool zero = block.IndexOfAnyExcept((byte)0) < 0;
            if (lower.IsEmpty)
            {
                if (!zero)
                {
                    output.WriteAt(block, position + start);
                }
                continue;
            }
            ReadOnlySpan<byte> below = lower.Slice(start, length);
            if (block.SequenceEqual(below))
            {
                continue;
            }
            if (zero)
            {
                output.PunchHole(position + start, length);
            }
            else
            {
                output.WriteAt(block, position + start);
            }
        }
    }
}
