using BAOverlay.Engine;
using BAOverlay.Tool.Cli;

namespace BAOverlay.Tool.Commands;

/// <summary><c>bcow commit</c>: write a B-CoW file's blocks into its lower file, as qemu-img commit.</summary>
internal sealed class CommitCommand : ICommand
{
    public string Name => "commit";

    public string Summary => "write FILE's blocks into its lower file, then empty FILE (-d: keep them)";

    public string Synopsis => "commit [-d] FILE";

    public string Help => """
        Writes what FILE holds (its blocks, and zeros where it reads as zeros) into its
        lower file, which is changed in place: you must own it and be allowed to write
        it. The lower file is flushed to disk; then FILE is emptied (every block reads
        from the lower file again, its space is freed) and records the lower file's new
        identity. The merged content of FILE stays the same; the lower file now has it.
        A lower file longer than FILE keeps its bytes beyond FILE's size; a shorter one
        is extended to FILE's size.

        Crash safety: FILE first records that a commit is under way. Until the commit
        ends FILE keeps its blocks, so the merged content never changes. A crash (or
        Ctrl+C) in the middle leaves the lower file partly written: FILE then refuses
        to open, saying so, until 'bcow commit FILE' is run again and finishes.

        Other B-CoW files made over the same lower file refuse it afterwards (its
        content changed): do not commit into a lower file that others use.

        FILE is opened for writing: refused while another process has it open.
        A progress bar is drawn on standard error when it is a terminal.

        Options:
          -d, --keep   keep FILE's blocks (do not empty it); it records the new identity

        Exit status: 0 committed, 1 error, 130 interrupted (run commit again to finish).
        """;

    public IReadOnlyList<OptionSpec> Options { get; } = [OptionSpec.Flag("-d", "--keep")];

    public int Run(ParsedArguments args, CommandContext context)
    {
        Operands.Expect(args, "FILE");
        string path = args.Operands[0];
        ProgressBar? progress = null;
        try
        {
            string lower = LowerCommit.Run(path, args.Has("-d"), context.ErrorIsTerminal
                ? (done, total) => (progress ??= new ProgressBar(context.Error, total)).Report(done)
                : null, context.Cancellation);
            progress?.Complete();
            // The library names the lower file by its full path; under the current folder, show it as typed there.
            string shown = Path.GetRelativePath(Environment.CurrentDirectory, lower);
            context.Out.WriteLine($"Image committed into {(shown.StartsWith("..", StringComparison.Ordinal) ? lower : shown)}.");
            return BcowCli.Success;
        }
        catch
        {
            progress?.Abandon();
            throw;
        }
    }
}
