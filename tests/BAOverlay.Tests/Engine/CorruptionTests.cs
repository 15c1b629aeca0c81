using System.Buffers.Binary;
using BAOverlay.Checking;
using BAOverlay.Format;
using BAOverlay.Storage;

namespace BAOverlay.Tests.Engine;

/// <summary>
/// Damaged B-CoW files: every header byte, every byte of the root table and of an L1 and an L2 page, random flips,
/// truncations, future versions, absurd sizes, and map entries crafted (checksums fixed up the tree) to point outside
/// the file, into the header or over each other. Each must end in <see cref="BCowFormatException"/> naming the file,
/// or in an open whose reads work; the checker never throws. Also: a lower file changed since creation is refused.
/// </summary>
public class CorruptionTests
{
    private const int BlockSize = 4096;
    private const int LowerBlocks = 300;

    private sealed record Fixture(MemoryStorage Upper, byte[] Image, MemoryStorage Lower, byte[] Content);

    private static readonly Lazy<Fixture> s_fixture = new(MakeFixture);

    /// <summary>
    /// 4 KiB blocks over a 300-block lower file (two L2 pages): partial blocks (kept partial by a lower whose
    /// asynchronous reads never finish before the copier stops), present, zero; last commit changes only the dirty
    /// flag, so the older header slot holds the same tree.
    /// </summary>
    private static Fixture MakeFixture()
    {
        var lower = MemoryStorage.FromBytes(Checks.RandomBytes(new Random(42), LowerBlocks * BlockSize), "lower", canWrite: false);
        var upper = new MemoryStorage("fixture.bcow");
        var slowLower = new WrappedStorage(lower, TimeSpan.FromMinutes(5));
        var random = new Random(43);
        using (BCowFile file = BCowFile.Create(upper, slowLower, new BCowCreateOptions { BlockSize = BlockSize }))
        {
            file.WriteAt(Checks.RandomBytes(random, 128), 64 * 3);
            file.WriteAt(Checks.RandomBytes(random, BlockSize), BlockSize);
            file.PunchHole(5 * BlockSize, BlockSize);
            file.Flush();
            file.WriteAt(Checks.RandomBytes(random, BlockSize * 2), 270L * BlockSize);
            file.WriteAt(Checks.RandomBytes(random, 64), (272L * BlockSize) + 640);
            file.WriteAt(Checks.RandomBytes(random, 3000), 2L * BlockSize);
            file.Flush();
            Assert.That(file.GetBlockState(0), Is.EqualTo(BlockState.Partial));
            Assert.That(file.GetBlockState(272L * BlockSize), Is.EqualTo(BlockState.Partial));
        }
        byte[] content;
        using (BCowFile file = BCowFile.Open(upper, lower, new BCowOpenOptions { ReadOnly = true }))
        {
            Assert.That(file.GetBlockState(0), Is.EqualTo(BlockState.Partial));
            content = Workload.ReadAll(file);
        }
        Checks.AssertClean(upper);
        return new Fixture(upper, upper.ToArray(), lower, content);
    }

    /// <summary>A copy of the fixture, holes kept (a copy through a byte array would turn them into leaked data).</summary>
    private static MemoryStorage Image(Fixture f, string name = "damaged.bcow") => f.Upper.CloneAs(name, true);

    /// <summary>Runs <paramref name="action"/> on another thread and fails when it does not finish in time (a hang or an
    /// absurd allocation loop).</summary>
    private static void WithinSeconds(int seconds, Action action, string label)
    {
        var task = Task.Run(action);
        if (!task.Wait(TimeSpan.FromSeconds(seconds)))
        {
            Assert.Fail($"{label}: did not finish within {seconds} s");
        }
        task.GetAwaiter().GetResult();
    }

