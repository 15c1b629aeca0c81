using System.Buffers;
using System.Numerics;
using System.Runtime.CompilerServices;
using BAOverlay.Engine;
using BAOverlay.Format;
using BAOverlay.Storage;

namespace BAOverlay;

/// <summary>
/// An overlay file: a lower file (optional, never written) under a B-CoW upper file that holds only the blocks
/// written through it. Reads merge the two; writes copy up only the blocks they touch, and never wait for a block to
/// be copied from lower (<see cref="CopyUpMode"/>).
/// </summary>
/// <remarks>
/// <para>Thread safety: every member except <see cref="Dispose"/> and <see cref="DisposeAsync"/> may be called from
/// many threads at once. Concurrent writes to different blocks proceed in parallel; a read that overlaps a concurrent
/// write returns, per block, the bytes before or after it.</para>
/// <para>Durability: <see cref="WriteAt(ReadOnlySpan{byte}, long)"/> is not durable until <see cref="Flush"/>
/// returns; then every byte written before the flush survives a crash. After a crash at any moment, reopening gives
/// the state of some moment since the last completed flush for every byte (never garbage, never stale lower bytes
/// for a block overwritten and flushed): the map is copy-on-write (shadow paging), and data is always written before
/// the map entry that points at it.</para>
/// <para>Errors: a B-CoW file that cannot be used raises <see cref="BCowFormatException"/>; I/O errors (EIO, ENOSPC)
/// raise <see cref="IOException"/> and leave the file consistent. If a commit itself fails, the object refuses
/// further writes (the file on disk stays at its last commit); reopen it.</para>
/// <para>Ownership: a file opened from a path owns its files. One opened over <see cref="IBlockStorage"/> disposes
/// them only when asked to (<c>ownsStorage</c>).</para>
/// </remarks>
public sealed partial class BCowFile : IDisposable, IAsyncDisposable
{
    /// <summary>Zeros for the part of a block a size change clears; made on first use (1 MiB, which the class
    /// constructor allocated and cleared on the first copy-up of a fresh mount, in the first write's time).</summary>
    private static byte[]? s_zeros;

    private static byte[] Zeros => LazyInitializer.EnsureInitialized(ref s_zeros, static () => new byte[1 << Layout.MaxBlockSizeLog2]);

    private readonly IBlockStorage _upper;
    private readonly IBlockStorage? _lower;
    private readonly bool _ownsStorage;
    private readonly BCowOpenOptions _options;
    private readonly int _log2;
    private readonly int _blockSize;
    private readonly int _subShift;
    private readonly long _blockMask;
    private readonly long _lowerLength;
    private readonly BlockMap _map;
    private readonly SpaceAllocator _allocator;
    private readonly BlockLocks _locks = new();
    private readonly SharedExclusiveGate _sizeGate = new();
    private readonly SemaphoreSlim _commitGate = new(1, 1);
    private readonly object _sizeLock = new();
    private readonly object _extendLock = new();
    private long _upperExtent;
    private readonly bool _openedDirty;
    private CopyUpQueue? _copier;
    private BCowHeader _committed;
    private long _virtualSize;
    private long _lowerLimit;
    private volatile bool _headerDirty;
    private bool _headerUnflushed;
    private volatile bool _committedDurably;
    private volatile Exception? _fault;
    private int _disposed;

    private BCowFile(IBlockStorage upper, IBlockStorage? lower, bool ownsStorage, BCowOpenOptions options, BCowHeader header, BlockMap map, SpaceAllocator allocator)
    {
        _upper = upper;
        _lower = lower;
        _ownsStorage = ownsStorage;
        _options = options;
        _committed = header;
        _openedDirty = header.Dirty;
        _log2 = header.BlockSizeLog2;
        _blockSize = header.BlockSize;
        _subShift = _log2 - Layout.SubBlocksShift;
        _blockMask = _blockSize - 1;
        _lowerLength = header.HasLower ? header.Lower.Size : 0;
        _virtualSize = header.VirtualSize;
        _lowerLimit = header.LowerLimit;
        _map = map;
        _allocator = allocator;
    }

    /// <summary>The upper file's name (its path for files opened from a path).</summary>
    public string Name => _upper.Name;

    /// <summary>The logical size in bytes.</summary>
    public long Length => Volatile.Read(ref _virtualSize);

    /// <summary>The block size in bytes: the unit of copy-up and allocation.</summary>
    public int BlockSize => _blockSize;

    /// <summary>False when opened read-only.</summary>
    public bool CanWrite => !_options.ReadOnly;

    /// <summary>How writes into blocks still in lower are completed.</summary>
    public CopyUpMode CopyUpMode => _options.CopyUpMode;

    /// <summary>True when the file was not closed cleanly before this open (a crash may have leaked space, which a
    /// writable open reclaims).</summary>
    internal bool OpenedDirty => _openedDirty;

    /// <summary>Blocks queued for, or being filled by, the background copier.</summary>
    public int PendingCopyUps => _copier?.Pending ?? 0;

    // ---------------------------------------------------------------- create and open

    /// <summary>Creates a B-CoW file at <paramref name="path"/> and opens it for writing.</summary>
    /// <exception cref="ArgumentException">Bad options (block size not a power of two in 4 KiB..1 MiB, no size without a lower file).</exception>
    /// <exception cref="IOException">The file exists (and <see cref="BCowCreateOptions.Overwrite"/> is false) or cannot be written, or the lower file cannot be read.</exception>
    /// <exception cref="BCowFileInUseException">With <see cref="BCowCreateOptions.Overwrite"/>: the file to replace is open in another process (it is left as it is).</exception>
    public static BCowFile Create(string path, BCowCreateOptions? options = null) => CreateCore(path, options, open: true)!;

    /// <summary>Creates the file durably (one flush) without opening it: what an atomic copy-up needs before its rename.</summary>
    internal static void CreateClosed(string path, BCowCreateOptions options) => CreateCore(path, options, open: false);

    /// <summary>The same in storage the caller opened (and keeps: neither storage is disposed); the lower path in
    /// <paramref name="options"/> is only recorded.</summary>
    /// <param name="upper">The new file.</param>
    /// <param name="lower">Its lower file.</param>
    /// <param name="options">Block size and the lower path to record.</param>
    /// <param name="durable">False: the new file is not flushed, so a crash may leave it without a valid header (the
    /// overlay's copy-up, which marks such a file and makes it again when it finds it so; see
    /// <see cref="FileSystem.LayerPaths.PendingXattr"/>).</param>
    internal static void CreateClosed(IBlockStorage upper, IBlockStorage lower, BCowCreateOptions options, bool durable = true) =>
        CreateCore(upper, lower, options, ownsStorage: false, open: false, durable);

    private static BCowFile? CreateCore(string path, BCowCreateOptions? options, bool open)
    {
        options ??= new BCowCreateOptions();
        string fullPath = Path.GetFullPath(path);
        IBlockStorage? lower = null;
        string? storedLowerPath = null;
        if (options.LowerPath is not null)
        {
            string lowerFull = Path.GetFullPath(options.LowerPath);
            if (lowerFull == fullPath)
            {
                throw new ArgumentException($"{path}: a B-CoW file cannot be its own lower file.");
            }
            // The new file heads the chain: it counts for the depth, and (replacing a file) a lower chain through the
            // file being replaced is a loop.
            lower = OpenLower(lowerFull, [ChainMember.Of(path)]);
            storedLowerPath = Path.IsPathRooted(options.LowerPath)
                ? lowerFull
                : Path.GetRelativePath(Path.GetDirectoryName(fullPath)!, lowerFull);
        }
        FileStorage upper;
        try
        {
            // Validate before the file is created or truncated: bad options must not cost an existing file.
            ValidateCreateOptions(path, options, lower?.Length);
            // OpenOrCreate, not Create: an existing file is emptied (by CreateCore) only once this open holds its lock,
            // so replacing a file another process has open is refused instead of pulling it from under that process.
            upper = new FileStorage(path, options.Overwrite ? FileMode.OpenOrCreate : FileMode.CreateNew, FileAccess.ReadWrite, FileLockMode.Exclusive);
        }
        catch (IOException e) when (File.Exists(path) && !options.Overwrite)
        {
            lower?.Dispose();
            throw new IOException($"{path}: already exists", e);
        }
        catch
        {
            lower?.Dispose();
            throw;
        }
        try
        {
            return CreateCore(upper, lower, options with { LowerPath = storedLowerPath }, ownsStorage: true, open);
        }
        catch
        {
            try
            {
                File.Delete(path);
            }
            catch (IOException)
            {
            }
            throw;
        }
    }

