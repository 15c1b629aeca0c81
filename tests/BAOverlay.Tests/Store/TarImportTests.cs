using System.Formats.Tar;
using System.Security.Cryptography;
using BAOverlay.Store;
using Mono.Unix.Native;

namespace BAOverlay.Tests.Store;

/// <summary>Importing OCI layer tars: whiteouts and opaque markers become overlay whiteouts, the result is the same
/// layer as the same tree published from a directory, and hostile archives are refused without writing outside.</summary>
[TestFixture]
public class TarImportTests
{
    private static byte[] ExampleLayer() => StoreTrees.Tar(writer =>
    {
        writer.WriteEntry(new PaxTarEntry(TarEntryType.Directory, "./") { Mode = (UnixFileMode)0x1ED });
        writer.WriteEntry(new PaxTarEntry(TarEntryType.Directory, "etc/") { Mode = (UnixFileMode)0x1ED });
        writer.WriteEntry(StoreTrees.TarFile("etc/hosts", "127.0.0.1 localhost\n"));
        writer.WriteEntry(new PaxTarEntry(TarEntryType.SymbolicLink, "etc/link") { LinkName = "/etc/hosts", Mode = (UnixFileMode)0x1FF });
        writer.WriteEntry(new PaxTarEntry(TarEntryType.HardLink, "etc/hard") { LinkName = "etc/hosts" });
        writer.WriteEntry(StoreTrees.TarFile("etc/.wh.removed", ""));
        writer.WriteEntry(new PaxTarEntry(TarEntryType.Directory, "var/", new Dictionary<string, string> { ["SCHILY.xattr.user.tag"] = "v" }) { Mode = (UnixFileMode)0x1C0, Uid = 7, Gid = 8 });
        writer.WriteEntry(StoreTrees.TarFile("var/.wh..wh..opq", ""));
        writer.WriteEntry(StoreTrees.TarFile("var/new", "fresh"));
        writer.WriteEntry(StoreTrees.TarFile("implicit/parent/file", "parents made on the way"));
    });

    [Test]
    public void AnOciLayerBecomesAnOverlayLayerWithItsTarDigestRecorded()
    {
        StoreTrees.RequireRoot();
        using var temp = new TempDir();
        using LayerStore store = LayerStore.Create(temp.File("store"), StoreTrees.Options("h"));
        byte[] tar = ExampleLayer();
        File.WriteAllBytes(temp.File("layer.tar"), tar);
        StoreLayer layer = store.ImportTarFile(temp.File("layer.tar"));
        string tree = layer.Directory;
        Assert.Multiple(() =>
        {
            Assert.That(layer.TarDigest, Is.EqualTo("sha256:" + Convert.ToHexStringLower(SHA256.HashData(tar))));
            Assert.That(File.ReadAllText(Path.Combine(tree, "etc", "hosts")), Is.EqualTo("127.0.0.1 localhost\n"));
            Assert.That(File.ReadAllText(Path.Combine(tree, "etc", "hard")), Is.EqualTo("127.0.0.1 localhost\n"));
            Assert.That(new FileInfo(Path.Combine(tree, "etc", "link")).LinkTarget, Is.EqualTo("/etc/hosts"));
            Assert.That(Syscall.lstat(Path.Combine(tree, "etc", "removed"), out Stat whiteout), Is.Zero);
            Assert.That(whiteout.st_mode & FilePermissions.S_IFMT, Is.EqualTo(FilePermissions.S_IFCHR));
            Assert.That(whiteout.st_rdev, Is.Zero);
            Assert.That(File.Exists(Path.Combine(tree, "etc", ".wh.removed")), Is.False);
            Assert.That(Syscall.lgetxattr(Path.Combine(tree, "var"), "trusted.overlay.opaque", out byte[] opaque), Is.EqualTo(1));
            Assert.That(opaque, Is.EqualTo("y"u8.ToArray()));
            Assert.That(Syscall.lgetxattr(Path.Combine(tree, "var"), "user.tag", out byte[] tag), Is.EqualTo(1));
            Assert.That(Syscall.lstat(Path.Combine(tree, "var"), out Stat var), Is.Zero);
            Assert.That(((uint)var.st_mode & 0xFFF, var.st_uid, var.st_gid), Is.EqualTo((0x1C0u, 7u, 8u)));
            Assert.That(File.Exists(Path.Combine(tree, "var", ".wh..wh..opq")), Is.False);
            Assert.That(File.ReadAllText(Path.Combine(tree, "implicit", "parent", "file")), Is.EqualTo("parents made on the way"));
        });
        store.VerifyLayer(layer.Digest);

        // The same tree, copied from the directory the import made, is the same layer; gzip gives the same diff id.
        using LayerStore other = LayerStore.Create(temp.File("store2"), StoreTrees.Options("h"));
        Assert.That(other.PublishDirectory(tree).Digest, Is.EqualTo(layer.Digest));
        var gzipped = new MemoryStream();
        using (var gzip = new System.IO.Compression.GZipStream(gzipped, System.IO.Compression.CompressionLevel.Fastest, leaveOpen: true))
        {
            gzip.Write(tar);
        }
        gzipped.Position = 0;
        using LayerStore third = LayerStore.Create(temp.File("store3"), StoreTrees.Options("h"));
        StoreLayer fromGzip = third.ImportTar(gzipped);
        Assert.That((fromGzip.Digest, fromGzip.TarDigest), Is.EqualTo((layer.Digest, layer.TarDigest)));
    }

