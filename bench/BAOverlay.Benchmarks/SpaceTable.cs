namespace BAOverlay.Benchmarks;

/// <summary>
/// Upper space after k random 4 KiB writes (k = 1, 10, 100, 1000, 10000, cumulative), for each file and block size,
/// once the background copier is done and the file is flushed: allocated bytes on disk (holes excluded) against the
/// bound "written blocks + 0.5 % of the virtual size + 64 KiB". A whole-file copy-up takes the file size after k = 1.
/// </summary>
internal static class SpaceTable
{
    private static readonly int[] s_counts = [1, 10, 100, 1000, 10000];
    private static readonly long[] s_sizes = [64L * BenchData.MiB, 256L * BenchData.MiB, BenchData.GiB];
    private static readonly int[] s_blockSizes = [4 * BenchData.KiB, 16 * BenchData.KiB, 64 * BenchData.KiB, 256 * BenchData.KiB, BenchData.MiB];

    public static void Run()
    {
        byte[] data = BenchData.RandomBlock(4 * BenchData.KiB);
        Console.WriteLine("| file | block | k writes | blocks written | written blocks | upper allocated | bound | allocated / bound | overhead beyond blocks | st_blocks × 512 | vs whole-file copy |");
        Console.WriteLine("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        foreach (long size in s_sizes)
        {
            string lower = BenchData.Lower(size);
            long[] offsets = BenchData.RandomOffsets(size, s_counts[^1], seed: 11);
            foreach (int blockSize in s_blockSizes)
            {
                using BCowFile file = BenchData.CreateUpper(lower, blockSize, CopyUpMode.Background);
                int done = 0;
                foreach (int k in s_counts)
                {
                    for (; done < k; done++)
                    {
                        file.WriteAt(data, offsets[done]);
                    }
                    file.WaitForCopyUps();
                    file.Flush();
                    BCowInfo info = file.GetInfo();
                    long blocks = info.BlocksPresent + info.BlocksPartial;
                    long written = blocks * blockSize;
                    long bound = written + size / 200 + 64 * BenchData.KiB;
                    long allocated = info.AllocatedBytes;
                    Console.WriteLine($"| {BenchData.Bytes(size)} | {BenchData.Bytes(blockSize)} | {k} | {blocks} | {BenchData.Bytes(written)} | {BenchData.Bytes(allocated)} | {BenchData.Bytes(bound)} | {allocated / (double)bound:0.00} {(allocated <= bound ? "met" : "MISSED")} | {BenchData.Bytes(allocated - written)} | {BenchData.Bytes(BenchData.Allocated(file.Name))} | {100.0 * allocated / size:0.###} % |");
                }
                string path = file.Name;
                file.Dispose();
                BenchData.Delete(path);
            }
        }
    }
}
