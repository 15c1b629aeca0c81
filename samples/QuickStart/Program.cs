// BAOverlay quick start: write a few KiB into a big read-only file through a B-CoW overlay, and compare that with
// what kernel overlayfs / fuse-overlayfs do on a first write: copy the whole file up, then write.
//
//   dotnet run --project samples/QuickStart -c Release                 (1 GiB lower file)
//   dotnet run --project samples/QuickStart -c Release -- --size 256M  (sizes: 64M, 256M, 1G, 4096K, ...)
//   add --dir PATH to make the files somewhere else than the system temp folder (use a disk, not tmpfs).

using System.Diagnostics;
using System.Security.Cryptography;
using BAOverlay;
using Mono.Unix.Native;

long size = 1L << 30;
string? parent = null;
for (int i = 0; i < args.Length; i++)
{
    switch (args[i])
    {
        case "--size" when i + 1 < args.Length && TryParseSize(args[i + 1], out size):
            i++;
            break;
        case "--dir" when i + 1 < args.Length:
            parent = args[++i];
            break;
        default:
            Console.Error.WriteLine("usage: QuickStart [--size 1G|256M|64M|...] [--dir FOLDER]");
            return 2;
    }
}
if (size < 1 << 20)
{
    Console.Error.WriteLine("--size: at least 1M");
    return 2;
}

// Everything lives in one temp folder, removed at the end, on failure and on Ctrl+C.
string dir = Path.Combine(parent ?? Path.GetTempPath(), $"baoverlay-quickstart-{Environment.ProcessId}");
// The lower file and its whole-file copy take the size twice (2 GiB by default); the B-CoW file a few hundred KiB.
long needed = 2 * size + (16L << 20);
if (FreeSpace(parent ?? Path.GetTempPath()) is { } free && free < needed)
{
    Console.Error.WriteLine(NoSpace(parent ?? Path.GetTempPath(), needed, free));
    return 1;
}
Directory.CreateDirectory(dir);
using var cancel = new CancellationTokenSource();
Console.CancelKeyPress += (_, e) =>
{
    e.Cancel = true; // stop at the next check and clean up in the finally block below
    cancel.Cancel();
};
try
{
    string lowerPath = Path.Combine(dir, "lower.img"); // the read-only file (think: a container image layer)
    string bcowPath = Path.Combine(dir, "upper.bcow");  // BAOverlay's upper: only the blocks written
    string copyPath = Path.Combine(dir, "upper.copy");  // overlayfs's upper: a copy of the whole file

    MakeLowerFile(lowerPath, size, cancel.Token);

    // The few KiB we write: three 4 KiB writes (start, middle, end) and one small unaligned one.
    var writes = new List<(long Offset, byte[] Data)>
    {
        (0, Fill(4096, 1)),
        (size / 2, Fill(4096, 2)),
        (size - 4096, Fill(4096, 3)),
        (size / 3 + 1234, Fill(1000, 4)),
    };
    long written = writes.Sum(w => (long)w.Data.Length);

    // .NET compiles each method on its first call; do one throwaway overlay write first so the timings below show
    // the I/O, not the JIT (a long-running process pays that once).
    WarmUp(dir);

    // ---- BAOverlay: create a B-CoW file over the lower file, write, flush.
    // Create is like mounting the overlay: done once, before the first write (its cost is shown apart).
    var create = Stopwatch.StartNew();
    using var overlay = BCowFile.Create(bcowPath, new BCowCreateOptions
    {
        LowerPath = lowerPath,
        // BlockSize = 64 * 1024,                     // the default; 4 KiB .. 1 MiB
        Open = new BCowOpenOptions { CopyUpMode = CopyUpMode.Background }, // the default, shown for the reader
    });
    create.Stop();

    var bcowWrite = Stopwatch.StartNew();
    foreach (var (offset, data) in writes)
    {
        overlay.WriteAt(data, offset); // returns once its own bytes are in upper; the rest of the block is copied later
    }
    bcowWrite.Stop();
    var bcowFlush = Stopwatch.StartNew();
    overlay.Flush();                   // durable: data, map, header, with fsync between
    bcowFlush.Stop();

    // Space once the background copier has finished the touched blocks (the most it will ever take for these writes).
    overlay.WaitForCopyUps();
    overlay.Flush();
    long bcowSpace = overlay.GetInfo().AllocatedBytes;

    // ---- What overlayfs does on the first write: copy the whole file up, then write into the copy, fsync.
    cancel.Token.ThrowIfCancellationRequested();
    var copyWrite = Stopwatch.StartNew();
    var copyFlush = new Stopwatch();
    File.Copy(lowerPath, copyPath);
    using (var copy = File.OpenHandle(copyPath, FileMode.Open, FileAccess.ReadWrite))
    {
        foreach (var (offset, data) in writes)
        {
            RandomAccess.Write(copy, data, offset);
        }
        copyWrite.Stop();
        copyFlush.Start();
        RandomAccess.FlushToDisk(copy);
        copyFlush.Stop();
    }
    long copySpace = AllocatedOnDisk(copyPath);

    // ---- Read back through the overlay: our bytes where we wrote, the lower file's bytes everywhere else.
    Verify(overlay, lowerPath, writes, size);

    // ---- The result.
    Console.WriteLine();
    Console.WriteLine($"Lower file {FormatBytes(size)}, {writes.Count} writes, {FormatBytes(written)} written; B-CoW block size {FormatBytes(overlay.BlockSize)}.");
    Console.WriteLine();
    Console.WriteLine($"{"",-18} {"first write",12} {"+ flush",12} {"upper space",12}");
    Console.WriteLine($"{"B-CoW (BAOverlay)",-18} {Ms(bcowWrite),12} {Ms(bcowFlush),12} {FormatBytes(bcowSpace),12}");
    Console.WriteLine($"{"whole-file copy",-18} {Ms(copyWrite),12} {Ms(copyFlush),12} {FormatBytes(copySpace),12}");
    Console.WriteLine($"(creating the B-CoW file, done once like a mount: {Ms(create)})");
    Console.WriteLine();
    double faster = copyWrite.Elapsed.TotalMilliseconds / Math.Max(bcowWrite.Elapsed.TotalMilliseconds, 0.001);
    double durable = (copyWrite.Elapsed + copyFlush.Elapsed).TotalMilliseconds / Math.Max((bcowWrite.Elapsed + bcowFlush.Elapsed).TotalMilliseconds, 0.001);
    double smaller = (double)copySpace / Math.Max(bcowSpace, 1);
    Console.WriteLine($"B-CoW: {Ms(bcowWrite)}, {FormatBytes(bcowSpace)} upper | whole-file copy: {Ms(copyWrite)}, {FormatBytes(copySpace)} upper | {faster:0}x faster ({durable:0}x with flush), {smaller:0}x less space");
    Console.WriteLine("Read-back check: OK (written bytes and untouched ranges)");
    return 0;
}
catch (OperationCanceledException)
{
    Console.Error.WriteLine("\nCancelled.");
    return 130;
}
catch (IOException e) when (IsNoSpace(e))
{
    // Something else filled the disk meanwhile (the check above passed): one line, not a stack trace.
    Console.Error.WriteLine(NoSpace(parent ?? Path.GetTempPath(), needed, FreeSpace(parent ?? Path.GetTempPath())));
    return 1;
}
finally
{
    try
    {
        Directory.Delete(dir, recursive: true);
    }
    catch (IOException e)
    {
        Console.Error.WriteLine($"could not remove {dir}: {e.Message}");
    }
}