    /// <summary>
    /// Creates a B-CoW file in <paramref name="upper"/> (whose content is replaced) over <paramref name="lower"/>.
    /// <see cref="BCowCreateOptions.LowerPath"/> is only recorded in the header.
    /// </summary>
    /// <param name="upper">Storage for the B-CoW file.</param>
    /// <param name="lower">The lower file, or null.</param>
    /// <param name="options">Block size, virtual size and open options.</param>
    /// <param name="ownsStorage">True: the returned file disposes both storages (also when this call fails).</param>
    public static BCowFile Create(IBlockStorage upper, IBlockStorage? lower, BCowCreateOptions? options = null, bool ownsStorage = false) =>
        CreateCore(upper, lower, options, ownsStorage, open: true)!;

    private static BCowFile? CreateCore(IBlockStorage upper, IBlockStorage? lower, BCowCreateOptions? options, bool ownsStorage, bool open, bool durable = true)
    {
        options ??= new BCowCreateOptions();
        try
        {
            long virtualSize = ValidateCreateOptions(upper.Name, options, lower?.Length);
            if (lower is not null and not BCowLowerStorage)
            {
                RefuseBCowLower(upper.Name, lower);
            }
            int log2 = BitOperations.Log2((uint)options.BlockSize);
            var map = new BlockMap(log2, Layout.RootEntryCount(virtualSize, log2));
            var allocator = new SpaceAllocator(options.BlockSize, Layout.DataStart);
            upper.SetLength(0);
            CommitImage image = map.Snapshot(() => Layout.RootEntryCount(virtualSize, log2), allocator, committedRootEntries: -1);
            foreach (var (offset, bytes) in image.Pages)
            {
                upper.WriteAt(bytes, offset);
            }
            var header = new BCowHeader
            {
                Generation = 1,
                BlockSizeLog2 = log2,
                HasLower = lower is not null,
                VirtualSize = virtualSize,
                LowerLimit = lower is null ? 0 : Math.Min(lower.Length, virtualSize),
                RootTableOffset = image.RootOffset,
                RootTableEntries = image.RootEntries,
                RootTableCrc = image.RootCrc,
                Lower = lower is null ? default : LowerIdentities.IdentityOf(lower),
                LowerPath = options.LowerPath ?? "",
            };
            byte[] slot = new byte[Layout.HeaderSlotSize];
            header.Write(slot);
            upper.WriteAt(new byte[Layout.HeaderSlotSize], 0);
            upper.WriteAt(slot, Layout.HeaderSlotSize);
            if (durable)
            {
                upper.Flush();
            }
        }
        catch
        {
            if (ownsStorage)
            {
                upper.Dispose();
                lower?.Dispose();
            }
            throw;
        }
        if (!open)
        {
            if (ownsStorage)
            {
                upper.Dispose();
                lower?.Dispose();
            }
            return null;
        }
        return Open(upper, lower, options.Open, ownsStorage);
    }

    /// <summary>Checks block size and size; returns the virtual size to create.</summary>
    private static long ValidateCreateOptions(string name, BCowCreateOptions options, long? lowerLength)
    {
        if (options.BlockSize < 1 << Layout.MinBlockSizeLog2 || options.BlockSize > 1 << Layout.MaxBlockSizeLog2 || !BitOperations.IsPow2(options.BlockSize))
        {
            throw new ArgumentException($"{name}: block size {options.BlockSize} must be a power of two from 4 KiB to 1 MiB.");
        }
        long virtualSize = options.VirtualSize ?? lowerLength
            ?? throw new ArgumentException($"{name}: a size is needed when there is no lower file.");
        if (virtualSize < 0 || virtualSize > Layout.MaxVirtualSize)
        {
            throw new ArgumentException($"{name}: size {virtualSize} is outside 0..{Layout.MaxVirtualSize} (256 TiB).");
        }
        return virtualSize;
    }

    /// <summary>Opens the B-CoW file at <paramref name="path"/> and the lower file its header names.</summary>
    /// <exception cref="BCowFormatException">Not a usable B-CoW file, or its lower file changed; the message says why.</exception>
    /// <exception cref="BCowFileInUseException">Another process has the file open for writing, or (for a writable open) open at all;
    /// see <see cref="BCowOpenOptions.ForceShare"/>. The lock taken here is held until the file is disposed.</exception>
    /// <exception cref="IOException">A file cannot be opened or read.</exception>
    public static BCowFile Open(string path, BCowOpenOptions? options = null)
    {
        options ??= new BCowOpenOptions();
        if (options.ForceShare && !options.ReadOnly)
        {
            throw new ArgumentException($"{path}: {nameof(BCowOpenOptions.ForceShare)} is only for read-only opens: a writer must hold the lock");
        }
        ChainMember self = ChainMember.Of(path);
        CheckChain(self, options.ChainAbove);
        var upper = new FileStorage(path, FileMode.Open, options.ReadOnly ? FileAccess.Read : FileAccess.ReadWrite,
            options.ForceShare ? FileLockMode.None : options.ReadOnly ? FileLockMode.Shared : FileLockMode.Exclusive);
        IBlockStorage? lower = null;
        try
        {
            BCowHeader header = ReadHeader(upper);
            if (header.HasLower && !options.WithoutLower)
            {
                string lowerPath = options.LowerPath ?? ResolveLowerPath(path, header.LowerPath);
                if (lowerPath.Length == 0)
                {
                    throw new BCowFormatException(path, "has a lower file but records no path for it; name the lower file explicitly");
                }
                lower = OpenLower(lowerPath, [.. options.ChainAbove, self]);
            }
        }
        catch
        {
            upper.Dispose();
            throw;
        }
        return Open(upper, lower, options, ownsStorage: true);
    }

    /// <summary>Opens a B-CoW file kept in <paramref name="upper"/> over <paramref name="lower"/>.</summary>
    /// <param name="upper">The B-CoW file.</param>
    /// <param name="lower">The lower file, when the header says there is one.</param>
    /// <param name="options">Open options.</param>
    /// <param name="ownsStorage">True: the returned file disposes both storages (also when this call fails).</param>
    /// <exception cref="BCowFormatException">Not a usable B-CoW file, or its lower file changed.</exception>
    public static BCowFile Open(IBlockStorage upper, IBlockStorage? lower, BCowOpenOptions? options = null, bool ownsStorage = false)
    {
        options ??= new BCowOpenOptions();
        BCowFile? file = null;
        try
        {
            if (!options.ReadOnly && !upper.CanWrite)
            {
                throw new IOException($"{upper.Name}: opened for writing over read-only storage");
            }
            BCowHeader header = ReadHeader(upper);
            if (header.HasLower)
            {
                if (lower is null && !options.WithoutLower)
                {
                    throw new BCowFormatException(upper.Name, $"needs its lower file ({(header.LowerPath.Length == 0 ? "no path recorded" : header.LowerPath)})");
                }
                if (lower is not null and not BCowLowerStorage)
                {
                    RefuseBCowLower(upper.Name, lower);
                }
                if (lower is not null && !options.SkipLowerCheck)
                {
                    if (header.PendingLower is { } pending)
                    {
                        LowerIdentities.CheckDuringCommit(upper.Name, header.Lower, pending, lower, options.ResumeCommit);
                    }
                    else
                    {
                        LowerIdentities.Check(upper.Name, header.Lower, lower);
                    }
                }
            }
            else if (lower is not null)
            {
                throw new BCowFormatException(upper.Name, "has no lower file, but one was given");
            }
            var used = new List<UsedExtent>();
            BlockMap map = BlockMap.Load(upper, header, problem => throw new BCowFormatException(upper.Name, problem), used);
            SpaceAllocator allocator = SpaceAllocator.FromUsed(header.BlockSize, used.Select(u => (u.Offset, u.Length)).ToList(), out var gaps);
            file = new BCowFile(upper, header.HasLower ? lower : null, ownsStorage, options, header, map, allocator);
            if (!options.ReadOnly)
            {
                file.PrepareForWriting(gaps);
            }
            return file;
        }
        catch
        {
            if (file is not null)
            {
                file._copier?.StopAsync().GetAwaiter().GetResult();
            }
            if (ownsStorage)
            {
                upper.Dispose();
                lower?.Dispose();
            }
            throw;
        }
    }

