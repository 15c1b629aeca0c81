using System.Text;
using Mono.Unix.Native;

namespace BAOverlay.FileSystem.Export;

/// <summary>What an entry of the upper directory becomes in an export.</summary>
internal enum ExportKind
{
    Directory,
    RegularFile,
    BCowFile,
    SymbolicLink,
    HardLink,
    CharacterDevice,
    BlockDevice,
    Fifo,
    Socket,
    Whiteout,
}

/// <summary>One entry of the upper directory, classified, with what an export needs of it.</summary>
internal sealed class ExportEntry
{
    public required ExportKind Kind { get; init; }

    /// <summary>Path relative to the upper directory, '/'-separated, "" for the root. For a whiteout: the path of
    /// the name it hides (<c>dir/NAME</c>), whatever its form in the upper directory.</summary>
    public required string Path { get; init; }

    /// <summary>The object in the upper directory (for a whiteout: the 0/0 device or the <c>.wh.</c> file).</summary>
    public required string Source { get; init; }

    public required Stat Stat { get; init; }

    /// <summary>Logical content size of a regular or B-CoW file (the virtual size of a B-CoW file).</summary>
    public long Size { get; init; }

    /// <summary>The target of a symbolic link; for a hard link, the path of the entry it links to.</summary>
    public string? LinkTarget { get; init; }

    /// <summary>Extended attributes to carry (the overlay's own are not among them).</summary>
    public IReadOnlyList<(string Name, byte[] Value)> Xattrs { get; init; } = [];

    /// <summary>A directory that hides everything below it.</summary>
    public bool Opaque { get; init; }

    /// <summary>For a directory: lower-layer directories whose entries are written into it (those of a directory renamed
    /// out of a lower layer, which the export writes out whole), topmost first.</summary>
    public IReadOnlyList<string> LowerSources { get; init; } = [];

    /// <summary>False for an entry taken from a lower layer (inside a renamed directory).</summary>
    public bool FromUpper { get; init; } = true;

    public string Name => Path[(Path.LastIndexOf('/') + 1)..];

    public string Parent => Path.LastIndexOf('/') is var slash and >= 0 ? Path[..slash] : "";

    public uint Permissions => (uint)Stat.st_mode & 0xFFF;

    public long MTimeNs => (Stat.st_mtime * 1_000_000_000L) + Stat.st_mtime_nsec;

    public long ATimeNs => (Stat.st_atime * 1_000_000_000L) + Stat.st_atime_nsec;
}

/// <summary>
/// Reads an upper directory into a list of entries, depth first, each directory before its children and the children
/// in ordinal order of the names they get in a tar (a whiteout as <c>.wh.NAME</c>). Symbolic links are never
/// followed (lstat only). Every plain file is opened for reading and every B-CoW file opened read-only once here, so
/// an unreadable file or a corrupt B-CoW file (or one whose lower file changed) fails the export before anything is
/// written.
/// </summary>
internal static class UpperTree
{
    private const uint S_IFMT = 0xF000;

    /// <summary>Records this export cannot carry: following them needs the lower layers (a renamed directory's content
    /// lives in lower under its old path). Refused with a clear error rather than exported without that content.</summary>
    private static readonly string[] UnsupportedXattrs =
    [
        "trusted.overlay.metacopy", "user.overlay.metacopy", "user.overlay.redirect",
    ];


    /// <param name="root">The upper directory.</param>
    /// <param name="lowers">The overlay's lower directories, highest first, or null: needed only for directories renamed
    /// out of a lower layer, whose content is written out from them.</param>
    /// <param name="warnings">Receives what could not be carried.</param>
    /// <param name="cancellationToken">Cancels the scan.</param>
    public static List<ExportEntry> Scan(string root, IReadOnlyList<string>? lowers, List<string> warnings, CancellationToken cancellationToken)
    {
        if (Syscall.stat(root, out Stat rootStat) != 0)
        {
            throw Failure("cannot read the upper directory", root);
        }
        if (((uint)rootStat.st_mode & S_IFMT) != 0x4000)
        {
            throw new IOException($"{root}: the upper directory is not a directory");
        }
        var entries = new List<ExportEntry>
        {
            new()
            {
                Kind = ExportKind.Directory, Path = "", Source = root, Stat = rootStat, Xattrs = ReadXattrs(root),
                Opaque = Whiteouts.IsOpaque(root),
            },
        };
        var firstLinks = new Dictionary<(ulong Dev, ulong Ino), string>();
        ScanDirectory(root, "", [], writtenOut: false, lowers, entries, firstLinks, warnings, cancellationToken);
        return entries;
    }

