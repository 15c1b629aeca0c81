namespace BAOverlay.Tool.Cli;

/// <summary>A verb's arguments after parsing: options by key (repeatable ones keep every value, in order) and operands.</summary>
internal sealed class ParsedArguments(Dictionary<string, List<string?>> options, List<string> operands)
{
    public IReadOnlyList<string> Operands => operands;

    public bool Has(string key) => options.ContainsKey(key);

    /// <summary>The value of a single-valued option, or null when absent. Given twice, the last one wins, as getopt users expect.</summary>
    public string? Value(string key) => options.TryGetValue(key, out var values) ? values[^1] : null;

    public IReadOnlyList<string> Values(string key) =>
        options.TryGetValue(key, out var values) ? values.Select(v => v ?? "").ToList() : [];
}
