using System.Buffers.Binary;
using System.Security.Cryptography;
using BAOverlay.Cache;
using Microsoft.Win32.SafeHandles;
using Mono.Unix.Native;

namespace BAOverlay.Store;

/// <summary>
/// The files of a layer verified lazily (<see cref="LayerIndex.ContentVerified"/> false) whose content was found right
/// at its first read from the store, and this host's record of them: <c>sha256-HEX.verified</c> beside the layer's
/// index file, so that a later mount neither hashes nor fetches them again.
/// </summary>
/// <remarks>
/// <para>The record file: the line <c>baoverlay-verified/1</c>, the 32-byte checksum trailer of the index file it
/// belongs to (an index made again, for another publication or a changed root, starts a new record), then one 12-byte
/// record per verified file: its position in the index (4 bytes, little-endian) and the first 8 bytes of
/// sha256(index checksum, position, the file's content hash).</para>
/// <para>Crash safety: a record is appended only after the file's content was hashed and found right, and each record
/// checks itself, so a torn or damaged one (or one of another index) is ignored and that file verified again; nothing
/// can make the host trust a file it did not verify. Records are not fsynced one by one (a verification is on a
/// reader's path): a crash may forget the latest ones (those files are verified again at their next read), never add
/// one. Like the index file, the record is the host's: a user who can write the index directory can make the host
/// trust what it did not verify.</para>
/// </remarks>
internal sealed class LazyContent
{
    private static readonly byte[] Magic = "baoverlay-verified/1\n"u8.ToArray();
    private const int BindingBytes = 32;
    private const int RecordBytes = 12;
    private static readonly int HeaderBytes = Magic.Length + BindingBytes;

    private readonly LayerIndex _index;
    private readonly byte[]? _binding;
    private readonly string? _file;
    private readonly Action<string>? _log;
    private readonly FirstFetchCheck?[] _checks;
    private readonly bool[] _recorded;
    private readonly Lock _gate = new();
    private bool _appendable; // the record file is in place, with this index's header
    private long _length;

    /// <param name="index">The layer's index.</param>
    /// <param name="binding">The index file's checksum trailer (null: no record kept).</param>
    /// <param name="file">The record file (null: none; verifications are kept in memory only).</param>
    /// <param name="log">Problems with the record file.</param>
    internal LazyContent(LayerIndex index, byte[]? binding, string? file, Action<string>? log)
    {
        _index = index;
        _binding = binding;
        _file = binding is null ? null : file;
        _log = log;
        _checks = new FirstFetchCheck?[index.Count];
        _recorded = new bool[index.Count];
    }

    /// <summary>Files of the layer recorded or found verified so far.</summary>
    internal int VerifiedFiles
    {
        get
        {
            lock (_gate)
            {
                return _recorded.Count(r => r);
            }
        }
    }

    /// <summary>
    /// The layer's lazy content checks with this host's record read from <paramref name="file"/> (records of this index
    /// taken as verified; a record file of another index, damaged or missing, started anew).
    /// <paramref name="indexFileBytes"/> are the index file's bytes: their checksum trailer binds the record to them.
    /// </summary>
    internal static LazyContent Open(LayerIndex index, ReadOnlySpan<byte> indexFileBytes, string file, Action<string>? log)
    {
        byte[] binding = indexFileBytes[^BindingBytes..].ToArray();
        var content = new LazyContent(index, binding, file, log);
        try
        {
            content.Load();
        }
        catch (IOException e)
        {
            log?.Invoke($"{file}: {e.Message}; its files are verified again at their first read");
            content._appendable = false;
        }
        return content;
    }

    private void Load()
    {
        byte[]? bytes = ReadExisting(_file!, HeaderBytes + (2L * RecordBytes * _index.Count) + RecordBytes);
        if (bytes is not null && bytes.Length >= HeaderBytes && bytes.AsSpan().StartsWith(Magic) &&
            bytes.AsSpan(Magic.Length, BindingBytes).SequenceEqual(_binding))
        {
            int records = (bytes.Length - HeaderBytes) / RecordBytes;
            for (int i = 0; i < records; i++)
            {
                ReadOnlySpan<byte> record = bytes.AsSpan(HeaderBytes + (i * RecordBytes), RecordBytes);
                int position = BinaryPrimitives.ReadInt32LittleEndian(record);
                if (position > 0 && position < _index.Count && _index[position].Type == 'f' &&
                    record[4..].SequenceEqual(Check(position)))
                {
                    _recorded[position] = true;
                }
            }
            _length = HeaderBytes + ((long)records * RecordBytes); // a torn last record is written over
            _appendable = true;
            return;
        }
        // None, of another index, or damaged: a new one, put in place by a rename (a crash leaves the old one or this).
        string temporary = $"{_file}.{Environment.ProcessId}.{Guid.NewGuid():N}.tmp";
        using (SafeFileHandle created = Open(temporary, OpenFlags.O_WRONLY | OpenFlags.O_CREAT | OpenFlags.O_EXCL))
        {
            byte[] header = [.. Magic, .. _binding!];
            RandomAccess.Write(created, header, 0);
        }
        File.Move(temporary, _file!, overwrite: true);
        _length = HeaderBytes;
        _appendable = true;
    }

