using System.Security.Cryptography;
using Mono.Unix.Native;

namespace BAOverlay.Benchmarks;

/// <summary>
/// The benchmark files: real (non-sparse) lower files, made once and shared by every benchmark process of a run, and
/// the B-CoW uppers made from them. They live in one folder on a disk file system (not tmpfs), by default
/// /var/tmp/baoverlay-bench (BAOVERLAY_BENCH_DIR overrides); the host process removes it at the end of the run.
/// </summary>
public static class BenchData
{
    public const int KiB = 1024;
    public const int MiB = 1024 * KiB;
    public const long GiB = 1024L * MiB;

    public static string Dir { get; } =
        Environment.GetEnvironmentVariable("BAOVERLAY_BENCH_DIR") is { Length: > 0 } dir ? dir : "/var/tmp/baoverlay-bench";

    /// <summary>A lower file of <paramref name="size"/> bytes of random data (1 MiB random, stamped with its index, repeated).</summary>
    public static string Lower(long size)
    {
        Directory.CreateDirectory(Dir);
        string path = Path.Combine(Dir, $"lower-{size >> 20}M.img");
        if (File.Exists(path) && new FileInfo(path).Length == size)
        {
            return path;
        }
        string temp = path + $".{Environment.ProcessId}.tmp";
        byte[] chunk = new byte[MiB];
        new Random(42).NextBytes(chunk);
        using (var handle = File.OpenHandle(temp, FileMode.Create, FileAccess.Write, preallocationSize: size))
        {
            for (long done = 0; done < size; done += chunk.Length)
            {
                BitConverter.TryWriteBytes(chunk, done);
                RandomAccess.Write(handle, chunk.AsSpan(0, (int)Math.Min(chunk.Length, size - done)), done);
            }
            RandomAccess.FlushToDisk(handle);
        }
        File.Move(temp, path, overwrite: true);
        return path;
    }

    /// <summary>A fresh path for an upper file (B-CoW or copy).</summary>
    public static string NewPath(string kind)
    {
        string dir = Path.Combine(Dir, "uppers");
        Directory.CreateDirectory(dir);
        return Path.Combine(dir, $"{kind}-{Environment.ProcessId}-{Guid.NewGuid():N}");
    }

    public static BCowFile CreateUpper(string lower, int blockSize, CopyUpMode mode, string? path = null) =>
        BCowFile.Create(path ?? NewPath("bcow"), new BCowCreateOptions
        {
            LowerPath = lower,
            BlockSize = blockSize,
            Open = new BCowOpenOptions { CopyUpMode = mode },
        });

    /// <summary>
    /// A B-CoW file over <paramref name="lower"/> with <paramref name="fraction"/> of its blocks (chosen at random)
    /// modified by one 4 KiB write each (in random order), copy-ups finished (all those blocks Present) and flushed. Left closed.
    /// </summary>
    public static string MakeModified(string lower, int blockSize, double fraction, int seed = 7)
    {
        string path = NewPath($"mod{(int)(fraction * 100)}");
        long size = new FileInfo(lower).Length;
        long blocks = size / blockSize;
        var random = new Random(seed);
        byte[] data = new byte[4 * KiB];
        random.NextBytes(data);
        using (BCowFile file = CreateUpper(lower, blockSize, CopyUpMode.Background, path))
        {
            // Blocks modified in random order, as random writes do: upper space is allocated in write order, so
            // neighbouring blocks are not neighbours in the upper file (the worst case for sequential reads).
            long[] chosen = Enumerable.Range(0, (int)blocks).Where(_ => fraction >= 1 || random.NextDouble() < fraction).Select(b => (long)b).ToArray();
            random.Shuffle(chosen);
            foreach (long b in chosen)
            {
                long inBlock = random.Next(blockSize / (4 * KiB)) * 4L * KiB;
                file.WriteAt(data, b * blockSize + inBlock);
            }
            file.WaitForCopyUps();
            file.Flush();
        }
        return path;
    }

    /// <summary><paramref name="count"/> 4 KiB-aligned offsets in [0, size - 4 KiB], fixed seed.</summary>
    public static long[] RandomOffsets(long size, int count, int seed = 1)
    {
        var random = new Random(seed);
        long pages = size / (4 * KiB);
        return Enumerable.Range(0, count).Select(_ => random.NextInt64(pages) * 4 * KiB).ToArray();
    }

    public static void Delete(string? path)
    {
        if (path is not null)
        {
            try
            {
                File.Delete(path);
            }
            catch (IOException)
            {
            }
        }
    }

    /// <summary>Drops the file's clean pages from the page cache (posix_fadvise DONTNEED; no root needed).</summary>
    public static void Evict(string path)
    {
        int fd = Syscall.open(path, OpenFlags.O_RDONLY);
        if (fd < 0 || Syscall.posix_fadvise(fd, 0, 0, PosixFadviseAdvice.POSIX_FADV_DONTNEED) != 0)
        {
            throw new IOException($"{path}: cannot evict from the page cache: {Stdlib.GetLastError()}");
        }
        Syscall.close(fd);
    }

    /// <summary>Bytes allocated on disk (st_blocks * 512), holes excluded.</summary>
    public static long Allocated(string path) => Syscall.stat(path, out Stat st) == 0 ? st.st_blocks * 512 : new FileInfo(path).Length;

    public static void RemoveAll()
    {
        if (Directory.Exists(Dir))
        {
            Directory.Delete(Dir, recursive: true);
        }
    }

    public static string Bytes(long bytes) => bytes switch
    {
        >= GiB => $"{bytes / (double)GiB:0.##} GiB",
        >= MiB => $"{bytes / (double)MiB:0.##} MiB",
        >= KiB => $"{bytes / (double)KiB:0.#} KiB",
        _ => $"{bytes} B",
    };

    internal static byte[] RandomBlock(int size) => RandomNumberGenerator.GetBytes(size);
}
