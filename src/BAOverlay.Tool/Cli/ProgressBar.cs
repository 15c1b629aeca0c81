using BAOverlay.Tool.Text;

namespace BAOverlay.Tool.Cli;

/// <summary>
/// A one-line progress bar redrawn in place with a carriage return. Redraws only when the shown tenth of a percent
/// changes, so a fast copy does not spend its time writing to the terminal.
/// </summary>
internal sealed class ProgressBar(TextWriter output, long total)
{
    private const int Width = 40;
    private int _shownPermille = -1;
    private int _lineLength;

    public void Report(long done)
    {
        int permille = total <= 0 ? 1000 : (int)Math.Clamp(done * 1000 / total, 0, 1000);
        if (permille == _shownPermille)
        {
            return;
        }
        _shownPermille = permille;
        int filled = permille * Width / 1000;
        string line = FormattableString.Invariant($"[{new string('#', filled)}{new string('.', Width - filled)}] {permille / 10.0,5:0.0}%  {SizeFormatter.Human(done)} of {SizeFormatter.Human(total)}");
        // Pad over the previous line: the byte counts can get shorter ("1000 KiB" -> "1 MiB").
        output.Write($"\r{line.PadRight(_lineLength)}");
        _lineLength = line.Length;
        output.Flush();
    }

    /// <summary>Draws 100% and ends the line.</summary>
    public void Complete()
    {
        Report(total);
        output.WriteLine();
    }

    /// <summary>Ends the line, so an error message that follows starts on a line of its own.</summary>
    public void Abandon()
    {
        if (_shownPermille >= 0)
        {
            output.WriteLine();
        }
    }
}
