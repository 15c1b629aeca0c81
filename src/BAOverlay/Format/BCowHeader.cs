using System.Buffers.Binary;
using System.Text;

namespace BAOverlay.Format;

/// <summary>
/// One header slot (<c>docs/bcow-format.md</c>, "Header"). The file has two slots; a commit writes the slot the
/// current generation does not occupy, so a torn header write can only destroy the older generation.
/// </summary>
internal sealed record BCowHeader
{
    public static ReadOnlySpan<byte> Magic => "BCoW\r\n\u001a\n"u8;

    public const uint CurrentVersion = 1;
    public const int FixedLength = 128;

    // Named offsets of every field in a slot.
    private const int OffMagic = 0;
    private const int OffVersion = 8;
    private const int OffHeaderLength = 12;
    private const int OffIncompatible = 16;
    private const int OffCompatible = 24;
    private const int OffGeneration = 32;
    private const int OffBlockSizeLog2 = 40;
    private const int OffFlags = 44;
    private const int OffVirtualSize = 48;
    private const int OffLowerLimit = 56;
    private const int OffRootOffset = 64;
    private const int OffRootEntries = 72;
    private const int OffRootCrc = 76;
    private const int OffLowerSize = 80;
    private const int OffLowerMtime = 88;
    private const int OffLowerInode = 96;
    private const int OffLowerFingerprint = 104;
    private const int OffLowerPathLength = 108;
    private const int OffReserved1 = 110;
    private const int OffHeaderCrc = 112;
    private const int OffReserved2 = 116;
    private const int OffPendingLowerSize = 116;
    private const int OffPendingLowerFingerprint = 124;
    private const int OffLowerPath = 128;

    /// <summary>
    /// Incompatible feature bit 0: the lower identity is the sampled kind (<see cref="LowerIdentity.Sampled"/>).
    /// Incompatible because a reader that does not know it would compare the fingerprint as the legacy kind and refuse
    /// every lower file as changed; set only on files with a lower file, so standalone files stay readable by every
    /// version-1 reader.
    /// </summary>
    public const ulong FeatureSampledLowerIdentity = 1;

    /// <summary>Incompatible feature bits this reader knows.</summary>
    public const ulong KnownIncompatibleFeatures = FeatureSampledLowerIdentity;

    public const uint FlagDirty = 1;
    public const uint FlagHasLower = 2;

    /// <summary>
    /// <c>bcow commit</c> is writing this file's blocks into its lower file: the lower file may be the recorded one,
    /// the pending one (<see cref="PendingLower"/>: what it is once every block is written), or partly written
    /// between. Unknown to older readers, which therefore refuse the file rather than check a half-written lower.
    /// </summary>
    public const uint FlagCommitting = 4;
    public const uint KnownFlags = FlagDirty | FlagHasLower | FlagCommitting;

    public ulong IncompatibleFeatures { get; init; }
    public ulong CompatibleFeatures { get; init; }
    public ulong Generation { get; init; }
    public int BlockSizeLog2 { get; init; } = Layout.DefaultBlockSizeLog2;
    public bool Dirty { get; init; }
    public bool HasLower { get; init; }
    public long VirtualSize { get; init; }
    public long LowerLimit { get; init; }
    public long RootTableOffset { get; init; }
    public int RootTableEntries { get; init; }
    public uint RootTableCrc { get; init; }
    public LowerIdentity Lower { get; init; }
    public string LowerPath { get; init; } = "";

    /// <summary>With <see cref="FlagCommitting"/>: the sampled identity (size and fingerprint only) the lower file has
    /// once the commit has written every block. Stored in what is reserved otherwise; null without the flag.</summary>
    public LowerIdentity? PendingLower { get; init; }

    public int BlockSize => 1 << BlockSizeLog2;

