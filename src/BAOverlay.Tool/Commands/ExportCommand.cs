using BAOverlay.FileSystem;
using BAOverlay.Tool.Cli;

namespace BAOverlay.Tool.Commands;

/// <summary><c>bcow export</c>: an overlay's upper directory in a form container tools read (UpperExport).</summary>
internal sealed class ExportCommand : ICommand
{
    public string Name => "export";

    public string Summary => "write an overlay's upper layer as a kernel overlayfs upper directory or an OCI layer tar";

    public string Synopsis => "export [--tar] [--force] [--lowerdir DIR[:DIR...]] UPPER DEST | export --in-place --lowerdir DIR[:DIR...] --workdir WORK UPPER";

    public string Help => """
        Writes the upper directory UPPER of a BAOverlay overlay in a form other tools
        read: by default a plain kernel overlayfs upper directory DEST (B-CoW files
        written out with their merged content, sparse where it is zeros; whiteouts as
        0/0 character devices; opaque directories with trusted.overlay.opaque=y); with
        --tar, an OCI image layer tar DEST (whiteouts as .wh.NAME, opaque directories
        with .wh..wh..opq; '-' writes the tar to standard output). The overlay's own
        extended attributes are left out. docs/overlay-export.md has the details.

        A directory renamed out of a lower layer keeps its content in the lower layers
        under its old path; it is written out whole (as an opaque directory), which
        needs the overlay's lower directories: --lowerdir, highest first, separated by
        ':' as in overlay mount options. Without it such a directory fails the export.

        UPPER is read whole before anything is written: an unreadable path or a corrupt
        B-CoW file fails before DEST exists. The result is built under a temporary
        name and renamed to DEST when complete, so a failure or Ctrl+C never leaves a
        half-made DEST. An existing DEST is refused unless --force is given.

        A progress bar is drawn on standard error when it is a terminal. What could not
        be carried (an attribute the destination refused, ownership without root) is
        listed as warnings after the summary.

        With --in-place (switching to kernel overlayfs or fuse-overlayfs), UPPER itself
        becomes a plain overlayfs upper directory: each B-CoW file is replaced by a
        plain file with its merged content (read over the --lowerdir directories) and
        the same owner, mode, times and extended attributes; renamed directories get
        trusted.overlay.redirect, whiteouts and opaque directories the kernel's form
        (as root); the overlay's own attributes are removed. Each file is built in
        WORK (on UPPER's file system; the overlay's work directory) and renamed into
        place once on disk: after a crash or Ctrl+C, run the same command again to
        finish. Refused while UPPER is mounted or in use by another process.

        Options:
          --in-place convert UPPER where it is (needs --lowerdir and --workdir)
          --workdir WORK
                     the staging directory for --in-place
          --tar      write an OCI layer tar instead of a directory
          --force    replace an existing DEST
          --lowerdir DIR[:DIR...]
                     the overlay's lower directories, highest first

        Exit status: 0 written, 1 error, 130 interrupted.
        """;

    public IReadOnlyList<OptionSpec> Options { get; } =
        [OptionSpec.Flag("--tar"), OptionSpec.Flag("--force", "-f"), OptionSpec.Valued("DIR[:DIR...]", "--lowerdir"),
         OptionSpec.Flag("--in-place"), OptionSpec.Valued("WORK", "--workdir")];

    public int Run(ParsedArguments args, CommandContext context)
    {
        if (args.Has("--in-place"))
        {
            return RunInPlace(args, context);
        }
        if (args.Value("--workdir") is not null)
        {
            throw new UsageException("--workdir goes with --in-place");
        }
        Operands.Expect(args, "UPPER", "DEST");
        string upper = args.Operands[0];
        string destination = args.Operands[1];
        bool tar = args.Has("--tar");
        if (destination == "-" && !tar)
        {
            throw new UsageException("DEST '-' (standard output) needs --tar");
        }
        if (destination != "-" && !args.Has("--force") && Path.Exists(destination))
        {
            // The library refuses too (naming its Overwrite option); say it in the tool's terms, as create does.
            throw new IOException($"{Path.GetFullPath(destination)}: already exists (--force replaces it)");
        }
        var options = new UpperExportOptions
        {
            Overwrite = args.Has("--force"),
            LowerDirectories = args.Value("--lowerdir")?.Split(':', StringSplitOptions.RemoveEmptyEntries),
            CancellationToken = context.Cancellation,
        };
        UpperExportResult result = WithProgress(context, options, options =>
        {
            if (destination == "-")
            {
                using Stream stdout = Console.OpenStandardOutput();
                return UpperExport.ToOciTar(upper, stdout, options);
            }
            return tar ? UpperExport.ToOciTarFile(upper, destination, options) : UpperExport.ToDirectory(upper, destination, options);
        });
        // With the tar on standard output, the summary goes to standard error.
        TextWriter summary = destination == "-" ? context.Error : context.Out;
        summary.WriteLine($"exported {result.Files} entries, {result.Bytes} bytes of file content " +
            $"({result.MaterializedBCowFiles} B-CoW files written out, {result.Whiteouts} whiteouts, {result.OpaqueDirectories} opaque directories) to {destination}");
        foreach (string warning in result.Warnings)
        {
            context.Error.WriteLine($"bcow: warning: {warning}");
        }
        return 0;
    }

    private static int RunInPlace(ParsedArguments args, CommandContext context)
    {
        Operands.Expect(args, "UPPER");
        if (args.Has("--tar") || args.Has("--force"))
        {
            throw new UsageException("--in-place takes neither --tar nor --force");
        }
        string[] lowers = args.Value("--lowerdir")?.Split(':', StringSplitOptions.RemoveEmptyEntries)
            ?? throw new UsageException("--in-place needs --lowerdir: the B-CoW files' content is read over the lower directories");
        string work = args.Value("--workdir") ?? throw new UsageException("--in-place needs --workdir: each file is built there, on UPPER's file system");
        string upper = args.Operands[0];
        UpperExportResult result = WithProgress(context, new UpperExportOptions { CancellationToken = context.Cancellation },
            options => UpperExport.ToPlainInPlace(upper, lowers, work, options));
        context.Out.WriteLine($"converted {upper} in place: {result.MaterializedBCowFiles} B-CoW files ({result.Files} names, {result.Bytes} bytes) written out, " +
            $"{result.Whiteouts} whiteouts and {result.OpaqueDirectories} opaque directories put in the kernel's form");
        foreach (string warning in result.Warnings)
        {
            context.Error.WriteLine($"bcow: warning: {warning}");
        }
        return 0;
    }

    /// <summary>Runs an export with a progress bar on standard error when it is a terminal (made at the first report,
    /// which knows the total), completed on success and abandoned on failure.</summary>
    private static UpperExportResult WithProgress(CommandContext context, UpperExportOptions options, Func<UpperExportOptions, UpperExportResult> export)
    {
        ProgressBar? bar = null;
        if (context.ErrorIsTerminal)
        {
            options = options with
            {
                Progress = new Progress(report =>
                {
                    bar ??= new ProgressBar(context.Error, report.BytesTotal);
                    bar.Report(report.BytesDone);
                }),
            };
        }
        try
        {
            UpperExportResult result = export(options);
            bar?.Complete();
            return result;
        }
        catch
        {
            bar?.Abandon();
            throw;
        }
    }

    /// <summary>Reports on the calling thread: the export reports from the thread doing the work, and the bar is not thread-safe.</summary>
    private sealed class Progress(Action<UpperExportProgress> report) : IProgress<UpperExportProgress>
    {
        public void Report(UpperExportProgress value) => report(value);
    }
}
