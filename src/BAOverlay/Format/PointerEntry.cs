using System.Buffers.Binary;

namespace BAOverlay.Format;

/// <summary>
/// A root-table or L1 entry: 16 bytes, the 4 KiB aligned offset of a child map page (0: no page, every block below
/// it is in lower), the CRC-32C of that page, and 4 reserved zero bytes. Keeping a child's checksum in its parent
/// catches torn, lost and misdirected page writes, not only bit rot.
/// </summary>
internal readonly record struct PointerEntry(long Offset, uint Crc)
{
    public static PointerEntry Read(ReadOnlySpan<byte> source, out bool reservedClear)
    {
        reservedClear = BinaryPrimitives.ReadUInt32LittleEndian(source[12..]) == 0;
        return new PointerEntry(BinaryPrimitives.ReadInt64LittleEndian(source), BinaryPrimitives.ReadUInt32LittleEndian(source[8..]));
    }

    public void Write(Span<byte> destination)
    {
        BinaryPrimitives.WriteInt64LittleEndian(destination, Offset);
        BinaryPrimitives.WriteUInt32LittleEndian(destination[8..], Crc);
        BinaryPrimitives.WriteUInt32LittleEndian(destination[12..], 0);
    }
}
