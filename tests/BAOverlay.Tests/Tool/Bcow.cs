using System.Diagnostics;
using System.Text.Json;
using BAOverlay.Tool;

namespace BAOverlay.Tests.Tool;

/// <summary>What one run of <c>bcow</c> left behind.</summary>
internal sealed record BcowResult(int ExitCode, string Out, string Error)
{
    public JsonElement Json => JsonDocument.Parse(Out).RootElement;

    public override string ToString() => $"exit {ExitCode}\nstdout:\n{Out}\nstderr:\n{Error}";
}

/// <summary>Runs the tool: in-process through <see cref="BcowCli.Run(string[], TextWriter, TextWriter)"/>, or as a real process.</summary>
internal static class Bcow
{
    public static BcowResult Run(params string[] args)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        int exit = BcowCli.Run(args, stdout, stderr);
        return new BcowResult(exit, stdout.ToString(), stderr.ToString());
    }

    /// <summary>
    /// Runs bcow.dll as its own process in <paramref name="workingDirectory"/>: covers Program.Main, real exit codes,
    /// and relative paths without changing the test process's current folder.
    /// </summary>
    public static BcowResult RunProcess(string workingDirectory, params string[] args)
    {
        string dll = typeof(BcowCli).Assembly.Location;
        var start = new ProcessStartInfo(Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") ?? "dotnet")
        {
            WorkingDirectory = workingDirectory,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        start.ArgumentList.Add(dll);
        foreach (string arg in args)
        {
            start.ArgumentList.Add(arg);
        }
        using Process process = Process.Start(start)!;
        Task<string> stdout = process.StandardOutput.ReadToEndAsync();
        Task<string> stderr = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(60_000))
        {
            process.Kill();
            Assert.Fail($"bcow {string.Join(' ', args)} did not finish in 60 s");
        }
        return new BcowResult(process.ExitCode, stdout.Result, stderr.Result);
    }
}
