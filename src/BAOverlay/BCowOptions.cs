namespace BAOverlay;

/// <summary>How a write into a block that is still in the lower file gets the rest of that block.</summary>
public enum CopyUpMode
{
    /// <summary>
    /// BAOverlay's way, the default: the write stores only its own bytes (whole sub-blocks) and returns; a bounded
    /// background copier fills the rest of the block from lower. Right for almost everything: the write costs what
    /// the write costs, whatever the block or file size. Reads of a block still being filled merge upper and lower.
    /// </summary>
    Background,

    /// <summary>
    /// The write copies the whole block from lower before it returns (classic block copy-on-write). Right when the
    /// lower file is about to go away or be slow (so no block should keep depending on it), and for measuring.
    /// </summary>
    Synchronous,
}

/// <summary>Options for creating a B-CoW file.</summary>
public sealed record BCowCreateOptions
{
    /// <summary>Block size in bytes: a power of two from 4 KiB to 1 MiB. Default 64 KiB (see <c>docs/benchmarks.md</c>).</summary>
    public int BlockSize { get; init; } = 1 << Format.Layout.DefaultBlockSizeLog2;

    /// <summary>The virtual size; default: the lower file's size. Required without a lower file.</summary>
    public long? VirtualSize { get; init; }

    /// <summary>The lower file, or null for a standalone B-CoW file. A relative path is stored relative to the
    /// B-CoW file's folder, so the pair can be moved together.</summary>
    public string? LowerPath { get; init; }

    /// <summary>Replace an existing file at the path instead of failing.</summary>
    public bool Overwrite { get; init; }

    /// <summary>Options for the file once it is open.</summary>
    public BCowOpenOptions Open { get; init; } = new();
}

/// <summary>Options for opening a B-CoW file.</summary>
public sealed record BCowOpenOptions
{
    /// <summary>Open read-only: nothing is written to the file, not even the dirty flag.</summary>
    public bool ReadOnly { get; init; }

    /// <summary>How writes into blocks still in lower are completed. Default <see cref="CopyUpMode.Background"/>.</summary>
    public CopyUpMode CopyUpMode { get; init; } = CopyUpMode.Background;

    /// <summary>How many blocks may wait for the background copier before writers wait for room. Default 4096.</summary>
    public int MaxPendingCopyUps { get; init; } = 4096;

    /// <summary>Background copier workers. Default 2.</summary>
    public int CopyUpWorkers { get; init; } = 2;

    /// <summary>On a writable open, queue the blocks left partial by an earlier session for filling. Default true.</summary>
    public bool ResumeCopyUps { get; init; } = true;

    /// <summary>Use this lower file instead of the path recorded in the header (its identity is still checked).</summary>
    public string? LowerPath { get; init; }

    /// <summary>
    /// Skip the lower file's identity check. Only for inspection and recovery: reading over a changed lower file
    /// returns its new bytes for blocks not copied up.
    /// </summary>
    public bool SkipLowerCheck { get; init; }

    /// <summary>Open without the lower file at all (blocks still in lower then fail to read). For inspection tools.</summary>
    public bool WithoutLower { get; init; }

    /// <summary>
    /// Open without taking the lock that keeps a file from being used by two processes at once (as qemu's
    /// <c>force-share</c>): the file opens even while another process writes it. Only with <see cref="ReadOnly"/>, and
    /// only for inspection: what is read then may be inconsistent (a map half-committed, data not yet written). Without
    /// it, an open for reading takes a shared lock and an open for writing an exclusive one, and a conflicting open
    /// raises <see cref="BCowFileInUseException"/>.
    /// </summary>
    public bool ForceShare { get; init; }

    /// <summary>
    /// For <c>bcow commit</c> finishing an interrupted commit: a file whose header says a commit into its lower file
    /// was under way opens even when its lower file is neither the recorded nor the pending one (partly written). Safe
    /// only for that commit: the blocks the file holds cover every byte the commit changes in the lower file.
    /// </summary>
    internal bool ResumeCommit { get; init; }

    /// <summary>The B-CoW files above this one in a backing chain being opened (empty for the top): for the loop and
    /// depth checks.</summary>
    internal IReadOnlyList<ChainMember> ChainAbove { get; init; } = [];
}
