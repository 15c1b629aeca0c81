namespace BAOverlay.Engine;

/// <summary>
/// What names a lower file's content within one process (<see cref="Storage.FileStorage.TryGetContentKey"/>): device,
/// inode, size, modification and change time. Equality written out (not a record), so comparing keys needs no generic
/// comparer instantiated over a framework type.
/// </summary>
internal readonly struct LowerContentKey(ulong device, ulong inode, long size, long mTimeNs, long cTimeNs)
{
    public ulong Device { get; } = device;

    public ulong Inode { get; } = inode;

    public long Size { get; } = size;

    public long MTimeNs { get; } = mTimeNs;

    public long CTimeNs { get; } = cTimeNs;

    public bool Equals(LowerContentKey other) =>
        Device == other.Device && Inode == other.Inode && Size == other.Size && MTimeNs == other.MTimeNs && CTimeNs == other.CTimeNs;

    /// <summary>A slot in a table of <paramref name="slots"/> (a power of two) for this key.</summary>
    public int Slot(int slots)
    {
        ulong h = (Device * 0x9E3779B97F4A7C15UL) ^ (Inode * 0xC2B2AE3D27D4EB4FUL) ^ (ulong)Size ^ (ulong)CTimeNs;
        return (int)((h ^ (h >> 29)) & (ulong)(slots - 1));
    }
}
