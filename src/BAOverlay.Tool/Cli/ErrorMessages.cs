using System.Text.RegularExpressions;

namespace BAOverlay.Tool.Cli;

/// <summary>
/// Turns an exception into the one line users see after <c>bcow: </c>: <c>FILE: problem</c>. The library's messages
/// already start with the file they concern; the framework's do not ("Could not find file '/abs/x'."), so those
/// are rewritten into the same shape, naming the file as the user typed it when it is the one they gave.
/// </summary>
internal static partial class ErrorMessages
{
    public static string Describe(Exception e, string? subject)
    {
        string message = e switch
        {
            BCowFormatException f => $"{f.FilePath}: {f.Problem}",
            FileNotFoundException or DirectoryNotFoundException when QuotedPath(e.Message) is { } path => $"{path}: No such file or directory",
            UnauthorizedAccessException when QuotedPath(e.Message) is { } path => $"{path}: Permission denied",
            ArgumentException => ParameterSuffix().Replace(e.Message, ""),
            _ => e.Message,
        };
        message = FirstLine(message);
        if (subject is not null)
        {
            string full = Path.GetFullPath(subject);
            if (message.StartsWith(full + ":", StringComparison.Ordinal))
            {
                return subject + message[full.Length..];
            }
            if (!NamesAFile(message, subject))
            {
                return $"{subject}: {message}";
            }
        }
        return ShortenLeadingPath(message);
    }

    /// <summary>
    /// The library resolves paths (a lower file is opened by its full path); a file under the current folder is
    /// shown relative to it, closer to what the user typed.
    /// </summary>
    private static string ShortenLeadingPath(string message)
    {
        int colon = message.IndexOf(": ", StringComparison.Ordinal);
        if (colon <= 0 || !Path.IsPathFullyQualified(message[..colon]))
        {
            return message;
        }
        string relative = Path.GetRelativePath(Environment.CurrentDirectory, message[..colon]);
        return relative.StartsWith("..", StringComparison.Ordinal) || Path.IsPathRooted(relative)
            ? message
            : relative + message[colon..];
    }

    /// <summary>True when the message already begins with a path (the library's convention), so no second one is added.</summary>
    private static bool NamesAFile(string message, string subject)
    {
        if (message.StartsWith(subject + ":", StringComparison.Ordinal))
        {
            return true;
        }
        int colon = message.IndexOf(": ", StringComparison.Ordinal);
        return colon > 0 && message[..colon].Contains(Path.DirectorySeparatorChar, StringComparison.Ordinal);
    }

    private static string? QuotedPath(string message)
    {
        int first = message.IndexOf('\'');
        int last = message.LastIndexOf('\'');
        return first >= 0 && last > first + 1 ? message[(first + 1)..last] : null;
    }

    private static string FirstLine(string message)
    {
        int newline = message.IndexOfAny(['\r', '\n']);
        return (newline >= 0 ? message[..newline] : message).Trim();
    }

    [GeneratedRegex(@" \(Parameter '[^']*'\)")]
    private static partial Regex ParameterSuffix();
}
