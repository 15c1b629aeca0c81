using BAOverlay.Format;
using BAOverlay.Storage;

namespace BAOverlay.Engine;

/// <summary>
/// Answers "is this the lower file the B-CoW file was made over?" (<c>docs/bcow-format.md</c>, "Lower identity").
/// The sampled identity (size and 64 chunks spread over the content) is what new files record: only the bytes
/// matter, so cp -a, a tar round trip or a touch keep a pair usable. Files made before record the legacy identity
/// (size, mtime, inode, first and last 4 KiB) and are checked exactly as before; <c>bcow rebase -u</c> upgrades them.
/// </summary>
internal static class LowerIdentities
{
    /// <summary>The identity a new file records: the sampled kind. 64 positional reads of 4 KiB, one buffer on the stack.</summary>
    public static LowerIdentity IdentityOf(IBlockStorage lower)
    {
        long size = lower.Length;
        var (mtime, inode) = lower.GetIdentity();
        return new LowerIdentity(size, mtime, inode, SampledFingerprint(lower, size), Sampled: true);
    }

    /// <summary>The identity of the kind <paramref name="recorded"/> is, so the two compare.</summary>
    public static LowerIdentity IdentityLike(LowerIdentity recorded, IBlockStorage lower) =>
        recorded.Sampled ? IdentityOf(lower) : LegacyOf(lower);

    /// <summary>The identity files made before this version record (and what their check compares).</summary>
    public static LowerIdentity LegacyOf(IBlockStorage lower)
    {
        long size = lower.Length;
        var (mtime, inode) = lower.GetIdentity();
        Span<byte> buffer = stackalloc byte[4096];
        int n = lower.ReadAt(buffer[..(int)Math.Min(4096, size)], 0);
        uint state = Crc32C.Append(Crc32C.Start, buffer[..n]);
        long tail = Math.Max(0, size - 4096);
        n = lower.ReadAt(buffer[..(int)(size - tail)], tail);
        return new LowerIdentity(size, mtime, inode, Crc32C.Finish(Crc32C.Append(state, buffer[..n])), Sampled: false);
    }

    /// <summary>
    /// Fingerprints taken in this process, by the file's <see cref="LowerContentKey"/>: opening a pair again (the
    /// overlay reopens a B-CoW file right after making it, and at every open of a file) costs one fstat instead of 64
    /// reads. A fixed table of <see cref="CacheSlots"/> slots, a key's slot chosen by its hash (a newer key takes the
    /// slot): bounded, and no generic collection over framework value types, which the ahead-of-time compiled image
    /// lacks and the first write through a fresh mount would pay a JIT compilation for.
    /// </summary>
    private static readonly KeptFingerprint[] s_fingerprints = new KeptFingerprint[CacheSlots];
    private static readonly object s_fingerprintsGate = new();

    /// <summary>How many fingerprints the table holds at most.</summary>
    internal const int CacheSlots = 1024;

    /// <summary>CRC-32C of the chunks <see cref="LowerSampling.Chunks"/> names for <paramref name="size"/>, in order;
    /// from the process's table when the file is a <see cref="FileStorage"/> unchanged since it was taken.</summary>
    public static uint SampledFingerprint(IBlockStorage lower, long size)
    {
        if (lower is not FileStorage file || !file.TryGetContentKey(out LowerContentKey key) || key.Size != size)
        {
            return ReadFingerprint(lower, size);
        }
        int slot = key.Slot(CacheSlots);
        lock (s_fingerprintsGate)
        {
            ref readonly KeptFingerprint entry = ref s_fingerprints[slot];
            if (entry.Used && entry.Key.Equals(key))
            {
                return entry.Fingerprint;
            }
        }
        uint fingerprint = ReadFingerprint(lower, size);
        // Kept only if the file did not change while it was read (its key would have moved).
        if (file.TryGetContentKey(out LowerContentKey after) && after.Equals(key))
        {
            lock (s_fingerprintsGate)
            {
                s_fingerprints[slot] = new KeptFingerprint(key, fingerprint);
            }
        }
        return fingerprint;
    }