    /// <summary>Reads both header slots and returns the newest valid one.</summary>
    internal static BCowHeader ReadHeader(IBlockStorage upper)
    {
        byte[] slots = new byte[Layout.HeaderSlotSize * Layout.HeaderSlotCount];
        int read = upper.ReadAt(slots, 0);
        if (read == 0)
        {
            throw new BCowFormatException(upper.Name, "the file is empty: not a B-CoW file");
        }
        BCowHeader? best = null;
        var problems = new List<string>();
        ulong? newestUnsupported = null;
        string? unsupportedProblem = null;
        for (int i = 0; i < Layout.HeaderSlotCount; i++)
        {
            int start = i * Layout.HeaderSlotSize;
            int available = Math.Clamp(read - start, 0, Layout.HeaderSlotSize);
            BCowHeader? header = BCowHeader.TryRead(slots.AsSpan(start, available), out string? problem);
            if (header is null)
            {
                problems.Add($"slot {i}: {problem}");
                if (BCowHeader.IntactButUnsupportedGeneration(slots.AsSpan(start, available)) is { } generation &&
                    (newestUnsupported is null || generation > newestUnsupported))
                {
                    newestUnsupported = generation;
                    unsupportedProblem = problem;
                }
            }
            else if (best is null || header.Generation > best.Generation)
            {
                best = header;
            }
        }
        if (newestUnsupported is { } newest && (best is null || newest > best.Generation))
        {
            // The newest commit was made by a newer writer: falling back to the older slot would lose it.
            throw new BCowFormatException(upper.Name, unsupportedProblem!);
        }
        if (best is null)
        {
            string first = problems[0]["slot 0: ".Length..];
            bool sameProblem = problems.All(p => p.EndsWith(first, StringComparison.Ordinal));
            throw new BCowFormatException(upper.Name, sameProblem ? first : string.Join("; ", problems));
        }
        return best;
    }

    internal static string ResolveLowerPath(string bcowPath, string recorded) =>
        recorded.Length == 0 || Path.IsPathRooted(recorded)
            ? recorded
            : Path.GetFullPath(Path.Combine(Path.GetDirectoryName(Path.GetFullPath(bcowPath))!, recorded));

    private static FileStorage OpenLowerFile(string path)
    {
        try
        {
            return new FileStorage(path, FileMode.Open, FileAccess.Read);
        }
        catch (FileNotFoundException e)
        {
            throw new FileNotFoundException($"{path}: lower file not found", path, e);
        }
    }

    /// <summary>
    /// Refuses a lower file that is itself a B-CoW file given as raw storage: read as bytes it would merge its headers
    /// and map into the virtual file. Opens by path read such a file as a backing chain instead (<see cref="OpenLower"/>);
    /// storage a caller opened (the overlay's lower layers) stays plain bytes or refused.
    /// </summary>
    internal static void RefuseBCowLower(string upperName, IBlockStorage lower)
    {
        if (IsBCowFile(lower))
        {
            throw new BCowFormatException(upperName, $"the lower file {lower.Name} is itself a B-CoW file; backing chains are not supported");
        }
    }

    /// <summary>
    /// Gives the free space at the end of the file back to the file system, after the closing durable commit: every
    /// free range there is unreferenced by that header (the last one) and reads as zeros, so cutting it changes nothing
    /// a reader of any header sees. Done at close, with no caller left: a concurrent reader could otherwise be reading
    /// a block just freed there (it would retry, but a read past the end is reported as a truncated file). The next
    /// writable open cuts after the last referenced byte as well.
    /// </summary>
    private void TrimTail()
    {
        try
        {
            lock (_extendLock)
            {
                _allocator.TrimTail(end =>
                {
                    if (_upper.Length > end)
                    {
                        _upper.SetLength(end);
                    }
                    Volatile.Write(ref _upperExtent, Math.Min(Volatile.Read(ref _upperExtent), end));
                });
            }
        }
        catch (IOException)
        {
            // Only space is lost; the next writable open cuts the tail again.
        }
    }

    private void PrepareForWriting(List<(long Offset, long Length)> gaps)
    {
        // Space no entry references is free, and free space must read as zeros: cut what a crash left after the
        // last referenced extent and punch the holes between (a no-op where they are holes already).
        long end = _allocator.End;
        if (_upper.Length > end)
        {
            _upper.SetLength(end);
        }
        foreach (var (offset, length) in gaps)
        {
            _upper.PunchHole(offset, length);
        }
        if (_options.CopyUpMode == CopyUpMode.Background)
        {
            _copier = new CopyUpQueue(Math.Max(1, _options.MaxPendingCopyUps), Math.Max(1, _options.CopyUpWorkers), FillAsync);
        }
        CommitAsync(dirty: true, durable: false, useAsync: false, CancellationToken.None).GetAwaiter().GetResult();
        if (_copier is not null && _options.ResumeCopyUps)
        {
            foreach (var (block, entry) in _map.EnumeratePopulated())
            {
                if (entry.State == BlockState.Partial)
                {
                    _copier.EnqueueAsync(block, useAsync: false, CancellationToken.None).GetAwaiter().GetResult();
                }
            }
        }
    }

    // ---------------------------------------------------------------- public I/O surface

    /// <summary>Reads at <paramref name="offset"/>; fewer bytes than asked only at the end of the file.</summary>
    /// <returns>Bytes read; 0 at or beyond the end.</returns>
    public int ReadAt(Span<byte> buffer, long offset)
    {
        ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
        ArgumentOutOfRangeException.ThrowIfNegative(offset);
        long size = Length;
        if (offset >= size || buffer.IsEmpty)
        {
            return 0;
        }
        int count = (int)Math.Min(buffer.Length, size - offset);
        int done = 0;
        while (done < count)
        {
            // The common case straight on the span, no async machinery: a run of blocks read with one call.
            long position = offset + done;
            Span<byte> rest = buffer.Slice(done, count - done);
            int n = PlanRun(position, rest.Length, out bool fromLower, out long source, out long versions);
            if (n > 0)
            {
                if (fromLower)
                {
                    ReadLower(rest[..n], position);
                }
                else
                {
                    ReadUpper(rest[..n], source);
                }
                if (!RunUnchanged(position, n, versions))
                {
                    ReadBlocksSlow(rest[..n], position); // a writer ran in the run: per block, retrying or locking
                }
            }
            else
            {
                n = Math.Min(_blockSize - (int)(position & _blockMask), rest.Length);
                ReadBlocksSlow(rest[..n], position);
            }
            done += n;
        }
        return count;
    }

    /// <summary>The general per-block read path (partial and zero blocks, writers inside, retries) for a span.</summary>
    private unsafe void ReadBlocksSlow(Span<byte> destination, long offset)
    {
        fixed (byte* pointer = destination)
        {
            PointerMemoryManager memory = PointerMemoryManager.Rent(pointer, destination.Length);
            try
            {
                int done = 0;
                while (done < destination.Length)
                {
                    long position = offset + done;
                    int inBlock = (int)(position & _blockMask);
                    int n = Math.Min(_blockSize - inBlock, destination.Length - done);
                    ReadBlockAsync(position >> _log2, inBlock, memory.Memory.Slice(done, n), useAsync: false, CancellationToken.None).GetAwaiter().GetResult();
                    done += n;
                }
            }
            finally
            {
                PointerMemoryManager.Return(memory);
            }
        }
    }

    /// <inheritdoc cref="ReadAt(Span{byte}, long)"/>
    public ValueTask<int> ReadAtAsync(Memory<byte> buffer, long offset, CancellationToken cancellationToken = default) =>
        ReadCoreAsync(buffer, offset, useAsync: true, cancellationToken);

    /// <summary>
    /// Writes at <paramref name="offset"/>, growing the file when the write ends beyond it. Returns once the bytes are
    /// in the upper file (not yet durable: see <see cref="Flush"/>); in <see cref="CopyUpMode.Background"/> the rest of
    /// a block still in lower is filled later. Waits only when the copier is <see cref="BCowOpenOptions.MaxPendingCopyUps"/> behind.
    /// </summary>
    /// <exception cref="NotSupportedException">Opened read-only.</exception>
    /// <exception cref="IOException">The storage failed (EIO, ENOSPC); the file stays consistent and the write did not happen, or happened in part for a write spanning blocks.</exception>
    public unsafe void WriteAt(ReadOnlySpan<byte> data, long offset)
    {
        fixed (byte* pointer = data)
        {
            PointerMemoryManager memory = PointerMemoryManager.Rent(pointer, data.Length);
            try
            {
                WriteCoreAsync(memory.Memory, offset, useAsync: false, CancellationToken.None).GetAwaiter().GetResult();
            }
            finally
            {
                PointerMemoryManager.Return(memory);
            }
        }
    }

