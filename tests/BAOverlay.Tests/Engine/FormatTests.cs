using System.Text;
using BAOverlay.Format;
using BAOverlay.Storage;

namespace BAOverlay.Tests.Engine;

/// <summary>The on-disk format pieces (header, entries, CRC-32C), header slot alternation, and space efficiency.</summary>
public class FormatTests
{
    private static BCowHeader SampleHeader(string lowerPath = "../images/base.img") => new()
    {
        IncompatibleFeatures = BCowHeader.FeatureSampledLowerIdentity, // the identity below is the sampled kind
        CompatibleFeatures = 0x8000_0000_0000_0001,
        Generation = 0x1234_5678_9ABC,
        BlockSizeLog2 = 14,
        Dirty = true,
        HasLower = true,
        VirtualSize = (3L << 40) + 5,
        LowerLimit = 1L << 39,
        RootTableOffset = 1L << 30,
        RootTableEntries = Layout.RootEntryCount((3L << 40) + 5, 14),
        RootTableCrc = 0xDEADBEEF,
        Lower = new LowerIdentity(1L << 40, 1_700_000_000_123_456_789, 0xFEDC_BA98_7654_3210, 0xCAFEBABE),
        LowerPath = lowerPath,
    };

    [Test]
    public void AHeaderRoundTripsThroughASlot([Values("", "../images/base.img", "/abs/ütf8-päth/ñ.img")] string lowerPath)
    {
        BCowHeader header = SampleHeader(lowerPath) with { HasLower = true };
        byte[] slot = new byte[Layout.HeaderSlotSize];
        header.Write(slot);
        Assert.That(slot.AsSpan(0, 8).ToArray(), Is.EqualTo("BCoW\r\n\u001a\n"u8.ToArray()));
        BCowHeader? read = BCowHeader.TryRead(slot, out string? problem);
        Assert.That(problem, Is.Null);
        Assert.That(read, Is.EqualTo(header));
        Assert.That(slot.AsSpan(BCowHeader.FixedLength + Encoding.UTF8.GetByteCount(lowerPath)).ContainsAnyExcept((byte)0), Is.False, "the rest of the slot is zero");
    }

    /// <summary>bcow commit's state: flag bit 2 and the pending identity in bytes 116..128, which stay reserved (zero)
    /// without the flag.</summary>
    [Test]
    public void ACommittingHeaderRoundTripsItsPendingIdentity()
    {
        BCowHeader header = SampleHeader() with { PendingLower = new LowerIdentity(5L << 30, 0, 0, 0x12345678) };
        byte[] slot = new byte[Layout.HeaderSlotSize];
        header.Write(slot);
        Assert.That(BitConverter.ToUInt32(slot, 44) & BCowHeader.FlagCommitting, Is.Not.Zero);
        Assert.That(BCowHeader.TryRead(slot, out string? problem), Is.EqualTo(header), problem);

        (header with { PendingLower = null }).Write(slot);
        Assert.That(slot.AsSpan(116, 12).ContainsAnyExcept((byte)0), Is.False, "reserved without the flag");
        Assert.That(BCowHeader.TryRead(slot, out _)!.PendingLower, Is.Null);
        slot[120] = 1;
        FixCrc(slot);
        Assert.That(BCowHeader.TryRead(slot, out problem), Is.Null);
        Assert.That(problem, Does.Contain("reserved"));
    }

    private static void FixCrc(byte[] slot)
    {
        int length = BitConverter.ToInt32(slot, 12);
        BitConverter.TryWriteBytes(slot.AsSpan(112), 0u);
        BitConverter.TryWriteBytes(slot.AsSpan(112), Crc32C.Compute(slot.AsSpan(0, length)));
    }

    [Test]
    public void AHeaderWithoutLowerRoundTripsAndRejectsAStrayLowerLimit()
    {
        BCowHeader header = SampleHeader("") with { HasLower = false, LowerLimit = 0, Lower = default, IncompatibleFeatures = 0 };
        byte[] slot = new byte[Layout.HeaderSlotSize];
        header.Write(slot);
        Assert.That(BCowHeader.TryRead(slot, out _), Is.EqualTo(header));
        (header with { LowerLimit = 10 }).Write(slot);
        Assert.That(BCowHeader.TryRead(slot, out string? problem), Is.Null);
        Assert.That(problem, Does.Contain("lower limit"));
    }

    [Test]
    public void AHeaderRefusesALowerPathLongerThanTheLimit()
    {
        Assert.That(() => SampleHeader(new string('x', Layout.MaxLowerPathBytes + 1)).Write(new byte[Layout.HeaderSlotSize]), Throws.ArgumentException);
        byte[] slot = new byte[Layout.HeaderSlotSize];
        BCowHeader longest = SampleHeader(new string('x', Layout.MaxLowerPathBytes));
        longest.Write(slot);
        Assert.That(BCowHeader.TryRead(slot, out _), Is.EqualTo(longest));
    }

