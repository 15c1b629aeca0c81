using BAOverlay.Checking;
using BAOverlay.Storage;

namespace BAOverlay.Tests.Engine;

/// <summary>
/// EIO, ENOSPC and torn writes at every write of the scripted workload, the process living on: the error reaches the
/// caller as an <see cref="IOException"/>; disposing either commits (then the file holds every completed step and, for
/// the failed one, old or new bytes) or throws an <see cref="IOException"/> only when a commit failed (then the file
/// keeps its last commit); either way the file reopens without corruption and with what the flushes acknowledged.
/// </summary>
public class FaultTests
{
    private static int Seed(int blockSize) => 7654321 ^ blockSize;

    [Test]
    public void AnIOErrorAtAnyWriteReachesTheCallerAndLeavesTheFileConsistent(
        [Values(StorageFault.IOError, StorageFault.NoSpace, StorageFault.TornWrite)] StorageFault fault,
        [Values(CopyUpMode.Synchronous, CopyUpMode.Background)] CopyUpMode mode) =>
        FaultAtEveryWrite(4096, fault, mode);

    [Test]
    public void AnIOErrorAtAnyWriteWithLargeBlocksLeavesTheFileConsistent() =>
        FaultAtEveryWrite(65536, StorageFault.IOError, CopyUpMode.Synchronous);

    private static void FaultAtEveryWrite(int blockSize, StorageFault fault, CopyUpMode mode)
    {
        int seed = Seed(blockSize);
        TestContext.Out.WriteLine($"seed {seed}");
        var lower = MemoryStorage.FromBytes(Workload.LowerContent(blockSize, seed), "lower", canWrite: false);
        IReadOnlyList<Step> steps = Workload.Script(blockSize, seed);
        var reference = new FaultInjectingStorage();
        Workload.Run(reference, lower, blockSize, mode, steps);
        int writes = reference.WriteCount;
        int surfaced = 0;
        for (int i = 0; i < writes; i++)
        {
            var storage = new FaultInjectingStorage();
            storage.FailWrite(i, fault);
            WorkloadRun run = Workload.Run(storage, lower, blockSize, mode, steps);
            storage.ClearFaults();
            string where = $"seed {seed}, {fault} at write {i} during '{run.FailedStep?.Name ?? (run.Created ? "-" : "create")}'";
            if (run.Failure is not null)
            {
                surfaced++;
                Assert.That(run.Failure, Is.InstanceOf<IOException>(), where);
            }
            if (run.DisposeFailure is not null)
            {
                Assert.That(run.FailedStep?.Kind, Is.EqualTo(StepKind.Flush).Or.EqualTo(StepKind.Dispose).Or.Null, $"{where}: dispose failed after a step that was no commit: {run.DisposeFailure}");
            }

            // Reopen what the storage holds now (a create that failed promised nothing).
            BCowCheckResult check = BCowChecker.Check(storage);
            if (run.Created)
            {
                Assert.That(check.Corruptions, Is.Empty, $"{where}: checker corruptions");
                Assert.That(check.Failure, Is.Null, $"{where}: checker failure");
            }
            MemoryStorage now = CopyOf(storage);
            IReadOnlyList<byte[]> states = run.SinceFlush;
            (long, long)? lengths = null;
            if (run.Created && run.FailedStep is { Kind: not (StepKind.Flush or StepKind.Dispose) } && run.DisposeFailure is null)
            {
                // The dispose committed: everything but the failed step is there, the failed step in part at most
                // (the last state since the flush is the failed step's, or for a shrink the cut-and-regrown one).
                states = [run.Before, run.After, run.SinceFlush[^1]];
                if (run.FailedStep.Kind == StepKind.Write)
                {
                    lengths = (run.Before.Length, run.After.Length);
                }
            }
            Workload.AssertRecovers(now, lower, states, run.Created, where, lengths);
            Workload.AssertRecovers(storage.CrashImage(new Random(seed ^ i)), lower, run.SinceFlush, run.Created, where + " (after a power cut)");
        }
        TestContext.Out.WriteLine($"{surfaced} of {writes} faults reached the caller");
        Assert.That(surfaced, Is.GreaterThan(writes / 2), "most injected faults must reach the caller");
    }

    /// <summary>What the storage holds now (holes kept), as a crash image would.</summary>
    private static MemoryStorage CopyOf(IBlockStorage storage)
    {
        var copy = new MemoryStorage("current content");
        foreach (var (offset, length) in storage.GetDataRanges(0, storage.Length))
        {
            byte[] bytes = new byte[length];
            storage.ReadAt(bytes, offset);
            copy.WriteAt(bytes, offset);
        }
        copy.SetLength(storage.Length);
        return copy;
    }

    [Test]
    public void AnIOErrorAtAnyFlushFailsTheCommitAndKeepsTheLastOne([Values(4096, 65536)] int blockSize)
    {
        int seed = Seed(blockSize);
        TestContext.Out.WriteLine($"seed {seed}");
        var lower = MemoryStorage.FromBytes(Workload.LowerContent(blockSize, seed), "lower", canWrite: false);
        IReadOnlyList<Step> steps = Workload.Script(blockSize, seed);
        var reference = new FaultInjectingStorage();
        Workload.Run(reference, lower, blockSize, CopyUpMode.Synchronous, steps);
        for (int j = 0; j < reference.FlushCount; j++)
        {
            var storage = new FaultInjectingStorage();
            storage.FailFlush(j, StorageFault.IOError);
            WorkloadRun run = Workload.Run(storage, lower, blockSize, CopyUpMode.Synchronous, steps);
            storage.ClearFaults();
            string where = $"seed {seed}, EIO at flush {j} during '{run.FailedStep?.Name ?? (run.Created ? "-" : "create")}'";
            Assert.That(run.Failure, Is.InstanceOf<IOException>(), where);
            if (run.Created)
            {
                Assert.That(BCowChecker.Check(storage).Corruptions, Is.Empty, where);
            }
            Workload.AssertRecovers(storage.CrashImage(), lower, run.SinceFlush, run.Created, where);
        }
    }

    [Test]
    public void AFileWhoseCommitFailedRefusesWritesAndReopensAtItsLastCommit()
    {
        var lower = MemoryStorage.FromBytes(Checks.RandomBytes(new Random(5), 40_000), "lower", canWrite: false);
        var storage = new FaultInjectingStorage();
        var file = BCowFile.Create(storage, lower, new BCowCreateOptions { BlockSize = 4096 });
        byte[] first = Checks.RandomBytes(new Random(6), 5000);
        file.WriteAt(first, 100);
        file.Flush();
        file.WriteAt(Checks.RandomBytes(new Random(7), 5000), 9000);
        storage.FailFlush(storage.FlushCount, StorageFault.IOError);
        Assert.That(() => file.Flush(), Throws.InstanceOf<IOException>());
        Assert.That(() => file.WriteAt(first, 0), Throws.InstanceOf<IOException>().With.Message.Contains("earlier commit failed"));
        Assert.That(() => file.Flush(), Throws.InstanceOf<IOException>());
        Assert.That(() => file.Dispose(), Throws.Nothing, "dispose after a failed commit does not commit and does not throw");
        using (BCowFile reopened = BCowFile.Open(storage, lower))
        {
            byte[] expected = lower.ToArray();
            first.CopyTo(expected, 100);
            Assert.That(Workload.ReadAll(reopened), Is.EqualTo(expected));
        }
        Checks.AssertClean(storage);
    }
}