    public void Write(Span<byte> slot)
    {
        if (slot.Length < Layout.HeaderSlotSize)
        {
            throw new ArgumentException("A header slot is 4096 bytes.", nameof(slot));
        }
        byte[] path = Encoding.UTF8.GetBytes(LowerPath);
        if (path.Length > Layout.MaxLowerPathBytes)
        {
            throw new ArgumentException($"The lower path is longer than {Layout.MaxLowerPathBytes} bytes: {LowerPath}");
        }
        slot[..Layout.HeaderSlotSize].Clear();
        Magic.CopyTo(slot[OffMagic..]);
        int headerLength = FixedLength + path.Length;
        BinaryPrimitives.WriteUInt32LittleEndian(slot[OffVersion..], CurrentVersion);
        BinaryPrimitives.WriteUInt32LittleEndian(slot[OffHeaderLength..], (uint)headerLength);
        // The identity's kind is the feature bit: derived here, so a header made "with { Lower = ... }" cannot disagree.
        ulong incompatible = (IncompatibleFeatures & ~FeatureSampledLowerIdentity) | (HasLower && Lower.Sampled ? FeatureSampledLowerIdentity : 0);
        BinaryPrimitives.WriteUInt64LittleEndian(slot[OffIncompatible..], incompatible);
        BinaryPrimitives.WriteUInt64LittleEndian(slot[OffCompatible..], CompatibleFeatures);
        BinaryPrimitives.WriteUInt64LittleEndian(slot[OffGeneration..], Generation);
        BinaryPrimitives.WriteUInt32LittleEndian(slot[OffBlockSizeLog2..], (uint)BlockSizeLog2);
        uint flags = (Dirty ? FlagDirty : 0) | (HasLower ? FlagHasLower : 0) | (PendingLower is not null ? FlagCommitting : 0);
        BinaryPrimitives.WriteUInt32LittleEndian(slot[OffFlags..], flags);
        BinaryPrimitives.WriteInt64LittleEndian(slot[OffVirtualSize..], VirtualSize);
        BinaryPrimitives.WriteInt64LittleEndian(slot[OffLowerLimit..], LowerLimit);
        BinaryPrimitives.WriteInt64LittleEndian(slot[OffRootOffset..], RootTableOffset);
        BinaryPrimitives.WriteUInt32LittleEndian(slot[OffRootEntries..], (uint)RootTableEntries);
        BinaryPrimitives.WriteUInt32LittleEndian(slot[OffRootCrc..], RootTableCrc);
        BinaryPrimitives.WriteInt64LittleEndian(slot[OffLowerSize..], Lower.Size);
        BinaryPrimitives.WriteInt64LittleEndian(slot[OffLowerMtime..], Lower.MTimeNs);
        BinaryPrimitives.WriteUInt64LittleEndian(slot[OffLowerInode..], Lower.Inode);
        BinaryPrimitives.WriteUInt32LittleEndian(slot[OffLowerFingerprint..], Lower.Fingerprint);
        BinaryPrimitives.WriteUInt16LittleEndian(slot[OffLowerPathLength..], (ushort)path.Length);
        if (PendingLower is { } pending)
        {
            BinaryPrimitives.WriteInt64LittleEndian(slot[OffPendingLowerSize..], pending.Size);
            BinaryPrimitives.WriteUInt32LittleEndian(slot[OffPendingLowerFingerprint..], pending.Fingerprint);
        }
        path.CopyTo(slot[OffLowerPath..]);
        uint crc = Crc32C.Compute(slot[..headerLength]);
        BinaryPrimitives.WriteUInt32LittleEndian(slot[OffHeaderCrc..], crc);
    }

