namespace BAOverlay.Tool.Cli;

/// <summary>
/// What a verb may use of the outside world. Passed in rather than taken from <see cref="Console"/> so tests run
/// verbs in-process and read what they printed.
/// </summary>
/// <param name="Out">Results.</param>
/// <param name="Error">Errors and the progress bar.</param>
/// <param name="ErrorIsTerminal">Error goes to a terminal (not redirected): only then is a progress bar drawn.</param>
/// <param name="Cancellation">Signalled by Ctrl+C, so long verbs can clean up their temporary files.</param>
internal sealed record CommandContext(TextWriter Out, TextWriter Error, bool ErrorIsTerminal, CancellationToken Cancellation);
