using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using Mono.Unix.Native;

namespace BAOverlay.Store;

/// <summary>
/// The metadata of one verified layer of a <see cref="LayerStore"/>, kept on local disk: every object's path, type,
/// attributes, link target and extended attributes, as the layer's verification read them through the share. An
/// overlay given it (<c>OverlayOptions.LowerIndexes</c>) answers lookups, attributes and listings of that layer from
/// memory instead of the network file system; only the data of files is read from the share (through the cache,
/// opened at the first read it cannot answer).
/// </summary>
/// <remarks>
/// <para>Made by <see cref="LayerStore.OpenIndexes"/> from the walk that verifies the layer (or, for a layer verified
/// lazily, the walk that checks its metadata against its tree list, its files' content then checked at their first
/// read: <c>ContentVerified</c>), and written to
/// <c>DIR/sha256-HEX.index</c>. A layer never changes (its digest is its content), so its index never goes stale. The
/// file is also this host's record that the layer was verified: it names the publication it was made from (the
/// manifest's publishing host and time) and holds the tree root's times as the walk saw them, which a later use
/// compares with the share before trusting it instead of hashing the layer again (docs/layer-store.md).</para>
/// <para>An index read back from disk is input, not trusted: its SHA-256 trailer must match its bytes, and the digest
/// recomputed from its objects (the same canonical serialization the layer's id is made of) must be the layer's id,
/// or, where the share carries no extended attributes, the manifest's portable digest. So an index shows exactly the
/// layer's names, types, modes, owners, sizes, link targets (and extended attributes and device numbers when the
/// full digest is checked); a damaged or foreign one is rebuilt, never obeyed. Times, link counts and block counts
/// are not part of the digest: the trailer guards them against damage. Inode numbers are not read from it at all:
/// an object's number is its position in the digest's order (the root 1), the same on every host.</para>
/// </remarks>
public sealed class LayerIndex
{
    private static readonly byte[] Magic = "baoverlay-layer-index/3\n"u8.ToArray();
    private const int TrailerBytes = 32;
    private const long MaxFileBytes = 1L << 30;
    private const int MaxObjects = 50_000_000;

    private readonly TreeObject[] _objects;
    private readonly Dictionary<string, int> _byPath;
    private readonly Dictionary<string, List<int>> _children;

    private LayerIndex(string digest, LayerPublication publication, bool xattrsRead, bool contentVerified, TreeObject[] objects)
    {
        ContentVerified = contentVerified;
        Digest = digest;
        Publication = publication;
        XattrsRead = xattrsRead;
        _objects = objects;
        _byPath = new Dictionary<string, int>(objects.Length, StringComparer.Ordinal);
        _children = new Dictionary<string, List<int>>(StringComparer.Ordinal);
        for (int i = 0; i < objects.Length; i++)
        {
            string path = objects[i].Path;
            if (!_byPath.TryAdd(path, i))
            {
                throw new FormatException($"{path}: listed twice");
            }
            if (i == 0)
            {
                continue;
            }
            int slash = path.LastIndexOf('/');
            string parent = slash < 0 ? "" : path[..slash];
            if (!_byPath.TryGetValue(parent, out int p) || objects[p].Type != 'd')
            {
                throw new FormatException($"{path}: its directory is not listed before it");
            }
            if (!_children.TryGetValue(parent, out List<int>? list))
            {
                _children[parent] = list = [];
            }
            list.Add(i);
        }
    }

    /// <summary>The layer's digest (<c>sha256:HEX</c>).</summary>
    public string Digest { get; }

    /// <summary>The publication of the layer the verification walk read (its manifest's host and time): a layer
    /// collected and published again under the same digest is another publication.</summary>
    internal LayerPublication Publication { get; }

    /// <summary>Objects in the layer, its root included.</summary>
    public int Count => _objects.Length;

    /// <summary>Whether the share showed extended attributes (and device numbers): the index was checked against the
    /// layer's id; false: against its portable digest, and it holds none.</summary>
    internal bool XattrsRead { get; }

