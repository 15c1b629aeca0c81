using System.Buffers.Binary;

namespace BAOverlay.Format;

/// <summary>
/// An L2 entry: 16 bytes. Word 0 packs the state (bits 0-1) with the 4 KiB aligned upper offset (bits 12-63);
/// bits 2-11 are reserved. Word 1 is the sub-block validity bitmap of a partial block (bit i: sub-block i is valid
/// in upper). DiscUtils' VHDX <c>BatEntry</c> and qcow2's extended L2 entries are the prior art.
/// </summary>
internal readonly record struct BlockEntry(ulong Descriptor, ulong Bitmap)
{
    private const ulong StateMask = 0x3;
    private const ulong ReservedMask = 0xFFC;
    private const ulong OffsetMask = ~0xFFFUL;

    public static BlockEntry Lower => default;
    public static BlockEntry Zero => new((ulong)BlockState.Zero, 0);

    public static BlockEntry Present(long offset) => new((ulong)offset | (ulong)BlockState.Present, 0);

    public static BlockEntry Partial(long offset, ulong bitmap) => new((ulong)offset | (ulong)BlockState.Partial, bitmap);

    public BlockState State => (BlockState)(Descriptor & StateMask);

    public long Offset => (long)(Descriptor & OffsetMask);

    /// <summary>True when the block has space in the upper file.</summary>
    public bool IsAllocated => State is BlockState.Present or BlockState.Partial;

    public static BlockEntry Read(ReadOnlySpan<byte> source) =>
        new(BinaryPrimitives.ReadUInt64LittleEndian(source), BinaryPrimitives.ReadUInt64LittleEndian(source[8..]));

    public void Write(Span<byte> destination)
    {
        BinaryPrimitives.WriteUInt64LittleEndian(destination, Descriptor);
        BinaryPrimitives.WriteUInt64LittleEndian(destination[8..], Bitmap);
    }

    /// <summary>Checks the entry against the format's rules; returns the problem or null.</summary>
    public string? Validate()
    {
        if ((Descriptor & ReservedMask) != 0)
        {
            return "reserved bits are set";
        }
        switch (State)
        {
            case BlockState.Lower:
            case BlockState.Zero:
                return Offset != 0 || Bitmap != 0 ? $"a {State} entry carries an offset or bitmap" : null;
            case BlockState.Present:
                if (Bitmap != 0)
                {
                    return "a present entry carries a bitmap";
                }
                return Offset < Layout.DataStart ? $"offset {Offset} points into the header" : null;
            default:
                if (Bitmap == 0 || Bitmap == ulong.MaxValue)
                {
                    return "a partial entry's bitmap is empty or full";
                }
                return Offset < Layout.DataStart ? $"offset {Offset} points into the header" : null;
        }
    }
}