static long? FreeSpace(string folder) =>
    Syscall.statvfs(folder, out Statvfs st) == 0 ? (long)(st.f_bavail * st.f_frsize) : null;

static string NoSpace(string folder, long needed, long? free) =>
    $"QuickStart: not enough free space in {folder}: the demo needs about {FormatBytes(needed)}" +
    (free is { } f ? $", {FormatBytes(f)} is free" : "") + " (use --dir FOLDER on a bigger disk, or a smaller --size)";

// ENOSPC: .NET reports it with the errno as HResult, or (preallocating) as "the disk was full".
static bool IsNoSpace(IOException e) =>
    e.HResult == 28 || (e.HResult & 0xFFFF) == 0x70 || e.Message.Contains("disk was full", StringComparison.OrdinalIgnoreCase) ||
    e.Message.Contains("No space left", StringComparison.OrdinalIgnoreCase);

// Real data (a sparse file would make the whole-file copy unfairly cheap): one random MiB, stamped with its index so
// no two MiB are equal, written over and over; then fsync, so its write-back does not land in our measurements.
static void MakeLowerFile(string path, long size, CancellationToken cancel)
{
    byte[] chunk = RandomNumberGenerator.GetBytes(1 << 20);
    using var handle = File.OpenHandle(path, FileMode.CreateNew, FileAccess.Write, preallocationSize: size);
    var clock = Stopwatch.StartNew();
    for (long done = 0; done < size; done += chunk.Length)
    {
        cancel.ThrowIfCancellationRequested();
        BitConverter.TryWriteBytes(chunk, done);
        int n = (int)Math.Min(chunk.Length, size - done);
        RandomAccess.Write(handle, chunk.AsSpan(0, n), done);
        if ((done & ((64L << 20) - 1)) == 0)
        {
            if (!Console.IsOutputRedirected)
            {
                // Redrawn in place only on a terminal; in a log it would be one long line.
                Console.Write($"\rMaking the lower file {path}: {FormatBytes(done)} of {FormatBytes(size)}   ");
            }
        }
    }
    RandomAccess.FlushToDisk(handle);
    Console.WriteLine($"{(Console.IsOutputRedirected ? "" : "\r")}Made the lower file {path}: {FormatBytes(size)} in {clock.Elapsed.TotalSeconds:0.0} s            ");
}