    /// <summary>Whether the layer's content was verified whole (every file hashed) when this index was made; false: its
    /// metadata was checked against the layer's tree list, and each file's content is checked at its first read from
    /// the store (<see cref="ContentCheck"/>; docs/layer-store.md, "Lazy verification").</summary>
    internal bool ContentVerified { get; }

    /// <summary>The per-file content checks of a layer verified lazily, and this host's record of those made
    /// (<see cref="LayerStore.OpenIndexes"/> attaches it); null for a layer verified whole.</summary>
    internal LazyContent? Lazy { get; set; }

    /// <summary>The content check a read of the regular file at <paramref name="relative"/> from the store must pass
    /// first, or null: the layer was verified whole, or this file was verified already (now or by an earlier process,
    /// as recorded), or it is not a regular file of the index.</summary>
    internal Cache.FirstFetchCheck? ContentCheck(string relative)
    {
        if (ContentVerified)
        {
            return null;
        }
        int at = Find(relative);
        if (at < 0 || _objects[at].Type != 'f')
        {
            return null;
        }
        if (Lazy is null)
        {
            Interlocked.CompareExchange(ref _lazyFallback, new LazyContent(this, null, null, null), null);
        }
        return (Lazy ?? _lazyFallback!).CheckFor(at);
    }

    private LazyContent? _lazyFallback;

    /// <summary>The object at <paramref name="relative"/> ("" the root): its position (inode number - 1) or -1.</summary>
    internal int Find(string relative) => _byPath.TryGetValue(relative, out int i) ? i : -1;

    internal TreeObject this[int position] => _objects[position];

    /// <summary>The children of the directory at <paramref name="relative"/>, in name order.</summary>
    internal IReadOnlyList<int> Children(string relative) => _children.TryGetValue(relative, out List<int>? list) ? list : [];

    /// <summary>The lstat of the object at <paramref name="position"/>: as read at verification, with its position as
    /// inode number (1 the root).</summary>
    internal Stat StatOf(int position)
    {
        Stat st = _objects[position].Stat;
        st.st_ino = (ulong)position + 1;
        return st;
    }

    /// <summary>The value of extended attribute <paramref name="name"/> of the object at <paramref name="position"/>, or null.</summary>
    internal byte[]? Xattr(int position, string name)
    {
        if (_objects[position].Xattrs is { } xattrs)
        {
            foreach ((string n, byte[] value) in xattrs)
            {
                if (n == name)
                {
                    return value;
                }
            }
        }
        return null;
    }

    /// <summary>An index of the objects a verification walk collected (already checked by that walk);
    /// <paramref name="contentVerified"/> false: the walk read no content, its files' hashes came from the layer's
    /// tree list (<see cref="ContentVerified"/>).</summary>
    internal static LayerIndex FromWalk(string digest, LayerPublication publication, bool xattrsRead, List<TreeObject> objects, bool contentVerified = true) =>
        new(digest, publication, xattrsRead, contentVerified, [.. objects]);

    /// <summary>Why this index is not a record of the layer as the share shows it now, or null: another publication
    /// (<paramref name="publication"/>, from the manifest), or a tree root whose modification or change time is not the
    /// one the walk recorded (<paramref name="root"/>: its lstat on the share now).</summary>
    internal string? Mismatch(LayerPublication publication, in Stat root)
    {
        if (publication != Publication)
        {
            return $"made from the publication by {Publication.Host} at {Publication.Created:O}, the store now holds the one by {publication.Host} at {publication.Created:O} (published again?)";
        }
        Stat recorded = _objects[0].Stat;
        if (root.st_mtime != recorded.st_mtime || root.st_mtime_nsec != recorded.st_mtime_nsec ||
            root.st_ctime != recorded.st_ctime || root.st_ctime_nsec != recorded.st_ctime_nsec)
        {
            return "the layer's root changed since the index was made (its modification or change time)";
        }
        return null;
    }

