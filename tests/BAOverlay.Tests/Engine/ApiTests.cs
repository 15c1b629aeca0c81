using BAOverlay.Format;
using BAOverlay.Storage;

namespace BAOverlay.Tests.Engine;

/// <summary>The public surface: the stream adapter, ownership and disposal, read-only opens, file-based create and open,
/// and the limits.</summary>
public class ApiTests
{
    private static MemoryStorage Lower(int length, int seed = 1) =>
        MemoryStorage.FromBytes(Checks.RandomBytes(new Random(seed), length), "lower", canWrite: false);

    [Test]
    public void TheStreamAdapterReadsWritesSeeksAndSizesLikeTheFile()
    {
        MemoryStorage lower = Lower(100_000);
        var upper = new MemoryStorage("upper");
        byte[] expected = lower.ToArray();
        using (BCowFile file = BCowFile.Create(upper, lower, new BCowCreateOptions { BlockSize = 4096 }))
        using (Stream stream = file.AsStream())
        {
            Assert.That(stream.CanRead && stream.CanSeek && stream.CanWrite, Is.True);
            Assert.That(stream.Length, Is.EqualTo(100_000));
            byte[] data = Checks.RandomBytes(new Random(2), 7000);
            stream.Position = 5000;
            stream.Write(data, 0, data.Length);
            data.CopyTo(expected, 5000);
            Assert.That(stream.Position, Is.EqualTo(12_000));

            Assert.That(stream.Seek(-10, SeekOrigin.End), Is.EqualTo(99_990));
            byte[] tail = new byte[100];
            Assert.That(stream.Read(tail, 0, 100), Is.EqualTo(10), "a read stops at the end");
            Assert.That(tail.AsSpan(0, 10).ToArray(), Is.EqualTo(expected.AsSpan(99_990).ToArray()));
            Assert.That(stream.Read(tail, 0, 100), Is.Zero, "at the end");

            stream.Seek(4990, SeekOrigin.Begin);
            stream.Seek(10, SeekOrigin.Current);
            byte[] back = new byte[7000];
            Assert.That(stream.ReadAsync(back, 0, back.Length).GetAwaiter().GetResult(), Is.EqualTo(7000));
            Assert.That(back, Is.EqualTo(data));

            stream.Position = 100_000;
            stream.WriteAsync(new byte[] { 9, 8, 7 }, 0, 3).GetAwaiter().GetResult();
            Assert.That(stream.Length, Is.EqualTo(100_003), "a write at the end grows the file");
            expected = [.. expected, 9, 8, 7];

            stream.SetLength(50_000);
            Assert.That(file.Length, Is.EqualTo(50_000));
            Array.Resize(ref expected, 50_000);
            stream.Flush();
            Assert.That(() => stream.Position = -1, Throws.InstanceOf<ArgumentOutOfRangeException>());
        }
        using (BCowFile file = BCowFile.Open(upper, lower, new BCowOpenOptions { ReadOnly = true }))
        {
            Assert.That(Workload.ReadAll(file), Is.EqualTo(expected));
            using Stream stream = file.AsStream();
            Assert.That(stream.CanWrite, Is.False);
            Assert.That(() => stream.Write([1], 0, 1), Throws.InstanceOf<NotSupportedException>());
        }
        Checks.AssertClean(upper);
    }

    [Test]
    public void DisposingTheStreamClosesTheFileOnlyWhenNotLeftOpen()
    {
        var upper = new MemoryStorage("upper");
        BCowFile file = BCowFile.Create(upper, null, new BCowCreateOptions { VirtualSize = 10_000 });
        file.AsStream(leaveOpen: true).Dispose();
        Assert.That(() => file.WriteAt([1], 0), Throws.Nothing, "left open");
        file.AsStream(leaveOpen: false).Dispose();
        Assert.That(() => file.WriteAt([1], 0), Throws.InstanceOf<ObjectDisposedException>(), "closed with the stream");
        Checks.AssertClean(upper);
    }

    [Test]
    public void DisposeIsIdempotentAndDisposesOwnedStoragesExactlyOnce([Values] bool owns)
    {
        var upper = new WrappedStorage(new MemoryStorage("upper"));
        var lower = new WrappedStorage(Lower(20_000));
        BCowFile file = BCowFile.Create(upper, lower, new BCowCreateOptions { BlockSize = 4096 }, ownsStorage: owns);
        file.WriteAt([1, 2, 3], 5000);
        file.Dispose();
        file.Dispose();
        file.DisposeAsync().AsTask().GetAwaiter().GetResult();
        Assert.That(upper.Disposals, Is.EqualTo(owns ? 1 : 0), "upper");
        Assert.That(lower.Disposals, Is.EqualTo(owns ? 1 : 0), "lower");
        Assert.That(() => file.ReadAt(new byte[1], 0), Throws.InstanceOf<ObjectDisposedException>());
        Assert.That(() => file.WriteAt([1], 0), Throws.InstanceOf<ObjectDisposedException>());
        Checks.AssertClean(upper.Inner);
    }

