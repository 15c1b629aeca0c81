namespace BAOverlay.Format;

/// <summary>Fixed numbers of the B-CoW version 1 layout; <c>docs/bcow-format.md</c> is the specification.</summary>
internal static class Layout
{
    public const int HeaderSlotSize = 4096;
    public const int HeaderSlotCount = 2;

    /// <summary>First byte after the two header slots; everything below it is header.</summary>
    public const long DataStart = HeaderSlotSize * HeaderSlotCount;

    /// <summary>Map pages (L1 and L2) and the root table are made of 4 KiB units, 4 KiB aligned.</summary>
    public const int PageSize = 4096;
    public const int PageShift = 12;

    /// <summary>Every entry of every map level is 16 bytes.</summary>
    public const int EntrySize = 16;
    public const int EntriesPerPage = PageSize / EntrySize; // 256
    public const int EntriesPerPageShift = 8;

    /// <summary>Blocks covered by one L1 page (256 L2 pages of 256 entries).</summary>
    public const int BlocksPerL1Shift = EntriesPerPageShift * 2;

    /// <summary>Each block is split into 64 sub-blocks, one bit each in a partial block's bitmap.</summary>
    public const int SubBlocksPerBlock = 64;
    public const int SubBlocksShift = 6;

    public const int MinBlockSizeLog2 = 12;
    public const int MaxBlockSizeLog2 = 20;
    public const int DefaultBlockSizeLog2 = 16;

    /// <summary>256 TiB: bounds every table a hostile header could ask a reader to allocate.</summary>
    public const long MaxVirtualSize = 1L << 48;

    /// <summary>Longest lower path stored in the header.</summary>
    public const int MaxLowerPathBytes = 1024;

    public static long BlockCount(long virtualSize, int blockSizeLog2) =>
        (virtualSize + (1L << blockSizeLog2) - 1) >> blockSizeLog2;

    public static int RootEntryCount(long virtualSize, int blockSizeLog2) =>
        checked((int)((BlockCount(virtualSize, blockSizeLog2) + (1L << BlocksPerL1Shift) - 1) >> BlocksPerL1Shift));

    public static long RootTableBytes(int rootEntries) =>
        Math.Max(PageSize, ((long)rootEntries * EntrySize + PageSize - 1) & ~(long)(PageSize - 1));
}