    private static IEnumerable<TestCaseData> HostileTars()
    {
        // Each writes its entries given the path of a directory outside the store that it must not reach.
        static TestCaseData Case(string name, Action<TarWriter, string> write, string reason) => new TestCaseData(write, reason).SetArgDisplayNames(name);
        yield return Case("dotdot", (w, _) => w.WriteEntry(StoreTrees.TarFile("a/../../escaped", "x")), "'..'");
        yield return Case("absolute", (w, _) => w.WriteEntry(StoreTrees.TarFile("/escaped", "x")), "absolute path");
        yield return Case("through-symlink", (w, outside) =>
        {
            w.WriteEntry(new PaxTarEntry(TarEntryType.SymbolicLink, "link") { LinkName = outside });
            w.WriteEntry(StoreTrees.TarFile("link/escaped", "x"));
        }, "symbolic link");
        yield return Case("through-relative-symlink", (w, outside) =>
        {
            w.WriteEntry(new PaxTarEntry(TarEntryType.SymbolicLink, "link") { LinkName = "../../../../../../../../.." + outside });
            w.WriteEntry(StoreTrees.TarFile("link/escaped", "x"));
        }, "symbolic link");
        yield return Case("hardlink-out", (w, _) => w.WriteEntry(new PaxTarEntry(TarEntryType.HardLink, "h") { LinkName = "../../etc/passwd" }), "'..'");
        yield return Case("hardlink-absolute", (w, _) => w.WriteEntry(new PaxTarEntry(TarEntryType.HardLink, "h") { LinkName = "/etc/passwd" }), "absolute path");
        yield return Case("hardlink-missing", (w, _) => w.WriteEntry(new PaxTarEntry(TarEntryType.HardLink, "h") { LinkName = "nothing" }), "not in the layer");
        yield return Case("hardlink-through-symlink", (w, outside) =>
        {
            w.WriteEntry(new PaxTarEntry(TarEntryType.SymbolicLink, "link") { LinkName = outside });
            w.WriteEntry(new PaxTarEntry(TarEntryType.HardLink, "h") { LinkName = "link/secret" });
        }, "symbolic link");
        yield return Case("hardlink-to-directory", (w, _) =>
        {
            w.WriteEntry(new PaxTarEntry(TarEntryType.Directory, "d/"));
            w.WriteEntry(new PaxTarEntry(TarEntryType.HardLink, "h") { LinkName = "d" });
        }, "a hard link to a directory");
        yield return Case("too-large", (w, _) => w.WriteEntry(StoreTrees.TarFile("big", new string('x', 5000))), "past the 4096 bytes");
        yield return Case("whiteout-dotdot", (w, _) => w.WriteEntry(StoreTrees.TarFile("d/.wh...", "")), "'..'");
    }