    /// <inheritdoc cref="WriteAt(ReadOnlySpan{byte}, long)"/>
    public ValueTask WriteAtAsync(ReadOnlyMemory<byte> data, long offset, CancellationToken cancellationToken = default) =>
        WriteCoreAsync(data, offset, useAsync: true, cancellationToken);

    /// <summary>
    /// Sets the logical size. Shrinking hides the lower bytes beyond the new size for good: growing again reads zeros
    /// there, never old lower bytes. Blocks beyond the new size are freed.
    /// </summary>
    public void SetLength(long length) => SetLengthCoreAsync(length, useAsync: false, CancellationToken.None).GetAwaiter().GetResult();

    /// <inheritdoc cref="SetLength"/>
    public ValueTask SetLengthAsync(long length, CancellationToken cancellationToken = default) => SetLengthCoreAsync(length, useAsync: true, cancellationToken);

    /// <summary>
    /// Makes [<paramref name="offset"/>, +<paramref name="length"/>) read as zeros without changing the size, and frees
    /// every whole block in it (FALLOC_FL_PUNCH_HOLE). Also the way to zero a range (FALLOC_FL_ZERO_RANGE): zero
    /// blocks cost no space here. The part beyond the end of the file is ignored.
    /// </summary>
    public void PunchHole(long offset, long length) => PunchHoleCoreAsync(offset, length, useAsync: false, CancellationToken.None).GetAwaiter().GetResult();

    /// <inheritdoc cref="PunchHole"/>
    public ValueTask PunchHoleAsync(long offset, long length, CancellationToken cancellationToken = default) => PunchHoleCoreAsync(offset, length, useAsync: true, cancellationToken);

    /// <summary>
    /// Makes every write completed before this call durable: data, then the map (written out-of-place), then the header
    /// that commits it, with a disk flush between. Does not wait for background copy-ups: partial blocks are committed as
    /// partial and read correctly after a crash.
    /// </summary>
    /// <exception cref="IOException">The storage failed; the file on disk stays at its previous commit and this object refuses further writes.</exception>
    public void Flush() => CommitAsync(dirty: true, durable: true, useAsync: false, CancellationToken.None).GetAwaiter().GetResult();

    /// <summary>Whether a durable commit (<see cref="Flush"/>, or the one closing makes) completed through this
    /// object: from then on the file has a header on stable storage.</summary>
    internal bool CommittedDurably => _committedDurably;

    /// <inheritdoc cref="Flush"/>
    public ValueTask FlushAsync(CancellationToken cancellationToken = default) => CommitAsync(dirty: true, durable: true, useAsync: true, cancellationToken);

    /// <summary>
    /// Waits until the background copier has filled every block queued so far. Use it before the lower file goes away
    /// or becomes slow, or before measuring read speed; there is no need before <see cref="Flush"/> or closing.
    /// </summary>
    /// <exception cref="IOException">A fill failed since the last wait (its block stays partial and reads correctly).</exception>
    public void WaitForCopyUps() => WaitForCopyUpsAsync().GetAwaiter().GetResult();

    /// <inheritdoc cref="WaitForCopyUps"/>
    public Task WaitForCopyUpsAsync(CancellationToken cancellationToken = default) =>
        _copier?.WhenIdleAsync(cancellationToken) ?? Task.CompletedTask;

    /// <summary>A <see cref="Stream"/> over this file with a position of its own. Disposing it leaves this file open
    /// unless <paramref name="leaveOpen"/> is false.</summary>
    public Stream AsStream(bool leaveOpen = true) => new BCowStream(this, leaveOpen);

    /// <summary>Where the byte at <paramref name="offset"/> is read from, and the state of its block.</summary>
    public BlockState GetBlockState(long offset) => _map.Get(offset >> _log2).State;

    /// <summary>A summary: sizes, blocks by state, space.</summary>
    public BCowInfo GetInfo()
    {
        long zero = 0, present = 0, partial = 0;
        foreach (var (_, entry) in _map.EnumeratePopulated())
        {
            switch (entry.State)
            {
                case BlockState.Zero: zero++; break;
                case BlockState.Present: present++; break;
                case BlockState.Partial: partial++; break;
            }
        }
        long blocks = Layout.BlockCount(Length, _log2);
        long fileLength = _upper.Length;
        long allocated = _upper.GetDataRanges(0, fileLength).Sum(r => r.Length);
        return new BCowInfo(
            Length, _blockSize, _committed.HasLower ? _committed.LowerPath : null, _lowerLength, Volatile.Read(ref _lowerLimit),
            blocks - zero - present - partial, zero, present, partial, (present + partial) * _blockSize,
            fileLength, allocated, _openedDirty, _committed.Generation, PendingCopyUps);
    }

    /// <summary>The merged file as extents: which ranges read from lower, upper or zeros (adjacent alike ranges merged).</summary>
    public IReadOnlyList<BCowExtent> GetExtents()
    {
        var extents = new List<BCowExtent>();
        long size = Length;
        long lowerVisible = Math.Min(Volatile.Read(ref _lowerLimit), _lowerLength);
        long position = 0;

        void Emit(long offset, long length, ExtentSource source, long upper)
        {
            length = Math.Min(length, size - offset);
            if (length <= 0)
            {
                return;
            }
            if (extents.Count > 0)
            {
                BCowExtent last = extents[^1];
                bool contiguous = last.Source == source && last.Offset + last.Length == offset &&
                    (source != ExtentSource.Upper || last.UpperOffset + last.Length == upper);
                if (contiguous)
                {
                    extents[^1] = last with { Length = last.Length + length };
                    return;
                }
            }
            extents.Add(new BCowExtent(offset, length, source, source == ExtentSource.Upper ? upper : 0));
        }

        void EmitLower(long from, long to)
        {
            long split = Math.Clamp(lowerVisible, from, to);
            Emit(from, split - from, ExtentSource.Lower, 0);
            Emit(split, to - split, ExtentSource.Zero, 0);
        }

        foreach (var (block, entry) in _map.EnumeratePopulated())
        {
            long start = block << _log2;
            if (start >= size)
            {
                break;
            }
            if (start > position)
            {
                EmitLower(position, start);
            }
            switch (entry.State)
            {
                case BlockState.Lower:
                    EmitLower(start, start + _blockSize);
                    break;
                case BlockState.Zero:
                    Emit(start, _blockSize, ExtentSource.Zero, 0);
                    break;
                case BlockState.Present:
                    Emit(start, _blockSize, ExtentSource.Upper, entry.Offset);
                    break;
                default:
                    int sub = 1 << _subShift;
                    for (int s = 0; s < Layout.SubBlocksPerBlock; s++)
                    {
                        long subStart = start + ((long)s << _subShift);
                        if ((entry.Bitmap & (1UL << s)) != 0)
                        {
                            Emit(subStart, sub, ExtentSource.Upper, entry.Offset + ((long)s << _subShift));
                        }
                        else
                        {
                            EmitLower(subStart, subStart + sub);
                        }
                    }
                    break;
            }
            position = start + _blockSize;
        }
        if (position < size)
        {
            EmitLower(position, size);
        }
        return extents;
    }

    /// <summary>
    /// Stops the background copier (blocks it had not reached stay partial, which is a valid state), commits
    /// everything written, clears the dirty flag, and closes the files this object owns. Call it once no other call is
    /// in progress. Durable, like <see cref="Flush"/>.
    /// </summary>
    /// <exception cref="IOException">The final commit failed; the file keeps its last commit (and is marked dirty).</exception>
    public void Dispose() => DisposeCoreAsync(useAsync: false).GetAwaiter().GetResult();

    /// <inheritdoc cref="Dispose"/>
    public ValueTask DisposeAsync() => DisposeCoreAsync(useAsync: true);


