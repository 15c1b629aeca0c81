using System.Runtime.InteropServices;
using BAOverlay.Interop;
using Microsoft.Win32.SafeHandles;
using Mono.Unix.Native;

namespace BAOverlay.Storage;

/// <summary>How an open of a B-CoW file excludes other opens of it.</summary>
internal enum FileLockMode
{
    /// <summary>No lock: <c>bcow -U</c>, and internal header peeks that read one consistent slot.</summary>
    None,

    /// <summary>Opened for reading: other readers are welcome, a writer in another process is not.</summary>
    Shared,

    /// <summary>Opened for writing: nobody in another process may have the file open (with a lock), and no other
    /// writer in this process.</summary>
    Exclusive,
}

/// <summary>
/// Answers "may this process open this B-CoW file now?" with open file description locks (<c>F_OFD_SETLK</c>), as
/// qemu keeps an image from being opened by two writers: a writer holds a write lock on the whole file, a reader a
/// read lock; a conflicting open fails at once with <see cref="BCowFileInUseException"/>. The lower file is never
/// locked (many overlays share one).
/// </summary>
/// <remarks>
/// <para>Between processes this is the kernel's rule. Within a process, OFD locks would also make two opens of one
/// file conflict, but the overlay legitimately keeps a read-only view of a file open (for handles opened before)
/// while it opens the file for writing. So this process keeps one table per file (device, inode): readers in the
/// process coexist with its one writer, a second writer is refused, and the kernel lock that speaks for the process
/// sits on one of its descriptors (the <em>carrier</em>): the writer's when there is one, else a reader's.</para>
/// <para>Moving the kernel lock between descriptors never leaves the file unlocked: to upgrade, the new writer first
/// takes a read lock (compatible with the carrier's), the carrier drops its lock, then the writer converts its lock to
/// a write lock (if that fails, the old carrier takes its read lock back before the writer's is dropped). To
/// downgrade when the writer closes, it converts its own lock to a read lock before a reader takes one.</para>
/// <para>Lock order: the table's lock only; no I/O but fcntl under it.</para>
/// <para>File systems without locks (<c>ENOLCK</c>, <c>EOPNOTSUPP</c>, <c>ENOSYS</c>, <c>EINVAL</c> from a kernel
/// older than 3.15) open without one, as qemu does when it cannot lock.</para>
/// </remarks>
internal static class FileLocks
{
    private static readonly object s_gate = new();
    private static readonly Dictionary<FileKey, Entry> s_files = new();

    /// <summary>A file by device and inode. A class, not a tuple: a table keyed by a framework value type is a generic
    /// instantiation ReadyToRun cannot precompile, whose JIT the first B-CoW open of a process paid.</summary>
    internal sealed class FileKey(ulong device, ulong inode) : IEquatable<FileKey>
    {
        public ulong Dev { get; } = device;

        public ulong Ino { get; } = inode;

        public bool Equals(FileKey? other) => other is not null && other.Dev == Dev && other.Ino == Ino;

        public override bool Equals(object? obj) => Equals(obj as FileKey);

        public override int GetHashCode() => (int)(Ino ^ (Ino >> 32) ^ (Dev * 31));
    }

    private sealed class Entry
    {
        public readonly List<Holder> Holders = [];
        public Holder? Carrier;
        public bool CarrierExclusive;
    }

    /// <summary>One locked open; disposing it releases the lock (before the descriptor is closed).</summary>
    internal sealed class Holder
    {
        internal Holder(SafeFileHandle handle, string name, FileKey key, bool exclusive)
        {
            Handle = handle;
            Name = name;
            Key = key;
            Exclusive = exclusive;
        }

        internal SafeFileHandle Handle { get; }

        internal string Name { get; }

        internal FileKey Key { get; }

        internal bool Exclusive { get; }

        internal bool Unlocked { get; set; }
    }

