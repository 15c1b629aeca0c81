using System.Runtime.InteropServices;
using System.Text;
using BAOverlay.FileSystem;
using BAOverlay.Fuse;
using BAOverlay.Tests.FileSystem;

namespace BAOverlay.Tests.Fuse;

/// <summary>
/// The kernel's page cache behind the mount: kept across opens (keep_cache), dropped when the overlay changes a file
/// other than through the mount (the adapter's invalidations), and right with the write-back cache on.
/// </summary>
public sealed partial class FuseMountTests
{
    [Test]
    public void ASecondOpenReadsFromTheKernelsCacheWithoutAskingTheDaemon()
    {
        using var fixture = new OverlayFixture(lowers: 1);
        byte[] data = Checks.RandomBytes(new Random(3), 256 * 1024);
        OverlayFixture.WriteFile(Path.Combine(fixture.Lowers[0], "f"), data);
        CountingReads? counting = null;
        using Mounted mounted = Mounted.Start(fixture, out string mnt, fs => counting = new CountingReads(new OverlayFuseAdapter(fs)));
        string file = Path.Combine(mnt, "f");

        Assert.That(File.ReadAllBytes(file), Is.EqualTo(data));
        long first = counting!.Reads;
        Assert.That(first, Is.GreaterThan(0), "the first open read through the daemon");
        Assert.That(File.ReadAllBytes(file), Is.EqualTo(data));
        Assert.That(counting.Reads, Is.EqualTo(first), "the second open was served from the page cache (keep_cache)");
    }

    /// <summary>
    /// A lower directory copied up because a file in it was written through the mount now merges two layers and counts
    /// one link, as under kernel overlayfs; the kernel, which cached its real count (attributes kept a minute here) and
    /// asked only for the write of the file, must see that at once: the overlay tells it (it did not: a random
    /// comparison with kernel overlayfs found the stale count, seed 1812334640).
    /// </summary>
    [Test]
    public void ADirectoryCopiedUpByAWriteBelowItShowsItsNewLinkCountAtOnce()
    {
        using var fixture = new OverlayFixture(lowers: 1);
        OverlayFixture.WriteFile(Path.Combine(fixture.Lowers[0], "d", "s", "x"), "below");
        OverlayFixture.WriteFile(Path.Combine(fixture.Lowers[0], "d", "f"), "a file");
        using Mounted mounted = Mounted.Start(fixture, out string mnt,
            fs => new OverlayFuseAdapter(fs) { AttributeTimeout = 60, EntryTimeout = 60 });
        string d = Path.Combine(mnt, "d");
        Assert.That(Mono.Unix.Native.Syscall.lstat(d, out Mono.Unix.Native.Stat before), Is.Zero);
        Assert.That(before.st_nlink, Is.EqualTo(3UL), "a directory of one layer: its real count, cached by the kernel");
        File.AppendAllText(Path.Combine(d, "f"), " written"); // copies d up, then the file
        Assert.That(Mono.Unix.Native.Syscall.lstat(d, out Mono.Unix.Native.Stat after), Is.Zero);
        Assert.That(after.st_nlink, Is.EqualTo(1UL), "merged from two layers now: one link, as kernel overlayfs says");
    }

    [Test]
    public void WithoutKeepCacheEveryOpenReadsThroughTheDaemonAgain()
    {
        using var fixture = new OverlayFixture(lowers: 1);
        OverlayFixture.WriteFile(Path.Combine(fixture.Lowers[0], "f"), "cached or not");
        CountingReads? counting = null;
        using Mounted mounted = Mounted.Start(fixture, out string mnt,
            fs => counting = new CountingReads(new OverlayFuseAdapter(fs) { KeepCache = false }));
        string file = Path.Combine(mnt, "f");
        File.ReadAllBytes(file);
        long first = counting!.Reads;
        File.ReadAllBytes(file);
        Assert.That(counting.Reads, Is.GreaterThan(first), "each open started with an empty cache");
    }