    /// <summary>The index file's bytes: magic, digest, publication (host, time in ticks), objects, SHA-256 trailer.</summary>
    internal byte[] Serialize()
    {
        using var stream = new MemoryStream();
        using (var writer = new BinaryWriter(stream, Encoding.UTF8, leaveOpen: true))
        {
            writer.Write(Magic);
            writer.Write(Digest);
            writer.Write(Publication.Host);
            writer.Write(Publication.Created.UtcTicks);
            writer.Write(XattrsRead);
            writer.Write(ContentVerified);
            writer.Write(_objects.Length);
            foreach (TreeObject o in _objects)
            {
                Stat st = o.Stat;
                writer.Write(o.Path);
                writer.Write((byte)o.Type);
                writer.Write((uint)st.st_mode);
                writer.Write(st.st_uid);
                writer.Write(st.st_gid);
                writer.Write(st.st_size);
                writer.Write(st.st_rdev);
                writer.Write(st.st_nlink);
                writer.Write(st.st_blocks);
                writer.Write(st.st_blksize);
                writer.Write(st.st_atime);
                writer.Write(st.st_atime_nsec);
                writer.Write(st.st_mtime);
                writer.Write(st.st_mtime_nsec);
                writer.Write(st.st_ctime);
                writer.Write(st.st_ctime_nsec);
                writer.Write(o.A);
                writer.Write(o.B);
                WriteOptional(writer, o.PortableA);
                WriteOptional(writer, o.PortableB);
                writer.Write(o.Xattrs?.Count ?? -1);
                foreach ((string name, byte[] value) in o.Xattrs ?? [])
                {
                    writer.Write(name);
                    writer.Write(value.Length);
                    writer.Write(value);
                }
            }
        }
        byte[] body = stream.ToArray();
        byte[] result = new byte[body.Length + TrailerBytes];
        body.CopyTo(result, 0);
        SHA256.HashData(body, result.AsSpan(body.Length));
        return result;
    }

    private static void WriteOptional(BinaryWriter writer, string? value)
    {
        writer.Write(value is not null);
        if (value is not null)
        {
            writer.Write(value);
        }
    }

