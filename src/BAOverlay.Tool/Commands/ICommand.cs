using BAOverlay.Tool.Cli;

namespace BAOverlay.Tool.Commands;

/// <summary>A verb of <c>bcow</c>. Its help text lives with its code, so the two are changed together and stay true.</summary>
internal interface ICommand
{
    /// <summary>The verb as typed: <c>create</c>.</summary>
    string Name { get; }

    /// <summary>One line for the overall help.</summary>
    string Summary { get; }

    /// <summary>The synopsis after <c>bcow </c>: <c>create [-b BLOCKSIZE] ... FILE</c>.</summary>
    string Synopsis { get; }

    /// <summary>The rest of <c>bcow help VERB</c>: what it does, its options, its exit codes.</summary>
    string Help { get; }

    IReadOnlyList<OptionSpec> Options { get; }

    /// <summary>The file error messages name when an exception does not say which file it concerns.</summary>
    string? Subject(ParsedArguments args) => args.Operands.Count > 0 ? args.Operands[0] : null;

    /// <summary>
    /// The exit status of an error or a wrong command line: 1, except for a verb whose 1 already means an answer
    /// (<c>compare</c>: 1 is "different", so its errors are 2, as qemu-img compare's).
    /// </summary>
    int ErrorExitCode => BcowCli.Failure;

    /// <summary>Runs the verb; returns the exit code. Throws <see cref="UsageException"/> for a wrong command line.</summary>
    int Run(ParsedArguments args, CommandContext context);
}