    /// <summary>
    /// Data changed through the library while the file's pages are in the kernel's cache: the next read through the
    /// mount sees the new bytes at once (the attribute and entry timeouts are a minute here, so only the invalidation
    /// can explain it). Covers a write into a lower file (a block copy-up), a write into an upper file, a truncate and an open
    /// with truncation.
    /// </summary>
    [Test]
    public void ChangesMadeThroughTheLibraryWhileMountedAreSeenThroughTheMountAtOnce()
    {
        using var fixture = new OverlayFixture(lowers: 1);
        byte[] big = Checks.RandomBytes(new Random(5), 1 << 20);
        OverlayFixture.WriteFile(Path.Combine(fixture.Lowers[0], "big"), big);
        using Mounted mounted = Mounted.Start(fixture, out string mnt,
            fs => new OverlayFuseAdapter(fs) { AttributeTimeout = 60, EntryTimeout = 60 });
        string path = Path.Combine(mnt, "big");
        OverlayFileSystem fs = mounted.FileSystem;

        // keep a reader open through the mount, so the kernel has the pages and the inode
        using var reader = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite, 1, FileOptions.None);
        Assert.That(ReadAll(reader), Is.EqualTo(big), "cached through the mount");

        ulong ino = fs.Lookup(OverlayFileSystem.RootIno, "big").Ino;
        byte[] patch = Encoding.ASCII.GetBytes("changed through the library, not through the kernel");
        using (OverlayHandle handle = fs.Open(ino, write: true, truncate: false))
        {
            handle.Write(patch, 400_000);
        }
        patch.CopyTo(big, 400_000);
        AssertEventually(() => ReadAll(reader), big, "a library write into a lower file (block copy-up)");
        Assert.That(File.ReadAllBytes(path), Is.EqualTo(big), "a new open sees it too");

        fs.SetAttr(ino, new OverlaySetAttr { Size = 300_000 }, OverlayCaller.Root);
        AssertEventually(() => ReadAll(reader), big[..300_000], "a library truncate");

