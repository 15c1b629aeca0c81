using System.Runtime.CompilerServices;
using BAOverlay.Fuse.Interop;

namespace BAOverlay.UringBench;

/// <summary>
/// A read-only file system whose requests cost next to nothing, so a benchmark of it measures the transport: one
/// directory (inode 1) holding data files <c>d0</c>, <c>d1</c>... of <see cref="DataSize"/> bytes and small files
/// <c>f00000</c>, <c>f00001</c>... of 4 KiB. Contents repeat a 16 MiB pseudo-random pattern made at start; a READ
/// copies its bytes into the reply buffer the transport hands it, as a real file system fills it from storage.
/// </summary>
/// <remarks>Handlers read a request's arguments before writing the reply: on the io_uring transport the payload
/// buffer holds the request's name on entry and the reply on return. Nothing here allocates per request.</remarks>
internal sealed unsafe class TrivialFs
{
    /// <summary>Returned by <see cref="Handle"/> for a request that takes no reply (FORGET, BATCH_FORGET, INTERRUPT).</summary>
    public const int NoReply = int.MinValue;

    private const int PatternSize = 16 << 20;
    private const int SmallSize = 4096;
    private const uint S_IFDIR = 0x4000;
    private const uint S_IFREG = 0x8000;
    private const int ENOENT = 2;
    private const int ENOSYS = 38;
    private const int ENOTDIR = 20;
    private const int EINVAL = 22;

    private readonly byte* _pattern;
    private readonly int _dataFiles;
    private readonly int _smallFiles;
    private readonly ulong _timeout;

    public TrivialFs(int dataFiles, long dataSize, int smallFiles, ulong timeoutSeconds)
    {
        _dataFiles = dataFiles;
        DataSize = dataSize;
        _smallFiles = smallFiles;
        _timeout = timeoutSeconds;
        _pattern = (byte*)System.Runtime.InteropServices.NativeMemory.AlignedAlloc(PatternSize, 4096);
        ulong x = 0x9E3779B97F4A7C15;
        for (int i = 0; i < PatternSize; i += 8)
        {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *(ulong*)(_pattern + i) = x;
        }
    }

    /// <summary>The size of each data file.</summary>
    public long DataSize { get; }

    /// <summary>The fixed first argument's size of each request served (the part the io_uring transport puts in the
    /// header's op_in; the classic transport finds it at the start of the arguments).</summary>
    public static int FixedArgSize(FuseOpcode op) => op switch
    {
        FuseOpcode.FUSE_GETATTR => sizeof(fuse_getattr_in),
        FuseOpcode.FUSE_OPEN or FuseOpcode.FUSE_OPENDIR => sizeof(fuse_open_in),
        FuseOpcode.FUSE_READ or FuseOpcode.FUSE_READDIR => sizeof(fuse_read_in),
        FuseOpcode.FUSE_RELEASE or FuseOpcode.FUSE_RELEASEDIR => sizeof(fuse_release_in),
        FuseOpcode.FUSE_FLUSH => sizeof(fuse_flush_in),
        FuseOpcode.FUSE_ACCESS => 8, // struct fuse_access_in { uint32_t mask; uint32_t padding; }
        FuseOpcode.FUSE_FORGET => sizeof(fuse_forget_in),
        _ => 0,
    };

    /// <summary>Serves one request: writes the reply's arguments to <paramref name="reply"/> (at most
    /// <paramref name="replyCapacity"/> bytes) and returns their length, a negative errno, or <see cref="NoReply"/>.</summary>
    /// <param name="h">The request's header.</param>
    /// <param name="fixedArg">Its fixed first argument (<see cref="FixedArgSize"/> bytes).</param>
    /// <param name="rest">Its other arguments (a name for LOOKUP).</param>
    public int Handle(fuse_in_header* h, byte* fixedArg, ReadOnlySpan<byte> rest, byte* reply, int replyCapacity)
    {
        switch ((FuseOpcode)h->opcode)
        {
            case FuseOpcode.FUSE_LOOKUP:
                {
                    if (h->nodeid != 1)
                    {
                        return -ENOTDIR;
                    }
                    ulong ino = Find(rest);
                    if (ino == 0)
                    {
                        return -ENOENT;
                    }
                    fuse_entry_out* e = (fuse_entry_out*)reply;
                    *e = default;
                    e->nodeid = ino;
                    e->generation = 1;
                    e->entry_valid = _timeout;
                    e->attr_valid = _timeout;
                    Fill(ino, &e->attr);
                    return sizeof(fuse_entry_out);
                }
            case FuseOpcode.FUSE_GETATTR:
                {
                    if (!Exists(h->nodeid))
                    {
                        return -ENOENT;
                    }
                    fuse_attr_out* a = (fuse_attr_out*)reply;
                    *a = default;
                    a->attr_valid = _timeout;
                    Fill(h->nodeid, &a->attr);
                    return sizeof(fuse_attr_out);
                }
            case FuseOpcode.FUSE_OPEN:
            case FuseOpcode.FUSE_OPENDIR:
                {
                    fuse_open_out* o = (fuse_open_out*)reply;
                    *o = default;
                    o->fh = h->nodeid;
                    return sizeof(fuse_open_out);
                }
            case FuseOpcode.FUSE_READ:
                {
                    fuse_read_in* r = (fuse_read_in*)fixedArg;
                    long size = h->nodeid == 1 ? 0 : IsData(h->nodeid) ? DataSize : SmallSize;
                    if ((long)r->offset >= size)
                    {
                        return 0;
                    }
                    int n = (int)Math.Min(Math.Min(r->size, (uint)replyCapacity), (ulong)(size - (long)r->offset));
                    CopyPattern((long)r->offset + (long)h->nodeid * 4096, reply, n);
                    return n;
                }
            case FuseOpcode.FUSE_READDIR:
                return h->nodeid == 1 ? ReadDir((fuse_read_in*)fixedArg, reply, replyCapacity) : -ENOTDIR;
            case FuseOpcode.FUSE_RELEASE:
            case FuseOpcode.FUSE_RELEASEDIR:
            case FuseOpcode.FUSE_FLUSH:
            case FuseOpcode.FUSE_ACCESS:
                return 0;
            case FuseOpcode.FUSE_STATFS:
                {
                    fuse_kstatfs* s = (fuse_kstatfs*)reply; // fuse_statfs_out is one fuse_kstatfs
                    *s = default;
                    s->bsize = 4096;
                    s->frsize = 4096;
                    s->namelen = 255;
                    s->files = (ulong)(_dataFiles + _smallFiles + 1);
                    s->blocks = (ulong)(_dataFiles * DataSize / 4096 + _smallFiles);
                    return sizeof(fuse_kstatfs);
                }
            case FuseOpcode.FUSE_FORGET:
            case FuseOpcode.FUSE_BATCH_FORGET:
            case FuseOpcode.FUSE_INTERRUPT:
                return NoReply;
            default:
                return -ENOSYS;
        }
    }