    private static List<string> ListNames(string directory)
    {
        try
        {
            return Directory.EnumerateFileSystemEntries(directory).Select(p => System.IO.Path.GetFileName(p)).ToList();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new IOException($"{directory}: cannot list the directory: {e.Message}", e);
        }
    }

    /// <summary>
    /// Scans one directory of the export: its upper part (<paramref name="directory"/>, null for a directory that comes
    /// only from lower layers inside a renamed one) and the lower directories merging into it. Lower entries follow the
    /// overlay's rules: upper names and whiteouts hide them, and each lower layer's whiteouts and opaque directories
    /// hide what is below them. Inside a directory written out whole (<paramref name="writtenOut"/>) whiteouts hide
    /// lower names but are not exported: the directory is opaque, and kernel overlayfs would list them there.
    /// </summary>
    private static void ScanDirectory(string? directory, string relative, IReadOnlyList<string> lowerSources, bool writtenOut, IReadOnlyList<string>? lowers, List<ExportEntry> entries, Dictionary<(ulong, ulong), string> firstLinks, List<string> warnings, CancellationToken cancellationToken)
    {
        cancellationToken.ThrowIfCancellationRequested();
        List<string> names = directory is null ? [] : ListNames(directory);
        var real = new HashSet<string>(names.Where(n => !Whiteouts.IsReservedName(n)), StringComparer.Ordinal);
        var children = new List<(string SortName, Func<ExportEntry> Make)>();
        var whitedOut = new HashSet<string>(StringComparer.Ordinal);
        foreach (string name in names)
        {
            string path = LayerPaths.Join(directory!, name);
            string childRelative = LayerPaths.Child(relative, name);
            if (name == Whiteouts.OpaqueMarker)
            {
                continue; // read with the directory (Whiteouts.IsOpaque)
            }
            if (Whiteouts.IsReservedName(name))
            {
                string hidden = name[Whiteouts.Prefix.Length..];
                if (real.Contains(hidden))
                {
                    // The overlay removes .wh.NAME whenever it makes NAME; both can only be left by a crash, and NAME wins.
                    warnings.Add($"{path}: left out: {hidden} exists beside it and is what the overlay shows");
                    continue;
                }
                if (hidden.Length == 0 || !whitedOut.Add(hidden) || writtenOut)
                {
                    continue;
                }
                Stat whiteoutStat = Lstat(path);
                children.Add((name, () => new ExportEntry
                {
                    Kind = ExportKind.Whiteout, Path = LayerPaths.Child(relative, hidden), Source = path, Stat = whiteoutStat,
                }));
                continue;
            }
            Stat st = Lstat(path);
            if (Whiteouts.IsWhiteoutStat(st))
            {
                if (whitedOut.Add(name) && !writtenOut)
                {
                    children.Add((Whiteouts.Prefix + name, () => new ExportEntry { Kind = ExportKind.Whiteout, Path = childRelative, Source = path, Stat = st }));
                }
                continue;
            }
            IReadOnlyList<string> below = lowerSources.Count == 0 ? [] : MergingBelow(lowerSources, 0, name);
            children.Add((name, () => UpperChild(path, childRelative, st, below, lowers, firstLinks)));
        }
        // Entries of the lower parts, topmost layer first; a name met once (in upper or a higher layer) hides the rest.
        var seen = new HashSet<string>(real.Concat(whitedOut), StringComparer.Ordinal);
        for (int layer = 0; layer < lowerSources.Count; layer++)
        {
            var hiddenHere = new List<string>();
            foreach (string name in ListNames(lowerSources[layer]))
            {
                if (Whiteouts.IsReservedName(name))
                {
                    hiddenHere.Add(name[Whiteouts.Prefix.Length..]);
                    continue;
                }
                if (!seen.Add(name))
                {
                    continue;
                }
                string path = LayerPaths.Join(lowerSources[layer], name);
                Stat st = Lstat(path);
                if (Whiteouts.IsWhiteoutStat(st))
                {
                    continue;
                }
                string childRelative = LayerPaths.Child(relative, name);
                IReadOnlyList<string> merging = ((uint)st.st_mode & S_IFMT) == 0x4000 ? MergingBelow(lowerSources, layer, name) : [];
                children.Add((name, () => LowerChild(path, childRelative, st, merging, firstLinks)));
            }
            seen.UnionWith(hiddenHere);
        }
        foreach (var (_, make) in children.OrderBy(c => c.SortName, StringComparer.Ordinal))
        {
            cancellationToken.ThrowIfCancellationRequested();
            ExportEntry entry = make();
            entries.Add(entry);
            if (entry.Kind == ExportKind.Directory)
            {
                ScanDirectory(entry.FromUpper ? entry.Source : null, entry.Path, entry.LowerSources, writtenOut || entry.LowerSources.Count > 0, lowers, entries, firstLinks, warnings, cancellationToken);
            }
        }
    }