    [Test]
    public void AFailedOpenDisposesOwnedStoragesExactlyOnce([Values] bool owns)
    {
        var upper = new WrappedStorage(new MemoryStorage("not a bcow file"));
        upper.WriteAt(new byte[10_000], 0);
        var lower = new WrappedStorage(Lower(1000));
        Assert.That(() => BCowFile.Open(upper, lower, ownsStorage: owns), Throws.InstanceOf<BCowFormatException>().With.Message.Contains("not a bcow file"));
        Assert.That(upper.Disposals, Is.EqualTo(owns ? 1 : 0));
        Assert.That(lower.Disposals, Is.EqualTo(owns ? 1 : 0));
    }

    [Test]
    public void AReadOnlyOpenRefusesWritesAndWritesNothing()
    {
        MemoryStorage lower = Lower(50_000);
        var upper = new MemoryStorage("upper");
        using (BCowFile file = BCowFile.Create(upper, lower, new BCowCreateOptions { BlockSize = 4096 }))
        {
            file.WriteAt(Checks.RandomBytes(new Random(3), 9000), 1000);
        }
        var watched = new FaultInjectingStorage(upper, "watched");
        using (BCowFile file = BCowFile.Open(watched, lower, new BCowOpenOptions { ReadOnly = true }))
        {
            Assert.That(file.CanWrite, Is.False);
            Assert.That(() => file.WriteAt([1], 0), Throws.InstanceOf<NotSupportedException>());
            Assert.That(() => file.WriteAtAsync(new byte[] { 1 }, 0).AsTask().GetAwaiter().GetResult(), Throws.InstanceOf<NotSupportedException>());
            Assert.That(() => file.SetLength(10), Throws.InstanceOf<NotSupportedException>());
            Assert.That(() => file.PunchHole(0, 4096), Throws.InstanceOf<NotSupportedException>());
            file.Flush();
            Workload.ReadAll(file);
        }
        Assert.That(watched.WriteCount, Is.Zero, "writes to the storage");
        Assert.That(watched.FlushCount, Is.Zero, "flushes of the storage");
        Checks.AssertClean(upper);
    }

    [Test]
    public void AWritableOpenOverReadOnlyStorageIsRefused()
    {
        var upper = new MemoryStorage("upper");
        BCowFile.Create(upper, null, new BCowCreateOptions { VirtualSize = 4096 }).Dispose();
        MemoryStorage readOnly = upper.CloneAs("read-only upper", canWrite: false);
        Assert.That(() => BCowFile.Open(readOnly, null), Throws.InstanceOf<IOException>());
        using (BCowFile.Open(readOnly, null, new BCowOpenOptions { ReadOnly = true }))
        {
        }
        Checks.AssertClean(upper);
    }

    [Test]
    public void AFileCreatedWithARelativeLowerPathReopensAfterBothMove()
    {
        using var dir = new TempDir();
        Directory.CreateDirectory(dir.File("a"));
        string lowerPath = dir.File("a/lower.img");
        byte[] content = Checks.RandomBytes(new Random(4), 200_000);
        File.WriteAllBytes(lowerPath, content);
        string relativeLower = Path.GetRelativePath(Environment.CurrentDirectory, lowerPath);
        Assert.That(Path.IsPathRooted(relativeLower), Is.False);
        byte[] data = Checks.RandomBytes(new Random(5), 3000);
        using (BCowFile file = BCowFile.Create(dir.File("a/upper.bcow"), new BCowCreateOptions { LowerPath = relativeLower }))
        {
            Assert.That(file.GetInfo().LowerPath, Is.EqualTo("lower.img"), "stored relative to the B-CoW file");
            file.WriteAt(data, 70_000);
        }
        Directory.Move(dir.File("a"), dir.File("b"));
        data.CopyTo(content, 70_000);
        using (BCowFile file = BCowFile.Open(dir.File("b/upper.bcow"), new BCowOpenOptions { ReadOnly = true }))
        {
            Assert.That(file.Name, Is.EqualTo(dir.File("b/upper.bcow")));
            Assert.That(Workload.ReadAll(file), Is.EqualTo(content));
        }
        Checks.AssertClean(dir.File("b/upper.bcow"));
    }

