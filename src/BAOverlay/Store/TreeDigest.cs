using System.Buffers;
using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using Microsoft.Win32.SafeHandles;
using Mono.Unix.Native;

namespace BAOverlay.Store;

/// <summary>What hashing a tree found: its identity and its sizes.</summary>
/// <param name="Digest">sha256 of the canonical serialization (names, types, modes, owners, device numbers,
/// extended attributes, link targets, contents): the layer's id.</param>
/// <param name="PortableDigest">The same without extended attributes and device numbers, which some network file
/// systems do not carry (sshfs shows neither): what a reader on such a file system can check.</param>
/// <param name="Entries">Objects in the tree, the root included.</param>
/// <param name="Bytes">Bytes of regular file content.</param>
/// <param name="XattrsRead">False when the file system has no extended attributes (then only
/// <paramref name="PortableDigest"/> means anything).</param>
internal readonly record struct TreeSummary(string Digest, string PortableDigest, long Entries, long Bytes, bool XattrsRead);

/// <summary>One object of a tree as the digest records it (<see cref="TreeDigest"/>): its path, type, lstat, extended
/// attributes (null when the file system has none), and the a and b fields of both digests (null portable fields: the
/// same as a and b).</summary>
internal sealed record TreeObject(string Path, char Type, Stat Stat, List<(string Name, byte[] Value)>? Xattrs, string A, string B, string? PortableA, string? PortableB);

/// <summary>
/// The content address of a directory tree: sha256 over a canonical serialization, the same on every host for the same
/// tree. The walk goes depth first, a directory before its children, children in the order of their names' UTF-8
/// bytes; each object is one record of netstring fields (<c>LENGTH:BYTES,</c>):
/// <code>
/// path  type  mode  uid  gid  a  b  [xattr-count (name value)*]
/// </code>
/// path is relative to the root, '/'-separated, "" for the root; type one of <c>d f l c b p</c>; mode the permission
/// bits (07777) in octal; a and b: for a file its size and the sha256 of its content (hex), for a symbolic link its
/// target and "", for a device its major and minor numbers, else "" and "". The extended attribute section (sorted by
/// name; <c>security.selinux</c> left out) is written in the full digest only; the portable digest also writes ""
/// for device numbers. The stream starts with the line <c>baoverlay-tree/1</c>. Times, inode numbers and link counts
/// are not part of a layer's identity. Sockets are refused. Symbolic links are never followed.
/// </summary>
internal static class TreeDigest
{
    private const int ChunkSize = 1 << 20;

    public static TreeSummary Compute(string root, CancellationToken cancellation = default)
    {
        using StoreDirectory directory = StoreDirectory.Open(root);
        return Compute(directory, cancellation);
    }

    /// <param name="root">The tree.</param>
    /// <param name="cancellation">Stops the walk.</param>
    /// <param name="collect">Given each object as it is hashed, in the digest's order (a layer's metadata index is made
    /// from them: <see cref="LayerIndex"/>).</param>
    /// <param name="contentRead">Given each regular file (described) before its content is read (tests count reads).</param>
    /// <param name="serialization">Given the full digest's input, byte for byte (a publication writes it as the layer's
    /// tree list: sha256 of those bytes is the layer's id).</param>
    /// <param name="knownContent">When given, a regular file's content is not read: it is asked for the sha256 (hex) of
    /// the file at that path with the size its lstat shows, and answers it or null (then the walk fails, naming the
    /// file). The digests are then those of the tree's metadata as the walk sees it with those contents: a metadata
    /// walk checked against a tree list (docs/layer-store.md, "Lazy verification").</param>
    public static TreeSummary Compute(StoreDirectory root, CancellationToken cancellation, Action<TreeObject>? collect = null, Action<string>? contentRead = null,
        Stream? serialization = null, Func<string, long, string?>? knownContent = null)
    {
        using var full = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        using var portable = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        byte[] header = "baoverlay-tree/1\n"u8.ToArray();
        full.AppendData(header);
        portable.AppendData(header);
        byte[] chunk = ArrayPool<byte>.Shared.Rent(ChunkSize);
        try
        {
            serialization?.Write(header);
            var state = new WalkState(full, portable, chunk, cancellation)
            {
                Collect = collect, ContentRead = contentRead, Serialization = serialization, KnownContent = knownContent,
            };
            Stat rootStat = root.StatSelf();
            state.XattrsRead = root.Xattrs(null) is not null;
            Record(state, "", 'd', rootStat, state.XattrsRead ? root.Xattrs(null) : null, "", "", "", "");
            Walk(state, root, "", 0);
            return new TreeSummary(
                StoreLayout.Digest(full.GetHashAndReset()), StoreLayout.Digest(portable.GetHashAndReset()),
                state.Entries, state.Bytes, state.XattrsRead);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(chunk);
        }
    }

