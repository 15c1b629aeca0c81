using Microsoft.Win32.SafeHandles;
using Mono.Unix.Native;

namespace BAOverlay.Store;

/// <summary>
/// Small records on the share (manifests, names, leases, the generation): read with a size limit and without following
/// a symbolic link; written durably (write, fsync) and put in place by <c>rename(2)</c>, so a reader sees the old
/// record or the new one, never a part of one.
/// </summary>
internal static class StoreFiles
{
    /// <summary>
    /// The bytes of a local regular file of at most <paramref name="max"/> bytes (opened without following a symbolic
    /// link or blocking), or null: none, not a regular file, larger. A file that ends before its size said: its bytes
    /// read so far with <paramref name="shortIsNull"/> false, else null.
    /// </summary>
    public static byte[]? ReadLocalFile(string path, long max, bool shortIsNull)
    {
        int fd = Syscall.open(path, OpenFlags.O_RDONLY | OpenFlags.O_NOFOLLOW | OpenFlags.O_NONBLOCK | OpenFlags.O_CLOEXEC);
        if (fd < 0)
        {
            return null;
        }
        using var handle = new SafeFileHandle(fd, ownsHandle: true);
        if (Syscall.fstat(fd, out Stat st) != 0 || (st.st_mode & FilePermissions.S_IFMT) != FilePermissions.S_IFREG || st.st_size > max)
        {
            return null;
        }
        byte[] bytes = new byte[st.st_size];
        int read = 0;
        while (read < bytes.Length)
        {
            int n = RandomAccess.Read(handle, bytes.AsSpan(read), read);
            if (n == 0)
            {
                return shortIsNull ? null : bytes[..read];
            }
            read += n;
        }
        return bytes;
    }

    /// <summary>The bytes of the regular file <paramref name="name"/>, or null when it does not exist.</summary>
    /// <exception cref="LayerStoreException">It is not a regular file (a symbolic link included), is larger than
    /// <paramref name="maxBytes"/>, or cannot be read.</exception>
    public static byte[]? TryRead(StoreDirectory directory, string name, int maxBytes)
    {
        if (!directory.TryLstat(name, out Stat stat))
        {
            return null;
        }
        if ((stat.st_mode & FilePermissions.S_IFMT) != FilePermissions.S_IFREG)
        {
            throw new LayerStoreException(directory.Describe(name), "not a regular file");
        }
        SafeFileHandle file;
        long length;
        try
        {
            file = directory.OpenFileForReading(name, out length);
        }
        catch (LayerStoreException) when (!directory.TryLstat(name, out _))
        {
            return null; // replaced or removed between the lstat and the open
        }
        using (file)
        {
            if (length > maxBytes)
            {
                throw new LayerStoreException(directory.Describe(name), $"{length} bytes: larger than the {maxBytes} a record may have");
            }
            byte[] buffer = new byte[maxBytes + 1];
            int total = 0;
            while (total < buffer.Length)
            {
                int read;
                try
                {
                    read = RandomAccess.Read(file, buffer.AsSpan(total), total);
                }
                catch (IOException e)
                {
                    throw new LayerStoreException(directory.Describe(name), $"cannot read the file: {e.Message}", e);
                }
                if (read == 0)
                {
                    break;
                }
                total += read;
            }
            if (total > maxBytes)
            {
                throw new LayerStoreException(directory.Describe(name), $"larger than the {maxBytes} bytes a record may have");
            }
            return buffer[..total];
        }
    }

    /// <summary>Creates <paramref name="name"/> (which must not exist) with <paramref name="bytes"/>, and fsyncs it.</summary>
    public static void WriteNew(StoreDirectory directory, string name, ReadOnlySpan<byte> bytes)
    {
        using SafeFileHandle file = directory.CreateFile(name);
        try
        {
            RandomAccess.Write(file, bytes, 0);
            RandomAccess.FlushToDisk(file);
        }
        catch (IOException e)
        {
            throw new LayerStoreException(directory.Describe(name), $"cannot write the file: {e.Message}", e);
        }
        Syscall.fchmod((int)file.DangerousGetHandle(), FilePermissions.S_IRUSR | FilePermissions.S_IWUSR | FilePermissions.S_IRGRP | FilePermissions.S_IROTH);
    }