    /// <summary>
    /// The file is refused with <see cref="BCowFormatException"/> naming it, or opens read-only and reads the whole
    /// file (the same content as before when <paramref name="expected"/> is given); the checker never throws.
    /// Returns true when it opened.
    /// </summary>
    private static bool AssertRefusedOrReadable(MemoryStorage image, Fixture f, byte[]? expected, string label)
    {
        bool opened = false;
        WithinSeconds(20, () =>
        {
            BCowCheckResult? check = null;
            Assert.That(() => check = BCowChecker.Check(image), Throws.Nothing, $"{label}: the checker threw");
            try
            {
                using BCowFile file = BCowFile.Open(image, f.Lower, new BCowOpenOptions { ReadOnly = true });
                byte[] content = Workload.ReadAll(file);
                if (expected is not null)
                {
                    AssertSameBytes(content, expected, $"{label}: opened with other content");
                }
                opened = true;
            }
            catch (BCowFormatException e)
            {
                Assert.That(e.Message, Does.Contain(image.Name), $"{label}: message names the file");
                Assert.That(check!.IsClean, Is.False, $"{label}: open refused the file ({e.Problem}) but the checker found it clean");
            }
        }, label);
        return opened;
    }

    /// <summary>Compares big arrays quickly (NUnit's element-wise comparison is slow at megabytes).</summary>
    private static void AssertSameBytes(byte[] actual, byte[] expected, string label)
    {
        if (!actual.AsSpan().SequenceEqual(expected))
        {
            int i = actual.AsSpan().CommonPrefixLength(expected);
            Assert.Fail($"{label}: {actual.Length} bytes, expected {expected.Length}; first difference at {i}");
        }
    }

    /// <summary>Open is refused with <see cref="BCowFormatException"/>, and the checker reports a corruption.</summary>
    private static void AssertRefused(MemoryStorage image, Fixture f, string label, string? problemContains = null)
    {
        WithinSeconds(20, () =>
        {
            BCowCheckResult? check = null;
            Assert.That(() => check = BCowChecker.Check(image), Throws.Nothing, $"{label}: the checker threw");
            Assert.That(check!.Corruptions, Is.Not.Empty, $"{label}: the checker missed it");
            foreach (bool readOnly in new[] { true, false })
            {
                MemoryStorage copy = image.CloneAs(image.Name, true);
                var e = Assert.Throws<BCowFormatException>(
                    () => BCowFile.Open(copy, f.Lower, new BCowOpenOptions { ReadOnly = readOnly }).Dispose(),
                    $"{label} (read-only: {readOnly})");
                Assert.That(e!.Message, Does.Contain(image.Name), label);
                if (problemContains is not null)
                {
                    Assert.That(e.Problem, Does.Contain(problemContains), label);
                }
                AssertSameBytes(copy.ToArray(), image.ToArray(), $"{label}: a refused file was written to");
            }
        }, label);
    }

    // ------------------------------------------------------------ surgery

    private static BCowHeader Header(IBlockStorage s) => BCowFile.ReadHeader(s);

    private static long SlotOf(BCowHeader h) => (long)(h.Generation % Layout.HeaderSlotCount) * Layout.HeaderSlotSize;

    private static void WriteHeader(IBlockStorage s, BCowHeader h)
    {
        byte[] slot = new byte[Layout.HeaderSlotSize];
        h.Write(slot);
        s.WriteAt(slot, SlotOf(h));
    }

    private static byte[] Read(IBlockStorage s, long offset, long length)
    {
        byte[] bytes = new byte[length];
        s.ReadAt(bytes, offset);
        return bytes;
    }

    private static (long Offset, int Length) RootTable(IBlockStorage s)
    {
        BCowHeader h = Header(s);
        return (h.RootTableOffset, (int)Layout.RootTableBytes(h.RootTableEntries));
    }

    private static long L1Offset(IBlockStorage s, int r)
    {
        var (offset, _) = RootTable(s);
        return PointerEntry.Read(Read(s, offset + (r * Layout.EntrySize), Layout.EntrySize), out _).Offset;
    }

    private static long L2Offset(IBlockStorage s, long block)
    {
        long l1 = L1Offset(s, (int)(block >> Layout.BlocksPerL1Shift));
        int c = (int)((block >> Layout.EntriesPerPageShift) & 0xFF);
        return PointerEntry.Read(Read(s, l1 + (c * Layout.EntrySize), Layout.EntrySize), out _).Offset;
    }

