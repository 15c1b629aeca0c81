using BAOverlay.Storage;
using Mono.Unix.Native;

namespace BAOverlay.Cache;

/// <summary>
/// Where a <see cref="ZoneCache"/> keeps its files: the cache files (one B-CoW file per remote file), the heat file and
/// the state file. A seam so that crash tests run the cache over <see cref="FaultInjectingStorage"/>; the real one is
/// <see cref="DirectoryCacheStore"/>.
/// </summary>
internal interface ICacheStore : IDisposable
{
    /// <summary>What to call the store in messages (the directory).</summary>
    string Name { get; }

    /// <summary>The names of the cache files present (each "&lt;hash&gt;.bcow").</summary>
    IReadOnlyList<string> ListCacheFiles();

    /// <summary>Opens a cache file for reading and writing, creating it (empty) when <paramref name="create"/>.</summary>
    IBlockStorage OpenCacheFile(string name, bool create);

    /// <summary>Removes a cache file (no error if it is gone).</summary>
    void DeleteCacheFile(string name);

    /// <summary>Replaces a small side file (heat, state) atomically and durably: after a crash it holds the old or the
    /// new content, whole.</summary>
    void WriteSideFile(string name, ReadOnlySpan<byte> content);

    /// <summary>The content of a side file, or null when there is none.</summary>
    byte[]? ReadSideFile(string name);
}

/// <summary>
/// The cache's directory: <c>files/&lt;hash&gt;.bcow</c>, <c>heat</c>, <c>state</c>, and a <c>lock</c> file that one
/// process at a time holds (an open file description lock), so two mounts never share the cache's B-CoW files.
/// </summary>
internal sealed class DirectoryCacheStore : ICacheStore
{
    private const int MaxSideFileBytes = 64 << 20;

    private readonly string _files;
    private readonly FileStorage _lock;

    public DirectoryCacheStore(string directory)
    {
        Name = Path.GetFullPath(directory);
        _files = Path.Combine(Name, "files");
        Directory.CreateDirectory(_files);
        try
        {
            _lock = new FileStorage(Path.Combine(Name, "lock"), FileMode.OpenOrCreate, FileAccess.ReadWrite, FileLockMode.Exclusive);
        }
        catch (BCowFileInUseException e)
        {
            throw new IOException($"{Name}: the cache is in use by another process ({e.Message})", e);
        }
        // Leftovers of a side file replaced when the process died.
        foreach (string temporary in Directory.EnumerateFiles(Name, "*.tmp"))
        {
            File.Delete(temporary);
        }
    }

    public string Name { get; }

    public IReadOnlyList<string> ListCacheFiles() =>
        Directory.EnumerateFiles(_files, "*.bcow").Select(p => Path.GetFileName(p)).Order(StringComparer.Ordinal).ToList();

    public IBlockStorage OpenCacheFile(string name, bool create) =>
        new FileStorage(Path.Combine(_files, CheckName(name)), create ? FileMode.CreateNew : FileMode.Open, FileAccess.ReadWrite, FileLockMode.Exclusive);

    public void DeleteCacheFile(string name) => File.Delete(Path.Combine(_files, CheckName(name)));

    public void WriteSideFile(string name, ReadOnlySpan<byte> content)
    {
        string path = Path.Combine(Name, CheckName(name));
        string temporary = path + ".tmp";
        using (var file = new FileStorage(temporary, FileMode.Create, FileAccess.Write))
        {
            file.WriteAt(content, 0);
            file.Flush();
        }
        File.Move(temporary, path, overwrite: true);
        FsyncDirectory(Name);
    }

    public byte[]? ReadSideFile(string name)
    {
        string path = Path.Combine(Name, CheckName(name));
        if (!File.Exists(path))
        {
            return null;
        }
        using var file = new FileStorage(path, FileMode.Open, FileAccess.Read);
        long length = file.Length;
        if (length > MaxSideFileBytes)
        {
            throw new IOException($"{path}: {length} bytes, more than a cache side file may hold ({MaxSideFileBytes})");
        }
        byte[] content = new byte[length];
        int n = file.ReadAt(content, 0);
        return content.AsSpan(0, n).ToArray();
    }

    public void Dispose() => _lock.Dispose();

