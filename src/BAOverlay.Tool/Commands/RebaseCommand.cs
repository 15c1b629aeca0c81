using BAOverlay.Engine;
using BAOverlay.Tool.Cli;

namespace BAOverlay.Tool.Commands;

/// <summary><c>bcow rebase</c>: make a B-CoW file record another lower file, as qemu-img rebase (safe, or -u).</summary>
internal sealed class RebaseCommand : ICommand
{
    public string Name => "rebase";

    public string Summary => "make FILE record another lower file (copying what differs, or -u: only record it)";

    public string Synopsis => "rebase [-u] --lower NEW FILE";

    public string Help => """
        Makes FILE record NEW as its lower file, as qemu-img rebase does for a backing file.

        Safe (the default): the merged content of FILE does not change. For every block
        FILE does not hold wholly, where the old lower file and NEW read differently,
        the block's merged content is first copied into FILE; then NEW is recorded.
        This reads the old lower file, which must be there and unchanged (as FILE
        recorded it); if it is not, rebase refuses and says so: use -u.

        Unsafe (-u): only records NEW (its path and identity). For a lower file that was
        moved, copied or otherwise changed in identity while its content stayed the
        same, or to accept a changed lower file on purpose: blocks FILE does not hold
        then read NEW's bytes.

        Lower bytes stay hidden where FILE was shrunk: NEW is visible below the smaller
        of the old visible limit and NEW's size (for a FILE without a lower file, below
        the smaller of FILE's size and NEW's size).

        A relative NEW is recorded relative to FILE's folder, an absolute one as given.
        A crash during a safe rebase leaves FILE over its old lower file (with some
        blocks copied, the same content), or rebased: run it again.

        FILE is opened for writing: refused while another process has it open.
        A progress bar is drawn on standard error when it is a terminal (safe mode).

        Options:
          -l, --lower NEW
                        the new lower file (required)
          -u, --unsafe  only record NEW; do not compare or copy

        Exit status: 0 rebased, 1 error (nothing changed).
        """;

    public IReadOnlyList<OptionSpec> Options { get; } =
    [
        OptionSpec.Valued("NEW", "--lower", "-l"),
        OptionSpec.Flag("-u", "--unsafe"),
    ];

    public int Run(ParsedArguments args, CommandContext context)
    {
        Operands.Expect(args, "FILE");
        string lower = args.Value("--lower") ?? throw new UsageException("missing --lower NEW");
        if (lower.Length == 0)
        {
            throw new UsageException("--lower NEW may not be empty");
        }
        string path = args.Operands[0];
        bool safe = !args.Has("-u");
        ProgressBar? progress = null;
        try
        {
            Rebase.Run(path, lower, safe, context.ErrorIsTerminal
                ? (done, total) => (progress ??= new ProgressBar(context.Error, total)).Report(done)
                : null, context.Cancellation);
            progress?.Complete();
            return BcowCli.Success;
        }
        catch
        {
            progress?.Abandon();
            throw;
        }
    }
}
