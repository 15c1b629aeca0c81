using System.Collections.Concurrent;
using BAOverlay.Checking;
using BAOverlay.Format;
using BAOverlay.Storage;

namespace BAOverlay.Tests.Engine;

/// <summary>
/// Many threads on the same and neighbouring blocks while background fills are in flight. Each thread owns byte ranges
/// that interleave inside blocks and writes bytes tagged with its number (high 3 bits), so any byte anyone reads must
/// be the lower file's, a zero where zeros are allowed, or its owner's tag; never another thread's.
/// </summary>
public class ConcurrencyTests
{
    private const int Threads = 8;

    /// <summary>The ownership scheme: ranges of <see cref="Chunk"/> bytes (not sub-block aligned) dealt round-robin.</summary>
    private sealed class Owners(int blockSize, byte[] lower)
    {
        public int Chunk { get; } = (blockSize / 8) + 37;

        public byte[] Lower => lower;

        public int OwnerOf(long position) => (int)(position / Chunk % Threads);

        public static byte Tag(int thread, int version) => (byte)((thread << 5) | (version & 31));

        /// <summary>The first violation in <paramref name="bytes"/> read at <paramref name="offset"/>, or null.</summary>
        public string? Violation(ReadOnlySpan<byte> bytes, long offset, bool zerosAllowed, long lowerVisibleBelow = long.MaxValue)
        {
            for (int i = 0; i < bytes.Length; i++)
            {
                long p = offset + i;
                byte b = bytes[i];
                bool fromLower = p < lower.Length && p < lowerVisibleBelow && b == lower[p];
                bool owners = b >> 5 == OwnerOf(p);
                if (!fromLower && !owners && !(zerosAllowed && b == 0))
                {
                    return $"byte {p} is {b} (tag of thread {b >> 5}), owner {OwnerOf(p)}, lower {(p < lower.Length ? lower[p] : -1)}";
                }
            }
            return null;
        }
    }