    [TestCaseSource(nameof(HostileTars))]
    public void AHostileTarIsRefusedWithTheEntryNamedAndNothingWrittenOutside(Action<TarWriter, string> write, string reason)
    {
        using var temp = new TempDir();
        string outside = temp.File("OUTSIDE");
        Directory.CreateDirectory(outside);
        File.WriteAllText(Path.Combine(outside, "secret"), "secret");
        string storeDirectory = temp.File("store");
        using LayerStore store = LayerStore.Create(storeDirectory, new LayerStoreOptions { HostId = "h", MaxLayerBytes = 4096 });
        byte[] tar = StoreTrees.Tar(w => write(w, outside));
        var error = Assert.Throws<LayerStoreException>(() => store.ImportTar(new MemoryStream(tar)));
        Assert.That(error!.Message, Does.Contain("layer tar entry").And.Contain(reason));
        Assert.That(Directory.EnumerateFileSystemEntries(outside).Select(Path.GetFileName), Is.EqualTo(new[] { "secret" }), "nothing written outside");
        Assert.That(File.Exists(temp.File("escaped")) || File.Exists("/escaped"), Is.False);
        Assert.That(Directory.EnumerateFileSystemEntries(Path.Combine(storeDirectory, "staging")), Is.Empty, "staging cleaned");
        Assert.That(Directory.EnumerateFileSystemEntries(Path.Combine(storeDirectory, "layers")), Is.Empty);
    }

    [Test]
    public void ATruncatedTarOrOneClaimingAHugeFileIsRefused()
    {
        using var temp = new TempDir();
        using LayerStore store = LayerStore.Create(temp.File("store"), StoreTrees.Options("h"));
        byte[] tar = StoreTrees.Tar(w => w.WriteEntry(new UstarTarEntry(TarEntryType.RegularFile, "f") { DataStream = new MemoryStream(new byte[2000]) }));
        var truncated = Assert.Throws<LayerStoreException>(() => store.ImportTar(new MemoryStream(tar[..1024])));
        Assert.That(truncated!.Message, Does.Contain("truncated"));

        // The size field says 8 GiB (octal, in the ustar header), the archive holds 2000 bytes.
        byte[] huge = (byte[])tar.Clone();
        System.Text.Encoding.ASCII.GetBytes("77777777777\0").CopyTo(huge, 124);
        FixChecksum(huge);
        using LayerStore limited = LayerStore.Open(temp.File("store"), new LayerStoreOptions { HostId = "h", MaxLayerBytes = 1L << 30 });
        var tooLarge = Assert.Throws<LayerStoreException>(() => limited.ImportTar(new MemoryStream(huge)));
        Assert.That(tooLarge!.Message, Does.Contain("past the"));
        var unlimited = Assert.Throws<LayerStoreException>(() => store.ImportTar(new MemoryStream(huge)));
        Assert.That(unlimited!.Message, Does.Contain("truncated").Or.Contain("malformed"));
        Assert.That(Directory.EnumerateFileSystemEntries(temp.File("store/staging")), Is.Empty);
    }

    private static void FixChecksum(byte[] header)
    {
        for (int i = 148; i < 156; i++)
        {
            header[i] = (byte)' ';
        }
        int sum = header.AsSpan(0, 512).ToArray().Sum(b => b);
        System.Text.Encoding.ASCII.GetBytes(Convert.ToString(sum, 8).PadLeft(6, '0') + "\0 ").CopyTo(header, 148);
    }

}