    private static BlockEntry EntryOf(IBlockStorage s, long block) =>
        BlockEntry.Read(Read(s, L2Offset(s, block) + ((block & 0xFF) * Layout.EntrySize), Layout.EntrySize));

    /// <summary>Rewrites the root table (CRC fixed in the header, header CRC recomputed).</summary>
    private static void RewriteRoot(IBlockStorage s, Action<byte[]> change)
    {
        BCowHeader h = Header(s);
        byte[] root = Read(s, h.RootTableOffset, Layout.RootTableBytes(h.RootTableEntries));
        change(root);
        s.WriteAt(root, h.RootTableOffset);
        WriteHeader(s, h with { RootTableCrc = Crc32C.Compute(root.AsSpan(0, h.RootTableEntries * Layout.EntrySize)) });
    }

    /// <summary>Rewrites L1 page <paramref name="r"/> (its CRC fixed in the root entry, and up).</summary>
    private static void RewriteL1(IBlockStorage s, int r, Action<byte[]> change)
    {
        long l1 = L1Offset(s, r);
        byte[] page = Read(s, l1, Layout.PageSize);
        change(page);
        s.WriteAt(page, l1);
        RewriteRoot(s, root => new PointerEntry(l1, Crc32C.Compute(page)).Write(root.AsSpan(r * Layout.EntrySize)));
    }

    /// <summary>Rewrites the L2 page of <paramref name="block"/> (CRCs fixed up the tree).</summary>
    private static void RewriteL2(IBlockStorage s, long block, Action<byte[]> change)
    {
        long l2 = L2Offset(s, block);
        byte[] page = Read(s, l2, Layout.PageSize);
        change(page);
        s.WriteAt(page, l2);
        int c = (int)((block >> Layout.EntriesPerPageShift) & 0xFF);
        RewriteL1(s, (int)(block >> Layout.BlocksPerL1Shift), l1 => new PointerEntry(l2, Crc32C.Compute(page)).Write(l1.AsSpan(c * Layout.EntrySize)));
    }

    private static void SetEntry(IBlockStorage s, long block, BlockEntry entry) =>
        RewriteL2(s, block, page => entry.Write(page.AsSpan((int)(block & 0xFF) * Layout.EntrySize)));

    /// <summary>Rewrites both header slots with <paramref name="change"/> applied to each one's fields (CRC fixed).</summary>
    private static void RewriteBothSlots(IBlockStorage s, Func<BCowHeader, BCowHeader> change)
    {
        for (int slot = 0; slot < Layout.HeaderSlotCount; slot++)
        {
            byte[] bytes = Read(s, (long)slot * Layout.HeaderSlotSize, Layout.HeaderSlotSize);
            BCowHeader? h = BCowHeader.TryRead(bytes, out _);
            if (h is not null)
            {
                change(h).Write(bytes);
                s.WriteAt(bytes, (long)slot * Layout.HeaderSlotSize);
            }
        }
    }

