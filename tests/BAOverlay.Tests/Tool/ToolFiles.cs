namespace BAOverlay.Tests.Tool;

/// <summary>Files the tool tests start from.</summary>
internal static class ToolFiles
{
    public const long LowerSize = 64 << 20;

    /// <summary>
    /// A sparse 64 MiB lower file with random bytes in its first 64 KiB and around offset 1000000 (where the issue's
    /// scenario writes), so an overlay that returned zeros or the wrong block would show.
    /// </summary>
    public static byte[] MakeLower(string path, int seed = 1)
    {
        var random = new Random(seed);
        byte[] content = new byte[LowerSize];
        random.NextBytes(content.AsSpan(0, 65536));
        random.NextBytes(content.AsSpan(900_000, 300_000));
        using (var stream = new FileStream(path, FileMode.CreateNew, FileAccess.Write))
        {
            stream.SetLength(LowerSize);
            stream.Write(content, 0, 65536);
            stream.Position = 900_000;
            stream.Write(content, 900_000, 300_000);
        }
        return content;
    }

    /// <summary>A lower file <c>big.img</c> (<see cref="MakeLower"/>) and <c>x.bcow</c> made over it with
    /// <c>bcow create</c>; returns the B-CoW file's path.</summary>
    public static string MakePair(TempDir dir, out string lower)
    {
        lower = dir.File("big.img");
        string path = dir.File("x.bcow");
        MakeLower(lower);
        Assert.That(Bcow.Run("create", "--lower", lower, path).ExitCode, Is.Zero);
        return path;
    }

    /// <summary>A standalone B-CoW file of <paramref name="size"/> bytes, made through the tool.</summary>
    public static string MakeStandalone(TempDir dir, string name = "s.bcow", string size = "1M", string blockSize = "4k")
    {
        string path = dir.File(name);
        BcowResult created = Bcow.Run("create", "-b", blockSize, "--size", size, path);
        Assert.That(created.ExitCode, Is.Zero, created.ToString());
        return path;
    }

    /// <summary>Allocated bytes of a file, from <c>stat</c> (st_blocks; no API for it in .NET).</summary>
    public static long AllocatedBytes(string path)
    {
        var start = new System.Diagnostics.ProcessStartInfo("stat", ["-c", "%b %B", path]) { RedirectStandardOutput = true };
        using var process = System.Diagnostics.Process.Start(start)!;
        string[] parts = process.StandardOutput.ReadToEnd().Trim().Split(' ');
        process.WaitForExit();
        return long.Parse(parts[0], System.Globalization.CultureInfo.InvariantCulture) * long.Parse(parts[1], System.Globalization.CultureInfo.InvariantCulture);
    }

    /// <summary>The merged content of a B-CoW file, read through the library.</summary>
    public static byte[] MergedContent(string path)
    {
        using BCowFile file = BCowFile.Open(path, new BCowOpenOptions { ReadOnly = true });
        byte[] content = new byte[file.Length];
        Assert.That(file.ReadAt(content, 0), Is.EqualTo(content.Length));
        return content;
    }
}
