using System.Buffers.Binary;
using System.Numerics;

namespace BAOverlay.Format;

/// <summary>CRC-32C (Castagnoli), as used by iSCSI, ext4 and Btrfs: initial value and final XOR 0xFFFFFFFF.</summary>
internal static class Crc32C
{
    public static uint Compute(ReadOnlySpan<byte> data) => Finish(Append(Start, data));

    public const uint Start = 0xFFFFFFFFu;

    public static uint Finish(uint state) => state ^ 0xFFFFFFFFu;

    public static uint Append(uint state, ReadOnlySpan<byte> data)
    {
        // BitOperations.Crc32C uses the SSE4.2 / ARMv8 CRC instructions where present and a table otherwise.
        while (data.Length >= 8)
        {
            state = BitOperations.Crc32C(state, BinaryPrimitives.ReadUInt64LittleEndian(data));
            data = data[8..];
        }
        foreach (byte b in data)
        {
            state = BitOperations.Crc32C(state, b);
        }
        return state;
    }
}
