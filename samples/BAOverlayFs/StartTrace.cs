using System.Diagnostics;

namespace BAOverlayFs;

/// <summary>
/// Where a mount's start goes, for benchmarks: with <c>BAOVERLAYFS_START_TRACE=1</c> in the environment each phase
/// prints <c>baoverlayfs: start-trace PID PHASE NS</c> on standard error, NS the CLOCK_MONOTONIC time in nanoseconds
/// (the clock of Python's <c>time.monotonic_ns</c>), which <c>bench/compare/start-phases.py</c> turns into a table. Off,
/// it costs one environment lookup per process.
/// </summary>
internal static class StartTrace
{
    private static readonly bool s_enabled = Environment.GetEnvironmentVariable("BAOVERLAYFS_START_TRACE") == "1";

    /// <summary>Prints the phase's time when tracing is on.</summary>
    public static void Mark(string phase)
    {
        if (s_enabled)
        {
            long ns = (long)(Stopwatch.GetTimestamp() * (1e9 / Stopwatch.Frequency));
            Console.Error.WriteLine($"baoverlayfs: start-trace {Environment.ProcessId} {phase} {ns}");
        }
    }
}
