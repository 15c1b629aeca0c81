namespace BAOverlay.Tool.Cli;

/// <summary>
/// One option a verb accepts. <paramref name="Names"/> are the spellings (e.g. <c>-b</c>, <c>--block-size</c>); the
/// first is the key the verb looks it up by. <paramref name="ValueName"/> is null for a flag.
/// </summary>
internal sealed record OptionSpec(string[] Names, string? ValueName = null)
{
    public string Key => Names[0];

    public bool TakesValue => ValueName is not null;

    public static OptionSpec Flag(params string[] names) => new(names);

    public static OptionSpec Valued(string valueName, params string[] names) => new(names, valueName);
}