    [Test]
    public void CreateRefusesAnExistingFileUnlessOverwrite()
    {
        using var dir = new TempDir();
        string path = dir.File("x.bcow");
        File.WriteAllText(path, "precious");
        Assert.That(() => BCowFile.Create(path, new BCowCreateOptions { VirtualSize = 4096 }),
            Throws.InstanceOf<IOException>().With.Message.Contains("already exists"));
        Assert.That(File.ReadAllText(path), Is.EqualTo("precious"), "left alone");
        using (BCowFile file = BCowFile.Create(path, new BCowCreateOptions { VirtualSize = 4096, Overwrite = true }))
        {
            file.WriteAt([1, 2, 3], 0);
        }
        using (BCowFile file = BCowFile.Open(path))
        {
            byte[] b = new byte[3];
            file.ReadAt(b, 0);
            Assert.That(b, Is.EqualTo(new byte[] { 1, 2, 3 }));
        }
        Checks.AssertClean(path);
    }

    [Test]
    public void CreateRefusesBadBlockSizesAndSizes([Values(0, 1000, 2048, 4097, 3 * 4096, 2 << 20)] int blockSize)
    {
        var upper = new MemoryStorage("upper");
        Assert.That(() => BCowFile.Create(upper, null, new BCowCreateOptions { BlockSize = blockSize, VirtualSize = 10 }), Throws.InstanceOf<ArgumentException>());
        Assert.That(() => BCowFile.Create(upper, null, new BCowCreateOptions()), Throws.InstanceOf<ArgumentException>(), "no size without lower");
        Assert.That(() => BCowFile.Create(upper, null, new BCowCreateOptions { VirtualSize = Layout.MaxVirtualSize + 1 }), Throws.InstanceOf<ArgumentException>());
    }

    [Test]
    public void AWriteEndingBeyondTheLargestSizeThrowsIOException(
        [Values(Layout.MaxVirtualSize - 1, Layout.MaxVirtualSize, long.MaxValue - 5, long.MaxValue)] long offset,
        [Values] bool useAsync)
    {
        var upper = new MemoryStorage("upper");
        using (BCowFile file = BCowFile.Create(upper, null, new BCowCreateOptions { VirtualSize = 4096 }))
        {
            byte[] data = new byte[10];
            if (useAsync)
            {
                Assert.That(() => file.WriteAtAsync(data, offset).AsTask().GetAwaiter().GetResult(), Throws.InstanceOf<IOException>().With.Message.Contains("largest size"));
            }
            else
            {
                Assert.That(() => file.WriteAt(data, offset), Throws.InstanceOf<IOException>().With.Message.Contains("largest size"));
            }
            Assert.That(file.Length, Is.EqualTo(4096), "the size did not change");
            Assert.That(() => file.WriteAt(data, Layout.MaxVirtualSize - 10), Throws.Nothing, "a write ending exactly at the largest size");
            Assert.That(file.Length, Is.EqualTo(Layout.MaxVirtualSize));
            Assert.That(() => file.SetLength(Layout.MaxVirtualSize + 1), Throws.InstanceOf<ArgumentOutOfRangeException>());
        }
        Checks.AssertClean(upper);
    }

    [Test]
    public void PunchingWithAHugeLengthPunchesToTheEnd()
    {
        MemoryStorage lower = Lower(40_000);
        var upper = new MemoryStorage("upper");
        using (BCowFile file = BCowFile.Create(upper, lower, new BCowCreateOptions { BlockSize = 4096 }))
        {
            file.PunchHole(10_000, long.MaxValue);
            byte[] content = Workload.ReadAll(file);
            Assert.That(content.Length, Is.EqualTo(40_000));
            Assert.That(content.AsSpan(0, 10_000).ToArray(), Is.EqualTo(lower.ToArray().AsSpan(0, 10_000).ToArray()));
            Assert.That(content.AsSpan(10_000).ContainsAnyExcept((byte)0), Is.False, "everything from 10000 reads zeros");
            file.PunchHole(long.MaxValue - 1, long.MaxValue);
            Assert.That(() => file.ReadAt(new byte[10], long.MaxValue), Throws.Nothing);
        }
        Checks.AssertClean(upper);
    }

