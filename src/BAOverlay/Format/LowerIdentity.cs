namespace BAOverlay.Format;

/// <summary>
/// What a B-CoW file remembers of its lower file, to refuse a lower file that was changed or replaced:
/// size, modification time, inode number and a CRC-32C fingerprint of its first and last 4 KiB.
/// </summary>
/// <param name="Size">The lower file's length in bytes.</param>
/// <param name="MTimeNs">Modification time, nanoseconds since the Unix epoch (0 where the storage has none).</param>
/// <param name="Inode">Inode number (0 where the storage has none).</param>
/// <param name="Fingerprint">CRC-32C of the first 4 KiB followed by the last 4 KiB of the lower file.</param>
internal readonly record struct LowerIdentity(long Size, long MTimeNs, ulong Inode, uint Fingerprint);
