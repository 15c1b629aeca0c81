namespace BAOverlay.Cache;

/// <summary>
/// The content check of a remote file not verified yet (a file of a store layer verified lazily,
/// docs/layer-store.md, "Lazy verification"): before any byte of it read from the store is handed to a reader or
/// admitted to the cache, the whole file is read from the store and its sha256 compared with <see cref="Sha256"/>
/// (<see cref="CachedLowerStorage"/>). One object per file, shared by all its readers: once it succeeds, the file's
/// later reads go to the store as any other's.
/// </summary>
/// <remarks>Thread-safe. Two first reads at once may both verify (each reads the file); the first success records it.
/// A failure is kept: the file's later reads that need the store fail at once with the same message.</remarks>
internal sealed class FirstFetchCheck
{
    private readonly byte[] _sha256;
    private readonly Action<FirstFetchCheck>? _verified;
    private int _state; // 0 pending, 1 verified
    private volatile string? _failure;

    /// <param name="name">The file, for messages: its layer and path.</param>
    /// <param name="size">Its size, as its verified metadata gives it.</param>
    /// <param name="sha256">The sha256 of its content (32 bytes), as its verified metadata gives it.</param>
    /// <param name="verified">Called once, after the content was found right (records it).</param>
    public FirstFetchCheck(string name, long size, byte[] sha256, Action<FirstFetchCheck>? verified = null)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(size);
        if (sha256.Length != 32)
        {
            throw new ArgumentException("a sha256 is 32 bytes", nameof(sha256));
        }
        Name = name;
        Size = size;
        _sha256 = sha256;
        _verified = verified;
    }

    public string Name { get; }

    public long Size { get; }

    public ReadOnlySpan<byte> Sha256 => _sha256;

    /// <summary>True once the content was read whole and found right (by this process, or recorded by an earlier one).</summary>
    public bool IsVerified => Volatile.Read(ref _state) == 1;

    /// <summary>Why the content was refused, or null.</summary>
    public string? Failure => _failure;

    /// <summary>The content was read whole and its hash is right.</summary>
    internal void Succeeded()
    {
        if (Interlocked.CompareExchange(ref _state, 1, 0) == 0)
        {
            _verified?.Invoke(this);
        }
    }

    /// <summary>Marks it verified without a callback (an earlier process's record of it).</summary>
    internal void Recorded() => Volatile.Write(ref _state, 1);

    internal void Failed(string why) => _failure = why;
}