    [Test]
    public void TheExtentsDescribeTheContentExactly([Values(4096, 65536)] int blockSize)
    {
        int seed = Environment.TickCount ^ blockSize;
        TestContext.Out.WriteLine($"seed {seed}");
        var random = new Random(seed);
        MemoryStorage lower = Lower((6 * blockSize) + 1234, seed);
        var upper = new MemoryStorage("upper");
        using (BCowFile file = BCowFile.Create(upper, lower, new BCowCreateOptions { BlockSize = blockSize, Open = new BCowOpenOptions { CopyUpWorkers = 1 } }))
        {
            for (int step = 0; step < 40; step++)
            {
                long limit = file.Length + blockSize;
                switch (random.Next(5))
                {
                    case 0:
                    case 1:
                        file.WriteAt(Checks.RandomBytes(random, random.Next(1, 2 * blockSize)), random.NextInt64(limit));
                        break;
                    case 2:
                        file.PunchHole(random.NextInt64(limit), random.Next(2 * blockSize));
                        break;
                    case 3:
                        file.SetLength(random.NextInt64(blockSize, 9L * blockSize));
                        break;
                    default:
                        file.Flush();
                        break;
                }
                // Rebuilt from the extents (partial blocks included: fills may still be queued).
                byte[] content = Workload.ReadAll(file);
                byte[] lowerBytes = lower.ToArray();
                byte[] rebuilt = new byte[content.Length];
                long position = 0;
                foreach (BCowExtent extent in file.GetExtents())
                {
                    Assert.That(extent.Offset, Is.EqualTo(position), $"seed {seed} step {step}: extents are contiguous");
                    Assert.That(extent.Length, Is.GreaterThan(0));
                    switch (extent.Source)
                    {
                        case ExtentSource.Lower:
                            Array.Copy(lowerBytes, extent.Offset, rebuilt, extent.Offset, extent.Length);
                            break;
                        case ExtentSource.Upper:
                            upper.ReadAt(rebuilt.AsSpan((int)extent.Offset, (int)extent.Length), extent.UpperOffset);
                            break;
                    }
                    position += extent.Length;
                }
                Assert.That(position, Is.EqualTo(content.Length), $"seed {seed} step {step}: extents cover the file");
                Assert.That(rebuilt.AsSpan().SequenceEqual(content), Is.True, $"seed {seed} step {step}: extents rebuild the content");
            }
        }
        Checks.AssertClean(upper);
    }

    [Test]
    public void PartialBlocksLeftByAnEarlierSessionAreFilledOnAWritableOpen()
    {
        MemoryStorage lower = Lower(8 * 4096, 11);
        var upper = new MemoryStorage("upper");
        // A lower whose asynchronous reads never finish in time: the copier cannot fill before the file closes.
        using (BCowFile file = BCowFile.Create(upper, new WrappedStorage(lower, TimeSpan.FromMinutes(5)), new BCowCreateOptions { BlockSize = 4096 }))
        {
            file.WriteAt([1, 2, 3, 4], 64 * 5);
            file.WriteAt([5, 6, 7, 8], (3 * 4096) + (64 * 9));
        }
        byte[] expected;
        using (BCowFile file = BCowFile.Open(upper, lower, new BCowOpenOptions { ReadOnly = true }))
        {
            Assert.That(file.GetInfo().BlocksPartial, Is.EqualTo(2), "left partial");
            expected = Workload.ReadAll(file);
        }
        using (BCowFile file = BCowFile.Open(upper, lower, new BCowOpenOptions { ResumeCopyUps = false }))
        {
            Assert.That(file.PendingCopyUps, Is.Zero, "not resumed when asked not to");
        }
        using (BCowFile file = BCowFile.Open(upper, lower))
        {
            file.WaitForCopyUps();
            Assert.That(file.GetInfo().BlocksPartial, Is.Zero, "resumed and filled");
            Assert.That(Workload.ReadAll(file), Is.EqualTo(expected));
        }
        using (BCowFile file = BCowFile.Open(upper, lower, new BCowOpenOptions { ReadOnly = true }))
        {
            Assert.That(file.GetInfo().BlocksPresent, Is.EqualTo(2));
            bool Overlaps(BCowExtent e, long start) => e.Offset < start + 4096 && start < e.Offset + e.Length;
            Assert.That(file.GetExtents().Where(e => e.Source == ExtentSource.Lower).Any(e => Overlaps(e, 0) || Overlaps(e, 3 * 4096)), Is.False, "the filled blocks no longer read from lower");
            Assert.That(Workload.ReadAll(file), Is.EqualTo(expected));
        }
        Checks.AssertClean(upper);
    }
}