    private sealed class WalkState(IncrementalHash full, IncrementalHash portable, byte[] chunk, CancellationToken cancellation)
    {
        public IncrementalHash Full { get; } = full;
        public IncrementalHash Portable { get; } = portable;
        public byte[] Chunk { get; } = chunk;
        public CancellationToken Cancellation { get; } = cancellation;
        public bool XattrsRead { get; set; }
        public long Entries { get; set; }
        public long Bytes { get; set; }
        public Action<TreeObject>? Collect { get; init; }
        public Action<string>? ContentRead { get; init; }
        public Stream? Serialization { get; init; }
        public Func<string, long, string?>? KnownContent { get; init; }
    }

    /// <summary>
    /// The digests of a tree described by its objects (a layer's metadata index), in the order given: equal to the
    /// layer's id (or portable digest, <paramref name="xattrsRead"/> false) only if they are exactly the objects,
    /// in the order, that the layer's own walk hashed. Bytes counts the sizes of the regular files.
    /// </summary>
    public static TreeSummary Compute(IEnumerable<TreeObject> objects, bool xattrsRead)
    {
        using var full = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        using var portable = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        byte[] header = "baoverlay-tree/1\n"u8.ToArray();
        full.AppendData(header);
        portable.AppendData(header);
        var state = new WalkState(full, portable, [], CancellationToken.None) { XattrsRead = xattrsRead };
        foreach (TreeObject o in objects)
        {
            Record(state, o.Path, o.Type, o.Stat, o.Xattrs, o.A, o.B, o.PortableA, o.PortableB);
            if (o.Type == 'f')
            {
                state.Bytes += o.Stat.st_size;
            }
        }
        return new TreeSummary(
            StoreLayout.Digest(full.GetHashAndReset()), StoreLayout.Digest(portable.GetHashAndReset()),
            state.Entries, state.Bytes, xattrsRead);
    }

    private static void Walk(WalkState state, StoreDirectory directory, string prefix, int depth)
    {
        if (depth > StoreLayout.MaxDepth)
        {
            throw new LayerStoreException(directory.Described, $"deeper than the {StoreLayout.MaxDepth} levels a layer may have");
        }
        foreach (string name in directory.Names())
        {
            state.Cancellation.ThrowIfCancellationRequested();
            string path = prefix.Length == 0 ? name : prefix + "/" + name;
            if (!directory.TryLstat(name, out Stat stat))
            {
                throw new LayerStoreException(directory.Describe(name), "removed while the tree was read (a layer must not change)");
            }
            List<(string, byte[])>? xattrs = state.XattrsRead ? directory.Xattrs(name) : null;
            switch (stat.st_mode & FilePermissions.S_IFMT)
            {
                case FilePermissions.S_IFDIR:
                    Record(state, path, 'd', stat, xattrs, "", "", "", "");
                    using (StoreDirectory child = directory.OpenChild(name))
                    {
                        Walk(state, child, path, depth + 1);
                    }
                    break;
                case FilePermissions.S_IFREG:
                    (long size, string hash) = state.KnownContent is { } known
                        ? (stat.st_size, known(path, stat.st_size) ?? throw new LayerStoreException(directory.Describe(name), $"a file of {stat.st_size} bytes the layer's tree list does not hold (at that size)"))
                        : HashFile(state, directory, name);
                    Record(state, path, 'f', stat, xattrs, size.ToString(CultureInfo.InvariantCulture), hash, null, null);
                    state.Bytes += size;
                    break;
                case FilePermissions.S_IFLNK:
                    Record(state, path, 'l', stat, xattrs, directory.ReadLink(name), "", null, null);
                    break;
                case FilePermissions.S_IFCHR:
                case FilePermissions.S_IFBLK:
                    (uint major, uint minor) = Device(stat.st_rdev);
                    Record(state, path, (stat.st_mode & FilePermissions.S_IFMT) == FilePermissions.S_IFCHR ? 'c' : 'b', stat, xattrs,
                        major.ToString(CultureInfo.InvariantCulture), minor.ToString(CultureInfo.InvariantCulture), "", "");
                    break;
                case FilePermissions.S_IFIFO:
                    Record(state, path, 'p', stat, xattrs, "", "", null, null);
                    break;
                default:
                    throw new LayerStoreException(directory.Describe(name), "a socket or an unknown kind of file: a layer cannot hold one");
            }
        }
    }