        using (OverlayHandle handle = fs.Open(ino, write: true, truncate: true))
        {
            handle.Write("new life"u8, 0);
        }
        AssertEventually(() => ReadAll(reader), "new life"u8.ToArray(), "a library open with O_TRUNC and a write");
        Assert.That(mounted.Log, Is.Empty);
    }

    /// <summary>
    /// Names made, removed and renamed through the library while the kernel keeps names, attributes and absent names
    /// for a day (the adapter's defaults): each is seen through the mount at once, which only the adapter's entry
    /// invalidations can explain. The names are looked up through the mount first, so the kernel holds a positive or
    /// a negative entry for each.
    /// </summary>
    [Test]
    public void NamesChangedThroughTheLibraryWhileMountedAreSeenThroughTheMountAtOnce()
    {
        using var fixture = new OverlayFixture(lowers: 1);
        OverlayFixture.WriteFile(Path.Combine(fixture.Lowers[0], "old"), "lower file");
        Directory.CreateDirectory(Path.Combine(fixture.Lowers[0], "dir"));
        using Mounted mounted = Mounted.Start(fixture, out string mnt);
        Assert.That(mounted.Session.Handler.EntryTimeout, Is.GreaterThanOrEqualTo(3600), "the test is about long-kept names");
        OverlayFileSystem fs = mounted.FileSystem;
        string old = Path.Combine(mnt, "old");
        string made = Path.Combine(mnt, "made");
        string moved = Path.Combine(mnt, "dir", "moved");
        Assert.That(File.Exists(old), Is.True);
        Assert.That(File.Exists(made), Is.False, "looked up through the mount: now a negative entry in the kernel");
        Assert.That(File.Exists(moved), Is.False);

        (OverlayStat _, OverlayHandle handle) = fs.Create(OverlayFileSystem.RootIno, "made", 0x1A4, OverlayCaller.Root);
        handle.Dispose();
        AssertEventually(() => File.Exists(made), true, "a file created through the library");

        ulong dir = fs.Lookup(OverlayFileSystem.RootIno, "dir").Ino;
        fs.Rename(OverlayFileSystem.RootIno, "old", dir, "moved");
        AssertEventually(() => (File.Exists(old), File.Exists(moved)), (false, true), "a rename through the library");
        Assert.That(File.ReadAllText(moved), Is.EqualTo("lower file"));

        fs.Unlink(OverlayFileSystem.RootIno, "made");
        AssertEventually(() => File.Exists(made), false, "an unlink through the library");
        fs.MakeDirectory(OverlayFileSystem.RootIno, "made", 0x1ED, OverlayCaller.Root);
        AssertEventually(() => Directory.Exists(made), true, "a directory made through the library where a name was removed");
        Assert.That(mounted.Log, Is.Empty);
    }

    /// <summary>
    /// Names changed through the mount are not sent back to the kernel as invalidations (it made the change and keeps
    /// its entries right itself): after mkdir, mknod, symlink, link, rename and unlink through the mount, and time for
    /// any invalidation to arrive, stat of every surviving name is answered without a lookup request.
    /// </summary>
    [Test]
    public void NamesChangedThroughTheMountAreNotInvalidatedBackToTheKernel()
    {
        using var fixture = new OverlayFixture(lowers: 1);
        CountingLookups? counting = null;
        using Mounted mounted = Mounted.Start(fixture, out string mnt, fs => counting = new CountingLookups(new OverlayFuseAdapter(fs)));
        string dir = Path.Combine(mnt, "dir");
        Directory.CreateDirectory(dir);
        File.WriteAllText(Path.Combine(dir, "file"), "x");
        Assert.That(Mono.Unix.Native.Syscall.mkfifo(Path.Combine(dir, "fifo"), Mono.Unix.Native.FilePermissions.S_IRUSR | Mono.Unix.Native.FilePermissions.S_IWUSR), Is.Zero);
        File.CreateSymbolicLink(Path.Combine(dir, "link"), "file");
        Assert.That(Mono.Unix.Native.Syscall.link(Path.Combine(dir, "file"), Path.Combine(dir, "hard")), Is.Zero);
        Assert.That(Mono.Unix.Native.Syscall.rename(Path.Combine(dir, "hard"), Path.Combine(dir, "moved")), Is.Zero);
        File.WriteAllText(Path.Combine(dir, "gone"), "x");
        File.Delete(Path.Combine(dir, "gone"));
        Thread.Sleep(300); // an invalidation is sent from a thread-pool thread: let any arrive
        string[] names = ["dir", "file", "fifo", "link", "moved"];
        foreach (string path in new[] { dir }.Concat(names[1..].Select(n => Path.Combine(dir, n))))
        {
            Assert.That(Mono.Unix.Native.Syscall.lstat(path, out Mono.Unix.Native.Stat _), Is.Zero, path);
        }
        // At most the lookup the kernel makes before creating a name (it finds nothing); a second one would be the
        // kernel looking the name up again after being told to forget it.
        Assert.That(names.ToDictionary(n => n, counting!.Lookups), Has.All.Property("Value").LessThanOrEqualTo(1L),
            "every name stayed in the kernel's cache");
        Assert.That(mounted.Log, Is.Empty);
    }

    [Test]
    public void AbsentNamesAreRememberedByTheKernelAndNamesMadeThroughTheMountReplaceThem()
    {
        using var fixture = new OverlayFixture(lowers: 1);
        CountingLookups? counting = null;
        using Mounted mounted = Mounted.Start(fixture, out string mnt, fs => counting = new CountingLookups(new OverlayFuseAdapter(fs)));
        string missing = Path.Combine(mnt, "missing");
        Assert.That(File.Exists(missing), Is.False);
        long asked = counting!.Lookups("missing");
        Assert.That(asked, Is.GreaterThan(0), "the first lookup reached the daemon");
        for (int i = 0; i < 5; i++)
        {
            Assert.That(File.Exists(missing), Is.False);
        }
        Assert.That(counting.Lookups("missing"), Is.EqualTo(asked), "later lookups were answered by the kernel's negative entry");

        File.WriteAllText(missing, "made through the mount");
        Assert.That(File.ReadAllText(missing), Is.EqualTo("made through the mount"), "the negative entry did not hide the new file");
        Assert.That(Directory.GetFileSystemEntries(mnt).Select(Path.GetFileName), Does.Contain("missing"));
    }

    /// <summary>
    /// READDIRPLUS: a listing brings the attributes of its entries, so the lstat of each listed name (what
    /// <c>ls -l</c> and <c>find</c> do) is answered by the kernel. The handler's lookups all happen while listing, none
    /// after; without READDIRPLUS (the libfuse path, which does not offer it) every lstat is a lookup request.
    /// </summary>
    [TestCase(false, TestName = "ListingWithAttributesNeedsNoLookupPerName")]
    [TestCase(true, TestName = "ListingWithAttributesThroughLibfuseLooksUpEachName")]
    public void ListingWithAttributes(bool libfuse)
    {
        using var fixture = new OverlayFixture(lowers: 1);
        string dir = Path.Combine(fixture.Lowers[0], "many");
        Directory.CreateDirectory(dir);
        for (int i = 0; i < 300; i++)
        {
            OverlayFixture.WriteFile(Path.Combine(dir, $"file-with-a-longer-name-{i:D4}"), $"{i}");
        }
        CountingLookups? counting = null;
        using Mounted mounted = Mounted.Start(fixture, out string mnt, fs => counting = new CountingLookups(new OverlayFuseAdapter(fs)),
            new FuseMountOptions { UseLibFuse = libfuse });
        string[] names = Directory.GetFileSystemEntries(Path.Combine(mnt, "many"));
        long whileListing = counting!.Total;
        foreach (string name in names)
        {
            Assert.That(Mono.Unix.Native.Syscall.lstat(name, out Mono.Unix.Native.Stat st), Is.Zero);
            Assert.That(st.st_size, Is.EqualTo(Path.GetFileName(name)[^4..].TrimStart('0').Length is 0 ? 1 : Path.GetFileName(name)[^4..].TrimStart('0').Length));
        }
        long afterStats = counting.Total - whileListing;
        Assert.That(names, Has.Length.EqualTo(300));
        if (libfuse)
        {
            Assert.That(afterStats, Is.EqualTo(300), "each lstat was a lookup request");
        }
        else
        {
            Assert.That(whileListing, Is.GreaterThanOrEqualTo(300), "the listing looked the entries up");
            Assert.That(afterStats, Is.Zero, "the kernel answered every lstat from what the listing brought");
        }
        Assert.That(mounted.Log, Is.Empty);
    }

    /// <summary>
    /// cache_readdir: a directory listed again is served by the kernel without a READDIR request; a name made through
    /// the library (the adapter invalidates the directory) and one made through the mount both show in the next
    /// listing.
    /// </summary>
    [Test]
    public void ASecondListingIsServedByTheKernelAndChangesStillShow()
    {
        using var fixture = new OverlayFixture(lowers: 1);
        for (int i = 0; i < 50; i++)
        {
            OverlayFixture.WriteFile(Path.Combine(fixture.Lowers[0], "d", $"f{i}"), "x");
        }
        CountingListings? counting = null;
        using Mounted mounted = Mounted.Start(fixture, out string mnt, fs => counting = new CountingListings(new OverlayFuseAdapter(fs)));
        string dir = Path.Combine(mnt, "d");
        Assert.That(Directory.GetFileSystemEntries(dir), Has.Length.EqualTo(50));
        int first = counting!.Listings;
        Assert.That(first, Is.GreaterThan(0));
        Assert.That(Directory.GetFileSystemEntries(dir), Has.Length.EqualTo(50));
        Assert.That(counting.Listings, Is.EqualTo(first), "the second listing came from the kernel's cache");

        ulong d = mounted.FileSystem.Lookup(OverlayFileSystem.RootIno, "d").Ino;
        mounted.FileSystem.Create(d, "library-made", 0x1A4, OverlayCaller.Root).Handle.Dispose();
        AssertEventually(() => Directory.GetFileSystemEntries(dir).Length, 51, "a name made through the library");
        File.WriteAllText(Path.Combine(dir, "mount-made"), "y");
        Assert.That(Directory.GetFileSystemEntries(dir), Has.Length.EqualTo(52), "a name made through the mount");
        File.Delete(Path.Combine(dir, "f0"));
        Assert.That(Directory.GetFileSystemEntries(dir), Has.Length.EqualTo(51), "a name removed through the mount");
        Assert.That(mounted.Log, Is.Empty);
    }

    private sealed class CountingListings(IFuseLowLevelHandler inner) : DelegatingFuseHandler(inner)
    {
        private int _listings;

        public int Listings => Volatile.Read(ref _listings);

        public override IReadOnlyList<OverlayDirEntry> ReadDirectory(ulong ino, ulong handle)
        {
            Interlocked.Increment(ref _listings);
            return base.ReadDirectory(ino, handle);
        }
    }

    [Test]
    public void TheWritebackCacheKeepsDataSizesAndCopyUpRight()
    {
        using var fixture = new OverlayFixture(lowers: 1);
        byte[] big = Checks.RandomBytes(new Random(9), 2 << 20);
        OverlayFixture.WriteFile(Path.Combine(fixture.Lowers[0], "big"), big);
        byte[] model = big.ToArray();
        using (Mounted mounted = Mounted.Start(fixture, out string mnt, options: new FuseMountOptions { WritebackCache = true, MaxWrite = 128 * 1024 }))
        {
            string path = Path.Combine(mnt, "big");
            Assert.That(File.Exists(path), Is.True); // a request: init has been answered
            Assert.That(mounted.Session.Connection?.WritebackCache, Is.True, "the kernel granted the write-back cache");
            Assert.That(mounted.Session.Connection?.MaxWrite, Is.EqualTo(128 * 1024), "max_write as asked");
            var random = new Random(10);
            // a write-only descriptor: the kernel reads partial pages through it to merge unaligned writes
            using (var handle = File.OpenHandle(path, FileMode.Open, FileAccess.Write))
            {
                for (int i = 0; i < 200; i++)
                {
                    int length = random.Next(1, 9000);
                    long offset = random.NextInt64(0, model.Length - length);
                    byte[] chunk = Checks.RandomBytes(random, length);
                    RandomAccess.Write(handle, chunk, offset);
                    chunk.CopyTo(model, offset);
                }
                RandomAccess.Write(handle, "tail"u8, model.Length); // grows the file: the kernel keeps the size
                model = [.. model, .. "tail"u8.ToArray()];
            }
            Assert.That(new FileInfo(path).Length, Is.EqualTo(model.Length));
            Assert.That(File.ReadAllBytes(path), Is.EqualTo(model), "read back through the mount");

            File.WriteAllText(Path.Combine(mnt, "appended"), "one");
            File.AppendAllText(Path.Combine(mnt, "appended"), " two");
            Assert.That(File.ReadAllText(Path.Combine(mnt, "appended")), Is.EqualTo("one two"), "O_APPEND under the write-back cache");
            Assert.That(mounted.Log, Is.Empty);
        }
        // everything reached the overlay by unmount: a fresh overlay (no kernel cache) reads the same
        using OverlayFileSystem fs = fixture.Open();
        Assert.That(OverlayFixture.ReadBytes(fs, "big"), Is.EqualTo(model), "after unmount, straight from the layers");
        Assert.That(OverlayFixture.ReadText(fs, "appended"), Is.EqualTo("one two"));
        string upperBig = Path.Combine(fixture.Upper!, "big");
        Assert.That(new FileInfo(upperBig).Length, Is.LessThan(big.Length), "block copy-up, not a whole copy");
        Checks.AssertClean(upperBig);
    }

    /// <summary>
    /// With the write-back cache the kernel keeps a written file's times and sends them (SETATTR mtime, ctime) when it
    /// drops the inode, which for a file just unlinked comes after the overlay has forgotten its name. As tar does
    /// with the placeholders of delayed symbolic links: create, write, close, unlink. Answering ENOENT made the kernel
    /// record a write-back error, and syncfs of the whole mount failed with it.
    /// </summary>
    [Test]
    public void FilesWrittenThenUnlinkedLeaveNoWritebackErrorBehind()
    {
        using var fixture = new OverlayFixture(lowers: 1);
        OverlayFixture.WriteFile(Path.Combine(fixture.Lowers[0], "keep"), "keep");
        using Mounted mounted = Mounted.Start(fixture, out string mnt, options: new FuseMountOptions { WritebackCache = true });
        for (int i = 0; i < 50; i++)
        {
            string path = Path.Combine(mnt, $"placeholder-{i}");
            File.WriteAllText(path, "written, closed, then unlinked");
            File.Delete(path);
        }
        using (SafeFileHandleForDirectory root = SafeFileHandleForDirectory.Open(mnt))
        {
            Assert.That(root.SyncFs(), Is.Zero, $"syncfs of the mount: {Marshal.GetLastPInvokeError()}");
        }

        // an unlinked file still open: fchmod, ftruncate and futimens through its descriptor
        string open = Path.Combine(mnt, "open-unlinked");
        using (var stream = new FileStream(open, FileMode.CreateNew, FileAccess.ReadWrite))
        {
            stream.Write(new byte[10_000]);
            stream.Flush();
            File.Delete(open);
            stream.SetLength(1234);
            File.SetUnixFileMode(stream.SafeFileHandle, UnixFileMode.UserRead | UnixFileMode.UserWrite);
            Assert.That(stream.Length, Is.EqualTo(1234));
            Assert.That(File.GetUnixFileMode(stream.SafeFileHandle), Is.EqualTo(UnixFileMode.UserRead | UnixFileMode.UserWrite));
        }
        Assert.That(Directory.GetFileSystemEntries(mnt).Select(Path.GetFileName), Is.EqualTo(new[] { "keep" }));
        Assert.That(mounted.Log, Is.Empty);
    }

    /// <summary>A directory descriptor for syncfs(2).</summary>
    private sealed partial class SafeFileHandleForDirectory : Microsoft.Win32.SafeHandles.SafeHandleZeroOrMinusOneIsInvalid
    {
        private SafeFileHandleForDirectory()
            : base(ownsHandle: true)
        {
        }

        public static SafeFileHandleForDirectory Open(string path)
        {
            var handle = new SafeFileHandleForDirectory();
            handle.SetHandle(open(path, 0x10000 /* O_DIRECTORY */));
            return handle.IsInvalid ? throw new IOException($"{path}: open failed ({Marshal.GetLastPInvokeError()})") : handle;
        }

        public int SyncFs() => syncfs((int)handle);

        protected override bool ReleaseHandle() => close((int)handle) == 0;

        // int open(const char *pathname, int flags);
        [LibraryImport("libc", EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
        private static partial nint open(string pathname, int flags);

        // int syncfs(int fd);
        [LibraryImport("libc", SetLastError = true)]
        private static partial int syncfs(int fd);

        // int close(int fd);
        [LibraryImport("libc", SetLastError = true)]
        private static partial int close(int fd);
    }

    private static byte[] ReadAll(FileStream stream)
    {
        var buffer = new byte[stream.Length];
        int done = 0;
        while (done < buffer.Length)
        {
            int n = RandomAccess.Read(stream.SafeFileHandle, buffer.AsSpan(done), done);
            if (n == 0)
            {
                return buffer[..done];
            }
            done += n;
        }
        return buffer;
    }

    /// <summary>The invalidation runs on a thread-pool thread: allow it a moment.</summary>
    private static void AssertEventually(Func<byte[]> read, byte[] expected, string what) =>
        AssertEventually(read, expected, what, (a, b) => a.AsSpan().SequenceEqual(b));

    private static void AssertEventually<T>(Func<T> read, T expected, string what) =>
        AssertEventually(read, expected, what, EqualityComparer<T>.Default.Equals);

    private static void AssertEventually<T>(Func<T> read, T expected, string what, Func<T, T, bool> same)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        T seen;
        do
        {
            seen = read();
            if (same(seen, expected))
            {
                return;
            }
            Thread.Sleep(5);
        }
        while (clock.ElapsedMilliseconds < 300);
        Assert.That(seen, Is.EqualTo(expected), $"{what}: seen through the mount within 300 ms");
    }

    /// <summary>
    /// A close of a descriptor sends no FLUSH: the overlay has nothing to do at one, so the first is answered ENOSYS and
    /// the kernel sends no more (each close of each file was a round trip the closing process waited for, where
    /// fuse-overlayfs answers none). A handler that does something at a flush still gets every one, over both
    /// transports; the bytes written before each close are there either way.
    /// </summary>
    [Test]
    public void ClosesSendNoFlushUnlessTheHandlerWantsThem([Values] bool handlerWantsThem, [Values] bool libfuse)
    {
        using var fixture = new OverlayFixture(lowers: 1);
        OverlayFixture.WriteFile(Path.Combine(fixture.Lowers[0], "f"), "lower");
        CountingFlushes? counting = null;
        using Mounted mounted = Mounted.Start(fixture, out string mnt,
            fs => counting = new CountingFlushes(new OverlayFuseAdapter(fs), handlerWantsThem), new FuseMountOptions { UseLibFuse = libfuse });
        string file = Path.Combine(mnt, "f");
        for (int i = 0; i < 10; i++)
        {
            Assert.That(File.ReadAllText(file), Is.EqualTo(i == 0 ? "lower" : $"written {i - 1}"));
            File.WriteAllText(file, $"written {i}");
        }
        Assert.That(File.ReadAllText(file), Is.EqualTo("written 9"));
        if (handlerWantsThem)
        {
            Assert.That(counting!.Flushes, Is.GreaterThanOrEqualTo(21), "a flush at each of the 21 closes");
        }
        else
        {
            Assert.That(counting!.Flushes, Is.Zero, "no flush reached the handler");
        }
        Assert.That(mounted.Log, Is.Empty);
    }

    /// <summary>
    /// The kernel looks up each name before it makes it; the absent name is answered (a negative entry) without an
    /// exception in the daemon, where each create used to throw and catch one ENOENT (1.7 % of the daemon's CPU in
    /// a tar -x). Absent names still read as absent, and the files made are there.
    /// </summary>
    [Test]
    public void NamesLookedUpToBeMadeCostNoException()
    {
        using var fixture = new OverlayFixture(lowers: 1);
        using Mounted mounted = Mounted.Start(fixture, out string mnt);
        Assert.That(File.Exists(Path.Combine(mnt, "warm-up")), Is.False); // INIT done
        int thrown = 0;
        EventHandler<System.Runtime.ExceptionServices.FirstChanceExceptionEventArgs> count = (_, e) =>
        {
            if (e.Exception.Message.Contains("made-by-create-", StringComparison.Ordinal))
            {
                Interlocked.Increment(ref thrown);
            }
        };
        AppDomain.CurrentDomain.FirstChanceException += count;
        try
        {
            for (int i = 0; i < 50; i++)
            {
                string path = Path.Combine(mnt, $"made-by-create-{i}");
                Assert.That(File.Exists(path), Is.False);
                File.WriteAllText(path, $"{i}");
            }
        }
        finally
        {
            AppDomain.CurrentDomain.FirstChanceException -= count;
        }
        Assert.That(thrown, Is.Zero, "exceptions thrown for absent names");
        Assert.That(File.ReadAllText(Path.Combine(mnt, "made-by-create-49")), Is.EqualTo("49"));
        Assert.That(Directory.GetFiles(mnt, "made-by-create-*"), Has.Length.EqualTo(50));
        Assert.That(mounted.Log, Is.Empty);
    }

    /// <summary>
    /// A read request may carry more than max_write: max_pages, which bounds both, is 1 MiB whatever the write size
    /// (a 128 KiB max_write, baoverlayfs's default, made every read of a sequential reader 128 KiB, two round trips
    /// where fuse-overlayfs's mount takes one). The bytes read are the file's.
    /// </summary>
    [Test]
    public void ReadRequestsAreNotCutToTheWriteSize()
    {
        using var fixture = new OverlayFixture(lowers: 1);
        byte[] data = Checks.RandomBytes(new Random(11), 8 << 20);
        OverlayFixture.WriteFile(Path.Combine(fixture.Lowers[0], "big"), data);
        LargestRead? largest = null;
        using Mounted mounted = Mounted.Start(fixture, out string mnt, fs => largest = new LargestRead(new OverlayFuseAdapter(fs)),
            new FuseMountOptions { MaxWrite = 128 * 1024 });
        // A sequential reader (fio's default): POSIX_FADV_SEQUENTIAL doubles the kernel's 128 KiB readahead window.
        byte[] read = new byte[data.Length];
        using (var stream = new FileStream(Path.Combine(mnt, "big"), FileMode.Open, FileAccess.Read, FileShare.Read, 1))
        {
            int fd = (int)stream.SafeFileHandle.DangerousGetHandle();
            Assert.That(Mono.Unix.Native.Syscall.posix_fadvise(fd, 0, 0, Mono.Unix.Native.PosixFadviseAdvice.POSIX_FADV_SEQUENTIAL), Is.Zero);
            for (int done = 0; done < read.Length;)
            {
                int n = stream.Read(read, done, Math.Min(1 << 20, read.Length - done));
                Assert.That(n, Is.GreaterThan(0));
                done += n;
            }
        }
        Assert.That(read, Is.EqualTo(data));
        Assert.That(largest!.Largest, Is.GreaterThan(128 * 1024), "the largest read request, in bytes");
        Assert.That(mounted.Log, Is.Empty);
    }

    private sealed class LargestRead(IFuseLowLevelHandler inner) : DelegatingFuseHandler(inner)
    {
        private int _largest;

        public int Largest => Volatile.Read(ref _largest);

        public override int Read(ulong ino, ulong handle, Span<byte> buffer, long offset)
        {
            int seen;
            while ((seen = Volatile.Read(ref _largest)) < buffer.Length && Interlocked.CompareExchange(ref _largest, buffer.Length, seen) != seen)
            {
            }
            return Inner.Read(ino, handle, buffer, offset);
        }
    }

    private sealed class CountingFlushes(IFuseLowLevelHandler inner, bool wanted) : DelegatingFuseHandler(inner)
    {
        private long _flushes;

        public long Flushes => Interlocked.Read(ref _flushes);

        public override bool HandlesFlush => wanted || base.HandlesFlush;

        public override void Flush(ulong ino, ulong handle)
        {
            Interlocked.Increment(ref _flushes);
            Inner.Flush(ino, handle);
        }
    }

    private sealed class CountingLookups(IFuseLowLevelHandler inner) : DelegatingFuseHandler(inner)
    {
        private readonly System.Collections.Concurrent.ConcurrentDictionary<string, long> _lookups = new();

        public long Lookups(string name) => _lookups.GetValueOrDefault(name);

        public long Total => _lookups.Values.Sum();

        public override OverlayStat Lookup(ulong parent, string name, FuseContext context)
        {
            _lookups.AddOrUpdate(name, 1, (_, n) => n + 1);
            return Inner.Lookup(parent, name, context);
        }

        /// <summary>The lookups a READDIRPLUS listing carries count too (the handler may skip names the kernel knows).</summary>
        public override OverlayStat? LookupForListing(ulong parent, string name, FuseContext context)
        {
            OverlayStat? stat = Inner.LookupForListing(parent, name, context);
            if (stat is not null)
            {
                _lookups.AddOrUpdate(name, 1, (_, n) => n + 1);
            }
            return stat;
        }
    }

    private sealed class CountingReads(IFuseLowLevelHandler inner) : DelegatingFuseHandler(inner)
    {
        private long _reads;

        public long Reads => Interlocked.Read(ref _reads);

        public override int Read(ulong ino, ulong handle, Span<byte> buffer, long offset)
        {
            Interlocked.Increment(ref _reads);
            return Inner.Read(ino, handle, buffer, offset);
        }
    }
}