    [Test]
    public void EveryFlippedBitOfAHeaderSlotIsDetected()
    {
        byte[] slot = new byte[Layout.HeaderSlotSize];
        SampleHeader().Write(slot);
        int length = BCowHeader.FixedLength + Encoding.UTF8.GetByteCount(SampleHeader().LowerPath);
        for (int bit = 0; bit < length * 8; bit++)
        {
            byte[] damaged = (byte[])slot.Clone();
            damaged[bit / 8] ^= (byte)(1 << (bit % 8));
            Assert.That(BCowHeader.TryRead(damaged, out string? problem), Is.Null, $"bit {bit}");
            Assert.That(problem, Is.Not.Null.And.Not.Empty);
        }
        Assert.That(BCowHeader.TryRead(slot.AsSpan(0, 100), out string? shortProblem), Is.Null);
        Assert.That(shortProblem, Does.Contain("shorter"));
    }

    [Test]
    public void BlockEntriesRoundTripAndValidate()
    {
        var cases = new (BlockEntry Entry, BlockState State, bool Valid)[]
        {
            (BlockEntry.Lower, BlockState.Lower, true),
            (BlockEntry.Zero, BlockState.Zero, true),
            (BlockEntry.Present(Layout.DataStart), BlockState.Present, true),
            (BlockEntry.Present(1L << 47), BlockState.Present, true),
            (BlockEntry.Partial(1L << 20, 0x8000_0000_0000_0001), BlockState.Partial, true),
            (BlockEntry.Present(4096), BlockState.Present, false),
            (BlockEntry.Partial(1L << 20, 0), BlockState.Partial, false),
            (BlockEntry.Partial(1L << 20, ulong.MaxValue), BlockState.Partial, false),
            (new BlockEntry(BlockEntry.Present(1L << 20).Descriptor | 0x800, 0), BlockState.Present, false),
            (new BlockEntry(BlockEntry.Present(1L << 20).Descriptor, 1), BlockState.Present, false),
            (new BlockEntry(1L << 20, 0), BlockState.Lower, false),
            (new BlockEntry(1, 7), BlockState.Zero, false),
        };
        foreach (var (entry, state, valid) in cases)
        {
            byte[] bytes = new byte[Layout.EntrySize];
            entry.Write(bytes);
            BlockEntry read = BlockEntry.Read(bytes);
            Assert.That(read, Is.EqualTo(entry));
            Assert.That(read.State, Is.EqualTo(state), $"{entry}");
            Assert.That(read.Validate() is null, Is.EqualTo(valid), $"{entry}: {read.Validate()}");
            Assert.That(read.IsAllocated, Is.EqualTo(state is BlockState.Present or BlockState.Partial));
        }
        Assert.That(BlockEntry.Partial(0x1234_5000, 5).Offset, Is.EqualTo(0x1234_5000));
    }

    [Test]
    public void PointerEntriesRoundTripAndFlagReservedBytes()
    {
        var entry = new PointerEntry(0x7654_3000, 0x89AB_CDEF);
        byte[] bytes = new byte[Layout.EntrySize];
        Array.Fill(bytes, (byte)0xFF);
        entry.Write(bytes);
        Assert.That(PointerEntry.Read(bytes, out bool clear), Is.EqualTo(entry));
        Assert.That(clear, Is.True, "Write clears the reserved bytes");
        bytes[14] = 1;
        Assert.That(PointerEntry.Read(bytes, out clear), Is.EqualTo(entry));
        Assert.That(clear, Is.False);
    }

    [Test]
    public void Crc32CMatchesTheKnownVectors()
    {
        Assert.That(Crc32C.Compute("123456789"u8), Is.EqualTo(0xE3069283u));
        Assert.That(Crc32C.Compute([]), Is.Zero);
        Assert.That(Crc32C.Compute(new byte[32]), Is.EqualTo(0x8A9136AAu), "32 zero bytes (RFC 3720 B.4)");
        byte[] ones = new byte[32];
        Array.Fill(ones, (byte)0xFF);
        Assert.That(Crc32C.Compute(ones), Is.EqualTo(0x62A8AB43u), "32 0xFF bytes (RFC 3720 B.4)");
        byte[] data = Checks.RandomBytes(new Random(1), 1000);
        uint whole = Crc32C.Compute(data);
        foreach (int split in new[] { 0, 1, 3, 7, 8, 9, 500, 999, 1000 })
        {
            uint state = Crc32C.Append(Crc32C.Append(Crc32C.Start, data.AsSpan(0, split)), data.AsSpan(split));
            Assert.That(Crc32C.Finish(state), Is.EqualTo(whole), $"split at {split}");
        }
    }