    /// <summary>The rename is durable once the directory is.</summary>
    private static void FsyncDirectory(string path)
    {
        int fd = Syscall.open(path, OpenFlags.O_RDONLY | OpenFlags.O_DIRECTORY | OpenFlags.O_CLOEXEC);
        if (fd < 0)
        {
            throw new IOException($"{path}: cannot open to flush: {Stdlib.strerror(Stdlib.GetLastError())}");
        }
        try
        {
            if (Syscall.fsync(fd) != 0)
            {
                throw new IOException($"{path}: cannot flush: {Stdlib.strerror(Stdlib.GetLastError())}");
            }
        }
        finally
        {
            Syscall.close(fd);
        }
    }

    /// <summary>Names come from this code, but a name that would leave the directory is refused all the same.</summary>
    private static string CheckName(string name) =>
        name.Length == 0 || name.Contains('/') || name is "." or ".." ? throw new ArgumentException($"bad cache file name '{name}'", nameof(name)) : name;
}

/// <summary>The cache's files in memory, each a <see cref="FaultInjectingStorage"/> or <see cref="MemoryStorage"/>
/// the test chose: for model and crash tests.</summary>
internal sealed class MemoryCacheStore(Func<string, IBlockStorage>? create = null) : ICacheStore
{
    private readonly object _gate = new();
    private readonly Dictionary<string, IBlockStorage> _files = new(StringComparer.Ordinal);
    private readonly Dictionary<string, byte[]> _side = new(StringComparer.Ordinal);

    public string Name => "memory cache";

    /// <summary>The storages by cache file name, as the cache left them.</summary>
    public IReadOnlyDictionary<string, IBlockStorage> Files
    {
        get
        {
            lock (_gate)
            {
                return new Dictionary<string, IBlockStorage>(_files);
            }
        }
    }

    /// <summary>Replaces a cache file's storage (a test puts a crash image in its place).</summary>
    public void Replace(string name, IBlockStorage storage)
    {
        lock (_gate)
        {
            _files[name] = storage;
        }
    }

    public IReadOnlyList<string> ListCacheFiles()
    {
        lock (_gate)
        {
            return _files.Keys.Order(StringComparer.Ordinal).ToList();
        }
    }

    public IBlockStorage OpenCacheFile(string name, bool create1)
    {
        lock (_gate)
        {
            if (_files.TryGetValue(name, out IBlockStorage? storage))
            {
                if (create1)
                {
                    throw new IOException($"{name}: exists");
                }
                return new Unowned(storage);
            }
            if (!create1)
            {
                throw new FileNotFoundException($"{name}: no such cache file");
            }
            storage = create?.Invoke(name) ?? new MemoryStorage(name);
            _files[name] = storage;
            return new Unowned(storage);
        }
    }

    public void DeleteCacheFile(string name)
    {
        lock (_gate)
        {
            _files.Remove(name);
        }
    }

    public void WriteSideFile(string name, ReadOnlySpan<byte> content)
    {
        byte[] copy = content.ToArray();
        lock (_gate)
        {
            _side[name] = copy;
        }
    }

    public byte[]? ReadSideFile(string name)
    {
        lock (_gate)
        {
            return _side.TryGetValue(name, out byte[]? content) ? content : null;
        }
    }

    public void Dispose()
    {
    }

    /// <summary>The store keeps the storage across opens (a restart reopens it): a cache file's dispose must not
    /// drop it.</summary>
    private sealed class Unowned(IBlockStorage inner) : IBlockStorage
    {
        public string Name => inner.Name;

        public bool CanWrite => inner.CanWrite;

        public long Length => inner.Length;

        public int ReadAt(Span<byte> buffer, long offset) => inner.ReadAt(buffer, offset);

        public ValueTask<int> ReadAtAsync(Memory<byte> buffer, long offset, CancellationToken cancellationToken = default) => inner.ReadAtAsync(buffer, offset, cancellationToken);

        public void WriteAt(ReadOnlySpan<byte> data, long offset) => inner.WriteAt(data, offset);

        public ValueTask WriteAtAsync(ReadOnlyMemory<byte> data, long offset, CancellationToken cancellationToken = default) => inner.WriteAtAsync(data, offset, cancellationToken);

        public void Flush() => inner.Flush();

        public void SetLength(long length) => inner.SetLength(length);

        public void PunchHole(long offset, long length) => inner.PunchHole(offset, length);

        public (long MTimeNs, ulong Inode) GetIdentity() => inner.GetIdentity();

        public IEnumerable<(long Offset, long Length)> GetDataRanges(long start, long end) => inner.GetDataRanges(start, end);

        public void Dispose()
        {
        }
    }
}