    /// <summary>
    /// The lower directories named <paramref name="name"/> that merge into a directory, from layer <paramref name="from"/>
    /// of its lower parts down: a directory in each layer until one is opaque; a whiteout or a non-directory ends it.
    /// </summary>
    private static List<string> MergingBelow(IReadOnlyList<string> sources, int from, string name)
    {
        var merging = new List<string>();
        for (int layer = from; layer < sources.Count; layer++)
        {
            if (Whiteouts.IsWhitedOut(sources[layer], name, out bool exists))
            {
                break;
            }
            if (!exists)
            {
                continue;
            }
            string path = LayerPaths.Join(sources[layer], name);
            if (Syscall.lstat(path, out Stat st) != 0 || ((uint)st.st_mode & S_IFMT) != 0x4000)
            {
                break;
            }
            merging.Add(path);
            if (Whiteouts.IsOpaque(path))
            {
                break;
            }
        }
        return merging;
    }

    /// <summary>An upper entry. A directory renamed out of a lower layer (a redirect record) gets the lower directories
    /// it redirects to as its lower parts and is written out whole, as an opaque directory; an upper directory inside
    /// one merges with the lower directories of its name, unless it is opaque.</summary>
    private static ExportEntry UpperChild(string path, string relative, Stat st, IReadOnlyList<string> below, IReadOnlyList<string>? lowers, Dictionary<(ulong, ulong), string> firstLinks)
    {
        ExportEntry entry = Classify(path, relative, st, firstLinks);
        if (entry.Kind != ExportKind.Directory || entry.Opaque)
        {
            return entry;
        }
        string parentPath = relative.Contains('/') ? relative[..relative.LastIndexOf('/')] : "";
        string? refused = null;
        string? redirect = Redirects.Read(path, parentPath, path, line => refused = line);
        if (refused is not null)
        {
            // Never export what a redirect out of the layers would bring in.
            throw new IOException(refused);
        }
        if (redirect is not null)
        {
            if (lowers is null)
            {
                throw new IOException($"{path}: a renamed directory whose content lives in the lower layers (at {redirect}); pass the lower directories to export it");
            }
            var sources = new List<string>();
            using LayerStack layers = LayerStack.Open(lowers, work: null);
            for (int layer = 0; layer < layers.Count; layer++)
            {
                // Reached beneath the layer root, with no symbolic link on the way; the path kept for the export is
                // the plain one, since nothing on it is a link.
                if (layers.TryLocate(layer, redirect, out LayerPath located) != 0)
                {
                    continue;
                }
                string candidate = LayerPaths.Join(lowers[layer], redirect);
                using (located)
                {
                    if (Syscall.lstat(located.Path, out Stat cst) != 0)
                    {
                        continue;
                    }
                    if (((uint)cst.st_mode & S_IFMT) != 0x4000)
                    {
                        break;
                    }
                    sources.Add(candidate);
                    if (Whiteouts.IsOpaque(located.Path))
                    {
                        break;
                    }
                }
            }
            return new ExportEntry
            {
                Kind = entry.Kind, Path = entry.Path, Source = entry.Source, Stat = entry.Stat, Xattrs = entry.Xattrs,
                Opaque = true, LowerSources = sources,
            };
        }
        if (below.Count == 0)
        {
            return entry;
        }
        return new ExportEntry
        {
            Kind = entry.Kind, Path = entry.Path, Source = entry.Source, Stat = entry.Stat, Xattrs = entry.Xattrs,
            Opaque = entry.Opaque, LowerSources = below,
        };
    }

