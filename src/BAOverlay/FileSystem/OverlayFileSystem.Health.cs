using BAOverlay.Interop;
using Microsoft.Win32.SafeHandles;
using Mono.Unix.Native;

namespace BAOverlay.FileSystem;

/// <summary>
/// When the upper layer's own file system fails (I/O errors, or it turned read-only, as ext4 does with
/// <c>errors=remount-ro</c>), the overlay turns read-only, as ext4 does: every change fails with EROFS from then on,
/// reads are still served, and nothing already made durable is touched. An I/O error alone does not say which layer
/// failed (a lower layer on a network file system may be the one), so a failed change probes the upper file system
/// with a small durable write in the work directory, and only a failed probe turns the overlay read-only.
/// </summary>
public sealed partial class OverlayFileSystem
{
    private volatile string? _upperFailure;
    private DateTimeOffset _upperFailedAt;
    private int _probing;

    /// <summary>Why the overlay turned read-only when its upper file system failed (with when), or null while it is
    /// healthy. It stays read-only until it is opened again (after the file system is repaired and mounted again).</summary>
    public string? UpperFailure => _upperFailure is { } reason ? $"{reason} (since {_upperFailedAt:u})" : null;

    /// <summary>Raised once, on the thread that found it, when the overlay turns read-only because its upper file
    /// system failed; the argument is <see cref="UpperFailure"/>.</summary>
    public event Action<string>? TurnedReadOnly;

    /// <summary>
    /// After a change failed with <paramref name="failure"/>: when that was an I/O error or EROFS, checks whether the
    /// upper file system still takes a durable write (creates, writes, fsyncs and removes a file in the work
    /// directory), and turns the overlay read-only when it does not. Called by the overlay's own write paths and by
    /// a FUSE adapter for every failed change; cheap for any other error.
    /// </summary>
    /// <returns>True when the overlay is read-only because the upper file system failed.</returns>
    public bool CheckUpperAfter(Exception failure)
    {
        ArgumentNullException.ThrowIfNull(failure);
        if (_upperFailure is not null)
        {
            return true;
        }
        if (_upper < 0 || OverlayException.ErrnoOf(failure, out _) is not (OverlayErrno.EIO or OverlayErrno.EROFS))
        {
            return false;
        }
        if (Interlocked.Exchange(ref _probing, 1) == 1)
        {
            return _upperFailure is not null; // another thread is probing
        }
        try
        {
            string? broken = ProbeUpper();
            if (broken is null)
            {
                return false;
            }
            _upperFailedAt = DateTimeOffset.UtcNow;
            _upperFailure = $"the upper layer's file system failed: {broken}; after \"{failure.Message}\"; the overlay is read-only";
            string status = UpperFailure!;
            _log(status);
            TurnedReadOnly?.Invoke(status);
            return true;
        }
        finally
        {
            Volatile.Write(ref _probing, 0);
        }
    }

    /// <summary>A durable write in the work directory: null when it worked, else what failed.</summary>
    private string? ProbeUpper()
    {
        string probe = NewScratchPath();
        try
        {
            if (Syscall.statvfs(_layers.Work.Self, out Statvfs vfs) == 0 && (vfs.f_flag & MountFlags.ST_RDONLY) != 0)
            {
                return "mounted read-only";
            }
            using (SafeFileHandle file = File.OpenHandle(probe, FileMode.CreateNew, FileAccess.Write))
            {
                RandomAccess.Write(file, "baoverlay probe\n"u8, 0);
                RandomAccess.FlushToDisk(file);
            }
            File.Delete(probe);
            return null;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            try
            {
                File.Delete(probe);
            }
            catch (Exception ignored) when (ignored is IOException or UnauthorizedAccessException)
            {
                // the file system is failing: the probe file stays
            }
            return e.Message;
        }
    }
}
