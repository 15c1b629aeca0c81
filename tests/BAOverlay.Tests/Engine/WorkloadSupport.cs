using BAOverlay.Checking;
using BAOverlay.Storage;

namespace BAOverlay.Tests.Engine;

/// <summary>What one step of a scripted workload does to the file and to the shadow copy.</summary>
internal enum StepKind
{
    Write,
    Punch,
    SetLength,
    Flush,
    Dispose,
}

/// <summary>One step: the call on the file and its effect on the expected content.</summary>
internal sealed record Step(string Name, StepKind Kind, long Offset, long Length, byte[]? Data = null, bool Async = false)
{
    public byte[] Apply(byte[] state)
    {
        switch (Kind)
        {
            case StepKind.Write:
            {
                byte[] next = new byte[Math.Max(state.Length, Offset + Data!.Length)];
                state.CopyTo(next, 0);
                Data.CopyTo(next, Offset);
                return next;
            }
            case StepKind.Punch:
            {
                byte[] next = (byte[])state.Clone();
                long end = Math.Min(state.Length, Offset + Length);
                if (Offset < end)
                {
                    Array.Clear(next, (int)Offset, (int)(end - Offset));
                }
                return next;
            }
            case StepKind.SetLength:
            {
                byte[] next = new byte[Length];
                Array.Copy(state, next, Math.Min(state.Length, Length));
                return next;
            }
            default:
                return state;
        }
    }

    public async ValueTask RunAsync(BCowFile file)
    {
        switch (Kind)
        {
            case StepKind.Write:
                if (Async)
                {
                    await file.WriteAtAsync(Data, Offset);
                }
                else
                {
                    file.WriteAt(Data, Offset);
                }
                break;
            case StepKind.Punch:
                file.PunchHole(Offset, Length);
                break;
            case StepKind.SetLength:
                file.SetLength(Length);
                break;
            case StepKind.Flush:
                if (Async)
                {
                    await file.FlushAsync();
                }
                else
                {
                    file.Flush();
                }
                break;
            case StepKind.Dispose:
                file.Dispose();
                break;
        }
    }
}

/// <summary>The outcome of running a workload until its end or its first failure.</summary>
internal sealed class WorkloadRun
{
    /// <summary>Every state since the last completed flush (the first is the flushed one), plus the intended state of a
    /// step that failed. After a crash, every byte must equal its value in one of them.</summary>
    public List<byte[]> SinceFlush { get; } = [];

    /// <summary>The state before the failed step (or the final state).</summary>
    public byte[] Before { get; set; } = [];

    /// <summary>The intended state after the failed step (or the final state).</summary>
    public byte[] After { get; set; } = [];

    /// <summary>True once Create (and the first commit of Open) returned.</summary>
    public bool Created { get; set; }

    public Step? FailedStep { get; set; }

    public Exception? Failure { get; set; }

    /// <summary>Null: dispose was not needed (the workload disposed) or succeeded.</summary>
    public Exception? DisposeFailure { get; set; }
}