    /// <summary>
    /// The generation of a slot that is intact - magic, header length and checksum verify in this version's layout -
    /// but that this reader cannot use: a newer format version or unknown incompatible features. Such a slot was
    /// written on purpose by a newer writer, not torn or rotted, so when it is the newest the file must be refused
    /// rather than silently rolled back to the older slot (which a writable open would then overwrite it from).
    /// Null for every other slot.
    /// </summary>
    public static ulong? IntactButUnsupportedGeneration(ReadOnlySpan<byte> slot)
    {
        if (slot.Length < FixedLength || !slot[..8].SequenceEqual(Magic))
        {
            return null;
        }
        uint headerLength = BinaryPrimitives.ReadUInt32LittleEndian(slot[OffHeaderLength..]);
        if (headerLength < FixedLength || headerLength > Math.Min(slot.Length, FixedLength + Layout.MaxLowerPathBytes))
        {
            return null;
        }
        uint state = Crc32C.Append(Crc32C.Start, slot[..OffHeaderCrc]);
        state = Crc32C.Append(state, [0, 0, 0, 0]);
        state = Crc32C.Append(state, slot[(OffHeaderCrc + 4)..(int)headerLength]);
        if (Crc32C.Finish(state) != BinaryPrimitives.ReadUInt32LittleEndian(slot[OffHeaderCrc..]))
        {
            return null;
        }
        uint version = BinaryPrimitives.ReadUInt32LittleEndian(slot[OffVersion..]);
        ulong incompatible = BinaryPrimitives.ReadUInt64LittleEndian(slot[OffIncompatible..]);
        if (version == CurrentVersion && (incompatible & ~KnownIncompatibleFeatures) == 0)
        {
            return null;
        }
        return BinaryPrimitives.ReadUInt64LittleEndian(slot[OffGeneration..]);
    }

