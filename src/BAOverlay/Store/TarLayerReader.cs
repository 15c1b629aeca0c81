using System.Buffers;
using System.Formats.Tar;
using System.Security.Cryptography;
using System.Text;
using Mono.Unix.Native;

namespace BAOverlay.Store;

/// <summary>
/// Unpacks an OCI image layer (a tar, optionally gzip-compressed) into a staging directory as container tools do:
/// <c>DIR/.wh.NAME</c> becomes an overlay whiteout (a 0/0 character device NAME), <c>DIR/.wh..wh..opq</c> marks DIR
/// opaque (<c>trusted.overlay.opaque=y</c>), PAX <c>SCHILY.xattr.*</c> records become extended attributes. The tar is
/// untrusted input: an absolute path, a <c>..</c> component, a path through a symbolic link or a non-directory, a hard
/// link to something outside the tree (or to a directory), an entry type the store cannot hold, and content past
/// <see cref="LayerStoreOptions.MaxLayerBytes"/> are refused with the entry named. Every parent is reached by
/// <c>openat(O_NOFOLLOW)</c> from the staging root, so no entry can write outside it. Returns the sha256 of the
/// uncompressed tar (the layer's OCI diff id).
/// </summary>
internal static class TarLayerReader
{
    private const string XattrPrefix = "SCHILY.xattr.";

