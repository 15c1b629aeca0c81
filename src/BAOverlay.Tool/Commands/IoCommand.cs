using System.Diagnostics;
using System.Globalization;
using BAOverlay.Tool.Cli;
using BAOverlay.Tool.Io;
using BAOverlay.Tool.Text;

namespace BAOverlay.Tool.Commands;

/// <summary><c>bcow io</c>: qemu-io's <c>-c</c> commands against a B-CoW file, for tests and experiments.</summary>
internal sealed class IoCommand : ICommand
{
    private const int ChunkSize = 1 << 20;

    public string Name => "io";

    public string Summary => "run qemu-io style commands (read, write, discard, truncate, flush, wait) on a file";

    public string Synopsis => "io FILE -c COMMAND [-c COMMAND ...]";

    public string Help => $"""
        Runs the commands in order on FILE (through its lower file), printing for each
        what qemu-io prints. All commands are checked before FILE is opened. FILE is
        opened read-only when every command only reads (read, length); otherwise it is
        opened for writing, and flushed and closed cleanly at the end.

        Commands (qemu-io syntax; OFFSET, LENGTH and SIZE take 4k, 1M, 1G, bytes, 0x hex):
        {IoOperation.Commands}
        PATTERN is a byte: decimal or 0x hex.

        Example:
          bcow io x.bcow -c "write -P 0xab 1000000 4k" -c "read -P 0xab 1000000 4k"
          wrote 4096/4096 bytes at offset 1000000
          4 KiB, 1 ops; 00.01 sec (534.281 KiB/sec and 133.5702 ops/sec)
          read 4096/4096 bytes at offset 1000000
          4 KiB, 1 ops; 00.01 sec (374.392 KiB/sec and 93.5979 ops/sec)

        A failed verification prints, as qemu-io does,
          Pattern verification failed at offset 1000000, 4096 bytes
        and the remaining commands still run.

        Exit status: 0 every command succeeded, 1 a verification or command failed, or
        an error (the commands after an I/O error are not run).
        """;

    public IReadOnlyList<OptionSpec> Options { get; } = [OptionSpec.Valued("COMMAND", "-c", "--cmd")];

    public int Run(ParsedArguments args, CommandContext context)
    {
        Operands.Expect(args, "FILE");
        string path = args.Operands[0];
        List<IoOperation> operations = args.Values("-c").Select(IoOperation.Parse).ToList();
        if (operations.Count == 0)
        {
            throw new UsageException("no command: give at least one -c COMMAND");
        }
        bool writes = operations.Any(o => o.Writes);
        bool allSucceeded = true;
        using BCowFile file = BCowFile.Open(path, new BCowOpenOptions { ReadOnly = !writes });
        foreach (IoOperation operation in operations)
        {
            context.Cancellation.ThrowIfCancellationRequested();
            allSucceeded &= Execute(file, operation, context);
        }
        if (writes)
        {
            file.Flush();
        }
        return allSucceeded ? 0 : 1;
    }

    private static bool Execute(BCowFile file, IoOperation operation, CommandContext context)
    {
        TextWriter output = context.Out;
        switch (operation.Kind)
        {
            case IoKind.Read:
                return Read(file, operation, context);
            case IoKind.Write:
            {
                var clock = Stopwatch.StartNew();
                byte[] buffer = new byte[(int)Math.Min(ChunkSize, operation.Length)];
                buffer.AsSpan().Fill(operation.Pattern ?? IoOperation.DefaultWritePattern);
                for (long done = 0; done < operation.Length;)
                {
                    int n = (int)Math.Min(buffer.Length, operation.Length - done);
                    file.WriteAt(buffer.AsSpan(0, n), operation.Offset + done);
                    done += n;
                }
                Report(output, operation, "wrote", operation.Length, clock.Elapsed);
                return true;
            }
            case IoKind.Discard:
            {
                var clock = Stopwatch.StartNew();
                file.PunchHole(operation.Offset, operation.Length);
                Report(output, operation, "discard", operation.Length, clock.Elapsed);
                return true;
            }
            case IoKind.Truncate:
                file.SetLength(operation.Length);
                return true;
            case IoKind.Flush:
                file.Flush();
                return true;
            case IoKind.Wait:
                file.WaitForCopyUps();
                return true;
            case IoKind.Length:
                output.WriteLine(SizeFormatter.IoStyle(file.Length));
                return true;
            case IoKind.Sleep:
                output.Flush(); // whoever waits for this process to hold the file sees the reports before the pause
                context.Cancellation.WaitHandle.WaitOne(TimeSpan.FromMilliseconds(operation.Length));
                return true;
            default:
                throw new UnreachableException(operation.Kind.ToString());
        }
    }

    private static bool Read(BCowFile file, IoOperation operation, CommandContext context)
    {
        var clock = Stopwatch.StartNew();
        byte[] buffer = new byte[(int)Math.Min(ChunkSize, operation.Length)];
        bool matches = true;
        long total = 0;
        while (total < operation.Length)
        {
            int want = (int)Math.Min(buffer.Length, operation.Length - total);
            int n = file.ReadAt(buffer.AsSpan(0, want), operation.Offset + total);
            if (operation.Pattern is { } pattern && buffer.AsSpan(0, n).IndexOfAnyExcept(pattern) >= 0)
            {
                matches = false;
            }
            if (operation.Verbose)
            {
                IoReport.Dump(context.Out, buffer.AsSpan(0, n), operation.Offset + total);
            }
            total += n;
            if (n < want)
            {
                break;
            }
        }
        TimeSpan elapsed = clock.Elapsed;
        if (total < operation.Length)
        {
            // qemu-io refuses reads past the end of the image; so does this, rather than verify a short read.
            context.Error.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"bcow: {file.Name}: read failed: {operation.Offset}+{operation.Length} goes beyond the end of the file ({file.Length} bytes)"));
            return false;
        }
        if (!matches)
        {
            context.Out.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"Pattern verification failed at offset {operation.Offset}, {operation.Length} bytes"));
        }
        Report(context.Out, operation, "read", total, elapsed);
        return matches;
    }

    private static void Report(TextWriter output, IoOperation operation, string verb, long total, TimeSpan elapsed)
    {
        if (!operation.Quiet)
        {
            IoReport.Write(output, verb, operation.Offset, operation.Length, total, elapsed);
        }
    }
}