    public static (uint Major, uint Minor) Device(ulong rdev) =>
        ((uint)(((rdev >> 8) & 0xFFF) | ((rdev >> 32) & ~0xFFFUL)), (uint)((rdev & 0xFF) | ((rdev >> 12) & ~0xFFUL)));

    private static (long Size, string Hash) HashFile(WalkState state, StoreDirectory directory, string name)
    {
        state.ContentRead?.Invoke(directory.Describe(name));
        using SafeFileHandle file = directory.OpenFileForReading(name, out _);
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        long offset = 0;
        while (true)
        {
            state.Cancellation.ThrowIfCancellationRequested();
            int read;
            try
            {
                read = RandomAccess.Read(file, state.Chunk.AsSpan(0, ChunkSize), offset);
            }
            catch (IOException e)
            {
                throw new LayerStoreException(directory.Describe(name), $"cannot read the file: {e.Message}", e);
            }
            if (read == 0)
            {
                break;
            }
            hash.AppendData(state.Chunk, 0, read);
            offset += read;
        }
        return (offset, Convert.ToHexStringLower(hash.GetHashAndReset()));
    }

    /// <summary>Hashes one object's record into both digests; <paramref name="portableA"/> and
    /// <paramref name="portableB"/> are the a and b fields of the portable digest (null: the same as a and b).</summary>
    private static void Record(WalkState state, string path, char type, Stat stat, List<(string Name, byte[] Value)>? xattrs,
        string a, string b, string? portableA, string? portableB)
    {
        state.Entries++;
        state.Collect?.Invoke(new TreeObject(path, type, stat, xattrs, a, b, portableA, portableB));
        var record = new ArrayBufferWriter<byte>(256);
        Field(record, Encoding.UTF8.GetBytes(path));
        Field(record, [(byte)type]);
        Field(record, Ascii(Convert.ToString((uint)stat.st_mode & 0xFFF, 8)));
        Field(record, Ascii(stat.st_uid.ToString(CultureInfo.InvariantCulture)));
        Field(record, Ascii(stat.st_gid.ToString(CultureInfo.InvariantCulture)));
        state.Portable.AppendData(record.WrittenSpan);
        var portableTail = new ArrayBufferWriter<byte>(64);
        Field(portableTail, Encoding.UTF8.GetBytes(portableA ?? a));
        Field(portableTail, Encoding.UTF8.GetBytes(portableB ?? b));
        state.Portable.AppendData(portableTail.WrittenSpan);
        Field(record, Encoding.UTF8.GetBytes(a));
        Field(record, Encoding.UTF8.GetBytes(b));
        xattrs ??= [];
        Field(record, Ascii(xattrs.Count.ToString(CultureInfo.InvariantCulture)));
        foreach ((string name, byte[] value) in xattrs)
        {
            Field(record, Encoding.UTF8.GetBytes(name));
            Field(record, value);
        }
        state.Full.AppendData(record.WrittenSpan);
        state.Serialization?.Write(record.WrittenSpan);
    }

    private static byte[] Ascii(string text) => Encoding.ASCII.GetBytes(text);

    private static void Field(ArrayBufferWriter<byte> writer, ReadOnlySpan<byte> bytes)
    {
        Span<byte> length = stackalloc byte[24];
        bytes.Length.TryFormat(length, out int digits, provider: CultureInfo.InvariantCulture);
        length[digits++] = (byte)':';
        writer.Write(length[..digits]);
        writer.Write(bytes);
        writer.Write([(byte)',']);
    }
}
