using Mono.Unix.Native;
using NativeErrno = Mono.Unix.Native.Errno;

namespace BAOverlay.FileSystem;

/// <summary>
/// An overlay file system operation failed with a POSIX error: a FUSE server replies <c>-Errno</c>, a .NET caller
/// reads <see cref="Errno"/> and the message (which names the path concerned). <see cref="Exception.HResult"/> is the
/// errno too, as in the <see cref="IOException"/>s .NET raises for a failed system call.
/// <para><see cref="ErrnoOf"/> is the one mapping from any exception an overlay operation may raise to the POSIX
/// error a caller of the file system sees; docs/baoverlayfs.md lists it.</para>
/// </summary>
public sealed class OverlayException : IOException
{
    private const int MaxErrno = 4095;

    /// <summary>Makes the exception for <paramref name="errno"/>, with a message naming the path and the problem.</summary>
    public OverlayException(OverlayErrno errno, string message)
        : base(message, (int)errno)
    {
        Errno = errno;
    }

    /// <summary>The library's own throws, with the errno as Mono.Posix (which it calls the system through) reports it;
    /// internal so that no Mono.Posix type is part of the public API.</summary>
    internal OverlayException(NativeErrno errno, string message)
        : this(FromNative(errno), message)
    {
    }

    /// <summary>The POSIX error.</summary>
    public OverlayErrno Errno { get; }

    /// <summary>
    /// The POSIX error to answer for <paramref name="exception"/>, raised by an overlay operation (the library, the
    /// engine under it, or .NET's file APIs):
    /// <list type="bullet">
    /// <item><see cref="OverlayException"/>: its <see cref="Errno"/>.</item>
    /// <item>An <see cref="IOException"/> whose <see cref="Exception.HResult"/> is an errno (on Linux .NET raises
    /// those with the errno of the failed system call, for ENOSPC, EDQUOT, EFBIG, EIO, ...): that errno.</item>
    /// <item><see cref="ArgumentOutOfRangeException"/> for a size or an offset (what .NET raises for EFBIG, and the
    /// engine for a size past the largest B-CoW file): EFBIG, or EINVAL when the value is negative or zero.</item>
    /// <item><see cref="FileNotFoundException"/>, <see cref="DirectoryNotFoundException"/>: ENOENT;
    /// <see cref="UnauthorizedAccessException"/>: EACCES; <see cref="PathTooLongException"/>: ENAMETOOLONG.</item>
    /// <item><see cref="BCowFormatException"/> (corruption): EIO; <see cref="ObjectDisposedException"/> (a handle used
    /// after release): EBADF; <see cref="OutOfMemoryException"/>: ENOMEM; anything else, an <see cref="IOException"/>
    /// without an errno included: EIO.</item>
    /// </list>
    /// </summary>
    /// <param name="exception">What the operation threw.</param>
    /// <param name="unexpected">True for the classes that are no POSIX condition of the request (corruption, a bug, an
    /// I/O error): the caller should log the exception, since the errno alone does not say what went wrong.</param>
    public static OverlayErrno ErrnoOf(Exception exception, out bool unexpected)
    {
        ArgumentNullException.ThrowIfNull(exception);
        unexpected = false;
        switch (exception)
        {
            case OverlayException overlay:
                return overlay.Errno;
            case BCowFileInUseException:
                return OverlayErrno.EBUSY; // another process (bcow, another mount) has the B-CoW file open for writing
            case BCowFormatException:
                unexpected = true;
                return OverlayErrno.EIO;
            case FileNotFoundException or DirectoryNotFoundException:
                return OverlayErrno.ENOENT;
            case PathTooLongException:
                return OverlayErrno.ENAMETOOLONG;
            case IOException io when io.HResult is > 0 and <= MaxErrno:
                // .NET's HResult is the native errno, which on Linux is the value the enum carries.
                OverlayErrno errno = (OverlayErrno)io.HResult;
                unexpected = errno == OverlayErrno.EIO;
                return errno;
            case ArgumentOutOfRangeException range when IsSizeOrOffset(range.ParamName):
                return range.ActualValue is long and <= 0 or int and <= 0 ? OverlayErrno.EINVAL : OverlayErrno.EFBIG;
            case UnauthorizedAccessException { InnerException: IOException { HResult: > 0 and <= MaxErrno } inner }:
                return (OverlayErrno)inner.HResult; // .NET says "access denied" for EPERM too; the errno is within
            case UnauthorizedAccessException:
                return OverlayErrno.EACCES;
            case ObjectDisposedException:
                unexpected = true;
                return OverlayErrno.EBADF;
            case OutOfMemoryException:
                unexpected = true;
                return OverlayErrno.ENOMEM;
            default:
                unexpected = true;
                return OverlayErrno.EIO;
        }
    }

    /// <summary>The parameter names the engine and .NET's file APIs give a size or offset out of range (.NET's
    /// SetLength/ftruncate EFBIG is <c>value</c>); an index out of range elsewhere is a bug, answered EIO.</summary>
    private static bool IsSizeOrOffset(string? name) =>
        name is "length" or "offset" or "size" or "value" or "fileOffset" or "position";

    internal static OverlayException FromLastError(string what, string path)
    {
        NativeErrno errno = Stdlib.GetLastError();
        return new OverlayException(errno, $"{path}: {what}: {Stdlib.strerror(errno)}");
    }

    /// <summary>Mono.Posix numbers its <see cref="NativeErrno"/> as Linux does; <see cref="NativeConvert"/> gives the
    /// platform's number, which is <see cref="OverlayErrno"/>'s.</summary>
    internal static OverlayErrno FromNative(NativeErrno errno) => (OverlayErrno)NativeConvert.FromErrno(errno);
}
