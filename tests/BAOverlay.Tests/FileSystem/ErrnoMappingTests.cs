using BAOverlay.FileSystem;
using Mono.Unix.Native;

namespace BAOverlay.Tests.FileSystem;

/// <summary>The one mapping from an exception to the POSIX error a caller of the overlay sees
/// (<see cref="OverlayException.ErrnoOf"/>), class by class; FuseErrnoTests check it through a mount.</summary>
public sealed class ErrnoMappingTests
{
    private static IEnumerable<TestCaseData> Cases()
    {
        yield return Case(new OverlayException(OverlayErrno.EACCES, "x"), OverlayErrno.EACCES, false);
        yield return Case(new IOException("No space left on device", 28), OverlayErrno.ENOSPC, false);
        yield return Case(new IOException("Disk quota exceeded", 122), OverlayErrno.EDQUOT, false);
        yield return Case(new IOException("File too large", 27), OverlayErrno.EFBIG, false);
        yield return Case(new IOException("Input/output error", 5), OverlayErrno.EIO, true);
        yield return Case(new IOException("a lower file was truncated while in use"), OverlayErrno.EIO, true);
        yield return Case(new ArgumentOutOfRangeException("length", 1L << 50, "too large"), OverlayErrno.EFBIG, false);
        yield return Case(new ArgumentOutOfRangeException("value", "ftruncate: EFBIG as .NET reports it"), OverlayErrno.EFBIG, false);
        yield return Case(new ArgumentOutOfRangeException("offset", -1L, "negative"), OverlayErrno.EINVAL, false);
        yield return Case(new ArgumentOutOfRangeException("length", 0L, "zero"), OverlayErrno.EINVAL, false);
        yield return Case(new ArgumentOutOfRangeException("index", 7, "a bug"), OverlayErrno.EIO, true);
        yield return Case(new FileNotFoundException("gone"), OverlayErrno.ENOENT, false);
        yield return Case(new DirectoryNotFoundException("gone"), OverlayErrno.ENOENT, false);
        yield return Case(new UnauthorizedAccessException("denied"), OverlayErrno.EACCES, false);
        yield return Case(new BCowFormatException("/upper/f", "checksum mismatch"), OverlayErrno.EIO, true);
        yield return Case(new ObjectDisposedException("BCowFile"), OverlayErrno.EBADF, true);
        yield return Case(new InvalidOperationException("a bug"), OverlayErrno.EIO, true);

        static TestCaseData Case(Exception e, OverlayErrno errno, bool unexpected) =>
            new TestCaseData(e, errno, unexpected).SetArgDisplayNames(e.GetType().Name, e.Message.Split(':')[0], errno.ToString());
    }

    [TestCaseSource(nameof(Cases))]
    public void EachFailureClassMapsToItsPosixError(Exception exception, OverlayErrno errno, bool unexpected)
    {
        Assert.That(OverlayException.ErrnoOf(exception, out bool logged), Is.EqualTo(errno));
        Assert.That(logged, Is.EqualTo(unexpected), "only corruption, bugs and I/O errors are logged");
    }
}