    [Test]
    [Repeat(4)]
    public void InterleavedWritersAndReadersNeverSeeAnotherThreadsBytes([Values(4096, 65536)] int blockSize)
    {
        int seed = Environment.TickCount ^ blockSize;
        TestContext.Out.WriteLine($"seed {seed}");
        byte[] lowerBytes = Checks.RandomBytes(new Random(seed), 8 * blockSize);
        var lowerStorage = MemoryStorage.FromBytes(lowerBytes, "lower", canWrite: false);
        var lower = new WrappedStorage(lowerStorage, TimeSpan.FromMilliseconds(1));
        var owners = new Owners(blockSize, lowerBytes);
        var upper = new MemoryStorage("upper");
        int chunks = (lowerBytes.Length + owners.Chunk - 1) / owners.Chunk;
        var last = new int[chunks]; // last version written per chunk (0: none); only its owner writes it
        var violations = new ConcurrentQueue<string>();
        using (BCowFile file = BCowFile.Create(upper, lower, new BCowCreateOptions { BlockSize = blockSize, Open = new BCowOpenOptions { CopyUpWorkers = 3 } }))
        {
            bool writersDone = false;
            var work = new List<Func<Task>>();
            for (int t = 0; t < Threads; t++)
            {
                int thread = t;
                work.Add(async () =>
                {
                    var random = new Random(seed + thread);
                    int version = 0;
                    for (int round = 0; round < 300; round++)
                    {
                        int chunk = (random.Next(chunks / Threads + 1) * Threads) + thread;
                        if (chunk >= chunks)
                        {
                            continue;
                        }
                        long start = (long)chunk * owners.Chunk;
                        int length = (int)Math.Min(owners.Chunk, lowerBytes.Length - start);
                        // Whole chunks: they straddle sub-blocks and blocks, and share both with other threads' chunks.
                        version++;
                        byte[] data = new byte[length];
                        Array.Fill(data, Owners.Tag(thread, version));
                        if (thread % 2 == 0)
                        {
                            file.WriteAt(data, start);
                        }
                        else
                        {
                            await file.WriteAtAsync(data, start);
                        }
                        last[chunk] = version;
                    }
                });
            }
            for (int r = 0; r < 2; r++)
            {
                int reader = r;
                work.Add(async () =>
                {
                    var random = new Random(seed ^ (reader + 100));
                    byte[] buffer = new byte[2 * blockSize];
                    while (!Volatile.Read(ref writersDone))
                    {
                        long offset = random.NextInt64(lowerBytes.Length);
                        int length = random.Next(1, buffer.Length);
                        int n = reader == 0 ? file.ReadAt(buffer.AsSpan(0, length), offset) : await file.ReadAtAsync(buffer.AsMemory(0, length), offset);
                        if (owners.Violation(buffer.AsSpan(0, n), offset, zerosAllowed: false) is { } v)
                        {
                            violations.Enqueue($"reader {reader}: {v}");
                            return;
                        }
                    }
                });
            }
            Task[] writers = work.Take(Threads).Select(Task.Run).ToArray();
            Task[] readers = work.Skip(Threads).Select(Task.Run).ToArray();
            Assert.That(Task.WaitAll(writers, TimeSpan.FromSeconds(120)), Is.True, "writers finished");
            Volatile.Write(ref writersDone, true);
            Assert.That(Task.WaitAll(readers, TimeSpan.FromSeconds(30)), Is.True, "readers finished");
            Assert.That(violations, Is.Empty, $"seed {seed}");
            file.WaitForCopyUps();
            Assert.That(file.PendingCopyUps, Is.Zero);

            byte[] expected = (byte[])lowerBytes.Clone();
            for (int chunk = 0; chunk < chunks; chunk++)
            {
                if (last[chunk] != 0)
                {
                    long start = (long)chunk * owners.Chunk;
                    expected.AsSpan((int)start, (int)Math.Min(owners.Chunk, lowerBytes.Length - start)).Fill(Owners.Tag(chunk % Threads, last[chunk]));
                }
            }
            Assert.That(Workload.ReadAll(file).AsSpan().SequenceEqual(expected), Is.True, $"seed {seed}: every byte is its owner's last write");
            Assert.That(file.GetInfo().BlocksPartial, Is.Zero, "every fill finished");
        }
        Checks.AssertClean(upper);
        using (BCowFile file = BCowFile.Open(upper, lowerStorage, new BCowOpenOptions { ReadOnly = true }))
        {
            byte[] content = Workload.ReadAll(file);
            Assert.That(owners.Violation(content, 0, zerosAllowed: false), Is.Null, $"seed {seed}: after reopening");
        }
    }

