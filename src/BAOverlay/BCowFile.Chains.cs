using BAOverlay.Engine;
using BAOverlay.Format;
using BAOverlay.Storage;
using Mono.Unix.Native;

namespace BAOverlay;

/// <summary>One B-CoW file of a backing chain, as an open knows it: its device and inode (a loop through another
/// path or a link is still the same file) and the path it was opened by (for messages).</summary>
internal sealed record ChainMember(ulong Device, ulong Inode, string Path)
{
    /// <summary>The member for the file at <paramref name="path"/>; a file not there yet (create) gets device and
    /// inode 0, which no file has, so it counts for depth but matches nothing.</summary>
    public static ChainMember Of(string path) =>
        Syscall.stat(path, out Stat st) == 0 ? new ChainMember(st.st_dev, st.st_ino, path) : new ChainMember(0, 0, path);

    public bool SameFile(ChainMember other) => Device != 0 && Device == other.Device && Inode == other.Inode;
}

/// <summary>
/// Backing chains: a lower file that is itself a B-CoW file is read through its own map (recursively), as qemu reads
/// a qcow2 backing chain. Only opens by path build chains (the chain is made of recorded paths); an open over storage
/// the caller made (the overlay's) still refuses a B-CoW lower. Each lower member is opened read-only, so it holds a
/// shared lock: while a chain is open nobody may write any member, and a member another process writes cannot be
/// opened. A chain holds at most <see cref="MaxChainDepth"/> B-CoW files (the top included), and a file that appears
/// twice in it (a loop) is refused. The identity a member records of its lower member is that member's merged content
/// (<see cref="LowerIdentities"/>), so writing into a lower member (other than by <c>bcow commit</c>, which records the
/// new identity) makes the files above it refuse, as for a plain lower file.
/// </summary>
public sealed partial class BCowFile
{
    /// <summary>B-CoW files in one chain, the top included (qemu has no limit; a limit keeps a hostile or mistaken
    /// chain from opening thousands of files and recursing as deep).</summary>
    internal const int MaxChainDepth = 16;

    /// <summary>Refuses to open <paramref name="self"/> below <paramref name="above"/> when it closes a loop or
    /// passes the depth limit.</summary>
    private static void CheckChain(ChainMember self, IReadOnlyList<ChainMember> above)
    {
        if (above.Any(member => member.SameFile(self)))
        {
            throw new BCowFormatException(above[^1].Path, $"backing chain loop: {string.Join(" -> ", above.Select(m => m.Path))} -> {self.Path}");
        }
        if (above.Count >= MaxChainDepth)
        {
            throw new BCowFormatException(above[0].Path, $"the backing chain is deeper than {MaxChainDepth} B-CoW files ({self.Path} would be number {above.Count + 1})");
        }
    }

    /// <summary>
    /// Opens the lower file at <paramref name="path"/>: a plain file as bytes, a B-CoW file (recognised by its magic,
    /// as <see cref="RefuseBCowLower"/> does) as a read-only member of the chain below <paramref name="above"/>.
    /// </summary>
    internal static IBlockStorage OpenLower(string path, IReadOnlyList<ChainMember> above)
    {
        FileStorage raw = OpenLowerFile(path);
        bool chained;
        try
        {
            chained = IsBCowFile(raw);
        }
        catch
        {
            raw.Dispose();
            throw;
        }
        if (!chained)
        {
            return raw;
        }
        raw.Dispose();
        return new BCowLowerStorage(Open(path, new BCowOpenOptions { ReadOnly = true, ChainAbove = above }));
    }

    /// <summary>True when <paramref name="storage"/> starts either header slot with the B-CoW magic (a file just
    /// created has only slot 1 written).</summary>
    internal static bool IsBCowFile(IBlockStorage storage)
    {
        Span<byte> magic = stackalloc byte[BCowHeader.Magic.Length];
        for (int slot = 0; slot < Layout.HeaderSlotCount; slot++)
        {
            if (storage.ReadAt(magic, (long)slot * Layout.HeaderSlotSize) == magic.Length && magic.SequenceEqual(BCowHeader.Magic))
            {
                return true;
            }
        }
        return false;
    }

    /// <summary>The B-CoW file's own modification time and inode.</summary>
    internal (long MTimeNs, ulong Inode) UpperIdentity() => _upper.GetIdentity();
}
