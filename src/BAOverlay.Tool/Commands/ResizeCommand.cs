using System.Globalization;
using BAOverlay.Storage;
using BAOverlay.Tool.Cli;
using BAOverlay.Tool.Images;

namespace BAOverlay.Tool.Commands;

/// <summary><c>bcow resize</c>: a new virtual size for a B-CoW or plain file, as qemu-img resize.</summary>
internal sealed class ResizeCommand : ICommand
{
    public string Name => "resize";

    public string Summary => "grow or (with --shrink) shrink a B-CoW or plain file";

    public string Synopsis => "resize [--shrink] FILE [+|-]SIZE";

    public string Help => """
        Sets the virtual size of FILE, a B-CoW file or a plain file, to SIZE, or grows
        or shrinks it by SIZE with a leading + or - (a - after the options needs no
        "--": "resize --shrink x.bcow -1M"). Prints "Image resized.", as qemu-img.

        Growing costs no space: the new part reads as zeros (a B-CoW file needs no
        block for it, a plain file gets a hole). Shrinking deletes the data beyond the
        new end, so it is refused unless --shrink is given. In a B-CoW file, lower bytes
        beyond the new end are hidden for good: growing it again reads zeros there,
        never the old lower bytes. The new size is on disk when resize returns (a
        B-CoW file is committed and closed cleanly, a plain file is fsynced).

        A B-CoW file is opened for writing, through its lower file: it must not be
        in use by another process.

        Options:
          --shrink   allow the new size to be smaller (data beyond it is lost)

        Exit status: 0 resized, 1 error (FILE is left as it was).
        """;

    public IReadOnlyList<OptionSpec> Options { get; } = [OptionSpec.Flag("--shrink")];

    public int Run(ParsedArguments args, CommandContext context)
    {
        Operands.Expect(args, "FILE", "SIZE");
        string path = args.Operands[0];
        string text = args.Operands[1];
        int sign = text.StartsWith('+') ? 1 : text.StartsWith('-') ? -1 : 0;
        long size = Operands.Size(sign == 0 ? text : text[1..], "size");
        bool shrink = args.Has("--shrink");
        if (Directory.Exists(path))
        {
            throw new IOException($"{Path.GetFullPath(path)}: Is a directory");
        }
        bool bcow;
        using (var probe = new FileStorage(path, FileMode.Open, FileAccess.Read))
        {
            bcow = InputImage.IsBCow(probe);
        }
        if (bcow)
        {
            // The fills of partial blocks are not needed to resize; the next writable open resumes them.
            using BCowFile file = BCowFile.Open(path, new BCowOpenOptions { ResumeCopyUps = false });
            file.SetLength(NewSize(path, file.Length, size, sign, shrink));
            // Disposing commits durably and clears the dirty flag: the new size is on disk when it returns.
        }
        else
        {
            using var stream = new FileStream(path, FileMode.Open, FileAccess.Write, FileShare.Read);
            stream.SetLength(NewSize(path, stream.Length, size, sign, shrink));
            stream.Flush(flushToDisk: true);
        }
        context.Out.WriteLine("Image resized.");
        return 0;
    }

    private static long NewSize(string path, long current, long size, int sign, bool shrink)
    {
        long target = sign == 0 ? size : current + (sign * size);
        if (target < 0)
        {
            throw new IOException(string.Create(CultureInfo.InvariantCulture, $"{path}: the new size would be negative ({current} - {size})"));
        }
        if (target < current && !shrink)
        {
            throw new IOException(string.Create(CultureInfo.InvariantCulture,
                $"{path}: shrinking from {current} to {target} bytes deletes the data beyond {target}: use the --shrink option to perform a shrink operation"));
        }
        return target;
    }
}