    /// <summary>An entry taken from a lower layer inside a renamed directory.</summary>
    private static ExportEntry LowerChild(string path, string relative, Stat st, IReadOnlyList<string> merging, Dictionary<(ulong, ulong), string> firstLinks)
    {
        ExportEntry entry = Classify(path, relative, st, firstLinks);
        return new ExportEntry
        {
            Kind = entry.Kind, Path = entry.Path, Source = entry.Source, Stat = entry.Stat, Size = entry.Size,
            LinkTarget = entry.LinkTarget, Xattrs = entry.Xattrs, Opaque = false, FromUpper = false,
            LowerSources = entry.Kind == ExportKind.Directory ? merging : [],
        };
    }

    private static ExportEntry Classify(string path, string relative, Stat st, Dictionary<(ulong, ulong), string> firstLinks)
    {
        uint type = (uint)st.st_mode & S_IFMT;
        if (type != 0x4000 && st.st_nlink > 1)
        {
            if (firstLinks.TryGetValue((st.st_dev, st.st_ino), out string? first))
            {
                return new ExportEntry { Kind = ExportKind.HardLink, Path = relative, Source = path, Stat = st, LinkTarget = first };
            }
            firstLinks[(st.st_dev, st.st_ino)] = relative;
        }
        IReadOnlyList<(string, byte[])> xattrs = ReadXattrs(path, out bool isBCow);
        switch (type)
        {
            case 0x4000:
                return new ExportEntry { Kind = ExportKind.Directory, Path = relative, Source = path, Stat = st, Xattrs = xattrs, Opaque = Whiteouts.IsOpaque(path) };
            case 0x8000 when isBCow:
                return new ExportEntry { Kind = ExportKind.BCowFile, Path = relative, Source = path, Stat = st, Xattrs = xattrs, Size = BCowLength(path) };
            case 0x8000:
                CheckReadable(path);
                return new ExportEntry { Kind = ExportKind.RegularFile, Path = relative, Source = path, Stat = st, Xattrs = xattrs, Size = st.st_size };
            case 0xA000:
                string target;
                try
                {
                    target = Mono.Unix.UnixPath.ReadLink(path);
                }
                catch (Exception e)
                {
                    throw new IOException($"{path}: cannot read the symbolic link: {e.Message}", e);
                }
                return new ExportEntry { Kind = ExportKind.SymbolicLink, Path = relative, Source = path, Stat = st, Xattrs = xattrs, LinkTarget = target };
            case 0x2000:
                return new ExportEntry { Kind = ExportKind.CharacterDevice, Path = relative, Source = path, Stat = st, Xattrs = xattrs };
            case 0x6000:
                return new ExportEntry { Kind = ExportKind.BlockDevice, Path = relative, Source = path, Stat = st, Xattrs = xattrs };
            case 0x1000:
                return new ExportEntry { Kind = ExportKind.Fifo, Path = relative, Source = path, Stat = st, Xattrs = xattrs };
            case 0xC000:
                return new ExportEntry { Kind = ExportKind.Socket, Path = relative, Source = path, Stat = st, Xattrs = xattrs };
            default:
                throw new IOException($"{path}: unknown file type {Convert.ToString(type, 8)}");
        }
    }

