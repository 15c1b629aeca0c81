using BAOverlay.Tool.Cli;

namespace BAOverlay.Tool.Commands;

/// <summary><c>bcow flatten</c>: the merged content as a plain file, like qemu-img convert -O raw.</summary>
internal sealed class FlattenCommand : ICommand
{
    private const int ChunkSize = 1 << 20;

    // Zero runs are skipped at this granularity: the file system's allocation unit on common file systems, so a
    // skipped run is a hole there, and small enough that scattered zero pages in lower data still become holes.
    public string Name => "flatten";

    public string Summary => "write the merged content (lower + upper) as a plain, sparse file";

    public string Synopsis => "flatten FILE OUT";

    public string Help => """
        Writes the merged content of FILE (its lower file with FILE's blocks over it) to
        OUT as a plain file of the virtual size. Ranges that read as zeros (zero blocks,
        and any 4 KiB page that is all zeros, in lower data too) are not written, so
        OUT is sparse there.

        The data goes to a new file named OUT.tmp-XXXXXXXX (a name no one else uses, in
        OUT's folder), which is flushed to disk and then renamed to OUT: a failure or
        Ctrl+C never leaves a half-written file under OUT (an existing OUT is replaced
        only on success), and no file flatten did not make is touched. OUT may not be
        FILE or its lower file.

        A progress bar is drawn on standard error when it is a terminal.

        Exit status: 0 written, 1 error, 130 interrupted (Ctrl+C; the temporary file is removed).
        """;

    public IReadOnlyList<OptionSpec> Options { get; } = [];

    public int Run(ParsedArguments args, CommandContext context)
    {
        Operands.Expect(args, "FILE", "OUT");
        string path = args.Operands[0];
        string output = args.Operands[1];
        using BCowFile source = BCowFile.Open(path, new BCowOpenOptions { ReadOnly = true });
        RefuseToOverwriteInputs(path, source.GetInfo().LowerPath, output);
        TemporaryOutput.RefuseDirectory(output);
        string temporary = TemporaryOutput.NameFor(output);
        ProgressBar? progress = context.ErrorIsTerminal ? new ProgressBar(context.Error, source.Length) : null;
        bool created = false;
        try
        {
            using (FileStream stream = TemporaryOutput.Create(temporary, output))
            {
                created = true;
                Copy(source, stream, progress, context.Cancellation);
                stream.SetLength(source.Length);
                stream.Flush(flushToDisk: true);
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

    private static void Copy(BCowFile source, FileStream destination, ProgressBar? progress, CancellationToken cancellation)
    {
        byte[] buffer = new byte[ChunkSize];
        long done = 0;
        foreach (BCowExtent extent in source.GetExtents())
        {
            if (extent.Source == ExtentSource.Zero)
            {
                done += extent.Length;
                progress?.Report(done);
                continue;
            }
            for (long position = extent.Offset; position < extent.Offset + extent.Length;)
            {
                cancellation.ThrowIfCancellationRequested();
                int want = (int)Math.Min(ChunkSize, extent.Offset + extent.Length - position);
                int read = source.ReadAt(buffer.AsSpan(0, want), position);
                if (read < want)
                {
                    throw new IOException($"{source.Name}: ended at {position + read} while reading up to {position + want}; was it truncated while flattening?");
                }
                SparseWrites.WriteNonZeroRuns(destination, buffer.AsSpan(0, want), position);
                position += want;
                done += want;
                progress?.Report(done);
            }
        }
    }

    private static void RefuseToOverwriteInputs(string path, string? recordedLower, string output)
    {
        string target = Path.GetFullPath(output);
        if (target == Path.GetFullPath(path))
        {
            throw new UsageException($"OUT '{output}' is FILE itself; flatten to another path");
        }
        if (recordedLower is { Length: > 0 })
        {
            // Relative lower paths are recorded relative to the B-CoW file's folder.
            string lower = Path.GetFullPath(recordedLower, Path.GetDirectoryName(Path.GetFullPath(path))!);
            if (target == lower)
            {
                throw new UsageException($"OUT '{output}' is FILE's lower file; flatten to another path");
            }
        }
    }
}
