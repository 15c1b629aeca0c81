namespace BAOverlay.Tool.Cli;

/// <summary>
/// The output file of a verb that writes one (flatten, convert): built under a name no one else uses, next to OUT so
/// the last step is a rename within one file system, and made with CreateNew, so the verb removes on failure only the
/// file it made, never an <c>OUT.tmp</c> someone else keeps.
/// </summary>
internal static class TemporaryOutput
{
    /// <summary>A sibling of <paramref name="output"/>: <c>OUT.tmp-XXXXXXXX</c>.</summary>
    public static string NameFor(string output) => $"{output}.tmp-{Guid.NewGuid().ToString("N")[..8]}";

    /// <summary>Refuses an OUT that is a directory, before anything is made (a rename would fail only at the end).</summary>
    public static void RefuseDirectory(string output)
    {
        if (Directory.Exists(output))
        {
            throw new IOException($"{Path.GetFullPath(output)}: Is a directory");
        }
    }

    /// <summary>Creates the temporary file; a failure names OUT, the file the user asked for, with the errno's words.</summary>
    public static FileStream Create(string temporary, string output)
    {
        try
        {
            return new FileStream(temporary, FileMode.CreateNew, FileAccess.Write, FileShare.None);
        }
        catch (FileNotFoundException e)
        {
            throw new FileNotFoundException($"Could not find file '{output}'.", output, e);
        }
        catch (DirectoryNotFoundException e)
        {
            throw new DirectoryNotFoundException($"Could not find a part of the path '{output}'.", e);
        }
        catch (UnauthorizedAccessException e)
        {
            throw new UnauthorizedAccessException($"Access to the path '{output}' is denied.", e);
        }
    }

    public static void TryDelete(string path)
    {
        try
        {
            File.Delete(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // The original error matters more; a stray OUT.tmp-XXXXXXXX is visible and harmless.
        }
    }
}