    /// <summary>
    /// Reads an index file and checks it against the layer: its trailer, its form, and the digest recomputed from its
    /// objects against <paramref name="digest"/> (the layer's id) or, for an index of a share without extended
    /// attributes, <paramref name="portableDigest"/>.
    /// </summary>
    /// <returns>The index, or null with <paramref name="problem"/> saying why it cannot be used.</returns>
    internal static LayerIndex? TryParse(ReadOnlySpan<byte> bytes, string digest, string portableDigest, out string? problem)
    {
        problem = null;
        if (bytes.Length > MaxFileBytes || bytes.Length < Magic.Length + TrailerBytes || !bytes.StartsWith(Magic))
        {
            problem = bytes.StartsWith("baoverlay-layer-index/"u8) ? "an index of another format version" : "not an index file";
            return null;
        }
        ReadOnlySpan<byte> body = bytes[..^TrailerBytes];
        Span<byte> hash = stackalloc byte[TrailerBytes];
        SHA256.HashData(body, hash);
        if (!hash.SequenceEqual(bytes[^TrailerBytes..]))
        {
            problem = "its checksum does not match its bytes (damaged)";
            return null;
        }
        try
        {
            using var reader = new BinaryReader(new MemoryStream(body[Magic.Length..].ToArray()), Encoding.UTF8);
            string recorded = reader.ReadString();
            if (recorded != digest)
            {
                problem = $"made for layer {recorded}";
                return null;
            }
            string host = reader.ReadString();
            long ticks = reader.ReadInt64();
            if (ticks < DateTimeOffset.MinValue.UtcTicks || ticks > DateTimeOffset.MaxValue.UtcTicks)
            {
                problem = $"a publication time of {ticks} ticks";
                return null;
            }
            var publication = new LayerPublication(host, new DateTimeOffset(ticks, TimeSpan.Zero));
            bool xattrsRead = reader.ReadBoolean();
            bool contentVerified = reader.ReadBoolean();
            int count = reader.ReadInt32();
            if (count is < 1 or > MaxObjects)
            {
                problem = $"{count} objects";
                return null;
            }
            var objects = new TreeObject[count];
            for (int i = 0; i < count; i++)
            {
                string path = reader.ReadString();
                char type = (char)reader.ReadByte();
                var st = new Stat
                {
                    st_mode = (FilePermissions)reader.ReadUInt32(),
                    st_uid = reader.ReadUInt32(),
                    st_gid = reader.ReadUInt32(),
                    st_size = reader.ReadInt64(),
                    st_rdev = reader.ReadUInt64(),
                    st_nlink = reader.ReadUInt64(),
                    st_blocks = reader.ReadInt64(),
                    st_blksize = reader.ReadInt64(),
                    st_atime = reader.ReadInt64(),
                    st_atime_nsec = reader.ReadInt64(),
                    st_mtime = reader.ReadInt64(),
                    st_mtime_nsec = reader.ReadInt64(),
                    st_ctime = reader.ReadInt64(),
                    st_ctime_nsec = reader.ReadInt64(),
                };
                string a = reader.ReadString();
                string b = reader.ReadString();
                string? portableA = reader.ReadBoolean() ? reader.ReadString() : null;
                string? portableB = reader.ReadBoolean() ? reader.ReadString() : null;
                int xattrCount = reader.ReadInt32();
                List<(string, byte[])>? xattrs = null;
                if (xattrCount >= 0)
                {
                    if (!xattrsRead || xattrCount > 10_000)
                    {
                        problem = $"{path}: {xattrCount} extended attributes";
                        return null;
                    }
                    xattrs = new List<(string, byte[])>(xattrCount);
                    for (int x = 0; x < xattrCount; x++)
                    {
                        string name = reader.ReadString();
                        int length = reader.ReadInt32();
                        if (length is < 0 or > 1 << 20)
                        {
                            problem = $"{path}: an extended attribute of {length} bytes";
                            return null;
                        }
                        xattrs.Add((name, reader.ReadBytes(length)));
                    }
                }
                if (CheckObject(path, type, st, a, i) is { } wrong)
                {
                    problem = wrong;
                    return null;
                }
                objects[i] = new TreeObject(path, type, st, xattrs, a, b, portableA, portableB);
            }
            if (reader.BaseStream.Position != reader.BaseStream.Length)
            {
                problem = "bytes after its last object";
                return null;
            }
            TreeSummary summary = TreeDigest.Compute(objects, xattrsRead);
            string expected = xattrsRead ? digest : portableDigest;
            string found = xattrsRead ? summary.Digest : summary.PortableDigest;
            if (found != expected)
            {
                problem = $"its objects hash to {found}, not the layer's {(xattrsRead ? "" : "portable ")}digest {expected}";
                return null;
            }
            return new LayerIndex(digest, publication, xattrsRead, contentVerified, objects);
        }
        catch (Exception e) when (e is EndOfStreamException or FormatException or IOException or ArgumentException or DecoderFallbackException)
        {
            problem = $"cannot be read: {e.Message}";
            return null;
        }
    }

    /// <summary>What the digest does not check itself: the path's form, the type agreeing with the mode, a file's
    /// size with its recorded size, the root first.</summary>
    private static string? CheckObject(string path, char type, in Stat st, string a, int position)
    {
        if ((position == 0) != (path.Length == 0))
        {
            return position == 0 ? "the first object is not the root" : "a second root";
        }
        if (path.Length > 0 && (path.StartsWith('/') || path.EndsWith('/') || path.Contains('\0') ||
            path.Split('/').Any(part => part is "" or "." or "..")))
        {
            return $"{path}: not a relative path";
        }
        FilePermissions kind = st.st_mode & FilePermissions.S_IFMT;
        bool agrees = type switch
        {
            'd' => kind == FilePermissions.S_IFDIR,
            'f' => kind == FilePermissions.S_IFREG && a == st.st_size.ToString(CultureInfo.InvariantCulture),
            'l' => kind == FilePermissions.S_IFLNK,
            'c' => kind == FilePermissions.S_IFCHR,
            'b' => kind == FilePermissions.S_IFBLK,
            'p' => kind == FilePermissions.S_IFIFO,
            _ => false,
        };
        return agrees && st.st_size >= 0 ? null : $"{path}: type {type} does not agree with its attributes";
    }
}

/// <summary>Which publication of a layer: its manifest's publishing host and time. The digest names the content; a
/// layer collected and published again has the same digest and another publication (and other file times).</summary>
internal readonly record struct LayerPublication(string Host, DateTimeOffset Created);
