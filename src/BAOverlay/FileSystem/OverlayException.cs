using Mono.Unix.Native;

namespace BAOverlay.FileSystem;

/// <summary>
/// An overlay file system operation failed with a POSIX error: a FUSE server replies <c>-Errno</c>, a .NET caller
/// reads <see cref="Errno"/> and the message (which names the path concerned).
/// </summary>
public sealed class OverlayException : IOException
{
    /// <summary>Makes the exception for <paramref name="errno"/>, with a message naming the path and the problem.</summary>
    public OverlayException(Errno errno, string message)
        : base(message, (int)NativeConvert.FromErrno(errno))
    {
        Errno = errno;
    }

    /// <summary>The POSIX error.</summary>
    public Errno Errno { get; }

    internal static OverlayException FromLastError(string what, string path)
    {
        Errno errno = Stdlib.GetLastError();
        return new OverlayException(errno, $"{path}: {what}: {Stdlib.strerror(errno)}");
    }
}