    private bool IsData(ulong ino) => ino >= 2 && ino < 2 + (ulong)_dataFiles;

    private bool Exists(ulong ino) => ino >= 1 && ino < 2 + (ulong)_dataFiles + (ulong)_smallFiles;

    private void Fill(ulong ino, fuse_attr* a)
    {
        a->ino = ino;
        a->blksize = 4096;
        a->nlink = ino == 1 ? 2u : 1u;
        a->mode = ino == 1 ? S_IFDIR | 0x16d /* 0555 */ : S_IFREG | 0x124 /* 0444 */;
        a->size = ino == 1 ? 0 : IsData(ino) ? (ulong)DataSize : SmallSize;
        a->blocks = (a->size + 511) / 512;
    }

    /// <summary>The inode of a name (<c>dN</c> or <c>fNNNNN</c>, NUL-terminated), 0 when there is none.</summary>
    private ulong Find(ReadOnlySpan<byte> name)
    {
        int end = name.IndexOf((byte)0);
        if (end >= 0)
        {
            name = name[..end];
        }
        if (name.Length < 2)
        {
            return 0;
        }
        long n = 0;
        foreach (byte c in name[1..])
        {
            if (c is < (byte)'0' or > (byte)'9' || n > int.MaxValue)
            {
                return 0;
            }
            n = n * 10 + (c - '0');
        }
        if (name[0] == 'd' && n < _dataFiles && name.Length == 1 + Digits(n))
        {
            return 2 + (ulong)n;
        }
        if (name[0] == 'f' && n < _smallFiles && name.Length == 6)
        {
            return 2 + (ulong)_dataFiles + (ulong)n;
        }
        return 0;
    }

    private static int Digits(long n) => n < 10 ? 1 : 1 + Digits(n / 10);

    /// <summary>Entries from index <c>offset</c>: ".", "..", the data files, the small files; each entry's off is the
    /// index of the next.</summary>
    private int ReadDir(fuse_read_in* r, byte* reply, int capacity)
    {
        int limit = (int)Math.Min(r->size, (uint)capacity);
        int used = 0;
        long total = 2 + (long)_dataFiles + _smallFiles;
        Span<byte> name = stackalloc byte[16];
        for (long index = (long)r->offset; index < total; index++)
        {
            int len;
            ulong ino;
            uint type;
            if (index < 2)
            {
                name[0] = (byte)'.';
                name[1] = (byte)'.';
                len = (int)index + 1;
                ino = 1;
                type = 4; // DT_DIR
            }
            else if (index < 2 + _dataFiles)
            {
                name[0] = (byte)'d';
                len = 1 + Write(index - 2, name[1..], 0);
                ino = 2 + (ulong)(index - 2);
                type = 8; // DT_REG
            }
            else
            {
                name[0] = (byte)'f';
                len = 1 + Write(index - 2 - _dataFiles, name[1..], 5);
                ino = 2 + (ulong)(index - 2);
                type = 8;
            }
            int size = FuseKernel.FUSE_DIRENT_ALIGN(FuseKernel.FUSE_NAME_OFFSET + len);
            if (used + size > limit)
            {
                break;
            }
            fuse_dirent* d = (fuse_dirent*)(reply + used);
            d->ino = ino;
            d->off = (ulong)index + 1;
            d->namelen = (uint)len;
            d->type = type;
            new Span<byte>(reply + used + FuseKernel.FUSE_NAME_OFFSET, size - FuseKernel.FUSE_NAME_OFFSET).Clear();
            name[..len].CopyTo(new Span<byte>(reply + used + FuseKernel.FUSE_NAME_OFFSET, len));
            used += size;
        }
        return used;
    }

    /// <summary>Writes <paramref name="n"/> in decimal, zero-padded to <paramref name="width"/>; returns its length.</summary>
    private static int Write(long n, Span<byte> to, int width)
    {
        int len = Math.Max(width, Digits(n));
        for (int i = len - 1; i >= 0; i--)
        {
            to[i] = (byte)('0' + n % 10);
            n /= 10;
        }
        return len;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void CopyPattern(long position, byte* to, int count)
    {
        while (count > 0)
        {
            int at = (int)(position % PatternSize);
            int n = Math.Min(count, PatternSize - at);
            Buffer.MemoryCopy(_pattern + at, to, n, n);
            to += n;
            position += n;
            count -= n;
        }
    }
}
