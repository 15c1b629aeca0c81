using System.Runtime.InteropServices;
using BAOverlay.Interop;
using Mono.Unix.Native;

namespace BAOverlay.FileSystem.Export;

/// <summary>
/// The final name of an export and the temporary name it is built under (a sibling, so the last step is a rename on
/// one file system): nothing ever appears under the final name until the export is complete.
/// </summary>
internal sealed class ExportDestination
{
    private ExportDestination(string final, string temporary, bool overwrite)
    {
        Final = final;
        Temporary = temporary;
        Overwrite = overwrite;
    }

    public string Final { get; }

    /// <summary><c>DEST.tmp-XXXXXXXX</c>, a name no one else uses.</summary>
    public string Temporary { get; }

    public bool Overwrite { get; }

    /// <summary>Checks the destination before any work: its folder exists, it does not (unless overwriting), and it is
    /// not inside the upper directory.</summary>
    public static ExportDestination Prepare(string upperDirectory, string destination, bool overwrite)
    {
        ArgumentException.ThrowIfNullOrEmpty(destination);
        string final = Path.GetFullPath(destination).TrimEnd('/');
        string upper = Path.GetFullPath(upperDirectory).TrimEnd('/');
        if (final.Length == 0 || final == upper || final.StartsWith(upper + "/", StringComparison.Ordinal))
        {
            throw new ArgumentException($"{destination}: the destination must not be the upper directory {upperDirectory} or lie inside it", nameof(destination));
        }
        string parent = Path.GetDirectoryName(final)!;
        if (Syscall.stat(parent, out Stat parentStat) != 0 || ((uint)parentStat.st_mode & 0xF000) != 0x4000)
        {
            throw new DirectoryNotFoundException($"{parent}: the destination's folder does not exist");
        }
        if (!overwrite && Syscall.lstat(final, out _) == 0)
        {
            throw new IOException($"{final}: the destination exists (pass Overwrite to replace it)");
        }
        return new ExportDestination(final, $"{final}.tmp-{Guid.NewGuid().ToString("N")[..8]}", overwrite);
    }

    /// <summary>Flushes the file system of the temporary result, then renames it to the final name: an exchange when
    /// overwriting (the old destination is then removed), otherwise a rename that fails if the name appeared meanwhile.
    /// Throws only before the rename.</summary>
    public void Commit()
    {
        SyncFileSystem(Temporary);
        bool exists = Syscall.lstat(Final, out _) == 0;
        if (exists && !Overwrite)
        {
            throw new IOException($"{Final}: the destination appeared during the export (pass Overwrite to replace it)");
        }
        uint flags = exists ? LibC.RENAME_EXCHANGE : LibC.RENAME_NOREPLACE;
        if (LibC.renameat2(LibC.AT_FDCWD, Temporary, LibC.AT_FDCWD, Final, flags) != 0)
        {
            Errno errno = NativeConvert.ToErrno(Marshal.GetLastPInvokeError());
            throw new IOException($"{Final}: cannot rename the finished export {Temporary} into place: {Stdlib.strerror(errno)}");
        }
        // The export is in place: what follows is tidying, and must not turn success into a reported failure.
        if (exists)
        {
            RemoveTree(Temporary); // the old destination, now under the temporary name
        }
        try
        {
            SyncFileSystem(Path.GetDirectoryName(Final)!);
        }
        catch (IOException)
        {
        }
    }

    /// <summary>Removes the temporary result after a failure; never throws.</summary>
    public void Abandon()
    {
        try
        {
            RemoveTree(Temporary);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
        }
    }

    /// <summary>Removes a file or a tree without following symbolic links, making directories writable on the way.</summary>
    public static void RemoveTree(string path)
    {
        if (Syscall.lstat(path, out Stat st) != 0)
        {
            return;
        }
        if (((uint)st.st_mode & 0xF000) == 0x4000)
        {
            Syscall.chmod(path, FilePermissions.S_IRWXU);
            foreach (string entry in Directory.EnumerateFileSystemEntries(path))
            {
                RemoveTree(entry);
            }
            Syscall.rmdir(path);
        }
        else
        {
            Syscall.unlink(path);
        }
    }

    private static void SyncFileSystem(string path)
    {
        int fd = Syscall.open(path, OpenFlags.O_RDONLY);
        if (fd < 0)
        {
            throw UpperTree.Failure("cannot open to flush", path);
        }
        try
        {
            if (LibC.syncfs(fd) != 0)
            {
                Errno errno = NativeConvert.ToErrno(Marshal.GetLastPInvokeError());
                throw new IOException($"{path}: flushing the file system failed: {Stdlib.strerror(errno)}");
            }
        }
        finally
        {
            Syscall.close(fd);
        }
    }
}