    [Test]
    public void AWriteLandingWhileItsBlockIsBeingFilledIsNeverOverwrittenByTheFill([Values(4096, 65536)] int blockSize, [Values] bool useAsync)
    {
        int seed = Environment.TickCount ^ blockSize;
        TestContext.Out.WriteLine($"seed {seed}");
        var random = new Random(seed);
        const int blocks = 6;
        byte[] lowerBytes = Checks.RandomBytes(random, blocks * blockSize);
        var lowerStorage = MemoryStorage.FromBytes(lowerBytes, "lower", canWrite: false);
        // Every asynchronous lower read (the copier's) takes 300 ms: fills are in flight while the writes below land.
        var lower = new WrappedStorage(lowerStorage, TimeSpan.FromMilliseconds(300));
        var upper = new MemoryStorage("upper");
        byte[] expected = (byte[])lowerBytes.Clone();
        int sub = blockSize / 64;
        int landedDuringFill = 0;
        using (BCowFile file = BCowFile.Create(upper, lower, new BCowCreateOptions { BlockSize = blockSize, Open = new BCowOpenOptions { CopyUpWorkers = blocks } }))
        {
            void Write(byte[] data, long offset)
            {
                if (useAsync)
                {
                    // Asynchronous edge merges read lower slowly too: still correct, only slower.
                    file.WriteAtAsync(data, offset).AsTask().GetAwaiter().GetResult();
                }
                else
                {
                    file.WriteAt(data, offset);
                }
                data.CopyTo(expected, offset);
            }

            for (int b = 0; b < blocks; b++)
            {
                Write(Checks.RandomBytes(random, sub), (long)b * blockSize); // sub-block 0: partial, fill queued
            }
            SpinWait.SpinUntil(() => lower.AsyncReads >= blocks, TimeSpan.FromSeconds(10));
            Assert.That(lower.AsyncReads, Is.GreaterThanOrEqualTo(blocks), "the fills started");
            for (int b = 0; b < blocks; b++)
            {
                long start = (long)b * blockSize;
                // Aligned sub-blocks, an unaligned piece straddling sub-blocks, and the last byte of the block.
                Write(Checks.RandomBytes(random, 3 * sub), start + (10 * sub));
                Write(Checks.RandomBytes(random, sub + 3), start + (30 * sub) - 1);
                Write([0xAB], start + blockSize - 1);
                if (file.GetBlockState(start) == BlockState.Partial)
                {
                    landedDuringFill++;
                }
            }
            if (!useAsync)
            {
                // (Asynchronous edge merges wait for the slow lower themselves, so the fills may be done by then.)
                Assert.That(landedDuringFill, Is.GreaterThan(0), "some writes landed while their block's fill was in flight");
            }
            file.WaitForCopyUps();
            Assert.That(file.GetInfo().BlocksPartial, Is.Zero);
            Assert.That(Workload.ReadAll(file).AsSpan().SequenceEqual(expected), Is.True, $"seed {seed}: a fill overwrote a write");
        }
        Checks.AssertClean(upper);
        using (BCowFile file = BCowFile.Open(upper, lowerStorage, new BCowOpenOptions { ReadOnly = true }))
        {
            Assert.That(Workload.ReadAll(file).AsSpan().SequenceEqual(expected), Is.True, $"seed {seed}: after reopening");
        }
        TestContext.Out.WriteLine($"{landedDuringFill} of {blocks} blocks written while filling");
    }