    /// <summary>Opens the B-CoW file read-only (checking its header, map and lower file) and returns its logical size.</summary>
    private static long BCowLength(string path)
    {
        try
        {
            using BCowFile file = BCowFile.Open(path, new BCowOpenOptions { ReadOnly = true });
            return file.Length;
        }
        catch (BCowFormatException e) when (e.Message.Contains(path, StringComparison.Ordinal))
        {
            throw;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new IOException($"{path}: cannot open the B-CoW file: {e.Message}", e);
        }
    }

    /// <summary>Opens and closes a plain file, so that one the export could not read fails the scan, not the copy.</summary>
    private static void CheckReadable(string path)
    {
        int fd = Syscall.open(path, OpenFlags.O_RDONLY | OpenFlags.O_NOFOLLOW | OpenFlags.O_NONBLOCK);
        if (fd < 0)
        {
            throw Failure("cannot open for reading", path);
        }
        Syscall.close(fd);
    }

    private static IReadOnlyList<(string, byte[])> ReadXattrs(string path) => ReadXattrs(path, out _);

    /// <summary>The extended attributes to carry: all but the overlay's own (and their opaque markers, which the
    /// export writes in its own form). Refuses kernel overlayfs redirect and metacopy records.</summary>
    private static IReadOnlyList<(string, byte[])> ReadXattrs(string path, out bool isBCow)
    {
        isBCow = false;
        if (Syscall.llistxattr(path, out string[] names) < 0)
        {
            Errno errno = Stdlib.GetLastError();
            if (errno == Errno.EOPNOTSUPP)
            {
                return [];
            }
            throw new IOException($"{path}: cannot list extended attributes: {Stdlib.strerror(errno)}");
        }
        var result = new List<(string, byte[])>();
        isBCow = names.Contains(LayerPaths.BCowXattr);
        foreach (string name in names.Order(StringComparer.Ordinal))
        {
            if (isBCow && ForeignMarks.IsMetacopyXattr(name) && Syscall.lgetxattr(path, name, out byte[] mark) >= 0 && ForeignMarks.IsMark(mark ?? []))
            {
                continue; // the overlay's own mark that stops other overlays from reading the B-CoW bytes (ForeignMarks)
            }
            if (UnsupportedXattrs.Contains(name))
            {
                throw new IOException($"{path}: carries {name}, a record of a renamed directory or metadata-only copy-up that needs the lower layers to follow; exporting such an upper directory is not supported yet");
            }
            if (Whiteouts.IsPrivateXattr(name))
            {
                continue;
            }
            if (Syscall.lgetxattr(path, name, out byte[] value) < 0)
            {
                Errno errno = Stdlib.GetLastError();
                if (errno == Errno.ENODATA)
                {
                    continue; // removed meanwhile
                }
                throw new IOException($"{path}: cannot read extended attribute {name}: {Stdlib.strerror(errno)}");
            }
            result.Add((name, value ?? []));
        }
        return result;
    }

    private static Stat Lstat(string path) => Syscall.lstat(path, out Stat st) == 0 ? st : throw Failure("cannot stat", path);

    internal static IOException Failure(string what, string path)
    {
        Errno errno = Stdlib.GetLastError();
        return new IOException($"{path}: {what}: {Stdlib.strerror(errno)}");
    }

    /// <summary>An xattr value a PAX record can carry as text: valid UTF-8 without NUL.</summary>
    internal static string? AsText(byte[] value)
    {
        if (value.AsSpan().Contains((byte)0))
        {
            return null;
        }
        try
        {
            return new UTF8Encoding(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true).GetString(value);
        }
        catch (DecoderFallbackException)
        {
            return null;
        }
    }
}
