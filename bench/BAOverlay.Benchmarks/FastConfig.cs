using BenchmarkDotNet.Columns;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Diagnosers;
using BenchmarkDotNet.Engines;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Reports;

namespace BAOverlay.Benchmarks;

/// <summary>
/// Short runs for a shared 2-core machine: one launch, 2 warm-up and 15 measured iterations, each iteration one
/// invocation (most benchmarks need a fresh upper per iteration). Monitoring strategy: no pilot, no overhead
/// subtraction, which is right for operations of tens of microseconds and up. Medians, ratios and allocations.
/// </summary>
public class FastConfig : ManualConfig
{
    public FastConfig()
        : this(15, groupByParams: true)
    {
    }

    protected FastConfig(int iterations, bool groupByParams)
    {
        AddJob(Job.Default
            .WithStrategy(RunStrategy.Monitoring)
            .WithLaunchCount(1)
            .WithWarmupCount(2)
            .WithIterationCount(iterations)
            .WithInvocationCount(1)
            .WithUnrollFactor(1)
            .WithId("Fast"));
        AddDiagnoser(MemoryDiagnoser.Default);
        AddColumn(StatisticColumn.Median, StatisticColumn.P95);
        AddLogicalGroupRules(groupByParams
            ? [BenchmarkLogicalGroupRule.ByCategory, BenchmarkLogicalGroupRule.ByParams]
            : [BenchmarkLogicalGroupRule.ByCategory]);
        WithOrderer(new BenchmarkDotNet.Order.DefaultOrderer(BenchmarkDotNet.Order.SummaryOrderPolicy.Declared));
        HideColumns(Column.Error, Column.Job, Column.StdDev, Column.RatioSD, Column.Gen0, Column.Gen1, Column.Gen2,
            Column.LaunchCount, Column.WarmupCount, Column.IterationCount, Column.InvocationCount, Column.UnrollFactor, "RunStrategy");
        WithSummaryStyle(SummaryStyle.Default.WithRatioStyle(RatioStyle.Trend));
    }
}

/// <summary>The whole-file copies of a 1 GiB file take seconds each: fewer iterations.</summary>
public sealed class CopyConfig : FastConfig
{
    public CopyConfig()
        : base(9, groupByParams: true)
    {
    }
}

/// <summary>For comparing parameter values (block sizes): one table per category, a row per value.</summary>
public sealed class SweepConfig : FastConfig
{
    public SweepConfig()
        : base(15, groupByParams: false)
    {
    }
}