    /// <summary>The check the first read of the file at <paramref name="position"/> from the store must pass, or null
    /// when it was verified (recorded, or by this process).</summary>
    internal FirstFetchCheck? CheckFor(int position)
    {
        lock (_gate)
        {
            if (_recorded[position])
            {
                return null;
            }
            if (_checks[position] is { } existing)
            {
                return existing.IsVerified ? null : existing;
            }
            TreeObject o = _index[position];
            byte[] sha256;
            try
            {
                sha256 = Convert.FromHexString(o.B);
            }
            catch (FormatException)
            {
                sha256 = [];
            }
            if (sha256.Length != 32)
            {
                // Not possible for an index whose digest checked (a file's b field is its content hash): refuse the file.
                sha256 = new byte[32];
            }
            string name = $"{StoreLayout.DirectoryName(_index.Digest)}/{StoreLayout.Tree}/{o.Path}";
            var check = new FirstFetchCheck(name, o.Stat.st_size, sha256, _ => Verified(position));
            _checks[position] = check;
            return check;
        }
    }

    /// <summary>Records that the file at <paramref name="position"/> was verified: appended to the record file.</summary>
    private void Verified(int position)
    {
        bool appendable;
        long at;
        lock (_gate)
        {
            if (_recorded[position])
            {
                return;
            }
            _recorded[position] = true;
            appendable = _appendable;
            at = _length;
            _length += RecordBytes; // reserved: the write itself runs outside the lock (no I/O under it)
        }
        if (!appendable)
        {
            return;
        }
        Span<byte> record = stackalloc byte[RecordBytes];
        BinaryPrimitives.WriteInt32LittleEndian(record, position);
        Check(position).CopyTo(record[4..]);
        try
        {
            // Opened for each record (a file is verified once): no descriptor is held for the layer's lifetime.
            using SafeFileHandle append = Open(_file!, OpenFlags.O_WRONLY);
            RandomAccess.Write(append, record, at);
        }
        catch (IOException e)
        {
            // Only this record is lost (the file is verified again at the next mount); later ones go on at their places.
            _log?.Invoke($"{_file}: cannot record a verified file: {e.Message}; it is verified again at the next mount");
        }
    }

    /// <summary>The 8 check bytes of a record: sha256(index checksum, position, content hash).</summary>
    private byte[] Check(int position)
    {
        Span<byte> input = stackalloc byte[BindingBytes + 4 + 64];
        _binding.CopyTo(input);
        BinaryPrimitives.WriteInt32LittleEndian(input[BindingBytes..], position);
        int hashLength = System.Text.Encoding.ASCII.GetBytes(_index[position].B.AsSpan(0, Math.Min(64, _index[position].B.Length)), input[(BindingBytes + 4)..]);
        return SHA256.HashData(input[..(BindingBytes + 4 + hashLength)])[..8];
    }

    private static SafeFileHandle Open(string path, OpenFlags flags)
    {
        int fd = Syscall.open(path, flags | OpenFlags.O_NOFOLLOW | OpenFlags.O_CLOEXEC, FilePermissions.S_IRUSR | FilePermissions.S_IWUSR);
        if (fd < 0)
        {
            throw new IOException($"{path}: cannot open: {Stdlib.strerror(Stdlib.GetLastError())}");
        }
        var handle = new SafeFileHandle(fd, ownsHandle: true);
        if (Syscall.fstat(fd, out Stat st) != 0 || (st.st_mode & FilePermissions.S_IFMT) != FilePermissions.S_IFREG)
        {
            handle.Dispose();
            throw new IOException($"{path}: not a regular file");
        }
        return handle;
    }

    /// <summary>The record file's bytes, or null (none, not a regular file, or larger than a record of this index can be).</summary>
    private static byte[]? ReadExisting(string path, long max) =>
        StoreFiles.ReadLocalFile(path, max, shortIsNull: false);
}