    [Test]
    [Repeat(40)]
    public void WritesPunchesAndFlushesRacingLeaveEveryCommitConsistent([Values(4096, 65536)] int blockSize)
    {
        int seed = Environment.TickCount ^ blockSize;
        TestContext.Out.WriteLine($"seed {seed}");
        const int blocks = 16;
        byte[] lowerBytes = Checks.RandomBytes(new Random(seed), blocks * blockSize);
        var lower = MemoryStorage.FromBytes(lowerBytes, "lower", canWrite: false);
        var owners = new Owners(blockSize, lowerBytes);
        var upper = new FaultInjectingStorage(name: "upper");
        // Thread t keeps, for its own bytes, what they must hold at the end.
        byte[][] mirrors = Enumerable.Range(0, Threads).Select(_ => (byte[])lowerBytes.Clone()).ToArray();
        long half = blocks / 2 * blockSize;
        // Second half: whole blocks owned round-robin, so that punches free whole blocks (the map's zero state).
        int OwnerOf(long p) => p < half ? owners.OwnerOf(p) : (int)(p / blockSize % Threads);
        var failures = new ConcurrentQueue<string>();
        int commitsChecked = 0;
        using (BCowFile file = BCowFile.Create(upper, lower, new BCowCreateOptions { BlockSize = blockSize }))
        {
            bool done = false;
            var writers = Enumerable.Range(0, Threads).Select(t => (Func<Task>)(async () =>
            {
                var random = new Random(seed + t);
                byte[] mirror = mirrors[t];
                for (int round = 0; round < 150; round++)
                {
                    int version = round + 1;
                    if (random.Next(2) == 0)
                    {
                        // A chunk of the first half.
                        int chunk = (random.Next((int)(half / owners.Chunk / Threads)) * Threads) + t;
                        long start = (long)chunk * owners.Chunk;
                        int length = (int)Math.Min(owners.Chunk, half - start);
                        if (length <= 0)
                        {
                            continue;
                        }
                        if (random.Next(5) == 0)
                        {
                            await file.PunchHoleAsync(start, length);
                            mirror.AsSpan((int)start, length).Clear();
                        }
                        else
                        {
                            byte[] data = new byte[length];
                            Array.Fill(data, Owners.Tag(t, version));
                            await file.WriteAtAsync(data, start);
                            data.CopyTo(mirror, start);
                        }
                    }
                    else
                    {
                        // A whole block of the second half: punched whole, or written in part.
                        long block = (blocks / 2) + (random.Next(blocks / 2 / Threads) * Threads) + t;
                        long start = block * blockSize;
                        if (random.Next(3) == 0)
                        {
                            file.PunchHole(start, blockSize);
                            mirror.AsSpan((int)start, blockSize).Clear();
                        }
                        else
                        {
                            int from = random.Next(blockSize);
                            byte[] data = new byte[random.Next(1, blockSize - from + 1)];
                            Array.Fill(data, Owners.Tag(t, version));
                            file.WriteAt(data, start + from);
                            data.CopyTo(mirror, start + from);
                        }
                    }
                }
            })).ToList();
            var flusher = (Func<Task>)(async () =>
            {
                int n = 0;
                do // at least one commit checked, even when the writers finish before the flusher first runs (seen under load)
                {
                    if (n++ % 2 == 0)
                    {
                        file.Flush();
                    }
                    else
                    {
                        await file.FlushAsync();
                    }
                    // What a power cut now would leave: must open, check clean of corruption, and hold only allowed bytes.
                    MemoryStorage image = upper.CrashImage();
                    BCowCheckResult check = BCowChecker.Check(image);
                    if (check.Corruptions.Count > 0)
                    {
                        failures.Enqueue($"commit {n}: {string.Join("; ", check.Corruptions)}");
                        return;
                    }
                    using BCowFile committed = BCowFile.Open(image, lower, new BCowOpenOptions { ReadOnly = true });
                    byte[] content = Workload.ReadAll(committed);
                    for (int p = 0; p < content.Length; p++)
                    {
                        byte b = content[p];
                        if (b != lowerBytes[p] && b != 0 && b >> 5 != OwnerOf(p))
                        {
                            failures.Enqueue($"commit {n}: byte {p} is {b}, owner {OwnerOf(p)}");
                            return;
                        }
                    }
                    Interlocked.Increment(ref commitsChecked);
                }
                while (!Volatile.Read(ref done));
            });
            Task flushing = Task.Run(flusher);
            Task[] writing = writers.Select(Task.Run).ToArray();
            Assert.That(Task.WaitAll(writing, TimeSpan.FromSeconds(120)), Is.True, "writers finished");
            Volatile.Write(ref done, true);
            Assert.That(flushing.Wait(TimeSpan.FromSeconds(60)), Is.True, "flusher finished");
            flushing.GetAwaiter().GetResult();
            Assert.That(failures, Is.Empty, $"seed {seed}");
            Assert.That(commitsChecked, Is.GreaterThan(0));
            TestContext.Out.WriteLine($"{commitsChecked} commits checked while writing");

            byte[] expected = new byte[lowerBytes.Length];
            for (int p = 0; p < expected.Length; p++)
            {
                expected[p] = mirrors[OwnerOf(p)][p];
            }
            byte[] actual = Workload.ReadAll(file);
            if (!actual.AsSpan().SequenceEqual(expected))
            {
                int p = actual.AsSpan().CommonPrefixLength(expected);
                int q = p;
                while (q < actual.Length && actual[q] != expected[q])
                {
                    q++;
                }
                Assert.Fail($"seed {seed}: bytes {p}..{q} are {actual[p]} (thread {actual[p] >> 5}), expected {expected[p]} (owner {OwnerOf(p)}, lower {lowerBytes[p]}); block {p / blockSize} is {file.GetBlockState(p)}");
            }
            file.Flush();
            MemoryStorage image = upper.CrashImage();
            using (BCowFile committed = BCowFile.Open(image, lower, new BCowOpenOptions { ReadOnly = true }))
            {
                Assert.That(Workload.ReadAll(committed).AsSpan().SequenceEqual(expected), Is.True, $"seed {seed}: the last flush holds every write");
            }
        }
        Checks.AssertClean(upper);
    }

