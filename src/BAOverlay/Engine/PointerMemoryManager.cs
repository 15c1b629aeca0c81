using System.Buffers;

namespace BAOverlay.Engine;

/// <summary>
/// A <see cref="Memory{T}"/> over a pinned span, so the synchronous <c>Span</c> API can run the one
/// <c>Memory</c>-based core path. One instance per thread is reused; it lives only for the synchronous call that
/// pinned the span, and the core never keeps a caller's memory beyond the call.
/// </summary>
internal sealed unsafe class PointerMemoryManager : MemoryManager<byte>
{
    [ThreadStatic]
    private static PointerMemoryManager? t_cached;

    private byte* _pointer;
    private int _length;

    public static PointerMemoryManager Rent(byte* pointer, int length)
    {
        PointerMemoryManager manager = t_cached ?? new PointerMemoryManager();
        t_cached = null;
        manager._pointer = pointer;
        manager._length = length;
        return manager;
    }

    public static void Return(PointerMemoryManager manager)
    {
        manager._pointer = null;
        manager._length = 0;
        t_cached = manager;
    }

    public override Span<byte> GetSpan() => new(_pointer, _length);

    public override MemoryHandle Pin(int elementIndex = 0) => new(_pointer + elementIndex);

    public override void Unpin()
    {
    }

    protected override void Dispose(bool disposing)
    {
    }
}
