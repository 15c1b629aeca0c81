using System.Globalization;
using BAOverlay.Tool.Cli;

namespace BAOverlay.Tool.Commands;

/// <summary><c>bcow create</c>: a new B-CoW file, over a lower file or standalone.</summary>
internal sealed class CreateCommand : ICommand
{
    // The format's limits (docs/bcow-format.md); the library keeps its copies internal.
    private const long MinBlockSize = 4096;
    private const long MaxBlockSize = 1 << 20;
    private const long MaxVirtualSize = 1L << 48;

    public string Name => "create";

    public string Summary => "create a B-CoW file over a lower file, or a standalone one of a given size";

    public string Synopsis => "create [-b BLOCKSIZE] [--lower PATH] [--size SIZE] [--force] FILE [SIZE]";

    public string Help => """
        Creates FILE. With --lower, reads of blocks never written come from PATH, which is
        never written; its size, modification time, inode and a fingerprint are recorded
        so a later change to it is detected. A relative PATH is stored relative to FILE's
        folder, so the two can be moved together.

        Options:
          -b, --block-size BLOCKSIZE  copy-up and allocation unit: a power of two from 4k
                                      to 1M (default 64k)
          -l, --lower PATH            the lower file
          -s, --size SIZE             the virtual size (default: the lower file's size;
                                      required without --lower). May also be given as a
                                      second operand, as with qemu-img create.
          -f, --force                 replace FILE if it exists (default: refuse)

        Sizes: bytes, 0x hex, or a number with k, M, G, T, P or E (powers of 1024).

        Prints what it made, like qemu-img create:
          Formatting 'x.bcow', fmt=bcow size=67108864 block_size=65536 lower_file=big.img

        Exit status: 0 created, 1 error (no half-made file is left at FILE).
        """;

    public IReadOnlyList<OptionSpec> Options { get; } =
    [
        OptionSpec.Valued("BLOCKSIZE", "-b", "--block-size"),
        OptionSpec.Valued("PATH", "-l", "--lower"),
        OptionSpec.Valued("SIZE", "-s", "--size"),
        OptionSpec.Flag("-f", "--force"),
    ];

    public int Run(ParsedArguments args, CommandContext context)
    {
        Operands.Expect(args, 1, "FILE", "SIZE");
        string path = args.Operands[0];
        string? sizeText = args.Value("-s");
        if (args.Operands.Count > 1)
        {
            if (sizeText is not null)
            {
                throw new UsageException("the size is given twice (--size and a SIZE operand)");
            }
            sizeText = args.Operands[1];
        }
        string? lower = args.Value("-l");
        if (lower is null && sizeText is null)
        {
            throw new UsageException("a size is needed without --lower (--size SIZE)");
        }
        long blockSize = args.Value("-b") is { } b ? Operands.Size(b, "block size") : new BCowCreateOptions().BlockSize;
        // Checked here as well as in the library: with --force the library replaces FILE before it validates, so a
        // typo would otherwise cost the user the file they meant to overwrite only on success.
        if (blockSize < MinBlockSize || blockSize > MaxBlockSize || !long.IsPow2(blockSize))
        {
            throw new UsageException($"invalid block size '{args.Value("-b")}': a power of two from 4k to 1M");
        }
        long? size = sizeText is null ? null : Operands.Size(sizeText, "size");
        if (size > MaxVirtualSize)
        {
            throw new UsageException($"invalid size '{sizeText}': at most 256T");
        }
        var options = new BCowCreateOptions
        {
            BlockSize = (int)blockSize,
            LowerPath = lower,
            VirtualSize = size,
            Overwrite = args.Has("-f"),
        };
        if (!options.Overwrite && File.Exists(path))
        {
            // The library would say the same, but in terms of its API ("pass Overwrite").
            throw new IOException($"{path}: already exists (--force replaces it)");
        }
        BCowInfo info;
        using (BCowFile file = BCowFile.Create(path, options))
        {
            info = file.GetInfo();
        }
        string lowerPart = info.LowerPath is null ? "" : $" lower_file={info.LowerPath}";
        context.Out.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"Formatting '{path}', fmt=bcow size={info.VirtualSize} block_size={info.BlockSize}{lowerPart}"));
        return 0;
    }
}
