using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using Microsoft.Win32.SafeHandles;

namespace BAOverlay.Store;

/// <summary>
/// A layer's tree list (<c>layers/sha256-HEX/tree.list</c>): the canonical serialization its id is the sha256 of
/// (<see cref="TreeDigest"/>), written by the publisher beside the tree. Read from the share, it is trusted for
/// nothing but what its hash binds: its sha256 must be the layer's id. It then gives, without reading the tree, every
/// regular file's size and content hash; a metadata-only walk of the share checked against it (the digest of what the
/// walk sees, with these content hashes, must be the id) makes the layer's index, and each file's content is checked
/// against its hash at its first read (docs/layer-store.md, "Lazy verification").
/// </summary>
/// <remarks>Parsed as hostile input: its size is capped relative to the manifest's entry count, every field is checked
/// for its form, the entry and byte counts must be the manifest's, and the portable digest recomputed from it must be
/// the manifest's.</remarks>
internal sealed class TreeList
{
    private static readonly byte[] Header = "baoverlay-tree/1\n"u8.ToArray();

    /// <summary>Bytes a list may hold per object (beyond a fixed allowance): a path, a link target and extended
    /// attributes of ordinary sizes. A larger list is refused (the layer is then verified in full).</summary>
    private const long BytesPerEntry = 8 * 1024;

    private const long MaxBytes = 1L << 30;

    private readonly Dictionary<string, (long Size, string Hash)> _files;

    private TreeList(Dictionary<string, (long Size, string Hash)> files) => _files = files;

    /// <summary>Regular files listed.</summary>
    public int Files => _files.Count;

    /// <summary>The content hash (hex) the list gives the regular file at <paramref name="path"/> of
    /// <paramref name="size"/> bytes, or null (not listed as a regular file of that size).</summary>
    public string? ContentHash(string path, long size) =>
        _files.TryGetValue(path, out (long Size, string Hash) file) && file.Size == size ? file.Hash : null;

    /// <summary>
    /// Reads and checks the tree list of the layer <paramref name="manifest"/> describes, in <paramref name="layer"/>
    /// (its directory in the store). Null when the layer has none (published before lists were written).
    /// </summary>
    /// <exception cref="LayerStoreException">The list is not a regular file, too large, does not hash to the layer's
    /// id, or does not parse or agree with the manifest (the message names the file and the problem).</exception>
    public static TreeList? TryRead(StoreDirectory layer, LayerManifest manifest)
    {
        string described = layer.Describe(StoreLayout.TreeList);
        if (!layer.TryLstat(StoreLayout.TreeList, out _))
        {
            return null;
        }
        long cap = Math.Min(MaxBytes, (1 << 20) + (Math.Max(1, manifest.Entries) * BytesPerEntry));
        byte[] bytes;
        using (SafeFileHandle file = layer.OpenFileForReading(StoreLayout.TreeList, out long length))
        {
            if (length > cap)
            {
                throw new LayerStoreException(described, $"{length} bytes: more than the {cap} a list of {manifest.Entries} entries may have");
            }
            bytes = new byte[length];
            int total = 0;
            while (total < bytes.Length)
            {
                int read;
                try
                {
                    read = RandomAccess.Read(file, bytes.AsSpan(total), total);
                }
                catch (IOException e)
                {
                    throw new LayerStoreException(described, $"cannot read the file: {e.Message}", e);
                }
                if (read == 0)
                {
                    throw new LayerStoreException(described, $"ends at {total}, before its size {length}");
                }
                total += read;
            }
        }
        return Parse(bytes, manifest, described);
    }

