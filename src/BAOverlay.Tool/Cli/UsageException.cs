namespace BAOverlay.Tool.Cli;

/// <summary>
/// The command line itself is wrong (unknown option, missing operand, unparsable size). Kept apart from I/O and
/// format errors because the answer differs: the user gets the verb's usage line, not a file problem.
/// </summary>
internal sealed class UsageException(string message) : Exception(message);
