namespace BAOverlay.Format;

/// <summary>
/// What a B-CoW file remembers of its lower file, to refuse a lower file whose content changed
/// (<c>docs/bcow-format.md</c>, "Lower identity"). Two kinds: <see cref="Sampled"/> (what this version writes): size
/// and a CRC-32C of 64 chunks sampled over the whole file, nothing else, so copies that keep the bytes (cp -a, tar, a
/// touch) keep the pair usable; and the legacy kind of files made before: size, modification time, inode and a CRC-32C
/// of the first and last 4 KiB, all of which must still match.
/// </summary>
/// <param name="Size">The lower file's length in bytes.</param>
/// <param name="MTimeNs">Modification time, nanoseconds since the Unix epoch (0 where the storage has none). Recorded
/// for both kinds, compared only for the legacy kind.</param>
/// <param name="Inode">Inode number (0 where the storage has none). Compared only for the legacy kind.</param>
/// <param name="Fingerprint">Sampled: CRC-32C of the chunks of <see cref="LowerSampling.Chunks"/>, in order. Legacy:
/// CRC-32C of the first 4 KiB followed by the last 4 KiB.</param>
/// <param name="Sampled">True for the sampled kind (header incompatible feature bit 0).</param>
internal readonly record struct LowerIdentity(long Size, long MTimeNs, ulong Inode, uint Fingerprint, bool Sampled = true);