/// <summary>
/// The scripted workload of the crash and fault tests: partial and whole-block writes into lower blocks, overwrites,
/// punches, shrinks and grows, async calls, flushes in between, more than one L2 page, and a final dispose.
/// </summary>
internal static class Workload
{
    public static IReadOnlyList<Step> Script(int blockSize, int seed)
    {
        var random = new Random(seed);
        long b = blockSize;
        byte[] Bytes(long length) => Checks.RandomBytes(random, (int)length);
        var steps = new List<Step>
        {
            new("small write into lower block 0", StepKind.Write, (b * 3 / 10) + 7, 0, Bytes(100)),
            new("whole block 1", StepKind.Write, b, 0, Bytes(b)),
            new("write across blocks 1 and 2", StepKind.Write, (b * 18 / 10) + 3, 0, Bytes(b * 6 / 10)),
            new("flush 1", StepKind.Flush, 0, 0),
            new("overwrite in block 0", StepKind.Write, (b / 4) + 1, 0, Bytes(b / 8), Async: true),
            new("punch whole block 3", StepKind.Punch, 3 * b, b),
            new("punch inside block 4", StepKind.Punch, (4 * b) + (b / 5), 100),
            new("async write into the zero block 3", StepKind.Write, (3 * b) + (b / 2), 0, Bytes(b / 3), Async: true),
            new("flush 2", StepKind.Flush, 0, 0, Async: true),
            new("shrink into block 2", StepKind.SetLength, 0, (b * 27 / 10) + 5),
            new("write at the new end", StepKind.Write, (b * 26 / 10) + 1, 0, Bytes(b / 20)),
            new("grow", StepKind.SetLength, 0, 6 * b),
            new("write beyond the old lower end", StepKind.Write, (5 * b) + 11, 0, Bytes(b / 10)),
            new("flush 3", StepKind.Flush, 0, 0),
            new("small write at the start", StepKind.Write, b / 20, 0, Bytes(b / 20)),
            new("write in block 4", StepKind.Write, (b * 49 / 10) - 13, 0, Bytes(40)),
            new("punch half of block 0", StepKind.Punch, 0, b / 2),
            new("grow to an odd size", StepKind.SetLength, 0, (7 * b) + 123),
            new("write across the end", StepKind.Write, (7 * b) + 100, 0, Bytes(b / 4)),
            // Space allocated since the last commit and freed before the next is reused at once (no header has it).
            new("whole block 6, allocated since flush 3", StepKind.Write, 6 * b, 0, Bytes(b)),
            new("punch block 6 before any commit", StepKind.Punch, 6 * b, b),
            new("write into block 6 again, into the reused space", StepKind.Write, (6 * b) + 3, 0, Bytes(b / 3)),
            // With 4 KiB blocks one L2 page maps 1 MiB: this reaches the second (with 64 KiB blocks, 16 MiB away: skipped).
            new("write into a second L2 page", StepKind.Write, blockSize <= 4096 ? (257 * b) + 5 : (6 * b) + 5, 0, Bytes(b / 3)),
            new("flush 4", StepKind.Flush, 0, 0),
            new("big write over blocks 0..3", StepKind.Write, b / 2, 0, Bytes(3 * b)),
            new("shrink below the second L2 page", StepKind.SetLength, 0, (6 * b) + 1),
            new("flush 5", StepKind.Flush, 0, 0),
            new("write block 5 again", StepKind.Write, (5 * b) + 1, 0, Bytes(b / 2), Async: true),
            new("dispose", StepKind.Dispose, 0, 0),
        };
        return steps;
    }

    public static byte[] LowerContent(int blockSize, int seed) =>
        Checks.RandomBytes(new Random(seed ^ 0x5eed), (int)(blockSize * 5.5));

    /// <summary>Creates the file in <paramref name="upper"/> and runs <paramref name="steps"/> until the first failure;
    /// then disposes the file (a failure there is recorded). Only <see cref="IOException"/>s are tolerated.</summary>
    public static WorkloadRun Run(IBlockStorage upper, MemoryStorage lower, int blockSize, CopyUpMode mode, IReadOnlyList<Step> steps)
    {
        var run = new WorkloadRun();
        byte[] state = lower.ToArray();
        run.SinceFlush.Add(state);
        run.Before = run.After = state;
        BCowFile file;
        try
        {
            file = BCowFile.Create(upper, lower, new BCowCreateOptions { BlockSize = blockSize, Open = new BCowOpenOptions { CopyUpMode = mode } });
        }
        catch (IOException e)
        {
            run.Failure = e;
            return run;
        }
        run.Created = true;
        bool disposed = false;
        try
        {
            foreach (Step step in steps)
            {
                byte[] next = step.Apply(state);
                run.Before = state;
                run.After = next;
                bool flush = step.Kind is StepKind.Flush or StepKind.Dispose;
                if (!flush)
                {
                    run.SinceFlush.Add(next);
                    if (step.Kind == StepKind.SetLength && step.Length < state.Length)
                    {
                        // A shrink that failed half-way may already hide the bytes beyond the new size: as if the file
                        // had been cut and grown again.
                        byte[] regrown = new byte[state.Length];
                        next.CopyTo(regrown, 0);
                        run.SinceFlush.Add(regrown);
                    }
                }
                try
                {
                    disposed |= step.Kind == StepKind.Dispose;
                    step.RunAsync(file).AsTask().GetAwaiter().GetResult();
                }
                catch (IOException e)
                {
                    run.FailedStep = step;
                    run.Failure = e;
                    return run;
                }
                state = next;
                if (flush)
                {
                    run.SinceFlush.Clear();
                    run.SinceFlush.Add(state);
                }
            }
            run.Before = run.After = state;
            return run;
        }
        finally
        {
            if (!disposed)
            {
                try
                {
                    file.Dispose();
                }
                catch (IOException e)
                {
                    run.DisposeFailure = e;
                }
            }
        }
    }

