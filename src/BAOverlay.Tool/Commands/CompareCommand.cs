using System.Globalization;
using BAOverlay.Tool.Cli;
using BAOverlay.Tool.Images;

namespace BAOverlay.Tool.Commands;

/// <summary><c>bcow compare</c>: are two images (raw or B-CoW, in any pairing) the same content? As qemu-img compare.</summary>
internal sealed class CompareCommand : ICommand
{
    public const int Different = 1;
    public const int Error = 2;

    private const int ChunkSize = 1 << 20;

    // qemu-img compare names the 512-byte sector the first difference is in, not the byte; so does this, so that a
    // script reading either tool's answer gets the same number.
    private const int Sector = 512;

    public string Name => "compare";

    public string Summary => "tell whether two images (raw or B-CoW) hold the same content, and where they first differ";

    public string Synopsis => "compare [-s] A B";

    public string Help => """
        Compares the content of A and B, each a plain file or a B-CoW file (read as its
        merged content, through its lower file; the kind is told by the B-CoW magic).
        Prints, as qemu-img compare:

          Images are identical.
          Content mismatch at offset N!     N: the start of the first differing
                                            512-byte sector, as qemu-img counts it

        Images of different sizes are the same when the longer one's extra part reads
        as zeros ("Warning: Image size mismatch!" first); with -s they differ
        ("Strict mode: Image size mismatch!"). Ranges both images know to be zeros
        (holes, zero blocks) are not read.

        Options:
          -s, --strict   images of different sizes differ

        A progress bar is drawn on standard error when it is a terminal.

        Exit status, as qemu-img compare:
          0  the images are the same
          1  they differ
          2  an error (an image cannot be opened or read, or a wrong command line:
             unlike qemu-img, which exits 1 then, so that 1 always means "differ")
        """;

    public IReadOnlyList<OptionSpec> Options { get; } = [OptionSpec.Flag("-s", "--strict")];

    public int ErrorExitCode => Error;

    /// <summary>An error names A or B itself; the framework's messages name the file, so no subject is added.</summary>
    public string? Subject(ParsedArguments args) => null;

    public int Run(ParsedArguments args, CommandContext context)
    {
        Operands.Expect(args, "A", "B");
        using InputImage a = InputImage.Open(args.Operands[0]);
        using InputImage b = InputImage.Open(args.Operands[1]);
        long longest = Math.Max(a.Length, b.Length);
        ProgressBar? progress = context.ErrorIsTerminal ? new ProgressBar(context.Error, longest) : null;
        // The verdict is printed once the bar's line has ended, so on a terminal it gets a line of its own.
        var verdict = new List<string>();
        int exit;
        try
        {
            exit = Compare(a, b, args.Has("-s"), verdict, progress, context.Cancellation);
        }
        catch
        {
            progress?.Abandon();
            throw;
        }
        if (exit == 0)
        {
            progress?.Complete();
        }
        else
        {
            progress?.Abandon();
        }
        foreach (string line in verdict)
        {
            context.Out.WriteLine(line);
        }
        return exit;
    }

    private static int Compare(InputImage a, InputImage b, bool strict, List<string> verdict, ProgressBar? progress, CancellationToken cancellation)
    {
        // Before any content is read, as qemu-img decides it.
        if (strict && a.Length != b.Length)
        {
            verdict.Add("Strict mode: Image size mismatch!");
            return Different;
        }
        byte[] bufferA = new byte[ChunkSize];
        byte[] bufferB = new byte[ChunkSize];
        InputImage.DataCursor dataA = a.Data();
        InputImage.DataCursor dataB = b.Data();
        long common = Math.Min(a.Length, b.Length);
        for (long position = 0; position < common; position += ChunkSize)
        {
            cancellation.ThrowIfCancellationRequested();
            int want = (int)Math.Min(ChunkSize, common - position);
            bool inA = dataA.MayHoldData(position, position + want);
            bool inB = dataB.MayHoldData(position, position + want);
            if (inA || inB)
            {
                Span<byte> chunkA = Read(a, inA, bufferA.AsSpan(0, want), position);
                Span<byte> chunkB = Read(b, inB, bufferB.AsSpan(0, want), position);
                int same = chunkA.CommonPrefixLength(chunkB);
                if (same < want)
                {
                    return Mismatch(verdict, position + same);
                }
            }
            progress?.Report(position + want);
        }
        if (a.Length == b.Length)
        {
            verdict.Add("Images are identical.");
            return 0;
        }
        // Before the verdict on the extra part, as qemu-img prints it.
        verdict.Add("Warning: Image size mismatch!");
        InputImage longer = a.Length > b.Length ? a : b;
        InputImage.DataCursor longerData = a.Length > b.Length ? dataA : dataB;
        for (long position = common; position < longer.Length; position += ChunkSize)
        {
            cancellation.ThrowIfCancellationRequested();
            int want = (int)Math.Min(ChunkSize, longer.Length - position);
            if (longerData.MayHoldData(position, position + want))
            {
                Span<byte> chunk = bufferA.AsSpan(0, want);
                longer.ReadExactly(chunk, position);
                int nonZero = chunk.IndexOfAnyExcept((byte)0);
                if (nonZero >= 0)
                {
                    return Mismatch(verdict, position + nonZero);
                }
            }
            progress?.Report(position + want);
        }
        verdict.Add("Images are identical.");
        return 0;
    }

    private static Span<byte> Read(InputImage image, bool mayHoldData, Span<byte> buffer, long position)
    {
        if (mayHoldData)
        {
            image.ReadExactly(buffer, position);
        }
        else
        {
            buffer.Clear();
        }
        return buffer;
    }

    private static int Mismatch(List<string> verdict, long offset)
    {
        verdict.Add(string.Create(CultureInfo.InvariantCulture, $"Content mismatch at offset {offset / Sector * Sector}!"));
        return Different;
    }
}
