namespace BAOverlay.Tool.Cli;

/// <summary>
/// getopt-style parsing, small on purpose (no package): <c>--name value</c>, <c>--name=value</c>, <c>-x value</c>,
/// <c>-xVALUE</c>, flags, and <c>--</c> to end options. Options may come after operands (GNU style), because
/// <c>bcow io FILE -c ...</c> puts the file first, as qemu-io users type it.
/// </summary>
internal static class ArgumentReader
{
    public static ParsedArguments Parse(IReadOnlyList<string> args, IReadOnlyList<OptionSpec> specs)
    {
        var options = new Dictionary<string, List<string?>>(StringComparer.Ordinal);
        var operands = new List<string>();
        bool optionsEnded = false;
        for (int i = 0; i < args.Count; i++)
        {
            string arg = args[i];
            // "-1" is a (bad) number, not an option: let the operand's parser say what is wrong with it.
            bool negativeNumber = arg.Length > 1 && arg[0] == '-' && char.IsAsciiDigit(arg[1]);
            if (optionsEnded || arg == "-" || negativeNumber || !arg.StartsWith('-'))
            {
                operands.Add(arg);
                continue;
            }
            if (arg == "--")
            {
                optionsEnded = true;
                continue;
            }
            string name = arg;
            string? attached = null;
            if (arg.StartsWith("--", StringComparison.Ordinal))
            {
                int equals = arg.IndexOf('=');
                if (equals > 0)
                {
                    name = arg[..equals];
                    attached = arg[(equals + 1)..];
                }
            }
            else if (arg.Length > 2)
            {
                // -xVALUE: only for short options that take a value; "-abc" bundles are not needed by any verb.
                name = arg[..2];
                attached = arg[2..];
            }
            OptionSpec spec = specs.FirstOrDefault(s => s.Names.Contains(name))
                ?? throw new UsageException($"unknown option '{arg}'");
            string? value = null;
            if (spec.TakesValue)
            {
                if (attached is not null)
                {
                    value = attached;
                }
                else if (i + 1 < args.Count)
                {
                    value = args[++i];
                }
                else
                {
                    throw new UsageException($"option '{name}' needs a value ({spec.ValueName})");
                }
            }
            else if (attached is not null)
            {
                throw new UsageException(arg.StartsWith("--", StringComparison.Ordinal)
                    ? $"option '{name}' takes no value"
                    : $"unknown option '{arg}'");
            }
            if (!options.TryGetValue(spec.Key, out var values))
            {
                options[spec.Key] = values = [];
            }
            values.Add(value);
        }
        return new ParsedArguments(options, operands);
    }
}