    [Test]
    public void CommitsAlternateBetweenTheTwoHeaderSlots()
    {
        var upper = new MemoryStorage("upper");
        var lower = MemoryStorage.FromBytes(Checks.RandomBytes(new Random(2), 100_000), "lower", canWrite: false);
        using (BCowFile file = BCowFile.Create(upper, lower, new BCowCreateOptions { BlockSize = 4096 }))
        {
            ulong previous = file.GetInfo().Generation;
            for (int i = 0; i < 6; i++)
            {
                file.WriteAt([(byte)i], i * 5000);
                file.Flush();
                ulong generation = BCowFile.ReadHeader(upper).Generation;
                Assert.That(generation, Is.EqualTo(previous + 1), "each commit adds one");
                BCowHeader? current = SlotHeader(upper, (int)(generation % 2));
                BCowHeader? older = SlotHeader(upper, (int)((generation + 1) % 2));
                Assert.That(current?.Generation, Is.EqualTo(generation), "the current slot");
                Assert.That(older?.Generation, Is.EqualTo(generation - 1), "the other slot keeps the previous commit");
                previous = generation;
            }
        }
        Assert.That(BCowFile.ReadHeader(upper).Dirty, Is.False, "closing clears the dirty flag");
        Checks.AssertClean(upper);
    }

    private static BCowHeader? SlotHeader(IBlockStorage storage, int slot)
    {
        byte[] bytes = new byte[Layout.HeaderSlotSize];
        storage.ReadAt(bytes, (long)slot * Layout.HeaderSlotSize);
        return BCowHeader.TryRead(bytes, out _);
    }

    [Test]
    public void AOneTebibyteFileWithOneWrittenBlockTakesOnlyKibibytes([Values(4096, 65536)] int blockSize)
    {
        using var dir = new TempDir();
        string path = dir.File("huge.bcow");
        byte[] data = Checks.RandomBytes(new Random(3), 4096);
        using (BCowFile file = BCowFile.Create(path, new BCowCreateOptions { VirtualSize = 1L << 40, BlockSize = blockSize }))
        {
            file.WriteAt(data, (1L << 39) + 8192);
        }
        using (BCowFile file = BCowFile.Open(path, new BCowOpenOptions { ReadOnly = true }))
        {
            BCowInfo info = file.GetInfo();
            TestContext.Out.WriteLine($"file length {info.FileLength}, allocated {info.AllocatedBytes}");
            Assert.That(info.VirtualSize, Is.EqualTo(1L << 40));
            Assert.That(info.BlocksPresent, Is.EqualTo(1));
            // Headers, one L1 and one L2 page, the block, and the root table (16 bytes per 2^16 blocks: 64 KiB here
            // with 4 KiB blocks, one page with 64 KiB blocks).
            long rootTable = Layout.RootTableBytes(Layout.RootEntryCount(1L << 40, System.Numerics.BitOperations.Log2((uint)blockSize)));
            Assert.That(info.AllocatedBytes, Is.LessThanOrEqualTo((64 * 1024) + rootTable), "allocated upper space");
            byte[] back = new byte[4096 + 2];
            file.ReadAt(back, (1L << 39) + 8191);
            Assert.That(back.AsSpan(1, 4096).SequenceEqual(data), Is.True);
            Assert.That(back[0] == 0 && back[^1] == 0, Is.True);
        }
        Checks.AssertClean(path);
    }

    [Test]
    public void UpperSpaceGrowsWithTheBlocksWrittenNotTheVirtualSize([Values(4096, 65536)] int blockSize)
    {
        using var dir = new TempDir();
        string path = dir.File("space.bcow");
        long virtualSize = 4L << 30;
        int seed = Environment.TickCount;
        TestContext.Out.WriteLine($"seed {seed}");
        var random = new Random(seed);
        var written = new HashSet<long>();
        using (BCowFile file = BCowFile.Create(path, new BCowCreateOptions { VirtualSize = virtualSize, BlockSize = blockSize }))
        {
            for (int i = 0; i < 200; i++)
            {
                long offset = random.NextInt64(virtualSize - 10_000);
                file.WriteAt(Checks.RandomBytes(random, random.Next(1, 10_000)), offset);
                for (long b = offset / blockSize; b <= (offset + 9_999) / blockSize; b++)
                {
                    written.Add(b);
                }
                if (i % 50 == 0)
                {
                    file.Flush();
                }
            }
        }
        using (BCowFile file = BCowFile.Open(path, new BCowOpenOptions { ReadOnly = true }))
        {
            BCowInfo info = file.GetInfo();
            long k = info.BlocksPresent + info.BlocksPartial;
            Assert.That(k, Is.LessThanOrEqualTo(written.Count));
            long limit = (k * blockSize) + (virtualSize / 200) + (64 * 1024);
            TestContext.Out.WriteLine($"{k} blocks, allocated {info.AllocatedBytes}, limit {limit}");
            Assert.That(info.AllocatedBytes, Is.LessThanOrEqualTo(limit));
        }
        Checks.AssertClean(path);
    }
}