    /// <summary>Changes raw bytes of the fixed header in both slots and fixes each slot's CRC.</summary>
    private static void PatchBothSlotsRaw(IBlockStorage s, Action<byte[]> patch)
    {
        for (int slot = 0; slot < Layout.HeaderSlotCount; slot++)
        {
            byte[] bytes = Read(s, (long)slot * Layout.HeaderSlotSize, Layout.HeaderSlotSize);
            patch(bytes);
            int length = (int)BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(12));
            BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(112), 0);
            BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(112), Crc32C.Compute(bytes.AsSpan(0, length)));
            s.WriteAt(bytes, (long)slot * Layout.HeaderSlotSize);
        }
    }

    // ------------------------------------------------------------ tests

    [Test]
    public void TheFixtureIsValidAndSpansTwoL2Pages()
    {
        Fixture f = s_fixture.Value;
        MemoryStorage image = Image(f);
        Assert.That(L2Offset(image, 0), Is.Not.Zero);
        Assert.That(L2Offset(image, 270), Is.Not.Zero.And.Not.EqualTo(L2Offset(image, 0)));
        Assert.That(EntryOf(image, 0).State, Is.EqualTo(BlockState.Partial));
        Assert.That(EntryOf(image, 1).State, Is.EqualTo(BlockState.Present));
        Assert.That(EntryOf(image, 5).State, Is.EqualTo(BlockState.Zero));
        Assert.That(AssertRefusedOrReadable(image, f, f.Content, "untouched"), Is.True);
        SetEntry(image, 1, EntryOf(image, 1));
        Assert.That(AssertRefusedOrReadable(image, f, f.Content, "rewritten unchanged by the surgery helpers"), Is.True, "the CRC fix-up helpers must produce a valid file");
        Checks.AssertClean(image);
    }

    [Test]
    public void EveryByteOfTheCurrentHeaderSlotDamagedFallsBackToTheOlderSlot()
    {
        Fixture f = s_fixture.Value;
        long slot = SlotOf(Header(Image(f)));
        for (int i = 0; i < BCowHeader.FixedLength; i++)
        {
            MemoryStorage image = Image(f);
            image.WriteAt([(byte)(f.Image[slot + i] ^ 0xFF)], slot + i);
            // The older slot holds the same tree (the last commit only cleared the dirty flag).
            Assert.That(AssertRefusedOrReadable(image, f, f.Content, $"current slot byte {i}"), Is.True, $"current slot byte {i}: the older slot was not used");
        }
    }

    [Test]
    public void EveryByteOfBothHeaderSlotsDamagedIsRefused()
    {
        Fixture f = s_fixture.Value;
        for (int i = 0; i < BCowHeader.FixedLength; i++)
        {
            MemoryStorage image = Image(f);
            for (long slot = 0; slot < 2 * Layout.HeaderSlotSize; slot += Layout.HeaderSlotSize)
            {
                image.WriteAt([(byte)(f.Image[slot + i] ^ 0x5A)], slot + i);
            }
            AssertRefused(image, f, $"both slots, byte {i}");
        }
    }

    [Test]
    public void EveryByteOfTheMapPagesDamagedIsCaughtByChecksums()
    {
        Fixture f = s_fixture.Value;
        MemoryStorage clean = Image(f);
        BCowHeader h = Header(clean);
        var pages = new (string What, long Offset, int Covered)[]
        {
            ("root table", h.RootTableOffset, h.RootTableEntries * Layout.EntrySize),
            ("L1 page", L1Offset(clean, 0), Layout.PageSize),
            ("first L2 page", L2Offset(clean, 0), Layout.PageSize),
            ("second L2 page", L2Offset(clean, 270), Layout.PageSize),
        };
        foreach (var (what, offset, covered) in pages)
        {
            // Every byte of the first 256 (entries 0-15) and of the checksummed root entries, every 7th elsewhere.
            for (int i = 0; i < Layout.PageSize; i += i < Math.Max(256, Math.Min(covered, 1024)) ? 1 : 7)
            {
                MemoryStorage image = Image(f);
                image.WriteAt([(byte)(f.Image[offset + i] ^ (1 << (i % 8)))], offset + i);
                string label = $"{what} byte {i}";
                if (i < covered)
                {
                    AssertRefused(image, f, label, "checksum");
                }
                else
                {
                    // Padding after the root entries: not part of the table.
                    Assert.That(AssertRefusedOrReadable(image, f, f.Content, label), Is.True, label);
                }
            }
        }
    }

    [Test]
    public void RandomByteFlipsAnywhereNeverEscapeAsOtherExceptions()
    {
        Fixture f = s_fixture.Value;
        int seed = Environment.TickCount;
        TestContext.Out.WriteLine($"seed {seed}");
        var random = new Random(seed);
        int opened = 0;
        for (int round = 0; round < 300; round++)
        {
            MemoryStorage image = Image(f);
            int flips = random.Next(1, 4);
            var where = new List<long>();
            for (int k = 0; k < flips; k++)
            {
                long offset = random.NextInt64(f.Image.Length);
                where.Add(offset);
                byte[] b = new byte[1];
                image.ReadAt(b, offset);
                image.WriteAt([(byte)(b[0] ^ random.Next(1, 256))], offset);
            }
            string label = $"seed {seed} round {round}: flips at {string.Join(", ", where)}";
            if (AssertRefusedOrReadable(image, f, null, label))
            {
                opened++;
                // A writable open of what opened read-only must work too, and leave no corruption behind.
                MemoryStorage copy = image.CloneAs("writable copy", true);
                WithinSeconds(20, () =>
                {
                    using (BCowFile file = BCowFile.Open(copy, f.Lower, new BCowOpenOptions { CopyUpMode = CopyUpMode.Synchronous }))
                    {
                        Workload.ReadAll(file);
                        file.WriteAt([1, 2, 3], 4000);
                    }
                    Assert.That(BCowChecker.Check(copy).Corruptions, Is.Empty, label);
                }, label);
            }
        }
        TestContext.Out.WriteLine($"{opened} of 300 damaged files opened");
    }

    [Test]
    public void TruncationAtAnyPageBoundaryOrOddSizeIsRefusedOrReadable()
    {
        Fixture f = s_fixture.Value;
        var sizes = new List<long> { 0, 1, 7, 127, 128, 4095, 4097, 8191, 8193, f.Image.Length - 1 };
        for (long size = Layout.PageSize; size < f.Image.Length; size += Layout.PageSize)
        {
            sizes.Add(size);
        }
        int opened = 0;
        foreach (long size in sizes)
        {
            MemoryStorage image = Image(f);
            image.SetLength(size);
            // Opening is fine only where the cut took free space alone: then the content is unchanged.
            opened += AssertRefusedOrReadable(image, f, f.Content, $"truncated to {size}") ? 1 : 0;
        }
        TestContext.Out.WriteLine($"{opened} of {sizes.Count} truncated files opened");
        Assert.That(opened, Is.LessThan(sizes.Count / 2), "most truncations cut referenced data");
    }

    [Test]
    public void AFutureVersionIsRefusedNamingTheVersion()
    {
        Fixture f = s_fixture.Value;
        MemoryStorage image = Image(f);
        PatchBothSlotsRaw(image, bytes => BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(8), 2));
        AssertRefused(image, f, "version 2", "newer");
    }

    [Test]
    public void AnUnknownIncompatibleFeatureIsRefused()
    {
        Fixture f = s_fixture.Value;
        MemoryStorage image = Image(f);
        RewriteBothSlots(image, h => h with { IncompatibleFeatures = 1UL << 17 });
        AssertRefused(image, f, "incompatible feature bit 17", "incompatible");
    }

    /// <summary>Rewrites one slot's header with <paramref name="change"/> applied to its raw bytes (CRC fixed).</summary>
    private static void PatchSlotRaw(IBlockStorage s, int slot, Action<byte[]> patch)
    {
        byte[] bytes = Read(s, (long)slot * Layout.HeaderSlotSize, Layout.HeaderSlotSize);
        patch(bytes);
        int length = (int)BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(12));
        BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(112), 0);
        BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(112), Crc32C.Compute(bytes.AsSpan(0, length)));
        s.WriteAt(bytes, (long)slot * Layout.HeaderSlotSize);
    }

    [Test]
    public void ANewestCommitByANewerWriterIsRefusedNotRolledBack([Values("version", "incompatible feature")] string what)
    {
        Fixture f = s_fixture.Value;
        MemoryStorage image = Image(f);
        int current = (int)(Header(image).Generation % 2);
        // Only the newest slot says so, with a valid checksum: written on purpose. The older slot is still a valid
        // version-1 header, and falling back to it would lose the newer writer's commit (and a writable open would
        // overwrite that commit's slot).
        PatchSlotRaw(image, current, bytes =>
        {
            if (what == "version")
            {
                BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(8), 2);
            }
            else
            {
                BinaryPrimitives.WriteUInt64LittleEndian(bytes.AsSpan(16), 1UL << 3);
            }
        });
        AssertRefused(image, f, $"newest slot with a newer {what}", what == "version" ? "newer" : "incompatible");
    }

    [Test]
    public void AnOlderSlotByANewerWriterIsIgnored()
    {
        Fixture f = s_fixture.Value;
        MemoryStorage image = Image(f);
        int older = (int)((Header(image).Generation + 1) % 2);
        PatchSlotRaw(image, older, bytes => BinaryPrimitives.WriteUInt64LittleEndian(bytes.AsSpan(16), 1UL << 3));
        Assert.That(AssertRefusedOrReadable(image, f, f.Content, "older slot with an incompatible feature"), Is.True);
    }

    [Test]
    public void AnUnknownCompatibleFeatureIsIgnored()
    {
        Fixture f = s_fixture.Value;
        MemoryStorage image = Image(f);
        RewriteBothSlots(image, h => h with { CompatibleFeatures = 1UL << 40 });
        Assert.That(AssertRefusedOrReadable(image, f, f.Content, "compatible feature bit"), Is.True);
    }

    [Test]
    public void AbsurdVirtualSizesAreRefusedWithoutHugeAllocations(
        [Values(1L << 62, long.MaxValue, -1L, (1L << 48) + 1, 1L << 48)] long virtualSize)
    {
        Fixture f = s_fixture.Value;
        MemoryStorage image = Image(f);
        // Keep the header self-consistent where it can be: root entries match the size, lower limit within it.
        PatchBothSlotsRaw(image, bytes =>
        {
            BinaryPrimitives.WriteInt64LittleEndian(bytes.AsSpan(48), virtualSize);
            if (virtualSize is >= 0 and <= 1L << 48)
            {
                BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(72), (uint)Layout.RootEntryCount(virtualSize, 12));
            }
        });
        long before = GC.GetAllocatedBytesForCurrentThread();
        AssertRefused(image, f, $"virtual size {virtualSize}");
        TestContext.Out.WriteLine($"allocated about {(GC.GetAllocatedBytesForCurrentThread() - before) >> 20} MiB on this thread");
    }

    private static IEnumerable<TestCaseData> BadEntries()
    {
        yield return new TestCaseData("present block beyond the end of the file", (Func<IBlockStorage, BlockEntry>)(s => BlockEntry.Present((s.Length + 8192) & ~4095L)), "beyond");
        yield return new TestCaseData("present block at the largest offset (offset + size overflows)", (Func<IBlockStorage, BlockEntry>)(_ => BlockEntry.Present(long.MaxValue & ~4095L)), null);
        yield return new TestCaseData("partial block at the largest offset", (Func<IBlockStorage, BlockEntry>)(_ => BlockEntry.Partial(long.MaxValue & ~4095L, 1)), null);
        yield return new TestCaseData("present block with a negative offset", (Func<IBlockStorage, BlockEntry>)(_ => new BlockEntry(0x8000_0000_0000_0000UL | 2, 0)), null);
        yield return new TestCaseData("present block in the header", (Func<IBlockStorage, BlockEntry>)(_ => BlockEntry.Present(4096)), "header");
        yield return new TestCaseData("present block over block 1", (Func<IBlockStorage, BlockEntry>)(s => BlockEntry.Present(EntryOf(s, 1).Offset)), "overlaps");
        yield return new TestCaseData("present block over the L1 page", (Func<IBlockStorage, BlockEntry>)(s => BlockEntry.Present(L1Offset(s, 0))), "overlaps");
        yield return new TestCaseData("present block over the L2 page", (Func<IBlockStorage, BlockEntry>)(s => BlockEntry.Present(L2Offset(s, 0))), "overlaps");
        yield return new TestCaseData("present block over the root table", (Func<IBlockStorage, BlockEntry>)(s => BlockEntry.Present(Header(s).RootTableOffset)), "overlaps");
        yield return new TestCaseData("partial entry with an empty bitmap", (Func<IBlockStorage, BlockEntry>)(s => BlockEntry.Partial(EntryOf(s, 0).Offset, 0)), "bitmap");
        yield return new TestCaseData("partial entry with a full bitmap", (Func<IBlockStorage, BlockEntry>)(s => BlockEntry.Partial(EntryOf(s, 0).Offset, ulong.MaxValue)), "bitmap");
        yield return new TestCaseData("zero entry with an offset", (Func<IBlockStorage, BlockEntry>)(_ => new BlockEntry(1 | 0x10000, 0)), null);
        yield return new TestCaseData("lower entry with a bitmap", (Func<IBlockStorage, BlockEntry>)(_ => new BlockEntry(0, 5)), null);
        yield return new TestCaseData("reserved descriptor bits", (Func<IBlockStorage, BlockEntry>)(s => new BlockEntry(EntryOf(s, 1).Descriptor | 0x100, 0)), "reserved");
    }

    [TestCaseSource(nameof(BadEntries))]
    public void ACraftedBadEntryWithValidChecksumsIsRefused(string what, Delegate entry, string? problem)
    {
        Fixture f = s_fixture.Value;
        MemoryStorage image = Image(f);
        // Block 0 for entries that replace its own (partial) entry, block 3 (a lower block in the first L2 page) else.
        long block = what.StartsWith("partial entry", StringComparison.Ordinal) ? 0 : 3;
        SetEntry(image, block, ((Func<IBlockStorage, BlockEntry>)entry)(image));
        AssertRefused(image, f, what, problem);
    }

    [Test]
    public void AnEntryBeyondTheVirtualSizeIsRefused()
    {
        Fixture f = s_fixture.Value;
        MemoryStorage image = Image(f);
        SetEntry(image, 400, EntryOf(image, 270));
        AssertRefused(image, f, "block 400 of 300", "beyond the virtual size");
    }

    private static IEnumerable<TestCaseData> BadPointers()
    {
        yield return new TestCaseData("beyond the end of the file", (Func<IBlockStorage, long>)(s => (s.Length + 4096) & ~4095L));
        yield return new TestCaseData("at the largest aligned offset", (Func<IBlockStorage, long>)(_ => long.MaxValue & ~4095L));
        yield return new TestCaseData("negative", (Func<IBlockStorage, long>)(_ => -4096));
        yield return new TestCaseData("into the header", (Func<IBlockStorage, long>)(_ => 4096));
        yield return new TestCaseData("not aligned", (Func<IBlockStorage, long>)(s => L2Offset(s, 0) + 16));
        yield return new TestCaseData("at the root table", (Func<IBlockStorage, long>)(s => Header(s).RootTableOffset));
    }

    [TestCaseSource(nameof(BadPointers))]
    public void AnL1EntryPointingAstrayIsRefused(string what, Func<IBlockStorage, long> offset)
    {
        Fixture f = s_fixture.Value;
        MemoryStorage image = Image(f);
        long target = offset(image);
        // The CRC is that of whatever page the pointer names, so only the range checks can catch it.
        byte[] named = new byte[Layout.PageSize];
        if (target >= 0 && target < image.Length)
        {
            image.ReadAt(named, target);
        }
        RewriteL1(image, 0, l1 => new PointerEntry(target, Crc32C.Compute(named)).Write(l1.AsSpan(1 * Layout.EntrySize)));
        AssertRefused(image, f, $"L1 entry {what}");
    }

    [TestCaseSource(nameof(BadPointers))]
    public void ARootEntryPointingAstrayIsRefused(string what, Func<IBlockStorage, long> offset)
    {
        Fixture f = s_fixture.Value;
        MemoryStorage image = Image(f);
        long target = offset(image);
        byte[] named = new byte[Layout.PageSize];
        if (target >= 0 && target < image.Length)
        {
            image.ReadAt(named, target);
        }
        RewriteRoot(image, root => new PointerEntry(target, Crc32C.Compute(named)).Write(root));
        AssertRefused(image, f, $"root entry {what}");
    }

    [Test]
    public void TwoL2PagesSharingOnePageAreRefused()
    {
        Fixture f = s_fixture.Value;
        MemoryStorage image = Image(f);
        long first = L2Offset(image, 0);
        byte[] page = Read(image, first, Layout.PageSize);
        RewriteL1(image, 0, l1 => new PointerEntry(first, Crc32C.Compute(page)).Write(l1.AsSpan(1 * Layout.EntrySize)));
        AssertRefused(image, f, "L2 page 1 = L2 page 0", "overlaps");
    }

    [Test]
    public void ARootTableAtAnAbsurdOffsetIsRefused([Values(long.MaxValue & ~4095L, 1L << 50, 4096L * 1000)] long offset)
    {
        Fixture f = s_fixture.Value;
        MemoryStorage image = Image(f);
        // Whatever lies there reads as zeros: give the header the CRC of a zero table so only the range check is left.
        RewriteBothSlots(image, h => h with { RootTableOffset = offset, RootTableCrc = Crc32C.Compute(new byte[h.RootTableEntries * Layout.EntrySize]) });
        AssertRefused(image, f, $"root table at {offset}");
    }

    // ------------------------------------------------------------ lower file identity

    [Test]
    public void ALowerFileChangedSinceCreationIsRefused([Values("size", "first page", "last page", "sampled middle page")] string change)
    {
        Fixture f = s_fixture.Value;
        byte[] lowerBytes = f.Lower.ToArray();
        long middle = LowerSampling.Chunks(lowerBytes.Length).ElementAt(LowerSampling.SampleCount / 2).Offset + 7;
        MemoryStorage changed = change switch
        {
            "size" => MemoryStorage.FromBytes(lowerBytes.Append((byte)0).ToArray(), "lower", canWrite: false),
            "first page" => MemoryStorage.FromBytes(lowerBytes.Select((b, i) => i == 100 ? (byte)~b : b).ToArray(), "lower", canWrite: false),
            "last page" => MemoryStorage.FromBytes(lowerBytes.Select((b, i) => i == lowerBytes.Length - 5 ? (byte)~b : b).ToArray(), "lower", canWrite: false),
            _ => MemoryStorage.FromBytes(lowerBytes.Select((b, i) => i == middle ? (byte)~b : b).ToArray(), "lower", canWrite: false),
        };
        MemoryStorage image = Image(f, "upper-over-changed-lower.bcow");
        var e = Assert.Throws<BCowFormatException>(() => BCowFile.Open(image, changed, new BCowOpenOptions { ReadOnly = true }).Dispose());
        Assert.That(e!.Message, Does.Contain("upper-over-changed-lower.bcow").And.Contain("changed"));
        Assert.That(() => BCowFile.Open(image, changed).Dispose(), Throws.InstanceOf<BCowFormatException>(), "writable open too");
        AssertSameBytes(image.ToArray(), f.Image, "a refused file was written to");
        using (BCowFile skipped = BCowFile.Open(image, changed, new BCowOpenOptions { ReadOnly = true, SkipLowerCheck = true }))
        {
            Assert.That(skipped.Length, Is.EqualTo(f.Content.Length), "SkipLowerCheck opens it");
        }
    }

    /// <summary>Only the bytes identify a lower file: the same bytes in another file (new inode, new time) are accepted,
    /// as a copy is (<see cref="LowerIdentityTests"/>).</summary>
    [Test]
    public void AReplacedLowerFileWithTheSameBytesIsAccepted()
    {
        using var dir = new TempDir();
        string lowerPath = dir.File("lower.img");
        byte[] content = Checks.RandomBytes(new Random(9), 3 * 65536);
        File.WriteAllBytes(lowerPath, content);
        using (BCowFile file = BCowFile.Create(dir.File("upper.bcow"), new BCowCreateOptions { LowerPath = lowerPath }))
        {
            file.WriteAt([1, 2, 3], 70000);
        }
        DateTime mtime = File.GetLastWriteTimeUtc(lowerPath);
        string replacement = dir.File("lower.new");
        File.WriteAllBytes(replacement, content);
        File.SetLastWriteTimeUtc(replacement, mtime.AddSeconds(5));
        File.Move(replacement, lowerPath, overwrite: true);
        using (BCowFile file = BCowFile.Open(dir.File("upper.bcow")))
        {
            byte[] read = new byte[3];
            file.ReadAt(read, 70000);
            Assert.That(read, Is.EqualTo(new byte[] { 1, 2, 3 }));
        }
        Checks.AssertClean(dir.File("upper.bcow"));
    }
}