    // ---------------------------------------------------------------- the core: one path for sync and async

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<int> ReadCoreAsync(Memory<byte> buffer, long offset, bool useAsync, CancellationToken cancellationToken)
    {
        ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
        ArgumentOutOfRangeException.ThrowIfNegative(offset);
        long size = Length;
        if (offset >= size || buffer.IsEmpty)
        {
            return 0;
        }
        int count = (int)Math.Min(buffer.Length, size - offset);
        int done = 0;
        while (done < count)
        {
            long position = offset + done;
            int n = PlanRun(position, count - done, out bool fromLower, out long source, out long versions);
            if (n > 0)
            {
                Memory<byte> run = buffer.Slice(done, n);
                if (fromLower)
                {
                    await ReadLowerAsync(run, position, useAsync, cancellationToken).ConfigureAwait(false);
                }
                else
                {
                    await ReadUpperAsync(run, source, useAsync, cancellationToken).ConfigureAwait(false);
                }
                if (!RunUnchanged(position, n, versions))
                {
                    // A writer ran in the run: again per block, retrying or locking.
                    for (int inRun = 0; inRun < n;)
                    {
                        long at = position + inRun;
                        int inBlock = (int)(at & _blockMask);
                        int m = Math.Min(_blockSize - inBlock, n - inRun);
                        await ReadBlockAsync(at >> _log2, inBlock, run.Slice(inRun, m), useAsync, cancellationToken).ConfigureAwait(false);
                        inRun += m;
                    }
                }
            }
            else
            {
                int inBlock = (int)(position & _blockMask);
                n = Math.Min(_blockSize - inBlock, count - done);
                await ReadBlockAsync(position >> _log2, inBlock, buffer.Slice(done, n), useAsync, cancellationToken).ConfigureAwait(false);
            }
            done += n;
        }
        return count;
    }

    /// <summary>Bytes one lock-free read call may cover (blocks of one kind, contiguous on their side).</summary>
    private const int MaxRunBytes = 1 << 20;

    /// <summary>
    /// Plans a lock-free read of a run of blocks from <paramref name="position"/>: blocks all in lower, or all
    /// present at contiguous upper offsets, none with a writer inside. Returns the bytes it covers (0: the first block
    /// needs the per-block path: partial, zero, or a writer inside), where they are read from, and the sum of the
    /// blocks' stripe versions for <see cref="RunUnchanged"/> (the seqlock of <see cref="ReadBlockAsync"/>, over the
    /// run). No I/O, no allocation.
    /// </summary>
    private int PlanRun(long position, int length, out bool fromLower, out long source, out long versions)
    {
        long block = position >> _log2;
        int inBlock = (int)(position & _blockMask);
        fromLower = false;
        source = 0;
        versions = 0;
        int version = _locks.VersionOf(block);
        if ((version & 1) != 0)
        {
            return 0;
        }
        BlockEntry entry = _map.Get(block);
        BlockState state = entry.State;
        if (state is not (BlockState.Lower or BlockState.Present))
        {
            return 0;
        }
        fromLower = state == BlockState.Lower;
        source = fromLower ? position : entry.Offset + inBlock;
        versions = (uint)version;
        int n = Math.Min(_blockSize - inBlock, length);
        int limit = Math.Max(n, Math.Min(length, MaxRunBytes));
        for (long next = block + 1; n < limit; next++)
        {
            int v = _locks.VersionOf(next);
            if ((v & 1) != 0)
            {
                break;
            }
            BlockEntry e = _map.Get(next);
            if (e.State != state || (!fromLower && e.Offset != entry.Offset + ((next - block) << _log2)))
            {
                break;
            }
            versions += (uint)v;
            n += Math.Min(_blockSize, limit - n);
        }
        return n;
    }

    /// <summary>
    /// True when no writer entered any block of the run since <see cref="PlanRun"/>: stripe versions only grow, so
    /// their sum is unchanged exactly when each is.
    /// </summary>
    private bool RunUnchanged(long position, int length, long versions)
    {
        long last = (position + length - 1) >> _log2;
        long now = 0;
        for (long block = position >> _log2; block <= last; block++)
        {
            now += (uint)_locks.VersionOf(block);
        }
        return now == versions;
    }

