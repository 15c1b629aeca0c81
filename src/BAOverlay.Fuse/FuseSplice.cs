using System.Runtime.InteropServices;
using BAOverlay.Fuse.Interop;
using Microsoft.Win32.SafeHandles;

namespace BAOverlay.Fuse;

/// <summary>
/// A READ reply moved without copying through user memory (splice(2), as libfuse's <c>fuse_reply_data</c> of a file
/// buffer): the reply header is written into a pipe, the file's pages are spliced in behind it (references to the
/// page cache, no copy), and the pipe is spliced into <c>/dev/fuse</c>, where the kernel copies the pages into the
/// request once. A served read otherwise copies twice (<c>pread</c> into the daemon's buffer, <c>writev</c> out of it),
/// which is most of a daemon's time in sequential reads of large files. One pipe per worker thread, sized for the
/// largest reply it carries; a request it cannot carry, or a pipe the system refuses (the per-user pipe budget,
/// <c>/proc/sys/fs/pipe-user-pages-soft</c>), goes the copying way.
/// </summary>
internal sealed unsafe class FuseSplice : IDisposable
{
    private const int PageSize = 4096;

    /// <summary>The pipe sizes asked for, in turn: 2 MiB carries the largest READ (1 MiB, FUSE_MAX_MAX_PAGES) with its
    /// header; an unprivileged process may ask at most <c>/proc/sys/fs/pipe-max-size</c> (1 MiB by default), which
    /// carries all but the largest (readahead's are 128 KiB).</summary>
    private static readonly int[] PipeSizes = [2 << 20, 1 << 20];

    private int _read;
    private int _write;

    private FuseSplice(int read, int write, int capacity)
    {
        _read = read;
        _write = write;
        // A slot for the header, and one for a first page the read's offset cuts.
        MaxData = capacity - (2 * PageSize);
    }

    /// <summary>The largest read (bytes of data) a reply through this pipe may carry.</summary>
    public int MaxData { get; }

    /// <summary>A pipe for one worker, or null when the system refuses one of the size needed (the caller then
    /// copies).</summary>
    public static FuseSplice? TryCreate()
    {
        int* fds = stackalloc int[2];
        if (LibC.pipe2(fds, LibC.O_CLOEXEC) != 0)
        {
            return null;
        }
        int capacity = -1;
        foreach (int size in PipeSizes)
        {
            capacity = LibC.fcntl(fds[1], LibC.F_SETPIPE_SZ, size);
            if (capacity > 0)
            {
                break;
            }
        }
        if (capacity < 16 * PageSize)
        {
            LibC.close(fds[0]);
            LibC.close(fds[1]);
            return null;
        }
        return new FuseSplice(fds[0], fds[1], capacity);
    }

    /// <summary>What <see cref="TrySend"/> did.</summary>
    public enum Outcome
    {
        /// <summary>The reply went to the kernel (or the request was gone: interrupted, or the mount ended).</summary>
        Sent,

        /// <summary>The file gave fewer bytes than asked (its end) or failed: the <c>n</c> of
        /// <see cref="TrySend"/> says how many bytes it gave, or the negative errno, and the bytes it gave are in the
        /// caller's buffer. Nothing was sent: the caller replies.</summary>
        Short,

        /// <summary>The pipe failed and is closed; nothing was sent and the caller's buffer holds nothing: the
        /// caller serves the read the copying way. This object is of no further use.</summary>
        Broken,
    }

    /// <summary>
    /// Replies to READ request <paramref name="unique"/> with <paramref name="size"/> bytes of <paramref name="file"/>
    /// at <paramref name="offset"/>, spliced. When the file gives fewer (its end) the spliced bytes are read back into
    /// <paramref name="buffer"/> (room for <paramref name="size"/> bytes) and the caller replies with them.
    /// </summary>
    /// <param name="fuse">The <c>/dev/fuse</c> descriptor.</param>
    /// <param name="unique">The request's id.</param>
    /// <param name="file">The file; the caller holds a reference on it for the call.</param>
    /// <param name="offset">Where in the file.</param>
    /// <param name="size">How many bytes; at most <see cref="MaxData"/>.</param>
    /// <param name="buffer">Where the bytes go when the reply is short.</param>
    /// <param name="n">With <see cref="Outcome.Short"/>: the bytes now in <paramref name="buffer"/>, or the negative
    /// errno of the file's failure.</param>
    /// <param name="errno">With <see cref="Outcome.Sent"/>: 0, or the errno of the write to <c>/dev/fuse</c>
    /// (ENOENT: the request was interrupted; ENODEV: the mount is gone).</param>
    public Outcome TrySend(int fuse, ulong unique, SafeFileHandle file, long offset, int size, byte* buffer, out int n, out int errno)
    {
        n = 0;
        errno = 0;
        var header = new fuse_out_header { len = (uint)(sizeof(fuse_out_header) + size), error = 0, unique = unique };
        nint wrote;
        do
        {
            wrote = LibC.write(_write, &header, (nuint)sizeof(fuse_out_header));
        }
        while (Interrupted(wrote));
        if (wrote != sizeof(fuse_out_header))
        {
            Close();
            return Outcome.Broken;
        }
        long position = offset;
        // One call: a regular file gives fewer bytes only at its end (or on an error after some), which is what the
        // reply then carries; the pipe has room for all of it.
        int fd = file.DangerousGetHandle().ToInt32();
        nint spliced;
        do
        {
            spliced = LibC.splice(fd, &position, _write, null, (nuint)size, 0);
        }
        while (Interrupted(spliced));
        if (spliced != size)
        {
            int failure = spliced < 0 ? Marshal.GetLastPInvokeError() : 0;
            int got = spliced < 0 ? 0 : (int)spliced;
            // Take back the header and what the file gave: the reply's length is wrong.
            if (!Drain(&header, sizeof(fuse_out_header)) || !Drain(buffer, got))
            {
                Close();
                return Outcome.Broken;
            }
            n = spliced < 0 ? -failure : got;
            return Outcome.Short;
        }
        nint sent;
        do
        {
            sent = LibC.splice(_read, null, fuse, null, (nuint)(sizeof(fuse_out_header) + size), 0);
        }
        while (Interrupted(sent));
        if (sent != sizeof(fuse_out_header) + size)
        {
            // The kernel takes the whole message or fails it; whatever it left in the pipe would corrupt the next
            // reply, so the pipe goes (a new one is made on the next read).
            errno = sent < 0 ? Marshal.GetLastPInvokeError() : LibC.EIO;
            Close();
        }
        return Outcome.Sent;
    }

    /// <summary>Whether the pipe still works (a failed send closes it).</summary>
    public bool Usable => _read >= 0;

    /// <summary>Reads exactly <paramref name="length"/> bytes out of the pipe.</summary>
    private bool Drain(void* into, int length)
    {
        int done = 0;
        while (done < length)
        {
            nint r = LibC.read(_read, (byte*)into + done, (nuint)(length - done));
            if (Interrupted(r))
            {
                continue;
            }
            if (r <= 0)
            {
                return false;
            }
            done += (int)r;
        }
        return true;
    }

    /// <summary>Whether a call's result is a signal's interruption (EINTR): the call is made again.</summary>
    private static bool Interrupted(nint result) => result < 0 && Marshal.GetLastPInvokeError() == LibC.EINTR;

    private void Close()
    {
        if (_read >= 0)
        {
            LibC.close(_read);
            LibC.close(_write);
            _read = _write = -1;
        }
    }

    public void Dispose() => Close();
}