    private readonly struct KeptFingerprint(LowerContentKey key, uint fingerprint)
    {
        public LowerContentKey Key { get; } = key;

        public uint Fingerprint { get; } = fingerprint;

        public bool Used { get; } = true;
    }

    /// <summary>The fingerprint read from the file, never from the cache.</summary>
    internal static uint ReadFingerprint(IBlockStorage lower, long size)
    {
        // The 64 chunks are scattered over the file: asked for all at once, a lower file that is not in the page
        // cache (a container's first write into an image file) costs about one device round trip, not 64.
        (lower as FileStorage)?.WillNeedSamples(size);
        Span<byte> buffer = stackalloc byte[LowerSampling.ChunkSize];
        uint state = Crc32C.Start;
        for (int i = 0, count = LowerSampling.Count(size); i < count; i++)
        {
            long offset = LowerSampling.Offset(size, i);
            int length = LowerSampling.Length(size, i);
            int n = lower.ReadAt(buffer[..length], offset);
            if (n < length)
            {
                throw new IOException($"{lower.Name}: the file ends at {offset + n}, before {offset + length}; it was truncated while being read");
            }
            state = Crc32C.Append(state, buffer[..length]);
        }
        return Crc32C.Finish(state);
    }

    /// <summary>
    /// What differs between the identity recorded and the lower file now, in words for a message; null when it is
    /// the same file as far as the recorded kind can tell.
    /// </summary>
    public static string? Difference(LowerIdentity then, LowerIdentity now)
    {
        if (now.Size != then.Size)
        {
            return $"its size is {now.Size}, was {then.Size}";
        }
        if (now.Fingerprint != then.Fingerprint)
        {
            return then.Sampled
                ? $"its content differs (fingerprint of 64 sampled 4 KiB chunks 0x{now.Fingerprint:x8}, was 0x{then.Fingerprint:x8})"
                : "its content differs (first or last 4 KiB)";
        }
        if (then.Sampled)
        {
            return null;
        }
        // The legacy identity also names the file: an honest copy fails here, and only the user can say it is one.
        const string hint = "; if its content is unchanged, 'bcow rebase -u --lower LOWER FILE' records it anew";
        return now.Inode != then.Inode ? $"it was replaced (inode {now.Inode}, was {then.Inode}){hint}"
            : now.MTimeNs != then.MTimeNs ? $"it was modified (modification time differs){hint}"
            : null;
    }

    /// <summary>
    /// The check while a commit into the lower file is under way (<see cref="BCowHeader.FlagCommitting"/>): the lower
    /// file may be the recorded one (nothing written yet) or the pending one (all written); either way the merged
    /// content is the file's. Partly written, it is refused unless <paramref name="resuming"/> (the commit run again).
    /// </summary>
    public static void CheckDuringCommit(string name, LowerIdentity recorded, LowerIdentity pending, IBlockStorage lower, bool resuming)
    {
        if (resuming || Difference(recorded, IdentityLike(recorded, lower)) is null || Difference(pending, IdentityOf(lower)) is null)
        {
            return;
        }
        throw new BCowFormatException(name, $"a commit into lower file {lower.Name} was interrupted and left it partly written; run 'bcow commit {name}' again to finish it (the merged content is intact)");
    }

    /// <summary>Refuses a lower file that is not the one recorded.</summary>
    /// <exception cref="BCowFormatException">It differs; the message names the B-CoW file, the lower file and what differs.</exception>
    public static void Check(string name, LowerIdentity recorded, IBlockStorage lower)
    {
        if (Difference(recorded, IdentityLike(recorded, lower)) is { } change)
        {
            throw new BCowFormatException(name, $"lower file {lower.Name} changed since this B-CoW file was made: {change}; refusing to merge a changed lower file");
        }
    }
}