    /// <summary>Every byte of <paramref name="content"/> equals its value in one of <paramref name="states"/>, and the
    /// length is one of theirs.</summary>
    /// <param name="lengths">When given, the length may be any in this range instead (a write that failed half-way
    /// grew the file by the blocks it wrote).</param>
    public static void AssertEachByteFrom(byte[] content, IReadOnlyList<byte[]> states, string label, (long Min, long Max)? lengths = null)
    {
        if (lengths is var (min, max))
        {
            Assert.That(content.Length, Is.InRange(min, max), $"{label}: length");
        }
        else
        {
            Assert.That(states.Select(s => s.Length), Has.Member(content.Length), $"{label}: length {content.Length} is none of the states' lengths");
        }
        for (int i = 0; i < content.Length; i++)
        {
            bool found = false;
            foreach (byte[] s in states)
            {
                if (i < s.Length && s[i] == content[i])
                {
                    found = true;
                    break;
                }
            }
            if (!found)
            {
                string seen = string.Join(", ", states.Select(s => i < s.Length ? s[i].ToString() : "-"));
                Assert.Fail($"{label}: byte {i} is {content[i]}, which it never was since the last flush (values: {seen})");
            }
        }
    }

    public static byte[] ReadAll(BCowFile file)
    {
        byte[] content = new byte[file.Length];
        Assert.That(file.ReadAt(content, 0), Is.EqualTo(content.Length), "read of the whole file");
        return content;
    }

    /// <summary>
    /// The recovery checks: a read-only open never throws (once the file was created), every byte is one the file
    /// held since the last completed flush, the checker finds no corruption, and a writable open leaves a clean file
    /// with the same content.
    /// </summary>
    public static void AssertRecovers(MemoryStorage image, MemoryStorage lower, IReadOnlyList<byte[]> states, bool created, string label, (long Min, long Max)? lengths = null)
    {
        byte[] content;
        try
        {
            using BCowFile file = BCowFile.Open(image, lower, new BCowOpenOptions { ReadOnly = true });
            content = ReadAll(file);
        }
        catch (BCowFormatException e) when (!created)
        {
            // The crash hit Create before its first flush: nothing was promised.
            Assert.That(e.Message, Does.Contain(image.Name), label);
            Assert.That(() => BCowChecker.Check(image), Throws.Nothing, label);
            return;
        }
        AssertEachByteFrom(content, states, label, lengths);
        BCowCheckResult check = BCowChecker.Check(image);
        Assert.That(check.Corruptions, Is.Empty, $"{label}: checker corruptions");
        Assert.That(check.Failure, Is.Null, $"{label}: checker failure");

        // The checker's repair reclaims what the crash leaked, without changing the content.
        MemoryStorage repaired = image.CloneAs("repaired", true);
        BCowCheckResult repair = BCowChecker.Check(repaired, repair: true);
        Assert.That(repair.Corruptions, Is.Empty, $"{label}: repair found corruptions");
        Assert.That(repair.ExitCode, Is.Zero, $"{label}: repair exit code");
        BCowCheckResult afterRepair = BCowChecker.Check(repaired);
        Assert.That(afterRepair.IsClean, Is.True, $"{label}: clean after repair ({string.Join("; ", afterRepair.Leaks)})");
        using (BCowFile file = BCowFile.Open(repaired, lower, new BCowOpenOptions { ReadOnly = true }))
        {
            Assert.That(file.GetInfo().Dirty, Is.False, $"{label}: repair clears the dirty flag");
            Assert.That(ReadAll(file).AsSpan().SequenceEqual(content), Is.True, $"{label}: content after repair");
        }

        MemoryStorage copy = image.CloneAs("reopened", true);
        using (BCowFile writable = BCowFile.Open(copy, lower, new BCowOpenOptions { CopyUpMode = CopyUpMode.Synchronous }))
        {
            Assert.That(ReadAll(writable).AsSpan().SequenceEqual(content), Is.True, $"{label}: writable open reads the same");
        }
        BCowCheckResult after = BCowChecker.Check(copy);
        Assert.That(after.Corruptions, Is.Empty, $"{label}: corruptions after a writable open");
        Assert.That(after.Leaks, Is.Empty, $"{label}: leaks after a writable open");
        using (BCowFile again = BCowFile.Open(copy, lower, new BCowOpenOptions { ReadOnly = true }))
        {
            Assert.That(ReadAll(again).AsSpan().SequenceEqual(content), Is.True, $"{label}: content after a writable open");
        }
    }
}