    /// <summary>Reads and validates one slot. Returns null and a reason when the slot is not a valid header.</summary>
    public static BCowHeader? TryRead(ReadOnlySpan<byte> slot, out string? problem)
    {
        if (slot.Length < FixedLength)
        {
            problem = "the file is shorter than a header";
            return null;
        }
        if (!slot[..8].SequenceEqual(Magic))
        {
            problem = "bad magic: not a B-CoW file";
            return null;
        }
        uint version = BinaryPrimitives.ReadUInt32LittleEndian(slot[OffVersion..]);
        if (version != CurrentVersion)
        {
            problem = version > CurrentVersion
                ? $"format version {version} is newer than this reader (version {CurrentVersion}); upgrade BAOverlay"
                : $"unknown format version {version}";
            return null;
        }
        uint headerLength = BinaryPrimitives.ReadUInt32LittleEndian(slot[OffHeaderLength..]);
        if (headerLength < FixedLength || headerLength > Math.Min(slot.Length, FixedLength + Layout.MaxLowerPathBytes))
        {
            problem = $"header length {headerLength} is out of range";
            return null;
        }
        uint storedCrc = BinaryPrimitives.ReadUInt32LittleEndian(slot[OffHeaderCrc..]);
        uint state = Crc32C.Append(Crc32C.Start, slot[..OffHeaderCrc]);
        state = Crc32C.Append(state, [0, 0, 0, 0]);
        state = Crc32C.Append(state, slot[(OffHeaderCrc + 4)..(int)headerLength]);
        if (Crc32C.Finish(state) != storedCrc)
        {
            problem = "header checksum mismatch";
            return null;
        }
        ulong incompatible = BinaryPrimitives.ReadUInt64LittleEndian(slot[OffIncompatible..]);
        if ((incompatible & ~KnownIncompatibleFeatures) != 0)
        {
            problem = $"unknown incompatible features 0x{incompatible & ~KnownIncompatibleFeatures:x}; a newer BAOverlay wrote this file";
            return null;
        }
        int blockSizeLog2 = (int)BinaryPrimitives.ReadUInt32LittleEndian(slot[OffBlockSizeLog2..]);
        if (blockSizeLog2 < Layout.MinBlockSizeLog2 || blockSizeLog2 > Layout.MaxBlockSizeLog2)
        {
            problem = $"block size 2^{blockSizeLog2} is outside 4 KiB..1 MiB";
            return null;
        }
        uint flags = BinaryPrimitives.ReadUInt32LittleEndian(slot[OffFlags..]);
        if ((flags & ~KnownFlags) != 0)
        {
            problem = $"unknown flag bits 0x{flags & ~KnownFlags:x}";
            return null;
        }
        long virtualSize = BinaryPrimitives.ReadInt64LittleEndian(slot[OffVirtualSize..]);
        if (virtualSize < 0 || virtualSize > Layout.MaxVirtualSize)
        {
            problem = $"virtual size {virtualSize} is out of range (0..{Layout.MaxVirtualSize})";
            return null;
        }
        long lowerLimit = BinaryPrimitives.ReadInt64LittleEndian(slot[OffLowerLimit..]);
        long lowerSize = BinaryPrimitives.ReadInt64LittleEndian(slot[OffLowerSize..]);
        bool hasLower = (flags & FlagHasLower) != 0;
        if (lowerLimit < 0 || lowerLimit > virtualSize || lowerSize < 0 || (!hasLower && lowerLimit != 0) || (hasLower && lowerLimit > lowerSize))
        {
            problem = $"lower limit {lowerLimit} is inconsistent with virtual size {virtualSize} and lower size {lowerSize}";
            return null;
        }
        long rootOffset = BinaryPrimitives.ReadInt64LittleEndian(slot[OffRootOffset..]);
        uint rootEntries = BinaryPrimitives.ReadUInt32LittleEndian(slot[OffRootEntries..]);
        int expectedRootEntries = Layout.RootEntryCount(virtualSize, blockSizeLog2);
        if (rootEntries != expectedRootEntries)
        {
            problem = $"root table has {rootEntries} entries, but the virtual size needs {expectedRootEntries}";
            return null;
        }
        if (rootOffset < Layout.DataStart || (rootOffset & (Layout.PageSize - 1)) != 0)
        {
            problem = $"root table offset {rootOffset} is not a 4 KiB aligned offset in the data area";
            return null;
        }
        int pathLength = BinaryPrimitives.ReadUInt16LittleEndian(slot[OffLowerPathLength..]);
        if (FixedLength + pathLength != headerLength)
        {
            problem = $"lower path length {pathLength} disagrees with header length {headerLength}";
            return null;
        }
        if (pathLength != 0 && !hasLower)
        {
            problem = "a lower path is recorded but the has-lower flag is clear";
            return null;
        }
        bool committing = (flags & FlagCommitting) != 0;
        if (committing && !hasLower)
        {
            problem = "the committing flag is set but the file has no lower file";
            return null;
        }
        if (BinaryPrimitives.ReadUInt16LittleEndian(slot[OffReserved1..]) != 0 || (!committing && slot[OffReserved2..OffLowerPath].IndexOfAnyExcept((byte)0) >= 0))
        {
            problem = "reserved header bytes are not zero";
            return null;
        }
        string path;
        try
        {
            path = new UTF8Encoding(false, true).GetString(slot.Slice(OffLowerPath, pathLength));
        }
        catch (DecoderFallbackException)
        {
            problem = "the lower path is not valid UTF-8";
            return null;
        }
        problem = null;
        return new BCowHeader
        {
            IncompatibleFeatures = incompatible,
            CompatibleFeatures = BinaryPrimitives.ReadUInt64LittleEndian(slot[OffCompatible..]),
            Generation = BinaryPrimitives.ReadUInt64LittleEndian(slot[OffGeneration..]),
            BlockSizeLog2 = blockSizeLog2,
            Dirty = (flags & FlagDirty) != 0,
            HasLower = hasLower,
            VirtualSize = virtualSize,
            LowerLimit = lowerLimit,
            RootTableOffset = rootOffset,
            RootTableEntries = (int)rootEntries,
            RootTableCrc = BinaryPrimitives.ReadUInt32LittleEndian(slot[OffRootCrc..]),
            Lower = new LowerIdentity(
                lowerSize,
                BinaryPrimitives.ReadInt64LittleEndian(slot[OffLowerMtime..]),
                BinaryPrimitives.ReadUInt64LittleEndian(slot[OffLowerInode..]),
                BinaryPrimitives.ReadUInt32LittleEndian(slot[OffLowerFingerprint..]),
                Sampled: (incompatible & FeatureSampledLowerIdentity) != 0),
            LowerPath = path,
            PendingLower = committing
                ? new LowerIdentity(BinaryPrimitives.ReadInt64LittleEndian(slot[OffPendingLowerSize..]), 0, 0, BinaryPrimitives.ReadUInt32LittleEndian(slot[OffPendingLowerFingerprint..]), Sampled: true)
                : null,
        };
    }
}