    public static string Unpack(Stream input, StoreDirectory root, long maxBytes, Action heartbeat, CancellationToken cancellation)
    {
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        Stream tar = Decompressed(input);
        using var hashing = new HashingStream(tar, hash);
        var directories = new List<(string[] Path, NodeMetadata Metadata)>();
        NodeMetadata? rootMetadata = null;
        var opaque = new List<string[]>();
        byte[] buffer = ArrayPool<byte>.Shared.Rent(1 << 20);
        long total = 0;
        try
        {
            using var reader = new TarReader(hashing, leaveOpen: true);
            while (true)
            {
                cancellation.ThrowIfCancellationRequested();
                heartbeat();
                TarEntry? entry;
                try
                {
                    entry = reader.GetNextEntry(copyData: false);
                }
                catch (Exception e) when (e is InvalidDataException or EndOfStreamException or FormatException or ArgumentException)
                {
                    throw new LayerStoreException("layer tar", $"malformed or truncated: {e.Message}", e);
                }
                if (entry is null)
                {
                    break;
                }
                if (entry.EntryType is TarEntryType.GlobalExtendedAttributes)
                {
                    continue;
                }
                string[] path = SplitPath(entry.Name);
                if (entry.Length > maxBytes - total)
                {
                    throw new LayerStoreException(Shown(entry.Name), $"{entry.Length} bytes: past the {maxBytes} bytes a layer may hold");
                }
                total += entry.Length;
                NodeMetadata metadata = Metadata(entry);
                if (path.Length == 0)
                {
                    if (entry.EntryType != TarEntryType.Directory)
                    {
                        throw new LayerStoreException(Shown(entry.Name), "names the layer's root but is not a directory");
                    }
                    rootMetadata = metadata;
                    continue;
                }
                try
                {
                    Add(entry, path, metadata, root, directories, opaque, buffer);
                }
                catch (LayerStoreException e) when (!e.FilePath.StartsWith("layer tar entry", StringComparison.Ordinal))
                {
                    throw new LayerStoreException(Shown(entry.Name), e.Problem, e);
                }
            }
            FinishTree(root, rootMetadata, directories, opaque);
            // The diff id covers the whole archive, the end-of-archive blocks and any padding after them included.
            while (hashing.Read(buffer, 0, buffer.Length) > 0)
            {
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
        return StoreLayout.Digest(hash.GetHashAndReset());
    }

    private static void Add(TarEntry entry, string[] path, NodeMetadata metadata, StoreDirectory root,
        List<(string[] Path, NodeMetadata Metadata)> directories, List<string[]> opaque, byte[] buffer)
    {
        string name = path[^1];
        using StoreDirectory parent = OpenParent(root, path, entry.Name);
        if (name == ".wh..wh..opq")
        {
            opaque.Add(path[..^1]);
            return;
        }
        if (name.StartsWith(".wh.", StringComparison.Ordinal))
        {
            string hidden = name[4..];
            CheckName(hidden, entry.Name);
            Replace(parent, hidden, entry.Name, keepDirectory: false);
            TreeBuilder.CreateNode(parent, hidden, FilePermissions.S_IFCHR, 0, 0, metadata with { Mode = 0, Xattrs = [] });
            return;
        }
        switch (entry.EntryType)
        {
            case TarEntryType.Directory:
                if (Replace(parent, name, entry.Name, keepDirectory: true))
                {
                    TreeBuilder.CreateDirectory(parent, name, metadata);
                }
                directories.Add((path, metadata));
                break;
            case TarEntryType.RegularFile or TarEntryType.V7RegularFile or TarEntryType.ContiguousFile:
                Replace(parent, name, entry.Name, keepDirectory: false);
                TreeBuilder.CreateFile(parent, name, metadata, entry.DataStream ?? Stream.Null, entry.Length, buffer);
                break;
            case TarEntryType.SymbolicLink:
                Replace(parent, name, entry.Name, keepDirectory: false);
                TreeBuilder.CreateSymbolicLink(parent, name, entry.LinkName, metadata);
                break;
            case TarEntryType.HardLink:
                string[] target = SplitPath(entry.LinkName);
                if (target.Length == 0)
                {
                    throw new LayerStoreException(Shown(entry.Name), "a hard link to the layer's root");
                }
                using (StoreDirectory targetParent = OpenParent(root, target, entry.LinkName, create: false))
                {
                    if (!targetParent.TryLstat(target[^1], out Stat targetStat))
                    {
                        throw new LayerStoreException(Shown(entry.Name), $"a hard link to '{Shown(entry.LinkName)}', which is not in the layer (yet)");
                    }
                    if ((targetStat.st_mode & FilePermissions.S_IFMT) == FilePermissions.S_IFDIR)
                    {
                        throw new LayerStoreException(Shown(entry.Name), "a hard link to a directory");
                    }
                    Replace(parent, name, entry.Name, keepDirectory: false);
                    TreeBuilder.CreateHardLink(targetParent, target[^1], parent, name);
                }
                break;
            case TarEntryType.CharacterDevice or TarEntryType.BlockDevice when entry is PosixTarEntry:
                Replace(parent, name, entry.Name, keepDirectory: false);
                TreeBuilder.CreateNode(parent, name, entry.EntryType == TarEntryType.CharacterDevice ? FilePermissions.S_IFCHR : FilePermissions.S_IFBLK,
                    (uint)((PosixTarEntry)entry).DeviceMajor, (uint)((PosixTarEntry)entry).DeviceMinor, metadata);
                break;
            case TarEntryType.Fifo:
                Replace(parent, name, entry.Name, keepDirectory: false);
                TreeBuilder.CreateNode(parent, name, FilePermissions.S_IFIFO, 0, 0, metadata);
                break;
            default:
                throw new LayerStoreException(Shown(entry.Name), $"an entry of type {entry.EntryType}, which a layer cannot hold");
        }
    }

    private static void FinishTree(StoreDirectory root, NodeMetadata? rootMetadata, List<(string[] Path, NodeMetadata Metadata)> directories, List<string[]> opaque)
    {
        foreach (string[] path in opaque)
        {
            using StoreDirectory directory = OpenDirectory(root, path, string.Join('/', path));
            if (Syscall.lsetxattr(directory.Self, "trusted.overlay.opaque", "y"u8.ToArray(), XattrFlags.XATTR_AUTO) != 0)
            {
                throw StoreDirectory.Failure(directory.Described, "cannot mark the directory opaque (trusted.overlay.opaque needs root)");
            }
        }
        // Modes and times last, children before parents: a read-only directory could not have received its
        // children, and adding them would change its time.
        foreach ((string[] path, NodeMetadata metadata) in directories.OrderByDescending(d => d.Path.Length))
        {
            using StoreDirectory directory = OpenDirectory(root, path, string.Join('/', path));
            TreeBuilder.FinishDirectory(directory, metadata, isRoot: false);
        }
        TreeBuilder.FinishDirectory(root, rootMetadata ?? new NodeMetadata(0x1ED, 0, 0, 0, 0, []), isRoot: true);
    }

    /// <summary>The tar itself, or its gzip decompression when it starts with the gzip magic.</summary>
    private static Stream Decompressed(Stream input)
    {
        var buffered = new BufferedStream(input, 1 << 16);
        Span<byte> magic = stackalloc byte[2];
        int read = 0;
        // Peek two bytes through a stream that keeps them: a BufferedStream over a non-seekable input cannot seek
        // back, so the peeked bytes are put in front again.
        while (read < 2)
        {
            int n = buffered.Read(magic[read..]);
            if (n == 0)
            {
                break;
            }
            read += n;
        }
        Stream whole = new PrefixedStream(magic[..read].ToArray(), buffered);
        return read == 2 && magic[0] == 0x1f && magic[1] == 0x8b
            ? new System.IO.Compression.GZipStream(whole, System.IO.Compression.CompressionMode.Decompress)
            : whole;
    }

    /// <summary>The components of an entry's path, after dropping a leading <c>./</c>, empty and <c>.</c> components.</summary>
    /// <exception cref="LayerStoreException">An absolute path or a <c>..</c> component.</exception>
    private static string[] SplitPath(string name)
    {
        if (name.StartsWith('/'))
        {
            throw new LayerStoreException(Shown(name), "an absolute path in a layer tar (refused)");
        }
        string[] parts = name.Split('/', StringSplitOptions.RemoveEmptyEntries).Where(p => p != ".").ToArray();
        foreach (string part in parts)
        {
            CheckName(part, name);
        }
        return parts;
    }

    private static void CheckName(string part, string entry)
    {
        if (part is "" or "." or "..")
        {
            throw new LayerStoreException(Shown(entry), "a '..' component in a layer tar path (refused: it would leave the layer)");
        }
        if (part.Contains('\0') || Encoding.UTF8.GetByteCount(part) > 255)
        {
            throw new LayerStoreException(Shown(entry), "a name that is too long or holds a NUL");
        }
    }

    /// <summary>The directory that holds <paramref name="path"/>'s last component, its missing parents created (0755,
    /// root's, as container tools do); never through a symbolic link.</summary>
    private static StoreDirectory OpenParent(StoreDirectory root, string[] path, string entry, bool create = true) =>
        OpenDirectory(root, path[..^1], entry, create);

    private static StoreDirectory OpenDirectory(StoreDirectory root, string[] path, string entry, bool create = false)
    {
        StoreDirectory current = root.Reopen();
        try
        {
            foreach (string part in path)
            {
                StoreDirectory? next;
                try
                {
                    next = current.TryOpenChild(part);
                }
                catch (LayerStoreException)
                {
                    throw new LayerStoreException(Shown(entry), $"the path goes through '{Shown(part)}', which is a symbolic link or not a directory (refused)");
                }
                if (next is null)
                {
                    if (!create)
                    {
                        throw new LayerStoreException(Shown(entry), $"'{Shown(part)}' is not in the layer");
                    }
                    TreeBuilder.CreateDirectory(current, part, new NodeMetadata(0x1ED, 0, 0, 0, 0, []));
                    if (Syscall.chmod(current.At(part), (FilePermissions)0x1ED) != 0)
                    {
                        throw StoreDirectory.Failure(current.Describe(part), "cannot set the mode");
                    }
                    next = current.OpenChild(part);
                }
                current.Dispose();
                current = next;
            }
            return current;
        }
        catch
        {
            current.Dispose();
            throw;
        }
    }

    /// <summary>Makes room for an entry: a later tar entry replaces an earlier one of the same name. Returns false when
    /// a directory is there and <paramref name="keepDirectory"/> (a directory entry over a directory updates it).</summary>
    private static bool Replace(StoreDirectory parent, string name, string entry, bool keepDirectory)
    {
        if (!parent.TryLstat(name, out Stat stat))
        {
            return true;
        }
        bool isDirectory = (stat.st_mode & FilePermissions.S_IFMT) == FilePermissions.S_IFDIR;
        if (isDirectory && keepDirectory)
        {
            return false;
        }
        if (isDirectory ? Syscall.rmdir(parent.At(name)) != 0 : Syscall.unlink(parent.At(name)) != 0)
        {
            Errno errno = Stdlib.GetLastError();
            throw new LayerStoreException(Shown(entry), errno == Errno.ENOTEMPTY
                ? "replaces a non-empty directory (refused)"
                : $"cannot replace the earlier entry of that name: {Stdlib.strerror(errno)}");
        }
        return true;
    }

    private static NodeMetadata Metadata(TarEntry entry)
    {
        var xattrs = new List<(string, byte[])>();
        if (entry is PaxTarEntry pax)
        {
            foreach (KeyValuePair<string, string> record in pax.ExtendedAttributes)
            {
                if (record.Key.StartsWith(XattrPrefix, StringComparison.Ordinal) && record.Key.Length > XattrPrefix.Length)
                {
                    xattrs.Add((record.Key[XattrPrefix.Length..], Encoding.UTF8.GetBytes(record.Value)));
                }
            }
        }
        if (entry.Uid < 0 || entry.Gid < 0)
        {
            throw new LayerStoreException(Shown(entry.Name), "a negative owner id");
        }
        long ticks = entry.ModificationTime.UtcTicks - DateTimeOffset.UnixEpoch.UtcTicks;
        long seconds = Math.DivRem(ticks, TimeSpan.TicksPerSecond, out long rest);
        if (rest < 0)
        {
            seconds--;
            rest += TimeSpan.TicksPerSecond;
        }
        return new NodeMetadata((uint)entry.Mode & 0xFFF, (uint)entry.Uid, (uint)entry.Gid, seconds, rest * 100,
            xattrs.OrderBy(x => x.Item1, StringComparer.Ordinal).ToList());
    }

    /// <summary>An entry name from the tar as shown in a message.</summary>
    private static string Shown(string name) => "layer tar entry '" + RecordJson.Printable(name) + "'";

    /// <summary>Hashes what is read through it.</summary>
    private sealed class HashingStream(Stream inner, IncrementalHash hash) : Stream
    {
        public override bool CanRead => true;
        public override bool CanSeek => false;
        public override bool CanWrite => false;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

        public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

        public override int Read(Span<byte> buffer)
        {
            int read = inner.Read(buffer);
            hash.AppendData(buffer[..read]);
            return read;
        }

        public override void Flush()
        {
        }

        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();

        protected override void Dispose(bool disposing)
        {
            if (disposing)
            {
                inner.Dispose();
            }
            base.Dispose(disposing);
        }
    }

    /// <summary>A few bytes already read, then the rest of a stream.</summary>
    private sealed class PrefixedStream(byte[] prefix, Stream rest) : Stream
    {
        private int _used;

        public override bool CanRead => true;
        public override bool CanSeek => false;
        public override bool CanWrite => false;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

        public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

        public override int Read(Span<byte> buffer)
        {
            if (_used < prefix.Length)
            {
                int n = Math.Min(buffer.Length, prefix.Length - _used);
                prefix.AsSpan(_used, n).CopyTo(buffer);
                _used += n;
                return n;
            }
            return rest.Read(buffer);
        }

        public override void Flush()
        {
        }

        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    }
}
