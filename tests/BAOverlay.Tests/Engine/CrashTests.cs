using BAOverlay.Storage;

namespace BAOverlay.Tests.Engine;

/// <summary>
/// Power cuts at every write and every flush of a scripted workload. After each, the image a crash leaves (the
/// durable part, and the durable part plus a random subset of the unflushed sectors) must reopen with every byte
/// acknowledged by the last completed flush, every byte one the file held since, and a clean check after a writable
/// open.
/// </summary>
public class CrashTests
{
    private static int Seed(int blockSize) => 1234567 ^ blockSize;

    private static (IReadOnlyList<Step> Steps, MemoryStorage Lower) Setup(int blockSize)
    {
        int seed = Seed(blockSize);
        TestContext.Out.WriteLine($"seed {seed}");
        var lower = MemoryStorage.FromBytes(Workload.LowerContent(blockSize, seed), "lower", canWrite: false);
        return (Workload.Script(blockSize, seed), lower);
    }

    [Test]
    public void TheWorkloadWithoutFaultsEndsWithItsShadowContent([Values(4096, 65536)] int blockSize)
    {
        var (steps, lower) = Setup(blockSize);
        var storage = new FaultInjectingStorage();
        WorkloadRun run = Workload.Run(storage, lower, blockSize, CopyUpMode.Synchronous, steps);
        Assert.That(run.Failure, Is.Null);
        Assert.That(run.DisposeFailure, Is.Null);
        TestContext.Out.WriteLine($"{storage.WriteCount} writes, {storage.FlushCount} flushes");
        MemoryStorage image = storage.CrashImage();
        using (BCowFile file = BCowFile.Open(image, lower, new BCowOpenOptions { ReadOnly = true }))
        {
            Assert.That(Workload.ReadAll(file), Is.EqualTo(run.After));
        }
        Checks.AssertClean(image);
    }

    [Test]
    public void APowerCutAtAnyWriteLosesNothingFlushedAndInventsNothing([Values(4096, 65536)] int blockSize)
    {
        var (steps, lower) = Setup(blockSize);
        var reference = new FaultInjectingStorage();
        Workload.Run(reference, lower, blockSize, CopyUpMode.Synchronous, steps);
        int writes = reference.WriteCount;
        TestContext.Out.WriteLine($"{writes} write operations");
        Assert.That(writes, Is.GreaterThan(20));
        for (int i = 0; i < writes; i++)
        {
            var storage = new FaultInjectingStorage();
            storage.FailWrite(i, StorageFault.PowerCut);
            WorkloadRun run = Workload.Run(storage, lower, blockSize, CopyUpMode.Synchronous, steps);
            Assert.That(storage.IsPoweredOff, Is.True, $"cut at write {i} fired");
            Assert.That(run.Failure, Is.Not.Null, $"cut at write {i} reached the caller");
            string where = $"seed {Seed(blockSize)}, cut at write {i} during '{run.FailedStep?.Name ?? "create"}'";
            Workload.AssertRecovers(storage.CrashImage(), lower, run.SinceFlush, run.Created, where);
            Workload.AssertRecovers(storage.CrashImage(new Random(Seed(blockSize) ^ i)), lower, run.SinceFlush, run.Created, where + " (random unflushed sectors kept)");
        }
    }

    [Test]
    public void APowerCutAtAnyFlushLosesNothingFlushedAndInventsNothing([Values(4096, 65536)] int blockSize)
    {
        var (steps, lower) = Setup(blockSize);
        var reference = new FaultInjectingStorage();
        Workload.Run(reference, lower, blockSize, CopyUpMode.Synchronous, steps);
        int flushes = reference.FlushCount;
        TestContext.Out.WriteLine($"{flushes} flushes");
        Assert.That(flushes, Is.GreaterThan(5));
        for (int j = 0; j < flushes; j++)
        {
            var storage = new FaultInjectingStorage();
            storage.FailFlush(j, StorageFault.PowerCut);
            WorkloadRun run = Workload.Run(storage, lower, blockSize, CopyUpMode.Synchronous, steps);
            Assert.That(run.Failure, Is.Not.Null, $"cut at flush {j} reached the caller");
            string where = $"seed {Seed(blockSize)}, cut at flush {j} during '{run.FailedStep?.Name ?? "create"}'";
            Workload.AssertRecovers(storage.CrashImage(), lower, run.SinceFlush, run.Created, where);
            for (int k = 0; k < 4; k++)
            {
                Workload.AssertRecovers(storage.CrashImage(new Random((Seed(blockSize) * 31) + (j * 7) + k)), lower, run.SinceFlush, run.Created, $"{where} (random unflushed sectors kept, {k})");
            }
        }
    }

    [Test]
    public void APowerCutWhileBackgroundCopyUpsRunLosesNothingFlushed([Values(4096, 65536)] int blockSize)
    {
        var (steps, lower) = Setup(blockSize);
        var reference = new FaultInjectingStorage();
        Workload.Run(reference, lower, blockSize, CopyUpMode.Background, steps);
        int writes = reference.WriteCount;
        int seed = Environment.TickCount ^ blockSize;
        TestContext.Out.WriteLine($"about {writes} write operations; cut points from seed {seed}");
        var random = new Random(seed);
        for (int round = 0; round < 80; round++)
        {
            int cut = random.Next(writes + 10);
            var storage = new FaultInjectingStorage();
            storage.FailWrite(cut, StorageFault.PowerCut);
            WorkloadRun run = Workload.Run(storage, lower, blockSize, CopyUpMode.Background, steps);
            string where = $"seed {seed}, round {round}, cut at write {cut} during '{run.FailedStep?.Name ?? (run.Created ? "-" : "create")}'";
            Workload.AssertRecovers(storage.CrashImage(), lower, run.SinceFlush, run.Created, where);
            Workload.AssertRecovers(storage.CrashImage(new Random(seed + round)), lower, run.SinceFlush, run.Created, where + " (random unflushed sectors kept)");
        }
    }
}
