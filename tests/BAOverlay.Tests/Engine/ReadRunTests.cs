namespace BAOverlay.Tests.Engine;

/// <summary>
/// Reads that span many blocks are done as one I/O per run of like blocks, checked afterwards against the blocks'
/// write versions. With writers rewriting whole blocks meanwhile, every block a reader sees must still be wholly the
/// bytes before or after one write (never a mix), through the sync and the async API, from lower and from upper.
/// </summary>
public class ReadRunTests
{
    [Test]
    public void MultiBlockReadsSeeEachBlockBeforeOrAfterAConcurrentWrite([Values(4096, 65536)] int blockSize, [Values] bool async)
    {
        using var dir = new TempDir();
        const int Blocks = 64;
        File.WriteAllBytes(dir.File("lower"), Enumerable.Repeat((byte)0xAA, Blocks * blockSize).ToArray());
        using (BCowFile file = BCowFile.Create(dir.File("upper"), new BCowCreateOptions { LowerPath = dir.File("lower"), BlockSize = blockSize }))
        {
            using var stop = new CancellationTokenSource(TimeSpan.FromSeconds(1.5));
            var writers = Enumerable.Range(0, 2).Select(w => Task.Run(() =>
            {
                var random = new Random(w);
                byte[] data = new byte[blockSize];
                for (int round = 0; !stop.IsCancellationRequested; round++)
                {
                    Array.Fill(data, (byte)(round % 200 + 1));
                    file.WriteAt(data, (long)random.Next(Blocks) * blockSize);
                }
            })).ToArray();
            var random = new Random(9);
            byte[] buffer = new byte[8 * blockSize];
            long reads = 0;
            while (!stop.IsCancellationRequested)
            {
                long offset = (long)random.Next(Blocks - 8) * blockSize;
                int n = async ? file.ReadAtAsync(buffer, offset).AsTask().GetAwaiter().GetResult() : file.ReadAt(buffer, offset);
                Assert.That(n, Is.EqualTo(buffer.Length));
                for (int b = 0; b < 8; b++)
                {
                    ReadOnlySpan<byte> block = buffer.AsSpan(b * blockSize, blockSize);
                    Assert.That(block.IndexOfAnyExcept(block[0]), Is.EqualTo(-1), $"block {offset / blockSize + b} torn after {reads} reads");
                }
                reads++;
            }
            Task.WaitAll(writers);
        }
        Checks.AssertClean(dir.File("upper"));
    }
}
