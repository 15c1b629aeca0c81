using System.Formats.Tar;
using BAOverlay.Store;
using Mono.Unix.Native;

namespace BAOverlay.Tests.Store;

/// <summary>A clock the test moves by hand (leases and ages); starts at the real time, since file times are real.</summary>
internal sealed class ManualClock : TimeProvider
{
    public DateTimeOffset Now { get; set; } = DateTimeOffset.UtcNow;

    public override DateTimeOffset GetUtcNow() => Now;

    public void Advance(TimeSpan by) => Now += by;
}

internal static class StoreTrees
{
    public static void RequireRoot()
    {
        if (Syscall.geteuid() != 0)
        {
            Assert.Ignore("layer trees with whiteouts (mknod), other owners and trusted.* xattrs need root");
        }
    }

    /// <summary>A layer as container tools unpack one: files, a directory, absolute and relative symbolic links, a
    /// whiteout (0/0 character device), an opaque directory, an owner that is not root, a user xattr, a FIFO.</summary>
    public static string MakeLayer(string directory, string content = "hello from a layer")
    {
        Directory.CreateDirectory(directory);
        File.WriteAllText(Path.Combine(directory, "file.txt"), content);
        Directory.CreateDirectory(Path.Combine(directory, "etc", "conf.d"));
        File.WriteAllText(Path.Combine(directory, "etc", "conf.d", "a.conf"), "a=1\n");
        File.WriteAllBytes(Path.Combine(directory, "etc", "big.bin"), Enumerable.Range(0, 300_000).Select(i => (byte)(i * 7)).ToArray());
        File.CreateSymbolicLink(Path.Combine(directory, "abs-link"), "/etc/passwd");
        File.CreateSymbolicLink(Path.Combine(directory, "rel-link"), "file.txt");
        Assert.That(Syscall.mknod(Path.Combine(directory, "deleted"), FilePermissions.S_IFCHR, 0), Is.Zero, "mknod whiteout");
        Directory.CreateDirectory(Path.Combine(directory, "opaque"));
        Assert.That(Syscall.lsetxattr(Path.Combine(directory, "opaque"), "trusted.overlay.opaque", "y"u8.ToArray(), XattrFlags.XATTR_AUTO), Is.Zero);
        File.WriteAllText(Path.Combine(directory, "opaque", "inside"), "inside");
        Assert.That(Syscall.lchown(Path.Combine(directory, "file.txt"), 1000, 1001), Is.Zero);
        Assert.That(Syscall.chmod(Path.Combine(directory, "file.txt"), (FilePermissions)0x1A4 | FilePermissions.S_ISUID), Is.Zero);
        Assert.That(Syscall.lsetxattr(Path.Combine(directory, "etc", "conf.d", "a.conf"), "user.note", "kept"u8.ToArray(), XattrFlags.XATTR_AUTO), Is.Zero);
        Assert.That(Syscall.mkfifo(Path.Combine(directory, "pipe"), (FilePermissions)0x1A4), Is.Zero);
        return directory;
    }

    /// <summary>A small directory tree (no root needed).</summary>
    public static string MakePlain(string directory, string content)
    {
        Directory.CreateDirectory(Path.Combine(directory, "d"));
        File.WriteAllText(Path.Combine(directory, "d", "f"), content);
        File.CreateSymbolicLink(Path.Combine(directory, "l"), "d/f");
        return directory;
    }

    public static byte[] Tar(Action<TarWriter> write)
    {
        var buffer = new MemoryStream();
        using (var writer = new TarWriter(buffer, TarEntryFormat.Pax, leaveOpen: true))
        {
            write(writer);
        }
        return buffer.ToArray();
    }

    public static PaxTarEntry TarFile(string name, string content, int mode = 0x1A4)
    {
        var entry = new PaxTarEntry(TarEntryType.RegularFile, name) { DataStream = new MemoryStream(System.Text.Encoding.UTF8.GetBytes(content)), Mode = (UnixFileMode)mode };
        return entry;
    }

    public static LayerStoreOptions Options(string host, TimeProvider? clock = null, Action<LayerStoreOptions>? _ = null) => new()
    {
        HostId = host,
        TimeProvider = clock ?? TimeProvider.System,
    };

    /// <summary>Names under a directory, recursively, relative, sorted.</summary>
    public static List<string> Listing(string directory) =>
        Directory.EnumerateFileSystemEntries(directory, "*", new EnumerationOptions { RecurseSubdirectories = true, AttributesToSkip = 0 })
            .Select(p => Path.GetRelativePath(directory, p)).Order(StringComparer.Ordinal).ToList();
}