    /// <summary>Locks the open file behind <paramref name="handle"/>; null for <see cref="FileLockMode.None"/> or a
    /// file system without locks.</summary>
    /// <exception cref="BCowFileInUseException">Another process (or, for a writer, this one) has the file open in a
    /// conflicting way.</exception>
    public static Holder? Acquire(SafeFileHandle handle, string name, FileLockMode mode)
    {
        if (mode == FileLockMode.None)
        {
            return null;
        }
        int fd = (int)handle.DangerousGetHandle();
        if (Syscall.fstat(fd, out Stat st) != 0)
        {
            throw new IOException($"{name}: fstat failed: {Stdlib.GetLastError()}");
        }
        if ((st.st_mode & FilePermissions.S_IFMT) != FilePermissions.S_IFREG)
        {
            return null; // a device or FIFO given as a file fails later with its own message
        }
        bool exclusive = mode == FileLockMode.Exclusive;
        var holder = new Holder(handle, name, new FileKey(st.st_dev, st.st_ino), exclusive);
        lock (s_gate)
        {
            if (!s_files.TryGetValue(holder.Key, out Entry? entry))
            {
                int error = SetLock(fd, exclusive ? LibC.F_WRLCK : LibC.F_RDLCK);
                if (error != 0)
                {
                    return Refuse(holder, fd, error);
                }
                entry = new Entry { Carrier = holder, CarrierExclusive = exclusive };
                s_files[holder.Key] = entry;
                entry.Holders.Add(holder);
                return holder;
            }
            if (exclusive)
            {
                if (entry.CarrierExclusive)
                {
                    throw new BCowFileInUseException(name, "the file is in use: it is already open for writing in this process");
                }
                Upgrade(entry, holder, fd);
            }
            entry.Holders.Add(holder);
            return holder;
        }
    }

    /// <summary>Releases <paramref name="holder"/>'s part of the lock; the caller closes the descriptor after.</summary>
    public static void Release(Holder holder)
    {
        lock (s_gate)
        {
            if (!s_files.TryGetValue(holder.Key, out Entry? entry) || !entry.Holders.Remove(holder))
            {
                return;
            }
            if (entry.Carrier != holder)
            {
                return;
            }
            int fd = (int)holder.Handle.DangerousGetHandle();
            if (entry.Holders.Count == 0)
            {
                SetLock(fd, LibC.F_UNLCK);
                s_files.Remove(holder.Key);
                return;
            }
            // Only readers remain (a writer is always the carrier): keep the file read-locked throughout.
            if (entry.CarrierExclusive)
            {
                SetLock(fd, LibC.F_RDLCK); // a downgrade of our own lock cannot conflict
            }
            Holder next = entry.Holders[0];
            SetLock((int)next.Handle.DangerousGetHandle(), LibC.F_RDLCK);
            SetLock(fd, LibC.F_UNLCK);
            entry.Carrier = next;
            entry.CarrierExclusive = false;
        }
    }

    private static void Upgrade(Entry entry, Holder writer, int fd)
    {
        Holder carrier = entry.Carrier!;
        int carrierFd = (int)carrier.Handle.DangerousGetHandle();
        int error = SetLock(fd, LibC.F_RDLCK);
        if (error != 0)
        {
            Refuse(writer, fd, error);
        }
        SetLock(carrierFd, LibC.F_UNLCK);
        error = SetLock(fd, LibC.F_WRLCK);
        if (error != 0)
        {
            SetLock(carrierFd, LibC.F_RDLCK); // compatible: the writer's read lock kept other writers out meanwhile
            SetLock(fd, LibC.F_UNLCK);
            Refuse(writer, fd, error);
        }
        entry.Carrier = writer;
        entry.CarrierExclusive = true;
    }

    private static Holder? Refuse(Holder holder, int fd, int error)
    {
        if (error is LibC.EAGAIN or LibC.EACCES)
        {
            throw new BCowFileInUseException(holder.Name, Conflict(fd, holder.Exclusive));
        }
        if (error is LibC.ENOLCK or LibC.EOPNOTSUPP or LibC.ENOSYS or LibC.EINVAL)
        {
            return null;
        }
        throw new IOException($"{holder.Name}: cannot lock the file: {Stdlib.strerror(NativeConvert.ToErrno(error))}", error);
    }

    /// <summary>The message for a refused open: what the other process holds, when the kernel says.</summary>
    private static unsafe string Conflict(int fd, bool exclusive)
    {
        var probe = new LibC.Flock { l_type = exclusive ? LibC.F_WRLCK : LibC.F_RDLCK, l_whence = LibC.SEEK_SET };
        bool known = LibC.fcntl_lock(fd, LibC.F_OFD_GETLK, &probe) == 0 && probe.l_type != LibC.F_UNLCK;
        string what = !known ? "" : probe.l_type == LibC.F_WRLCK ? ", which has it open for writing" : ", which has it open for reading";
        return $"the file is in use by another process{what}";
    }

    /// <returns>0, or the errno.</returns>
    private static unsafe int SetLock(int fd, short type)
    {
        // The whole file, however long it grows: a lock on one byte would do, but whole-file locks are what lslocks
        // and /proc/locks show most plainly.
        var request = new LibC.Flock { l_type = type, l_whence = LibC.SEEK_SET, l_start = 0, l_len = 0 };
        return LibC.fcntl_lock(fd, LibC.F_OFD_SETLK, &request) == 0 ? 0 : Marshal.GetLastPInvokeError();
    }
}