static void WarmUp(string dir)
{
    string lower = Path.Combine(dir, "warmup.img");
    File.WriteAllBytes(lower, new byte[1 << 20]);
    using (var file = BCowFile.Create(Path.Combine(dir, "warmup.bcow"), new BCowCreateOptions { LowerPath = lower }))
    {
        file.WriteAt(new byte[1000], 4096 + 100);
        file.Flush();
        file.WaitForCopyUps();
        file.ReadAt(new byte[8192], 0);
        _ = file.GetInfo();
    }
    File.Delete(Path.Combine(dir, "warmup.bcow"));
    File.Delete(lower);
}

static void Verify(BCowFile overlay, string lowerPath, List<(long Offset, byte[] Data)> writes, long size)
{
    foreach (var (offset, data) in writes)
    {
        byte[] back = new byte[data.Length];
        overlay.ReadAt(back, offset);
        if (!back.AsSpan().SequenceEqual(data))
        {
            throw new InvalidOperationException($"read-back mismatch at {offset}: not the bytes written");
        }
    }
    // Untouched ranges, some right next to a write (same block, filled from lower by the copier), must equal lower.
    using var lower = File.OpenHandle(lowerPath);
    long[] untouched = [4096, 65536, size / 4, size / 2 + 4096, size / 2 - 8192, size / 3 + 1234 + 1000, size - 3 * 4096];
    byte[] expected = new byte[8192];
    byte[] actual = new byte[8192];
    foreach (long offset in untouched)
    {
        int n = (int)Math.Min(expected.Length, size - offset);
        if (writes.Any(w => offset < w.Offset + w.Data.Length && w.Offset < offset + n))
        {
            throw new InvalidOperationException($"check range at {offset} overlaps a write");
        }
        RandomAccess.Read(lower, expected.AsSpan(0, n), offset);
        overlay.ReadAt(actual.AsSpan(0, n), offset);
        if (!actual.AsSpan(0, n).SequenceEqual(expected.AsSpan(0, n)))
        {
            throw new InvalidOperationException($"read-back mismatch at {offset}: not the lower file's bytes");
        }
    }
}

// Blocks really allocated on disk (holes not counted), as `du` reports.
static long AllocatedOnDisk(string path) =>
    Syscall.stat(path, out Stat st) == 0 ? st.st_blocks * 512 : new FileInfo(path).Length;

static byte[] Fill(int length, byte seed)
{
    byte[] data = new byte[length];
    for (int i = 0; i < data.Length; i++)
    {
        data[i] = (byte)(seed * 31 + i);
    }
    return data;
}

// "1G", "256M", "64MiB", "4096K", "1048576".
static bool TryParseSize(string text, out long size)
{
    text = text.Trim().ToUpperInvariant().TrimEnd('B').TrimEnd('I');
    int shift = text.Length == 0 ? 0 : text[^1] switch { 'K' => 10, 'M' => 20, 'G' => 30, 'T' => 40, _ => 0 };
    bool ok = long.TryParse(shift == 0 ? text : text[..^1], System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out size);
    size <<= shift;
    return ok;
}

static string Ms(Stopwatch clock) => $"{clock.Elapsed.TotalMilliseconds:0.00} ms";

static string FormatBytes(long bytes) => bytes switch
{
    >= 1L << 30 => $"{bytes / (double)(1L << 30):0.00} GiB",
    >= 1L << 20 => $"{bytes / (double)(1L << 20):0.0} MiB",
    >= 1L << 10 => $"{bytes / 1024.0:0} KiB",
    _ => $"{bytes} B",
};
