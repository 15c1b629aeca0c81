using System.Reflection;
using BAOverlay.Tool.Cli;
using BAOverlay.Tool.Commands;

namespace BAOverlay.Tool;

/// <summary>
/// The <c>bcow</c> command line: global options, the verbs, and turning failures into one line and an exit code.
/// Everything goes through <see cref="Run(string[], TextWriter, TextWriter, bool, CancellationToken)"/> so tests
/// run the real tool in-process.
/// </summary>
internal static class BcowCli
{
    public const int Success = 0;
    public const int Failure = 1;

    /// <summary>The exit code for Ctrl+C, as shells report a process ended by SIGINT.</summary>
    public const int Interrupted = 130;

    private static readonly ICommand[] s_commands =
    [
        new CreateCommand(),
        new InfoCommand(),
        new MapCommand(),
        new CheckCommand(),
        new FlattenCommand(),
        new IoCommand(),
        new ExportCommand(),
        new ConvertCommand(),
        new CompareCommand(),
        new ResizeCommand(),
        new MeasureCommand(),
        new RebaseCommand(),
        new CommitCommand(),
        new StoreCommand(),
    ];

    public static int Run(string[] args, TextWriter stdout, TextWriter stderr) =>
        Run(args, stdout, stderr, errorIsTerminal: false, CancellationToken.None);

    public static int Run(string[] args, TextWriter stdout, TextWriter stderr, bool errorIsTerminal, CancellationToken cancellation)
    {
        // --debug is global and may appear anywhere before "--", so no verb has to know about it.
        int end = Array.IndexOf(args, "--") is var dashes and >= 0 ? dashes : args.Length;
        bool debug = args[..end].Contains("--debug");
        List<string> rest = args[..end].Where(a => a != "--debug").Concat(args[end..]).ToList();

        if (rest.Count == 0)
        {
            return UsageError(stderr, null, "no command given");
        }
        string first = rest[0];
        if (first is "--help" or "-h" or "help")
        {
            if (rest.Count == 1)
            {
                WriteOverallHelp(stdout);
                return Success;
            }
            ICommand? topic = Find(rest[1]);
            if (topic is null)
            {
                return UsageError(stderr, null, $"no help for '{rest[1]}': not a command");
            }
            WriteHelp(stdout, topic);
            return Success;
        }
        if (first == "--version")
        {
            WriteVersion(stdout);
            return Success;
        }
        if (first.StartsWith('-'))
        {
            return UsageError(stderr, null, $"unknown option '{first}'");
        }
        ICommand? command = Find(first);
        if (command is null)
        {
            return UsageError(stderr, null, $"unknown command '{first}'");
        }
        List<string> verbArgs = rest[1..];
        int verbEnd = verbArgs.IndexOf("--") is var d and >= 0 ? d : verbArgs.Count;
        if (verbArgs[..verbEnd].Any(a => a is "--help" or "-h"))
        {
            WriteHelp(stdout, command);
            return Success;
        }

        var context = new CommandContext(stdout, stderr, errorIsTerminal, cancellation);
        ParsedArguments? parsed = null;
        try
        {
            parsed = ArgumentReader.Parse(verbArgs, command.Options);
            return command.Run(parsed, context);
        }
        catch (UsageException e)
        {
            UsageError(stderr, command, e.Message);
            return command.ErrorExitCode;
        }
        catch (OperationCanceledException) when (cancellation.IsCancellationRequested)
        {
            stderr.WriteLine("bcow: interrupted");
            return Interrupted;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException or NotSupportedException)
        {
            Fail(stderr, e, parsed is null ? null : command.Subject(parsed), debug, internalError: false);
            return command.ErrorExitCode;
        }
        catch (Exception e)
        {
            Fail(stderr, e, parsed is null ? null : command.Subject(parsed), debug, internalError: true);
            return command.ErrorExitCode;
        }
        finally
        {
            stdout.Flush();
            stderr.Flush();
        }
    }

    private static ICommand? Find(string name) => s_commands.FirstOrDefault(c => c.Name == name);

    private static int Fail(TextWriter stderr, Exception e, string? subject, bool debug, bool internalError)
    {
        string message = ErrorMessages.Describe(e, subject);
        stderr.WriteLine(internalError
            ? $"bcow: internal error: {e.GetType().Name}: {message}{(debug ? "" : " (run with --debug for details)")}"
            : $"bcow: {message}");
        if (debug)
        {
            stderr.WriteLine(e.ToString());
        }
        return Failure;
    }

    private static int UsageError(TextWriter stderr, ICommand? command, string problem)
    {
        if (command is null)
        {
            stderr.WriteLine($"bcow: {problem}");
            stderr.WriteLine("Usage: bcow COMMAND [OPTIONS] FILE...   Try 'bcow --help'.");
        }
        else
        {
            stderr.WriteLine($"bcow: {command.Name}: {problem}");
            stderr.WriteLine($"Usage: bcow {command.Synopsis}   Try 'bcow help {command.Name}'.");
        }
        return Failure;
    }

    private static void WriteOverallHelp(TextWriter stdout)
    {
        stdout.WriteLine("bcow: create, inspect, check, convert, compare, resize, rebase, commit, flatten and exercise B-CoW overlay files; share layers between hosts (store).");
        stdout.WriteLine();
        stdout.WriteLine("Usage: bcow [--debug] COMMAND [OPTIONS] FILE...");
        stdout.WriteLine();
        stdout.WriteLine("Commands:");
        foreach (ICommand command in s_commands)
        {
            stdout.WriteLine($"  {command.Name,-9}{command.Summary}");
        }
        stdout.WriteLine();
        stdout.WriteLine("Synopses:");
        foreach (ICommand command in s_commands)
        {
            stdout.WriteLine($"  bcow {command.Synopsis}");
        }
        stdout.WriteLine();
        stdout.WriteLine("Global options:");
        stdout.WriteLine("  -h, --help     this help; 'bcow help COMMAND' or 'bcow COMMAND --help' for one command");
        stdout.WriteLine("  --version      the version");
        stdout.WriteLine("  --debug        on an error, print the exception with its stack trace as well");
        stdout.WriteLine();
        stdout.WriteLine("Sizes and offsets: bytes, 0x hex, or a number with k, M, G, T, P or E (powers of 1024).");
        stdout.WriteLine("Errors are one line on standard error, 'bcow: FILE: problem', with exit status 1");
        stdout.WriteLine("(check and compare have their own exit statuses, as qemu-img check and compare).");
    }

    private static void WriteHelp(TextWriter stdout, ICommand command)
    {
        stdout.WriteLine($"Usage: bcow {command.Synopsis}");
        stdout.WriteLine();
        stdout.WriteLine(command.Help.TrimEnd());
    }

    private static void WriteVersion(TextWriter stdout)
    {
        Assembly assembly = typeof(BcowCli).Assembly;
        string version = assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion
            ?? assembly.GetName().Version?.ToString() ?? "unknown";
        // The SDK appends "+<commit>"; show it as qemu shows its build details, in parentheses.
        int plus = version.IndexOf('+');
        string shown = plus < 0 ? version : $"{version[..plus]} ({version[(plus + 1)..]})";
        stdout.WriteLine($"bcow version {shown}");
        stdout.WriteLine(assembly.GetCustomAttribute<AssemblyCopyrightAttribute>()?.Copyright ?? "");
    }
}