    [Test]
    [Repeat(40)]
    public void SetLengthRacingWritesNeverShowsHiddenLowerBytes([Values(4096, 65536)] int blockSize)
    {
        int seed = Environment.TickCount ^ blockSize;
        TestContext.Out.WriteLine($"seed {seed}");
        const int blocks = 12;
        byte[] lowerBytes = Checks.RandomBytes(new Random(seed), blocks * blockSize);
        var lower = MemoryStorage.FromBytes(lowerBytes, "lower", canWrite: false);
        var owners = new Owners(blockSize, lowerBytes);
        var upper = new MemoryStorage("upper");
        long minLength = lowerBytes.Length;
        var failures = new ConcurrentQueue<string>();
        using (BCowFile file = BCowFile.Create(upper, lower, new BCowCreateOptions { BlockSize = blockSize }))
        {
            bool done = false;
            var work = new List<Func<Task>>();
            for (int t = 0; t < Threads; t++)
            {
                int thread = t;
                work.Add(async () =>
                {
                    var random = new Random(seed + thread);
                    int chunks = lowerBytes.Length / owners.Chunk;
                    for (int round = 0; round < 200; round++)
                    {
                        int chunk = (random.Next(chunks / Threads) * Threads) + thread;
                        byte[] data = new byte[owners.Chunk];
                        Array.Fill(data, Owners.Tag(thread, round));
                        try
                        {
                            if (thread % 2 == 0)
                            {
                                file.WriteAt(data, (long)chunk * owners.Chunk);
                            }
                            else
                            {
                                await file.WriteAtAsync(data, (long)chunk * owners.Chunk);
                            }
                            byte[] back = new byte[blockSize];
                            int n = await file.ReadAtAsync(back, random.NextInt64(lowerBytes.Length));
                            _ = n;
                        }
                        catch (Exception e)
                        {
                            failures.Enqueue($"writer {thread}: {e}");
                            return;
                        }
                    }
                });
            }
            work.Add(async () =>
            {
                var random = new Random(seed ^ 77);
                while (!Volatile.Read(ref done))
                {
                    long length = random.NextInt64(lowerBytes.Length / 4, lowerBytes.Length + 1);
                    try
                    {
                        if (random.Next(2) == 0)
                        {
                            file.SetLength(length);
                        }
                        else
                        {
                            await file.SetLengthAsync(length);
                        }
                        if (random.Next(4) == 0)
                        {
                            file.Flush();
                        }
                    }
                    catch (Exception e)
                    {
                        failures.Enqueue($"resizer: {e}");
                        return;
                    }
                    Interlocked.Exchange(ref minLength, Math.Min(Interlocked.Read(ref minLength), length));
                }
            });
            Task[] tasks = work.Select(Task.Run).ToArray();
            Assert.That(Task.WaitAll(tasks.Take(Threads).ToArray(), TimeSpan.FromSeconds(120)), Is.True, "writers finished");
            Volatile.Write(ref done, true);
            Assert.That(tasks[^1].Wait(TimeSpan.FromSeconds(30)), Is.True, "resizer finished");
            Assert.That(failures, Is.Empty, $"seed {seed}");
            file.WaitForCopyUps();
            byte[] content = Workload.ReadAll(file);
            // Lower bytes at or beyond the smallest size ever set are hidden for good.
            Assert.That(owners.Violation(content, 0, zerosAllowed: true, lowerVisibleBelow: minLength), Is.Null, $"seed {seed}");
        }
        Checks.AssertClean(upper);
        using (BCowFile file = BCowFile.Open(upper, lower, new BCowOpenOptions { ReadOnly = true }))
        {
            Assert.That(owners.Violation(Workload.ReadAll(file), 0, zerosAllowed: true, lowerVisibleBelow: minLength), Is.Null, $"seed {seed}: after reopening");
        }
    }
}