    /// <summary>Checks <paramref name="bytes"/> as the tree list of the layer <paramref name="manifest"/> describes.</summary>
    /// <exception cref="LayerStoreException">It does not hash to the layer's id, or is malformed, or disagrees with the
    /// manifest.</exception>
    internal static TreeList Parse(byte[] bytes, LayerManifest manifest, string described)
    {
        string hash = StoreLayout.Digest(SHA256.HashData(bytes));
        if (hash != manifest.Digest)
        {
            throw new LayerStoreException(described, $"hashes to {hash}, not the layer's id {manifest.Digest}: not trusted");
        }
        // From here the bytes are the ones the layer's id names; the checks below guard against a publisher's bug (or a
        // hostile publisher), not against the share.
        if (!bytes.AsSpan().StartsWith(Header))
        {
            throw new LayerStoreException(described, "does not start with the line baoverlay-tree/1");
        }
        using var portable = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        portable.AppendData(Header);
        var files = new Dictionary<string, (long, string)>(StringComparer.Ordinal);
        var reader = new Reader(bytes, Header.Length, described);
        long entries = 0;
        long total = 0;
        while (!reader.AtEnd)
        {
            int start = reader.Position;
            string path = reader.Utf8("path");
            if ((entries == 0) != (path.Length == 0) || (path.Length > 0 && !IsRelative(path)))
            {
                throw reader.Problem($"object {entries}: path '{path}' (the root first, then relative canonical paths)");
            }
            ReadOnlySpan<byte> type = reader.Field("type");
            char kind = type.Length == 1 ? (char)type[0] : '?';
            if (kind is not ('d' or 'f' or 'l' or 'c' or 'b' or 'p') || (entries == 0 && kind != 'd'))
            {
                throw reader.Problem($"{path}: type '{Encoding.UTF8.GetString(type)}'");
            }
            reader.Number("mode", 8, 4, 0xFFF);
            reader.Number("uid", 10, 10, uint.MaxValue);
            reader.Number("gid", 10, 10, uint.MaxValue);
            int portableEnd = reader.Position;
            ReadOnlySpan<byte> a = reader.Field("a");
            ReadOnlySpan<byte> b = reader.Field("b");
            switch (kind)
            {
                case 'f':
                    long size = ParseNumber(a, 10, 19, long.MaxValue) ?? throw reader.Problem($"{path}: size '{Encoding.UTF8.GetString(a)}'");
                    if (b.Length != 64 || !StoreLayout.IsHex(Encoding.ASCII.GetString(b).AsSpan()))
                    {
                        throw reader.Problem($"{path}: content hash '{Encoding.UTF8.GetString(b)}'");
                    }
                    if (!files.TryAdd(path, (size, Encoding.ASCII.GetString(b))))
                    {
                        throw reader.Problem($"{path}: listed twice");
                    }
                    total += size;
                    break;
                case 'l':
                    if (a.Length == 0 || b.Length != 0 || !IsUtf8(a))
                    {
                        throw reader.Problem($"{path}: a symbolic link's target");
                    }
                    break;
                case 'c' or 'b':
                    if (ParseNumber(a, 10, 10, uint.MaxValue) is null || ParseNumber(b, 10, 10, uint.MaxValue) is null)
                    {
                        throw reader.Problem($"{path}: device numbers");
                    }
                    break;
                default:
                    if (a.Length != 0 || b.Length != 0)
                    {
                        throw reader.Problem($"{path}: fields a and b must be empty for type {kind}");
                    }
                    break;
            }
            int tail = reader.Position;
            long xattrs = reader.Number("xattr-count", 10, 5, 10_000);
            for (long x = 0; x < xattrs; x++)
            {
                reader.Utf8("xattr name");
                reader.Field("xattr value");
            }
            // The portable digest's record: the first five fields, then a and b, or empty ones for a device.
            portable.AppendData(bytes, start, (kind is 'c' or 'b' ? portableEnd : tail) - start);
            if (kind is 'c' or 'b')
            {
                portable.AppendData("0:,0:,"u8);
            }
            entries++;
        }
        if (entries != manifest.Entries || total != manifest.Bytes)
        {
            throw new LayerStoreException(described, $"{entries} entries and {total} bytes, the manifest says {manifest.Entries} and {manifest.Bytes}");
        }
        string portableDigest = StoreLayout.Digest(portable.GetHashAndReset());
        if (portableDigest != manifest.PortableDigest)
        {
            throw new LayerStoreException(described, $"its portable digest is {portableDigest}, the manifest says {manifest.PortableDigest}");
        }
        return new TreeList(files);
    }

    private static bool IsRelative(string path) =>
        !path.StartsWith('/') && !path.EndsWith('/') && !path.Contains('\0') && !path.Split('/').Any(part => part is "" or "." or "..");

    private static bool IsUtf8(ReadOnlySpan<byte> bytes) => System.Text.Unicode.Utf8.IsValid(bytes);

    /// <summary>A number in <paramref name="radix"/> (8 or 10) of 1 to <paramref name="maxDigits"/> digits, no sign, at
    /// most <paramref name="max"/>; null otherwise.</summary>
    private static long? ParseNumber(ReadOnlySpan<byte> text, int radix, int maxDigits, long max)
    {
        if (text.Length is 0 || text.Length > maxDigits || (text.Length > 1 && text[0] == '0'))
        {
            return null;
        }
        long value = 0;
        foreach (byte c in text)
        {
            int digit = c - '0';
            if (digit < 0 || digit >= radix)
            {
                return null;
            }
            value = (value * radix) + digit;
            if (value > max)
            {
                return null;
            }
        }
        return value;
    }

    /// <summary>Netstring fields (<c>LENGTH:BYTES,</c>) of the list, each checked for its form.</summary>
    private ref struct Reader(byte[] bytes, int position, string described)
    {
        private readonly byte[] _bytes = bytes;
        private int _position = position;

        public readonly int Position => _position;

        public readonly bool AtEnd => _position == _bytes.Length;

        public ReadOnlySpan<byte> Field(string what)
        {
            int colon = Array.IndexOf(_bytes, (byte)':', _position, Math.Min(11, _bytes.Length - _position));
            long? length = colon < 0 ? null : ParseNumber(_bytes.AsSpan(_position, colon - _position), 10, 10, int.MaxValue);
            if (length is null)
            {
                throw Problem($"{what}: a field's length");
            }
            long end = colon + 1 + length.Value;
            if (end >= _bytes.Length || _bytes[(int)end] != (byte)',')
            {
                throw Problem($"{what}: a field of {length} bytes that does not end with ','");
            }
            ReadOnlySpan<byte> field = _bytes.AsSpan(colon + 1, (int)length.Value);
            _position = (int)end + 1;
            return field;
        }

        public string Utf8(string what)
        {
            ReadOnlySpan<byte> field = Field(what);
            return IsUtf8(field) ? Encoding.UTF8.GetString(field) : throw Problem($"{what}: not valid UTF-8");
        }

        public long Number(string what, int radix, int maxDigits, long max)
        {
            ReadOnlySpan<byte> field = Field(what);
            return ParseNumber(field, radix, maxDigits, max) ?? throw Problem($"{what} '{Encoding.UTF8.GetString(field)}'");
        }

        public readonly LayerStoreException Problem(string what) =>
            new(described, $"at byte {_position}: {what}");
    }
}
