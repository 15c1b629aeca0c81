namespace BAOverlay.Checking;

/// <summary>What <see cref="BCowChecker"/> found; exit codes follow <c>qemu-img check</c>.</summary>
public sealed record BCowCheckResult
{
    /// <summary>Structural errors: checksum mismatches, bad entries, out-of-range or overlapping extents.</summary>
    public IReadOnlyList<string> Corruptions { get; init; } = [];

    /// <summary>Upper-file ranges that hold data but that nothing references (left by a crash); safe to reclaim.</summary>
    public IReadOnlyList<(long Offset, long Length)> Leaks { get; init; } = [];

    /// <summary>Facts worth knowing that are not errors (the dirty flag, a torn older header slot).</summary>
    public IReadOnlyList<string> Notes { get; init; } = [];

    /// <summary>Why the check could not be done (the file cannot be read), or null.</summary>
    public string? Failure { get; init; }

    /// <summary>True when a repair reclaimed the leaks and cleared the dirty flag.</summary>
    public bool Repaired { get; init; }

    /// <summary>Bytes in <see cref="Leaks"/>.</summary>
    public long LeakedBytes => Leaks.Sum(l => l.Length);

    /// <summary>No corruption and no (unrepaired) leak.</summary>
    public bool IsClean => Failure is null && Corruptions.Count == 0 && (Leaks.Count == 0 || Repaired);

    /// <summary>0 clean (or repaired), 1 could not check, 2 corruption, 3 leaks only — as <c>qemu-img check</c>.</summary>
    public int ExitCode => Failure is not null ? 1 : Corruptions.Count > 0 ? 2 : Leaks.Count > 0 && !Repaired ? 3 : 0;
}