    /// <summary>Reads within one block, lock-free: retried when a writer of the block's stripe ran meanwhile.</summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask ReadBlockAsync(long block, int inBlock, Memory<byte> destination, bool useAsync, CancellationToken cancellationToken)
    {
        BlockLocks.Stripe stripe = _locks.For(block);
        for (int attempt = 0; attempt < 3; attempt++)
        {
            int before = stripe.Version;
            if ((before & 1) != 0)
            {
                break; // a writer is inside: wait for it below
            }
            await ReadFromEntryAsync(block, _map.Get(block), inBlock, destination, useAsync, cancellationToken).ConfigureAwait(false);
            if (stripe.Version == before)
            {
                return;
            }
        }
        await stripe.EnterAsync(useAsync, cancellationToken).ConfigureAwait(false);
        try
        {
            await ReadFromEntryAsync(block, _map.Get(block), inBlock, destination, useAsync, cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            stripe.Exit();
        }
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask ReadFromEntryAsync(long block, BlockEntry entry, int inBlock, Memory<byte> destination, bool useAsync, CancellationToken cancellationToken)
    {
        long blockStart = block << _log2;
        switch (entry.State)
        {
            case BlockState.Lower:
                await ReadLowerAsync(destination, blockStart + inBlock, useAsync, cancellationToken).ConfigureAwait(false);
                return;
            case BlockState.Zero:
                destination.Span.Clear();
                return;
            case BlockState.Present:
                await ReadUpperAsync(destination, entry.Offset + inBlock, useAsync, cancellationToken).ConfigureAwait(false);
                return;
        }
        // Partial: runs of sub-blocks alternate between upper (valid) and lower.
        int position = inBlock;
        int end = inBlock + destination.Length;
        while (position < end)
        {
            int s = position >> _subShift;
            bool valid = (entry.Bitmap & (1UL << s)) != 0;
            int runEnd = position;
            while (runEnd < end && ((entry.Bitmap & (1UL << (runEnd >> _subShift))) != 0) == valid)
            {
                runEnd = Math.Min(end, ((runEnd >> _subShift) + 1) << _subShift);
            }
            Memory<byte> part = destination.Slice(position - inBlock, runEnd - position);
            if (valid)
            {
                await ReadUpperAsync(part, entry.Offset + position, useAsync, cancellationToken).ConfigureAwait(false);
            }
            else
            {
                await ReadLowerAsync(part, blockStart + position, useAsync, cancellationToken).ConfigureAwait(false);
            }
            position = runEnd;
        }
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask WriteCoreAsync(ReadOnlyMemory<byte> data, long offset, bool useAsync, CancellationToken cancellationToken)
    {
        ThrowIfNotWritable();
        ArgumentOutOfRangeException.ThrowIfNegative(offset);
        if (data.IsEmpty)
        {
            return;
        }
        if (offset > Layout.MaxVirtualSize - data.Length) // not offset + length: that overflows for offsets near 2^63
        {
            throw new IOException($"{Name}: a write of {data.Length} bytes at {offset} would pass the largest size, {Layout.MaxVirtualSize} bytes (EFBIG)");
        }
        await _sizeGate.EnterSharedAsync(useAsync, cancellationToken).ConfigureAwait(false);
        try
        {
            // The map must cover the blocks before their entries are set; the size itself grows block by block, once
            // each block's bytes are in (WriteBlockAsync), so a write that fails leaves no zeros beyond the old end.
            if (offset + data.Length > Length)
            {
                _map.EnsureRoots(Layout.RootEntryCount(offset + data.Length, _log2));
            }
            int done = 0;
            while (done < data.Length)
            {
                long position = offset + done;
                long block = position >> _log2;
                int inBlock = (int)(position & _blockMask);
                int n = Math.Min(_blockSize - inBlock, data.Length - done);
                if (await WriteBlockAsync(block, inBlock, data.Slice(done, n), position + n, useAsync, cancellationToken).ConfigureAwait(false))
                {
                    // Outside the block's gate: the copier needs it to make progress.
                    await _copier!.EnqueueAsync(block, useAsync, cancellationToken).ConfigureAwait(false);
                }
                done += n;
            }
        }
        finally
        {
            _sizeGate.ExitShared();
        }
    }

    /// <summary>
    /// Writes within one block under its gate. Crash order: the data goes to the upper file first, the entry that
    /// points at it is set after; a block allocated for this write is new space, so the committed map never sees it
    /// half-written. The size grows to <paramref name="growTo"/> after the data is written and before the entry is set
    /// (a commit must never see an entry beyond its size). Returns true when the block was left partial and needs a
    /// background fill.
    /// </summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<bool> WriteBlockAsync(long block, int inBlock, ReadOnlyMemory<byte> data, long growTo, bool useAsync, CancellationToken cancellationToken)
    {
        BlockLocks.Stripe stripe = _locks.For(block);
        await stripe.EnterAsync(useAsync, cancellationToken).ConfigureAwait(false);
        long allocated = 0;
        try
        {
            BlockEntry entry = _map.Get(block);
            long blockStart = block << _log2;
            bool wholeBlock = inBlock == 0 && data.Length == _blockSize;
            switch (entry.State)
            {
                case BlockState.Present:
                    await WriteUpperAsync(data, entry.Offset + inBlock, useAsync, cancellationToken).ConfigureAwait(false);
                    Grow(growTo);
                    return false;
                case BlockState.Partial:
                {
                    bool needsFill = await WriteSubBlocksAsync(block, entry.Offset, entry.Bitmap, inBlock, data, growTo, useAsync, cancellationToken).ConfigureAwait(false);
                    return await CompleteSubBlockWriteAsync(block, needsFill, useAsync, cancellationToken).ConfigureAwait(false);
                }
                case BlockState.Lower when !wholeBlock && LowerBytesIn(blockStart) > 0:
                {
                    allocated = _allocator.AllocateBlock();
                    bool needsFill = await WriteSubBlocksAsync(block, allocated, 0, inBlock, data, growTo, useAsync, cancellationToken).ConfigureAwait(false);
                    // The entry references the block now: from here on a failure must not free it.
                    allocated = 0;
                    return await CompleteSubBlockWriteAsync(block, needsFill, useAsync, cancellationToken).ConfigureAwait(false);
                }
                default:
                    // Zero, lower with nothing left in lower, or a whole-block write: fresh space reads as zeros, so
                    // writing just the data makes the whole block right.
                    allocated = _allocator.AllocateBlock();
                    await WriteUpperAsync(data, allocated + inBlock, useAsync, cancellationToken).ConfigureAwait(false);
                    EnsureUpperCovers(allocated + _blockSize);
                    Grow(growTo);
                    _map.Set(block, BlockEntry.Present(allocated));
                    allocated = 0;
                    return false;
            }
        }
        catch when (allocated != 0)
        {
            // Never referenced; may hold part of the failed write, so it is punched before reuse.
            FreeBlock(allocated);
            throw;
        }
        finally
        {
            stripe.Exit();
        }
    }

    /// <summary>
    /// Writes [inBlock, +data) into a block allocated at <paramref name="offset"/> whose valid sub-blocks are
    /// <paramref name="bitmap"/>. Edge sub-blocks the write covers only in part and that are not yet valid get their
    /// other bytes from lower (at most two sub-blocks), so every sub-block the write touches becomes wholly valid.
    /// Returns true when the block is left partial (see <see cref="CompleteSubBlockWriteAsync"/>).
    /// </summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<bool> WriteSubBlocksAsync(long block, long offset, ulong bitmap, int inBlock, ReadOnlyMemory<byte> data, long growTo, bool useAsync, CancellationToken cancellationToken)
    {
        long blockStart = block << _log2;
        int subMask = (1 << _subShift) - 1;
        int a = inBlock;
        int b = inBlock + data.Length;
        int s0 = a >> _subShift;
        int s1 = (b - 1) >> _subShift;
        int lo = (a & subMask) != 0 && (bitmap & (1UL << s0)) == 0 ? s0 << _subShift : a;
        int hi = (b & subMask) != 0 && (bitmap & (1UL << s1)) == 0 ? (s1 + 1) << _subShift : b;
        if (lo == a && hi == b)
        {
            await WriteUpperAsync(data, offset + a, useAsync, cancellationToken).ConfigureAwait(false);
        }
        else
        {
            byte[] merge = ArrayPool<byte>.Shared.Rent(hi - lo);
            try
            {
                Memory<byte> buffer = merge.AsMemory(0, hi - lo);
                if (lo < a)
                {
                    await ReadLowerAsync(buffer[..(a - lo)], blockStart + lo, useAsync, cancellationToken).ConfigureAwait(false);
                }
                if (b < hi)
                {
                    await ReadLowerAsync(buffer[(b - lo)..], blockStart + b, useAsync, cancellationToken).ConfigureAwait(false);
                }
                data.CopyTo(buffer[(a - lo)..]);
                await WriteUpperAsync(buffer, offset + lo, useAsync, cancellationToken).ConfigureAwait(false);
            }
            finally
            {
                ArrayPool<byte>.Shared.Return(merge);
            }
        }
        EnsureUpperCovers(offset + _blockSize);
        Grow(growTo);
        ulong mask = (s1 == 63 ? ulong.MaxValue : (1UL << (s1 + 1)) - 1) & ~((1UL << s0) - 1);
        ulong valid = bitmap | mask;
        if (valid == ulong.MaxValue)
        {
            _map.Set(block, BlockEntry.Present(offset));
            return false;
        }
        _map.Set(block, BlockEntry.Partial(offset, valid));
        return true;
    }

    /// <summary>
    /// After <see cref="WriteSubBlocksAsync"/> left a block partial: in <see cref="CopyUpMode.Synchronous"/> copies the
    /// rest now (still under the gate) and returns false; otherwise returns true (queue a background fill). Runs only
    /// once the caller no longer treats the block's space as its own to free: the entry already references it, and a
    /// failed fill leaves a valid partial block.
    /// </summary>
    private async ValueTask<bool> CompleteSubBlockWriteAsync(long block, bool needsFill, bool useAsync, CancellationToken cancellationToken)
    {
        if (!needsFill || _options.CopyUpMode != CopyUpMode.Synchronous)
        {
            return needsFill;
        }
        await FillLockedAsync(block, useAsync, cancellationToken).ConfigureAwait(false);
        return false;
    }

    /// <summary>The copier's work for one block: read it from lower without any gate, then, under the gate, write
    /// only the sub-blocks still not valid. A write that landed meanwhile made its sub-blocks valid, so the fill can
    /// never overwrite it (the race of the published BAOverlay prototype).</summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask FillAsync(long block, CancellationToken cancellationToken)
    {
        if (_map.Get(block).State != BlockState.Partial)
        {
            return;
        }
        byte[] buffer = ArrayPool<byte>.Shared.Rent(_blockSize);
        try
        {
            long blockStart = block << _log2;
            await ReadLowerAsync(buffer.AsMemory(0, _blockSize), blockStart, useAsync: true, cancellationToken).ConfigureAwait(false);
            BlockLocks.Stripe stripe = _locks.For(block);
            await stripe.EnterAsync(useAsync: true, cancellationToken).ConfigureAwait(false);
            try
            {
                BlockEntry entry = _map.Get(block);
                if (entry.State != BlockState.Partial)
                {
                    return;
                }
                // A shrink may have hidden more of lower since the read.
                buffer.AsSpan(LowerBytesIn(blockStart), _blockSize - LowerBytesIn(blockStart)).Clear();
                await WriteMissingAsync(entry, buffer, useAsync: true, cancellationToken).ConfigureAwait(false);
                _map.Set(block, BlockEntry.Present(entry.Offset));
            }
            finally
            {
                stripe.Exit();
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    /// <summary>Completes a partial block while its gate is held (synchronous copy-up).</summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask FillLockedAsync(long block, bool useAsync, CancellationToken cancellationToken)
    {
        BlockEntry entry = _map.Get(block);
        byte[] buffer = ArrayPool<byte>.Shared.Rent(_blockSize);
        try
        {
            await ReadLowerAsync(buffer.AsMemory(0, _blockSize), block << _log2, useAsync, cancellationToken).ConfigureAwait(false);
            await WriteMissingAsync(entry, buffer, useAsync, cancellationToken).ConfigureAwait(false);
            _map.Set(block, BlockEntry.Present(entry.Offset));
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask WriteMissingAsync(BlockEntry entry, byte[] lowerBlock, bool useAsync, CancellationToken cancellationToken)
    {
        ulong missing = ~entry.Bitmap;
        while (missing != 0)
        {
            int first = BitOperations.TrailingZeroCount(missing);
            int afterRun = first + BitOperations.TrailingZeroCount(~(missing >> first));
            if (afterRun > 64 || afterRun <= first)
            {
                afterRun = 64;
            }
            int start = first << _subShift;
            int length = (afterRun - first) << _subShift;
            await WriteUpperAsync(lowerBlock.AsMemory(start, length), entry.Offset + start, useAsync, cancellationToken).ConfigureAwait(false);
            missing = afterRun >= 64 ? 0 : missing & ~((1UL << afterRun) - 1);
        }
    }

    private async ValueTask PunchHoleCoreAsync(long offset, long length, bool useAsync, CancellationToken cancellationToken)
    {
        ThrowIfNotWritable();
        ArgumentOutOfRangeException.ThrowIfNegative(offset);
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        await _sizeGate.EnterSharedAsync(useAsync, cancellationToken).ConfigureAwait(false);
        try
        {
            long size = Length;
            long end = length > size - offset ? size : offset + length; // offset + length may overflow

            for (long position = offset; position < end;)
            {
                long block = position >> _log2;
                long blockStart = block << _log2;
                int inBlock = (int)(position & _blockMask);
                int n = (int)Math.Min(_blockSize - inBlock, end - position);
                if (inBlock == 0 && (n == _blockSize || blockStart + n == size))
                {
                    await ZeroBlockAsync(block, useAsync, cancellationToken).ConfigureAwait(false);
                }
                else if (await WriteBlockAsync(block, inBlock, Zeros.AsMemory(0, n), growTo: 0, useAsync, cancellationToken).ConfigureAwait(false))
                {
                    await _copier!.EnqueueAsync(block, useAsync, cancellationToken).ConfigureAwait(false);
                }
                position += n;
            }
        }
        finally
        {
            _sizeGate.ExitShared();
        }
    }

    private async ValueTask ZeroBlockAsync(long block, bool useAsync, CancellationToken cancellationToken)
    {
        BlockLocks.Stripe stripe = _locks.For(block);
        await stripe.EnterAsync(useAsync, cancellationToken).ConfigureAwait(false);
        try
        {
            BlockEntry entry = _map.Get(block);
            if (entry.State != BlockState.Zero && (entry.State != BlockState.Lower || LowerBytesIn(block << _log2) > 0))
            {
                _map.Set(block, BlockEntry.Zero);
            }
            // Only after the entry stops referencing the space: a commit racing this call (it holds the size gate
            // shared, like this one) takes the pending frees before its map snapshot, so space freed first could be
            // released by a commit whose snapshot still references it.
            if (entry.IsAllocated)
            {
                FreeBlock(entry.Offset);
            }
        }
        finally
        {
            stripe.Exit();
        }
    }

    private async ValueTask SetLengthCoreAsync(long length, bool useAsync, CancellationToken cancellationToken)
    {
        ThrowIfNotWritable();
        if (length < 0 || length > Layout.MaxVirtualSize)
        {
            throw new ArgumentOutOfRangeException(nameof(length), length, $"{Name}: the size must be within 0..{Layout.MaxVirtualSize}.");
        }
        await _sizeGate.EnterExclusiveAsync(useAsync, cancellationToken).ConfigureAwait(false);
        try
        {
            long old = Length;
            if (length >= old)
            {
                Grow(length);
                return;
            }
            // Lower bytes beyond the new size are hidden for good, whatever the size becomes later.
            lock (_sizeLock)
            {
                Volatile.Write(ref _lowerLimit, Math.Min(_lowerLimit, length));
            }
            long firstGone = Layout.BlockCount(length, _log2);
            foreach (var (block, _) in _map.EnumeratePopulated(firstGone).Where(e => e.Entry.State != BlockState.Lower).ToList())
            {
                BlockLocks.Stripe stripe = _locks.For(block);
                await stripe.EnterAsync(useAsync, cancellationToken).ConfigureAwait(false);
                try
                {
                    BlockEntry entry = _map.Get(block);
                    _map.Set(block, BlockEntry.Lower);
                    if (entry.IsAllocated)
                    {
                        FreeBlock(entry.Offset); // after the entry stops referencing it, as in PunchHole
                    }
                }
                finally
                {
                    stripe.Exit();
                }
            }
            if ((length & _blockMask) != 0)
            {
                await CutTailBlockAsync(length >> _log2, (int)(length & _blockMask), useAsync, cancellationToken).ConfigureAwait(false);
            }
            lock (_sizeLock)
            {
                Volatile.Write(ref _virtualSize, length);
                _headerDirty = true;
            }
            foreach (long page in _map.Truncate(Layout.RootEntryCount(length, _log2)))
            {
                _allocator.FreeAfterCommit(page, Layout.PageSize);
            }
        }
        finally
        {
            _sizeGate.ExitExclusive();
        }
    }

    /// <summary>
    /// Zeros the upper bytes of the new last block beyond the new size. The block may be committed, so it is copied to
    /// new space rather than changed in place: a crash before the next commit must leave the old size with its old bytes.
    /// </summary>
    private async ValueTask CutTailBlockAsync(long block, int keep, bool useAsync, CancellationToken cancellationToken)
    {
        BlockLocks.Stripe stripe = _locks.For(block);
        await stripe.EnterAsync(useAsync, cancellationToken).ConfigureAwait(false);
        byte[] buffer = ArrayPool<byte>.Shared.Rent(_blockSize);
        long allocated = 0;
        try
        {
            BlockEntry entry = _map.Get(block);
            if (!entry.IsAllocated)
            {
                return;
            }
            await ReadUpperAsync(buffer.AsMemory(0, _blockSize), entry.Offset, useAsync, cancellationToken).ConfigureAwait(false);
            buffer.AsSpan(keep, _blockSize - keep).Clear();
            allocated = _allocator.AllocateBlock();
            await WriteUpperAsync(buffer.AsMemory(0, _blockSize), allocated, useAsync, cancellationToken).ConfigureAwait(false);
            _map.Set(block, new BlockEntry((entry.Descriptor & 0xFFF) | (ulong)allocated, entry.Bitmap));
            allocated = 0;
            FreeBlock(entry.Offset);
        }
        catch when (allocated != 0)
        {
            FreeBlock(allocated);
            throw;
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
            stripe.Exit();
        }
    }

    /// <summary>
    /// Frees a data block the map has just stopped referencing (the caller holds its block's lock). A block allocated
    /// since the last commit's snapshot is in no header, durable or not: it is punched (free space reads as zeros) and
    /// reusable at once, so rewriting without flushes reuses the same space instead of growing the file by it every
    /// time. Any other block may be referenced by the durable header: it waits in the pending list for the next
    /// durable commit (free only what no durable header references).
    /// </summary>
    private void FreeBlock(long offset)
    {
        if (!_allocator.TakeFresh(offset))
        {
            _allocator.FreeAfterCommit(offset, _blockSize);
            return;
        }
        try
        {
            _upper.PunchHole(offset, _blockSize);
            _allocator.AddFree(offset, _blockSize);
        }
        catch (IOException)
        {
            // Left as a leak (never reused unpunched): reclaimed at the next writable open.
        }
    }

    private void Grow(long size)
    {
        if (size <= Length)
        {
            return;
        }
        lock (_sizeLock)
        {
            if (size > _virtualSize)
            {
                _map.EnsureRoots(Layout.RootEntryCount(size, _log2));
                Volatile.Write(ref _virtualSize, size);
                _headerDirty = true;
            }
        }
    }

    /// <summary>
    /// The commit: snapshot the dirty map under the size gate (so no size change is seen half-done), write the changed
    /// pages to new places, flush, write the header into the slot the current generation does not use, flush. Space
    /// freed before the snapshot is released only after that, when nothing committed references it.
    /// </summary>
    /// <remarks>
    /// Only a <paramref name="durable"/> commit (<see cref="Flush"/>, closing) flushes after the header. The other one
    /// (the dirty flag set at open) would flush between map pages and header, as shadow paging needs, but leaves the
    /// header to the page cache: a crash then falls back to the previous header, whose tree is intact because space
    /// it references is freed only by a durable commit. Before a header is written over the other slot, a header left
    /// unflushed is flushed, so one valid durable slot always exists.
    /// </remarks>
    private async ValueTask CommitAsync(bool dirty, bool durable, bool useAsync, CancellationToken cancellationToken)
    {
        if (useAsync)
        {
            await _commitGate.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
        else
        {
            _commitGate.Wait(cancellationToken);
        }
        try
        {
            if (_fault is { } fault)
            {
                throw Faulted(fault);
            }
            if (_options.ReadOnly)
            {
                return;
            }
            List<(long Offset, long Length)> releasing;
            CommitImage image;
            BCowHeader header;
            await _sizeGate.EnterSharedAsync(useAsync, cancellationToken).ConfigureAwait(false);
            try
            {
                // Cleared before the size is read: a growth after this point marks the header dirty again.
                Func<BCowHeader, BCowHeader>? edit = Interlocked.Exchange(ref _headerEdit, null);
                bool headerChange = _headerDirty || dirty != _committed.Dirty || edit is not null;
                _headerDirty = false;
                releasing = _allocator.TakePending();
                // The size is read under the map lock: a writer grows the size before it sets an entry beyond the old
                // size, so every entry in the snapshot lies within the size committed with it.
                long size = 0;
                image = _map.Snapshot(
                    () => Layout.RootEntryCount(size = Length, _log2),
                    _allocator,
                    _committed.RootTableEntries);
                if (!image.HasTree && !headerChange && releasing.Count == 0)
                {
                    header = _committed;
                }
                else
                {
                    header = _committed with
                    {
                        Generation = _committed.Generation + 1,
                        Dirty = dirty,
                        VirtualSize = size,
                        LowerLimit = Volatile.Read(ref _lowerLimit),
                        RootTableOffset = image.HasTree ? image.RootOffset : _committed.RootTableOffset,
                        RootTableEntries = image.HasTree ? image.RootEntries : _committed.RootTableEntries,
                        RootTableCrc = image.HasTree ? image.RootCrc : _committed.RootTableCrc,
                    };
                    if (edit is not null)
                    {
                        header = edit(header);
                    }
                }
            }
            finally
            {
                _sizeGate.ExitShared();
            }
            try
            {
                foreach (var (offset, bytes) in image.Pages)
                {
                    await WriteUpperAsync(bytes, offset, useAsync, cancellationToken).ConfigureAwait(false);
                }
                if (image.Pages.Count > 0 || (_headerUnflushed && header != _committed) || (durable && header == _committed))
                {
                    _upper.Flush(); // pages (and data) before the header that points at them
                    _headerUnflushed = false;
                }
                if (header != _committed)
                {
                    byte[] slot = new byte[Layout.HeaderSlotSize];
                    header.Write(slot);
                    await WriteUpperAsync(slot, (long)(header.Generation % Layout.HeaderSlotCount) * Layout.HeaderSlotSize, useAsync, cancellationToken).ConfigureAwait(false);
                    if (durable)
                    {
                        _upper.Flush();
                    }
                    _headerUnflushed = !durable;
                }
            }
            catch (Exception e)
            {
                // The tree in memory no longer matches any commit we could retry from; the file on disk is at its
                // last commit (or this one, if the header landed). Refuse further writes; a reopen recovers.
                _fault = e;
                throw;
            }
            _committed = header;
            if (durable)
            {
                _committedDurably = true; // every durable commit flushed after its header (or the header it kept)
            }
            if (_headerUnflushed)
            {
                // The durable header may still reference this space: it stays pending until a durable commit.
                foreach (var (offset, length) in releasing.Concat(image.Freed))
                {
                    _allocator.FreeAfterCommit(offset, length);
                }
                return;
            }
            foreach (var (offset, length) in releasing.Concat(image.Freed))
            {
                try
                {
                    _upper.PunchHole(offset, length);
                    _allocator.AddFree(offset, length);
                }
                catch (IOException)
                {
                    // Left as a leak: reclaimed at the next open. Never reused unpunched.
                }
            }
        }
        finally
        {
            _commitGate.Release();
        }
    }

    private async ValueTask DisposeCoreAsync(bool useAsync)
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }
        try
        {
            if (_copier is not null)
            {
                if (useAsync)
                {
                    await _copier.StopAsync().ConfigureAwait(false);
                }
                else
                {
                    _copier.StopAsync().GetAwaiter().GetResult();
                }
            }
            if (!_options.ReadOnly && _fault is null)
            {
                // Durable: only a durable header lets the space its commit supersedes be freed, so the file is left
                // clean (check finds no leak), not just consistent.
                await CommitAsync(dirty: false, durable: true, useAsync, CancellationToken.None).ConfigureAwait(false);
                TrimTail();
            }
        }
        finally
        {
            if (_ownsStorage)
            {
                _upper.Dispose();
                _lower?.Dispose();
            }
        }
    }

    /// <summary>
    /// What a killed process leaves, for crash tests in one process: the copier stopped, the files closed without a
    /// commit. Closing the descriptors drops the lock as the kernel drops a killed process's, so a fresh open in the
    /// same process is not refused as a second writer.
    /// </summary>
    internal void CloseWithoutCommit()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }
        _copier?.StopAsync().GetAwaiter().GetResult();
        if (_ownsStorage)
        {
            _upper.Dispose();
            _lower?.Dispose();
        }
    }

    // ---------------------------------------------------------------- helpers

    /// <summary>
    /// A block allocated at the end of the upper file and written in part must still lie wholly inside the file
    /// before an entry points at it (the rest reads as zeros). The file is extended by writing one zero byte at
    /// <paramref name="end"/> - 1, the last byte of the caller's own block (which nobody else writes, and which, when the
    /// block's last sub-block is not valid, does not matter), never by setting the length: other writers and commits
    /// write beyond the current length without this lock, and a length set from a stale reading would cut off what
    /// they wrote.
    /// </summary>
    private void EnsureUpperCovers(long end)
    {
        if (Volatile.Read(ref _upperExtent) >= end)
        {
            return;
        }
        lock (_extendLock)
        {
            if (_upperExtent < end)
            {
                if (_upper.Length < end)
                {
                    _upper.WriteAt([0], end - 1);
                }
                Volatile.Write(ref _upperExtent, end);
            }
        }
    }

    private int LowerBytesIn(long blockStart) =>
        (int)Math.Clamp(Math.Min(Volatile.Read(ref _lowerLimit), _lowerLength) - blockStart, 0, _blockSize);

    /// <summary><see cref="ReadLowerAsync"/> for a span, synchronously.</summary>
    private void ReadLower(Span<byte> destination, long position)
    {
        int n = VisibleLowerBytes(position, destination.Length);
        if (n > 0)
        {
            CheckLowerRead(_lower!.ReadAt(destination[..n], position), n, position);
        }
        destination[n..].Clear();
    }

    /// <summary><see cref="ReadUpperAsync"/> for a span, synchronously.</summary>
    private void ReadUpper(Span<byte> destination, long offset) => CheckUpperRead(_upper.ReadAt(destination, offset), destination.Length, offset);

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask ReadLowerAsync(Memory<byte> destination, long position, bool useAsync, CancellationToken cancellationToken)
    {
        int n = VisibleLowerBytes(position, destination.Length);
        if (n > 0)
        {
            int read = useAsync
                ? await _lower!.ReadAtAsync(destination[..n], position, cancellationToken).ConfigureAwait(false)
                : _lower!.ReadAt(destination.Span[..n], position);
            CheckLowerRead(read, n, position);
        }
        destination.Span[n..].Clear();
    }

    /// <summary>How many of <paramref name="length"/> bytes at <paramref name="position"/> come from lower (the rest
    /// read as zeros: beyond the lower file, or hidden by a shrink).</summary>
    private int VisibleLowerBytes(long position, int length)
    {
        long visible = Math.Min(Volatile.Read(ref _lowerLimit), _lowerLength);
        int n = (int)Math.Clamp(visible - position, 0, length);
        if (n > 0 && _lower is null)
        {
            throw new IOException($"{Name}: bytes at {position} are in the lower file, which was not opened");
        }
        return n;
    }

    private void CheckLowerRead(int read, int expected, long position)
    {
        if (read < expected)
        {
            throw new IOException($"{_lower!.Name}: the lower file ends at {position + read}, before {position + expected}; it was truncated while in use");
        }
    }

    private void CheckUpperRead(int read, int expected, long offset)
    {
        if (read < expected)
        {
            throw new IOException($"{Name}: data at {offset} (+{expected}) lies beyond the end of the file; it was truncated while in use");
        }
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask ReadUpperAsync(Memory<byte> destination, long offset, bool useAsync, CancellationToken cancellationToken)
    {
        int read = useAsync
            ? await _upper.ReadAtAsync(destination, offset, cancellationToken).ConfigureAwait(false)
            : _upper.ReadAt(destination.Span, offset);
        CheckUpperRead(read, destination.Length, offset);
    }

    private ValueTask WriteUpperAsync(ReadOnlyMemory<byte> data, long offset, bool useAsync, CancellationToken cancellationToken)
    {
        if (useAsync)
        {
            return _upper.WriteAtAsync(data, offset, cancellationToken);
        }
        _upper.WriteAt(data.Span, offset);
        return default;
    }

    private void ThrowIfNotWritable()
    {
        ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
        if (_options.ReadOnly)
        {
            throw new NotSupportedException($"{Name}: opened read-only");
        }
        if (_fault is { } fault)
        {
            throw Faulted(fault);
        }
    }

    private IOException Faulted(Exception fault) =>
        new($"{Name}: an earlier commit failed ({fault.Message}); the file keeps its last commit. Reopen it to continue.", fault);
}
