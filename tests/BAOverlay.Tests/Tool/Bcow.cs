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
        using Process process = Process.Start(StartInfo(workingDirectory, args))!;
        Task<string> stdout = process.StandardOutput.ReadToEndAsync();
        Task<string> stderr = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(60_000))
        {
            process.Kill();
            Assert.Fail($"bcow {string.Join(' ', args)} did not finish in 60 s");
        }
        return new BcowResult(process.ExitCode, stdout.Result, stderr.Result);
    }

    /// <summary>Starts bcow.dll as its own process and returns at once; the caller reads its output as it comes.</summary>
    public static BcowProcess Start(string workingDirectory, params string[] args) =>
        new(Process.Start(StartInfo(workingDirectory, args))!, args);

    private static ProcessStartInfo StartInfo(string workingDirectory, string[] args)
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
        return start;
    }
}

/// <summary>A bcow process still running (a file holder, typically <c>io FILE -c write... -c "sleep N"</c>); killed
/// on dispose if it has not ended.</summary>
internal sealed class BcowProcess : IDisposable
{
    private readonly Process _process;
    private readonly string[] _args;
    private readonly Task<string> _stderr;
    private readonly System.Text.StringBuilder _stdout = new();

    public BcowProcess(Process process, string[] args)
    {
        _process = process;
        _args = args;
        _stderr = process.StandardError.ReadToEndAsync();
    }

    /// <summary>Reads standard output until a line starts with <paramref name="prefix"/> (fails after 60 s or at exit).</summary>
    public void WaitForLine(string prefix)
    {
        Task timeout = Task.Delay(60_000);
        while (true)
        {
            Task<string?> line = _process.StandardOutput.ReadLineAsync();
            if (Task.WhenAny(line, timeout).GetAwaiter().GetResult() == timeout)
            {
                Assert.Fail($"bcow {string.Join(' ', _args)} printed no '{prefix}' line in 60 s; so far:\n{_stdout}");
            }
            if (line.Result is null)
            {
                Assert.Fail($"bcow {string.Join(' ', _args)} ended before a '{prefix}' line:\n{_stdout}\n{_stderr.Result}");
            }
            _stdout.AppendLine(line.Result);
            if (line.Result!.StartsWith(prefix, StringComparison.Ordinal))
            {
                return;
            }
        }
    }

    /// <summary>Waits for the process to end on its own.</summary>
    public BcowResult WaitForExit()
    {
        string rest = _process.StandardOutput.ReadToEndAsync().WaitAsync(TimeSpan.FromSeconds(60)).GetAwaiter().GetResult();
        Assert.That(_process.WaitForExit(60_000), Is.True, $"bcow {string.Join(' ', _args)} ended");
        return new BcowResult(_process.ExitCode, _stdout + rest, _stderr.Result);
    }

    public void Dispose()
    {
        if (!_process.HasExited)
        {
            _process.Kill();
            _process.WaitForExit();
        }
        _process.Dispose();
    }
}