    /// <summary>
    /// Replaces <paramref name="name"/> in <paramref name="target"/> atomically: writes a temporary file in
    /// <paramref name="staging"/> (the same file system), fsyncs it, renames it over the name, fsyncs the directory.
    /// A crash leaves the old record or the new one, and at worst a temporary file that garbage collection removes by age.
    /// </summary>
    public static void Replace(StoreDirectory staging, string hostId, StoreDirectory target, string name, ReadOnlySpan<byte> bytes)
    {
        string temporary = $"{hostId}.{StoreLayout.RandomSuffix()}.tmp";
        WriteNew(staging, temporary, bytes);
        Rename(staging, temporary, target, name);
        target.Sync();
    }

    /// <summary>rename(2) from one directory handle to another (replacing a file; for a directory, failing when the
    /// target exists and is not empty).</summary>
    public static void Rename(StoreDirectory from, string fromName, StoreDirectory to, string toName)
    {
        if (Syscall.rename(from.At(fromName), to.At(toName)) != 0)
        {
            Errno errno = Stdlib.GetLastError();
            throw new RenameException(errno, new LayerStoreException(from.Describe(fromName), $"cannot rename to {to.Describe(toName)}: {Stdlib.strerror(errno)}"));
        }
    }

    /// <summary>A failed rename, with its errno for the callers that tell "the target exists" from other failures.</summary>
    internal sealed class RenameException(Errno errno, LayerStoreException inner) : IOException(inner.Message, inner)
    {
        public Errno Errno { get; } = errno;

        public bool TargetExists => Errno is Errno.EEXIST or Errno.ENOTEMPTY;

        public LayerStoreException Error => (LayerStoreException)InnerException!;
    }

    /// <summary>Removes <paramref name="name"/> and everything below it, never following a symbolic link. Directories
    /// without write permission are given it first (a layer may hold them; root needs no such help). A tree deeper than
    /// <see cref="StoreLayout.MaxDepth"/> is cut: its deep part is renamed up into <paramref name="parent"/> and removed
    /// from there, so that the recursion stays shallow whatever a hostile tree holds.</summary>
    public static void RemoveTree(StoreDirectory parent, string name)
    {
        var cut = new Queue<string>();
        RemoveRecursive(parent, parent, name, 0, cut);
        while (cut.Count > 0)
        {
            RemoveRecursive(parent, parent, cut.Dequeue(), 0, cut);
        }
    }

    private static void RemoveRecursive(StoreDirectory top, StoreDirectory parent, string name, int depth, Queue<string> cut)
    {
        if (!parent.TryLstat(name, out Stat stat))
        {
            return;
        }
        if ((stat.st_mode & FilePermissions.S_IFMT) == FilePermissions.S_IFDIR)
        {
            if (depth > StoreLayout.MaxDepth)
            {
                string moved = $".cut.{StoreLayout.RandomSuffix()}";
                Rename(parent, name, top, moved);
                cut.Enqueue(moved);
                return;
            }
            if ((stat.st_mode & FilePermissions.S_IRWXU) != FilePermissions.S_IRWXU)
            {
                Syscall.chmod(parent.At(name), FilePermissions.S_IRWXU);
            }
            using (StoreDirectory? child = parent.TryOpenChild(name))
            {
                if (child is not null)
                {
                    foreach (string inner in child.Names())
                    {
                        RemoveRecursive(top, child, inner, depth + 1, cut);
                    }
                }
            }
            if (Syscall.rmdir(parent.At(name)) != 0 && Stdlib.GetLastError() != Errno.ENOENT)
            {
                throw StoreDirectory.Failure(parent.Describe(name), "cannot remove the directory");
            }
        }
        else if (Syscall.unlink(parent.At(name)) != 0 && Stdlib.GetLastError() != Errno.ENOENT)
        {
            throw StoreDirectory.Failure(parent.Describe(name), "cannot remove the file");
        }
    }
}
