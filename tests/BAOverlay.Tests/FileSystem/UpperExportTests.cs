using System.Diagnostics;
using System.Formats.Tar;
using System.Security.Cryptography;
using System.Text;
using BAOverlay.FileSystem;
using BAOverlay.Format;
using Mono.Unix.Native;
using static BAOverlay.Tests.FileSystem.OverlayFixture;

namespace BAOverlay.Tests.FileSystem;

/// <summary>
/// Export of the upper layer: as a plain overlayfs upper directory (checked by mounting it with kernel overlayfs over
/// the same lower directories) and as an OCI layer tar (checked by applying it the OCI way over a copy of the lower
/// tree); both must show exactly the tree the overlay shows. Needs root (whiteout devices, trusted xattrs, mount).
/// </summary>
public class UpperExportTests
{
    private const int BigSize = 1 << 20;
    private const int GrownSize = BigSize + (512 << 10);

    private static void RequireRoot()
    {
        if (Syscall.geteuid() != 0)
        {
            Assert.Ignore("needs root: whiteouts are 0/0 character devices, opaque directories use trusted.overlay.* xattrs, and the check mounts kernel overlayfs");
        }
    }

    // ------------------------------------------------------------------ (a) directory

    [Test]
    public void DirectoryExportIsAKernelOverlayfsUpperShowingTheSameTree()
    {
        RequireRoot();
        using var f = new OverlayFixture();
        byte[] bigMerged = MakeChanges(f);
        SortedDictionary<string, string> expected = VisibleTree(f, withTimes: true);
        string exported = Path.Combine(f.Root, "exported");

        UpperExportResult result = UpperExport.ToDirectory(f.Upper!, exported);

        Assert.That(result.Warnings, Is.Empty, "warnings");
        Assert.That(result.MaterializedBCowFiles, Is.EqualTo(2), "big.bin and big2.bin were B-CoW files");
        Assert.That(result.Whiteouts, Is.EqualTo(2), "dir/gone.txt and other.txt");
        Assert.That(result.OpaqueDirectories, Is.EqualTo(1), "old");
        Assert.That(Directory.EnumerateFileSystemEntries(f.Root).Where(p => p.Contains(".tmp-")), Is.Empty, "no temporary left");

        // The files as written: plain, sparse, no private attributes, whiteouts and opaque markers in kernel form.
        string big = Path.Combine(exported, "big.bin");
        Assert.That(File.ReadAllBytes(big), Is.EqualTo(bigMerged), "big.bin has the merged content");
        Assert.That(Syscall.lstat(big, out Stat bigStat), Is.Zero);
        Assert.That(bigStat.st_blocks * 512, Is.LessThan(GrownSize - (256 << 10)), "the zero range of the B-CoW file stays a hole");
        foreach (string path in Directory.EnumerateFileSystemEntries(exported, "*", SearchOption.AllDirectories).Prepend(exported))
        {
            Assert.That(Syscall.llistxattr(path, out string[] names), Is.GreaterThanOrEqualTo(0), path);
            Assert.That(names.Where(n => n.StartsWith("user.baoverlay.", StringComparison.Ordinal) || n.StartsWith("user.overlay.", StringComparison.Ordinal)), Is.Empty, $"{path}: private xattrs");
            Assert.That(Path.GetFileName(path), Does.Not.StartWith(".wh."), "whiteouts are devices, not .wh. files");
        }
        Assert.That(Syscall.lstat(Path.Combine(exported, "dir", "gone.txt"), out Stat gone), Is.Zero);
        Assert.That(Whiteouts.IsWhiteoutStat(gone), Is.True, "dir/gone.txt is a 0/0 character device");
        Assert.That(Syscall.lgetxattr(Path.Combine(exported, "old"), "trusted.overlay.opaque", out byte[] opaque), Is.EqualTo(1));
        Assert.That(opaque, Is.EqualTo("y"u8.ToArray()));
        Assert.That(Syscall.lgetxattr(Path.Combine(exported, "hello.txt"), "user.test", out byte[] userXattr), Is.GreaterThan(0), "user xattrs kept");
        Assert.That(Encoding.UTF8.GetString(userXattr), Is.EqualTo("hello"));
        Assert.That(Syscall.lstat(Path.Combine(exported, "hello.txt"), out Stat a), Is.Zero);
        Assert.That(Syscall.lstat(Path.Combine(exported, "hello-hardlink.txt"), out Stat b), Is.Zero);
        Assert.That(b.st_ino, Is.EqualTo(a.st_ino), "hard links stay hard links");

        // The kernel's view of it over the same lower directories.
        AssertKernelShows(f, exported, expected, null, "kernel overlayfs over the exported upper directory");
    }

    // ------------------------------------------------------------------ (b) OCI tar

    [Test]
    public void OciTarHasOciWhiteoutsAndAppliedOverTheLowerTreeGivesTheSameTree()
    {
        RequireRoot();
        using var f = new OverlayFixture();
        byte[] bigMerged = MakeChanges(f);
        SortedDictionary<string, string> expected = VisibleTree(f, withTimes: false);
        var tar = new MemoryStream();

        UpperExportResult result = UpperExport.ToOciTar(f.Upper!, tar);

        Assert.That(result.Warnings, Is.Empty, "warnings");
        Assert.That((result.MaterializedBCowFiles, result.Whiteouts, result.OpaqueDirectories), Is.EqualTo((2, 2, 1)));
        var again = new MemoryStream();
        UpperExport.ToOciTar(f.Upper!, again);
        Assert.That(again.ToArray(), Is.EqualTo(tar.ToArray()), "the same upper directory gives the same bytes");
        var pipe = new MemoryStream();
        UpperExport.ToOciTar(f.Upper!, new WriteOnlyPipe(pipe));
        Assert.That(pipe.ToArray(), Is.EqualTo(tar.ToArray()), "the same bytes into a stream that cannot seek (standard output, a compressor)");

        List<PaxTarEntry> entries = ReadTar(tar.ToArray(), out Dictionary<string, byte[]> contents);
        List<string> names = entries.Select(e => e.Name).ToList();
        Assert.That(result.Files, Is.EqualTo(entries.Count), "entries counted");
        Assert.That(names, Is.Unique);
        Assert.That(names.Where(n => n.StartsWith('/') || n.StartsWith("./", StringComparison.Ordinal) || n.Contains("//")), Is.Empty, "relative paths");
        Assert.That(entries.Where(e => e.EntryType == TarEntryType.Directory).Select(e => e.Name), Has.All.EndsWith("/"));
        Assert.That(entries.Where(e => e.EntryType != TarEntryType.Directory).Select(e => e.Name), Has.All.Not.EndsWith("/"));
        foreach (string name in names)
        {
            string parent = name.TrimEnd('/') is var trimmed && trimmed.LastIndexOf('/') is var slash and > 0 ? trimmed[..(slash + 1)] : "";
            Assert.That(parent.Length == 0 || names.IndexOf(parent) < names.IndexOf(name), Is.True, $"{name}: its directory comes first");
        }
        Assert.That(names, Does.Contain("dir/.wh.gone.txt").And.Contain(".wh.other.txt"));
        Assert.That(names, Does.Not.Contain("dir/gone.txt").And.Not.Contain("other.txt"));
        Assert.That(names.IndexOf("old/.wh..wh..opq"), Is.EqualTo(names.IndexOf("old/") + 1), "the opaque marker follows its directory");
        PaxTarEntry whiteout = entries.Single(e => e.Name == "dir/.wh.gone.txt");
        Assert.That((whiteout.EntryType, whiteout.Length, (int)whiteout.Mode), Is.EqualTo((TarEntryType.RegularFile, 0L, 0x180)));
        Assert.That(contents["big.bin"], Is.EqualTo(bigMerged), "the B-CoW file's merged content");
        PaxTarEntry mode = entries.Single(e => e.Name == "mode.txt");
        Assert.That(((int)mode.Mode, mode.Uid, mode.Gid), Is.EqualTo((0x9ED, 1234, 2345)), "setuid mode and owner");
        Assert.That((int)entries.Single(e => e.Name == "big2.bin").Mode, Is.EqualTo(0x1A0), "chmod 640 on a metadata-only copy-up");
        // Sorted, "hello-hardlink.txt" comes before "hello.txt": the first name holds the data, the second links to it.
        PaxTarEntry hardLink = entries.Single(e => e.Name == "hello.txt");
        Assert.That((hardLink.EntryType, hardLink.LinkName), Is.EqualTo((TarEntryType.HardLink, "hello-hardlink.txt")));
        PaxTarEntry link = entries.Single(e => e.Name == "new/link");
        Assert.That((link.EntryType, link.LinkName), Is.EqualTo((TarEntryType.SymbolicLink, "../hello.txt")));
        Assert.That(entries.Single(e => e.Name == "fifo").EntryType, Is.EqualTo(TarEntryType.Fifo));
        Assert.That(entries.Single(e => e.Name == "hello-hardlink.txt").ExtendedAttributes, Does.ContainKey("SCHILY.xattr.user.test").WithValue("hello"));
        Assert.That(entries.SelectMany(e => e.ExtendedAttributes.Keys).Where(k => k.Contains("overlay", StringComparison.Ordinal)), Is.Empty, "no private xattrs");

        // The OCI way: a copy of the lower tree, whiteouts and opaque directories applied, then the entries extracted.
        string applied = Path.Combine(f.Root, "applied");
        Directory.CreateDirectory(applied);
        CopyTree(f.Lowers[1], applied);
        CopyTree(f.Lowers[0], applied);
        ApplyOciLayer(applied, entries, contents);
        AssertSameTree(TreeOf(applied, withTimes: false), expected, "the lower tree with the layer applied");
    }

    [Test]
    public void OciTarFileIsWrittenUnderItsNameOnlyWhenComplete()
    {
        RequireRoot();
        using var f = new OverlayFixture();
        byte[] bigMerged = MakeChanges(f);
        string tarPath = Path.Combine(f.Root, "layer.tar");
        var reports = new List<UpperExportProgress>();

        UpperExportResult result = UpperExport.ToOciTarFile(f.Upper!, tarPath, new UpperExportOptions { Progress = new Sync<UpperExportProgress>(reports.Add) });

        List<PaxTarEntry> entries = ReadTar(File.ReadAllBytes(tarPath), out Dictionary<string, byte[]> contents);
        Assert.That(contents["big.bin"], Is.EqualTo(bigMerged));
        Assert.That(result.Files, Is.EqualTo(entries.Count));
        Assert.That(reports, Is.Not.Empty);
        UpperExportProgress last = reports[^1];
        Assert.That((last.FilesDone, last.BytesDone, last.CurrentPath), Is.EqualTo((last.FilesTotal, last.BytesTotal, "")), "the last report says done");
        Assert.That(last.BytesTotal, Is.EqualTo(entries.Where(e => e.EntryType == TarEntryType.RegularFile).Sum(e => e.Length)));
        Assert.That(reports.Select(r => r.BytesDone), Is.Ordered, "progress only grows");
        Assert.That(Directory.EnumerateFileSystemEntries(f.Root).Where(p => p.Contains(".tmp-")), Is.Empty, "no temporary left");
    }

    // ------------------------------------------------------------------ every upper form

    [Test]
    public void WhiteoutsAndOpaqueMarkersInEveryUpperFormAreWrittenInTheDestinationsForm()
    {
        RequireRoot();
        using var f = new OverlayFixture();
        string lower = f.Lowers[1], upper = f.Upper!;
        foreach (string name in new[] { "a", "b", "c", "d1/x", "d2/x", "d3/x" })
        {
            WriteFile(Path.Combine(lower, name), "lower " + name);
        }
        WriteFile(Path.Combine(upper, ".wh.a"), "");                  // OCI/rootless whiteout
        Whiteout(Path.Combine(upper, "b"));                            // kernel whiteout
        WriteFile(Path.Combine(upper, "c"), "upper c");                // a crash left both c and .wh.c: c wins
        WriteFile(Path.Combine(upper, ".wh.c"), "");
        WriteFile(Path.Combine(upper, "d1", ".wh..wh..opq"), "");
        WriteFile(Path.Combine(upper, "d1", "y"), "y");
        Directory.CreateDirectory(Path.Combine(upper, "d2"));
        SetXattr(Path.Combine(upper, "d2"), "user.overlay.opaque", "y");
        Directory.CreateDirectory(Path.Combine(upper, "d3"));
        SetXattr(Path.Combine(upper, "d3"), "user.fuseoverlayfs.opaque", "y");
        string binary = Path.Combine(upper, "binary-xattr");
        WriteFile(binary, "x");
        Assert.That(Syscall.lsetxattr(binary, "trusted.bin", [0xFF, 0x00, 0x01], XattrFlags.XATTR_AUTO), Is.Zero);
        string longName = "long-" + new string('n', 150);
        string longTarget = "target-" + new string('t', 150);
        WriteFile(Path.Combine(upper, longName), "long");
        Assert.That(Syscall.lsetxattr(Path.Combine(upper, longName), "trusted.bin", [0xFE], XattrFlags.XATTR_AUTO), Is.Zero);
        File.CreateSymbolicLink(Path.Combine(upper, "long-link"), longTarget);
        Assert.That(Syscall.lsetxattr(Path.Combine(upper, "long-link"), "trusted.bin", [0x00], XattrFlags.XATTR_AUTO), Is.Zero);
        string sparse = Path.Combine(upper, "sparse");
        using (var file = new FileStream(sparse, FileMode.CreateNew))
        {
            file.SetLength(8 << 20);
            file.Position = (8 << 20) - 5;
            file.Write("tail!"u8);
        }
        Assert.That(Syscall.mknod(Path.Combine(upper, "socket"), FilePermissions.S_IFSOCK | FilePermissions.S_IRUSR | FilePermissions.S_IWUSR, 0), Is.Zero);
        Assert.That(Syscall.mknod(Path.Combine(upper, "null"), FilePermissions.S_IFCHR, (1 << 8) | 3), Is.Zero);
        Assert.That(Syscall.chmod(Path.Combine(upper, "null"), (FilePermissions)Mode("666")), Is.Zero);
        SortedDictionary<string, string> expected = VisibleTree(f, withTimes: true);
        Assert.That(expected.Keys, Is.EqualTo(new[] { "/binary-xattr", "/c", "/d1", "/d1/y", "/d2", "/d3", "/long-link", "/" + longName, "/null", "/socket", "/sparse" }), "what the overlay shows");

        string exported = Path.Combine(f.Root, "exported");
        UpperExportResult result = UpperExport.ToDirectory(upper, exported);

        Assert.That(result.Warnings, Has.Count.EqualTo(1).And.Some.Contains(".wh.c"), "the stale .wh.c is left out, and said");
        Assert.That((result.Whiteouts, result.OpaqueDirectories), Is.EqualTo((2, 3)));
        foreach (string name in new[] { "a", "b" })
        {
            Assert.That(Syscall.lstat(Path.Combine(exported, name), out Stat st), Is.Zero, name);
            Assert.That(Whiteouts.IsWhiteoutStat(st), Is.True, $"{name}: a 0/0 character device");
        }
        Assert.That(Directory.EnumerateFileSystemEntries(exported, ".wh.*", SearchOption.AllDirectories), Is.Empty, "no .wh. entries");
        foreach (string name in new[] { "d1", "d2", "d3" })
        {
            string directory = Path.Combine(exported, name);
            Assert.That(Syscall.lgetxattr(directory, "trusted.overlay.opaque", out byte[] y), Is.EqualTo(1), name);
            Assert.That(y, Is.EqualTo("y"u8.ToArray()), name);
            Assert.That(Syscall.llistxattr(directory, out string[] names), Is.GreaterThanOrEqualTo(0));
            Assert.That(names, Is.EqualTo(new[] { "trusted.overlay.opaque" }), $"{name}: only the kernel's opaque marker");
        }
        Assert.That(Syscall.lgetxattr(Path.Combine(exported, "binary-xattr"), "trusted.bin", out byte[] value), Is.EqualTo(3));
        Assert.That(value, Is.EqualTo(new byte[] { 0xFF, 0x00, 0x01 }), "binary xattrs kept in the directory form");
        Assert.That(Syscall.lstat(Path.Combine(exported, "sparse"), out Stat sparseStat), Is.Zero);
        Assert.That((sparseStat.st_size, sparseStat.st_blocks * 512 < (1 << 20)), Is.EqualTo((8L << 20, true)), "a plain sparse file stays sparse");

        AssertKernelShows(f, exported, expected, null, "kernel overlayfs over the exported upper directory");

        var tar = new MemoryStream();
        result = UpperExport.ToOciTar(upper, tar);
        List<PaxTarEntry> tarEntries = ReadTar(tar.ToArray(), out Dictionary<string, byte[]> contents);
        Assert.That(tarEntries.Select(e => e.Name), Is.EqualTo(new[]
        {
            ".wh.a", ".wh.b", "binary-xattr", "c", "d1/", "d1/.wh..wh..opq", "d1/y", "d2/", "d2/.wh..wh..opq", "d3/", "d3/.wh..wh..opq", "long-link", longName, "null", "sparse",
        }), "entries, in order");
        Assert.That(contents[longName], Is.EqualTo("long"u8.ToArray()), "a long name with a binary xattr: the name comes from our PAX record");
        PaxTarEntry longLink = tarEntries.Single(e => e.Name == "long-link");
        Assert.That((longLink.EntryType, longLink.LinkName), Is.EqualTo((TarEntryType.SymbolicLink, longTarget)));
        byte[] raw = tar.ToArray();
        Assert.That(raw.AsSpan().IndexOf(Record("trusted.bin", [0xFF, 0x00, 0x01])), Is.GreaterThan(0), "the binary value, byte for byte, in a PAX record");

        // GNU tar reads the binary values back as they were.
        string tarFile = Path.Combine(f.Root, "layer.tar");
        File.WriteAllBytes(tarFile, raw);
        string extracted = Path.Combine(f.Root, "extracted");
        Directory.CreateDirectory(extracted);
        Assert.That(Run("tar", $"--xattrs --xattrs-include=* -xpf {tarFile} -C {extracted}", out string tarOutput), Is.Zero, tarOutput);
        Assert.That(Syscall.lgetxattr(Path.Combine(extracted, "binary-xattr"), "trusted.bin", out byte[] fromGnuTar), Is.EqualTo(3), "GNU tar restored the xattr");
        Assert.That(fromGnuTar, Is.EqualTo(new byte[] { 0xFF, 0x00, 0x01 }));
        Assert.That(Syscall.lgetxattr(Path.Combine(extracted, longName), "trusted.bin", out byte[] longValue), Is.EqualTo(1));
        Assert.That(longValue, Is.EqualTo(new byte[] { 0xFE }));
        Assert.That(new FileInfo(Path.Combine(extracted, "long-link")).LinkTarget, Is.EqualTo(longTarget));
        Assert.That(File.ReadAllText(Path.Combine(extracted, "d1", "y")), Is.EqualTo("y"));
        PaxTarEntry device = tarEntries.Single(e => e.Name == "null");
        Assert.That((device.EntryType, device.DeviceMajor, device.DeviceMinor, (int)device.Mode), Is.EqualTo((TarEntryType.CharacterDevice, 1, 3, 0x1B6)));
        Assert.That(result.Warnings, Has.Count.EqualTo(2));
        Assert.That(result.Warnings, Has.Some.Contains(".wh.c").And.Some.Contains("socket"));
    }

    [Test]
    public void WithoutThePrivilegeForTrustedXattrsOpaqueDirectoriesUseUserXattrsForAUserxattrMount()
    {
        RequireRoot();
        using var f = new OverlayFixture();
        string lower = f.Lowers[1], upper = f.Upper!;
        foreach (string name in new[] { "d/x", "e", "g" })
        {
            WriteFile(Path.Combine(lower, name), "lower " + name);
        }
        WriteFile(Path.Combine(upper, "d", "y"), "y");
        SetXattr(Path.Combine(upper, "d"), "user.overlay.opaque", "y"); // as a rootless overlay marks it
        Whiteout(Path.Combine(upper, "e"));
        WriteFile(Path.Combine(upper, ".wh.g"), "");
        SortedDictionary<string, string> expected = VisibleTree(f, withTimes: true);
        Assert.That(expected.Keys, Is.EqualTo(new[] { "/d", "/d/y" }), "what the overlay shows");
        string exported = Path.Combine(f.Root, "exported");

        // Capabilities are per thread: this one loses CAP_SYS_ADMIN, which trusted.* xattrs need.
        UpperExportResult? result = null;
        Exception? failure = null;
        var thread = new Thread(() =>
        {
            try
            {
                ThreadCapabilities.DropEffective(ThreadCapabilities.CapSysAdmin);
                result = UpperExport.ToDirectory(upper, exported);
            }
            catch (Exception e)
            {
                failure = e;
            }
        });
        thread.Start();
        thread.Join();
        Assert.That(failure, Is.Null, failure?.ToString());

        Assert.That(result!.Warnings, Has.Count.EqualTo(1).And.Some.Contains("userxattr"), "the opaque form is said");
        string d = Path.Combine(exported, "d");
        Assert.That(Syscall.lgetxattr(d, "user.overlay.opaque", out byte[] y), Is.EqualTo(1));
        Assert.That(y, Is.EqualTo("y"u8.ToArray()));
        Assert.That(Syscall.lgetxattr(d, "trusted.overlay.opaque", out byte[] _), Is.LessThan(0), "no trusted xattr without the privilege");

        AssertKernelShows(f, exported, expected, "userxattr", "kernel overlayfs -o userxattr over the exported upper directory");
    }

    // ------------------------------------------------------------------ failures

    [Test]
    public void AnExistingDestinationIsRefusedUnlessOverwriteIsAsked()
    {
        RequireRoot();
        using var f = new OverlayFixture();
        MakeChanges(f);
        string exported = Path.Combine(f.Root, "exported");
        string tarPath = Path.Combine(f.Root, "layer.tar");
        WriteFile(Path.Combine(exported, "old-content"), "x");
        WriteFile(tarPath, "not a tar");

        Assert.That(() => UpperExport.ToDirectory(f.Upper!, exported), Throws.InstanceOf<IOException>().With.Message.Contains(exported).And.Message.Contains("exists"));
        Assert.That(() => UpperExport.ToOciTarFile(f.Upper!, tarPath), Throws.InstanceOf<IOException>().With.Message.Contains(tarPath).And.Message.Contains("exists"));
        Assert.That(File.Exists(Path.Combine(exported, "old-content")), Is.True, "the existing directory is untouched");
        Assert.That(File.ReadAllText(tarPath), Is.EqualTo("not a tar"), "the existing file is untouched");

        var overwrite = new UpperExportOptions { Overwrite = true };
        UpperExport.ToDirectory(f.Upper!, exported, overwrite);
        UpperExport.ToOciTarFile(f.Upper!, tarPath, overwrite);
        Assert.That(File.Exists(Path.Combine(exported, "old-content")), Is.False, "replaced");
        Assert.That(File.Exists(Path.Combine(exported, "hello.txt")), Is.True);
        Assert.That(ReadTar(File.ReadAllBytes(tarPath), out _).Select(e => e.Name), Does.Contain("hello.txt"));
        Assert.That(Directory.EnumerateFileSystemEntries(f.Root).Where(p => p.Contains(".tmp-")), Is.Empty, "no temporary left");

        Assert.That(() => UpperExport.ToDirectory(f.Upper!, Path.Combine(f.Upper!, "inside")), Throws.ArgumentException);
        Assert.That(() => UpperExport.ToDirectory(f.Upper!, Path.Combine(f.Root, "missing", "exported")), Throws.InstanceOf<DirectoryNotFoundException>());
    }

    [Test]
    public void ACorruptBCowFileFailsNamingItAndLeavesNoDestination()
    {
        RequireRoot();
        using var f = new OverlayFixture();
        MakeChanges(f);
        string bcow = Path.Combine(f.Upper!, "big.bin");
        using (var file = new FileStream(bcow, FileMode.Open, FileAccess.Write))
        {
            file.Write(new byte[Layout.HeaderSlotSize * Layout.HeaderSlotCount]); // both header slots gone
        }
        string exported = Path.Combine(f.Root, "exported");
        string tarPath = Path.Combine(f.Root, "layer.tar");
        var tar = new MemoryStream();

        Assert.That(() => UpperExport.ToDirectory(f.Upper!, exported), Throws.InstanceOf<IOException>().With.Message.Contains(bcow));
        Assert.That(() => UpperExport.ToOciTarFile(f.Upper!, tarPath), Throws.InstanceOf<IOException>().With.Message.Contains(bcow));
        Assert.That(() => UpperExport.ToOciTar(f.Upper!, tar), Throws.InstanceOf<IOException>().With.Message.Contains(bcow));

        Assert.That(Directory.Exists(exported) || File.Exists(exported), Is.False, "no directory");
        Assert.That(File.Exists(tarPath), Is.False, "no tar file");
        Assert.That(tar.Length, Is.Zero, "nothing written to the stream: the scan failed first");
        Assert.That(Directory.EnumerateFileSystemEntries(f.Root).Where(p => p.Contains(".tmp-")), Is.Empty, "no temporary left");
    }

    [Test]
    public void AnUnreadableFileFailsTheScanNamingItAndLeavesNoDestination()
    {
        RequireRoot();
        using var f = new OverlayFixture();
        MakeChanges(f);
        string secret = Path.Combine(f.Upper!, "new", "secret");
        WriteFile(secret, "no one may read this");
        Assert.That(Syscall.chmod(secret, 0), Is.Zero);
        string exported = Path.Combine(f.Root, "exported");
        string tarPath = Path.Combine(f.Root, "layer.tar");
        var tar = new MemoryStream();

        // Capabilities are per thread: without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH, root is held to mode 000.
        var failures = new List<Exception?>();
        var thread = new Thread(() =>
        {
            ThreadCapabilities.DropEffective(ThreadCapabilities.CapDacOverride);
            ThreadCapabilities.DropEffective(ThreadCapabilities.CapDacReadSearch);
            foreach (Action export in new Action[]
            {
                () => UpperExport.ToDirectory(f.Upper!, exported),
                () => UpperExport.ToOciTarFile(f.Upper!, tarPath),
                () => UpperExport.ToOciTar(f.Upper!, tar),
            })
            {
                try
                {
                    export();
                    failures.Add(null);
                }
                catch (Exception e)
                {
                    failures.Add(e);
                }
            }
        });
        thread.Start();
        thread.Join();

        Assert.That(failures, Has.Count.EqualTo(3));
        Assert.That(failures, Has.All.InstanceOf<IOException>().And.All.Property("Message").Contains(secret));
        Assert.That(Directory.Exists(exported), Is.False, "no directory");
        Assert.That(File.Exists(tarPath), Is.False, "no tar file");
        Assert.That(tar.Length, Is.Zero, "nothing written to the stream: the scan failed first");
        Assert.That(Directory.EnumerateFileSystemEntries(f.Root).Where(p => p.Contains(".tmp-")), Is.Empty, "no temporary left");
    }

    [Test]
    public void AChangedLowerFileFailsTheExportOfItsBCowFile()
    {
        RequireRoot();
        using var f = new OverlayFixture();
        MakeChanges(f);
        File.AppendAllText(Path.Combine(f.Lowers[1], "big.bin"), "changed");
        string exported = Path.Combine(f.Root, "exported");

        Assert.That(() => UpperExport.ToDirectory(f.Upper!, exported), Throws.InstanceOf<BCowFormatException>().With.Message.Contains(Path.Combine(f.Upper!, "big.bin")));
        Assert.That(Directory.Exists(exported), Is.False);
    }

    [Test]
    public void CancellingLeavesNoDestination()
    {
        RequireRoot();
        using var f = new OverlayFixture();
        MakeChanges(f);
        string exported = Path.Combine(f.Root, "exported");
        using var cancel = new CancellationTokenSource();
        var options = new UpperExportOptions
        {
            CancellationToken = cancel.Token,
            Progress = new Sync<UpperExportProgress>(p =>
            {
                if (p.FilesDone == 5)
                {
                    cancel.Cancel();
                }
            }),
        };

        Assert.That(() => UpperExport.ToDirectory(f.Upper!, exported, options), Throws.InstanceOf<OperationCanceledException>());
        Assert.That(Directory.Exists(exported), Is.False);

        using var cancelTar = new CancellationTokenSource();
        var tar = new MemoryStream();
        var tarOptions = options with
        {
            CancellationToken = cancelTar.Token,
            Progress = new Sync<UpperExportProgress>(p =>
            {
                if (p.FilesDone == 5)
                {
                    cancelTar.Cancel();
                }
            }),
        };
        Assert.That(() => UpperExport.ToOciTar(f.Upper!, tar, tarOptions), Throws.InstanceOf<OperationCanceledException>());
        Assert.That(tar.Length, Is.GreaterThan(0), "some entries were written");
        Assert.That(tar.ToArray()[^1024..].Any(b => b != 0), Is.True, "a cancelled tar does not end with the end-of-archive blocks");
        Assert.That(Directory.EnumerateFileSystemEntries(f.Root).Where(p => p.Contains(".tmp-")), Is.Empty, "no temporary left");
    }

    // ------------------------------------------------------------------ the scenario

    /// <summary>
    /// Lower layers and a set of changes made through the overlay (then closed): a write into a large lower file and
    /// a grow with a zero range (B-CoW), a chmod of another large one (metadata-only B-CoW), a deleted lower file and a
    /// renamed one (whiteouts), a lower directory removed and made again (opaque), new files, directories, symbolic
    /// links and a fifo, a setuid file with another owner; then a hard link and a user xattr added in upper directly.
    /// </summary>
    /// <returns>The merged content of big.bin.</returns>
    internal static byte[] MakeChanges(OverlayFixture f)
    {
        var random = new Random(7);
        string lower1 = f.Lowers[0], lower2 = f.Lowers[1];
        WriteFile(Path.Combine(lower2, "big.bin"), Checks.RandomBytes(random, BigSize));
        WriteFile(Path.Combine(lower2, "big2.bin"), Checks.RandomBytes(random, 300 << 10));
        WriteFile(Path.Combine(lower2, "dir", "keep.txt"), "keep");
        WriteFile(Path.Combine(lower2, "dir", "gone.txt"), "gone");
        WriteFile(Path.Combine(lower2, "old", "x.txt"), "x");
        WriteFile(Path.Combine(lower2, "old", "sub", "y.txt"), "y");
        WriteFile(Path.Combine(lower2, "mode.txt"), "mode");
        WriteFile(Path.Combine(lower2, "other.txt"), "other");
        WriteFile(Path.Combine(lower1, "dir", "l1.txt"), "from lower1");
        WriteFile(Path.Combine(lower1, "top.txt"), "top");
        File.CreateSymbolicLink(Path.Combine(lower1, "link-lower"), "top.txt");

        byte[] merged;
        using (OverlayFileSystem fs = f.Open())
        {
            const ulong root = OverlayFileSystem.RootIno;
            var caller = OverlayCaller.Root;
            WriteAt(fs, "big.bin", 40960, Enumerable.Repeat((byte)0xAB, 5000).ToArray());
            fs.SetAttr(Resolve(fs, "big.bin").Ino, new OverlaySetAttr { Size = GrownSize }, caller);
            WriteAt(fs, "big.bin", GrownSize - 100, Enumerable.Repeat((byte)0xCD, 100).ToArray());
            fs.SetAttr(Resolve(fs, "big2.bin").Ino, new OverlaySetAttr { Mode = Mode("640") }, caller);

            fs.Unlink(Resolve(fs, "dir").Ino, "gone.txt");
            fs.SetAttr(Resolve(fs, "dir").Ino, new OverlaySetAttr { Mode = Mode("750") }, caller);
            fs.Unlink(Resolve(fs, "old/sub").Ino, "y.txt");
            fs.RemoveDirectory(Resolve(fs, "old").Ino, "sub");
            fs.Unlink(Resolve(fs, "old").Ino, "x.txt");
            fs.RemoveDirectory(root, "old");
            ulong old = fs.MakeDirectory(root, "old", Mode("755"), caller).Ino;
            CreateFile(fs, old, "new.txt", "made after the lower directory was removed");

            ulong dir = fs.MakeDirectory(root, "new", Mode("755"), caller).Ino;
            CreateFile(fs, dir, "file.txt", "new file");
            CreateFile(fs, root, "hello.txt", "hello world");
            fs.MakeSymbolicLink(dir, "link", "../hello.txt", caller);
            fs.MakeSymbolicLink(root, "abs", "/etc/passwd", caller);
            fs.MakeNode(root, "fifo", 0x1000 | Mode("644"), 0, caller);

            ulong mode = Resolve(fs, "mode.txt").Ino;
            fs.SetAttr(mode, new OverlaySetAttr { Uid = 1234, Gid = 2345 }, caller);
            fs.SetAttr(mode, new OverlaySetAttr { Mode = Mode("4755") }, caller);
            fs.Rename(root, "other.txt", root, "renamed.txt");
            merged = ReadBytes(fs, "big.bin");
        }
        Assert.That(Syscall.lgetxattr(Path.Combine(f.Upper!, "big.bin"), "user.baoverlay.bcow", out byte[] _), Is.GreaterThanOrEqualTo(0), "big.bin became a B-CoW file");
        Assert.That(Syscall.link(Path.Combine(f.Upper!, "hello.txt"), Path.Combine(f.Upper!, "hello-hardlink.txt")), Is.Zero);
        SetXattr(Path.Combine(f.Upper!, "hello.txt"), "user.test", "hello");
        return merged;
    }

    private static void CreateFile(OverlayFileSystem fs, ulong parent, string name, string content)
    {
        var (_, handle) = fs.Create(parent, name, Mode("644"), OverlayCaller.Root);
        using (handle)
        {
            handle.Write(Encoding.UTF8.GetBytes(content), 0);
        }
    }

    /// <summary>Mounts kernel overlayfs with <paramref name="upper"/> over the fixture's lower directories and asserts it
    /// shows <paramref name="expected"/>; always unmounts.</summary>
    internal static void AssertKernelShows(OverlayFixture f, string upper, SortedDictionary<string, string> expected, string? extraOptions, string because, bool withTimes = true)
    {
        string mountPoint = Path.Combine(f.Root, "mnt");
        string work = Path.Combine(f.Root, "kernel-work");
        Directory.CreateDirectory(mountPoint);
        Directory.CreateDirectory(work);
        string options = extraOptions is null ? "" : extraOptions + ",";
        Mount($"-t overlay overlay -o {options}lowerdir={f.Lowers[0]}:{f.Lowers[1]},upperdir={upper},workdir={work} {mountPoint}");
        try
        {
            AssertSameTree(TreeOf(mountPoint, withTimes), expected, because);
        }
        finally
        {
            Unmount(mountPoint);
        }
    }

    // ------------------------------------------------------------------ trees to compare

    /// <summary>The tree the overlay shows, without inode numbers: path → type, content hash or target, mode, owner, size.</summary>
    internal static SortedDictionary<string, string> VisibleTree(OverlayFixture f, bool withTimes)
    {
        using OverlayFileSystem fs = f.Open();
        var result = new SortedDictionary<string, string>(StringComparer.Ordinal);
        Walk(fs, (child, stat) =>
        {
            string what = stat.IsDirectory ? "dir" : stat.IsSymbolicLink ? "link->" + fs.ReadLink(stat.Ino) : stat.IsRegularFile ? "file:" + Hash(ReadBytes(fs, child)) : $"special:{Convert.ToString(stat.Type, 8)}:{stat.Rdev}";
            result[child] = Describe(what, stat.Mode, stat.Uid, stat.Gid, stat.IsDirectory ? 0 : stat.Size, withTimes ? stat.MTimeNs : null);
        });
        return result;
    }

    /// <summary>The same description of a plain directory tree (a kernel mount or an applied layer), with .NET's
    /// file APIs for names, content and link targets and lstat for modes and owners.</summary>
    internal static SortedDictionary<string, string> TreeOf(string root, bool withTimes)
    {
        var result = new SortedDictionary<string, string>(StringComparer.Ordinal);
        void Walk(string directory, string path)
        {
            foreach (string full in Directory.EnumerateFileSystemEntries(directory))
            {
                string child = path + "/" + Path.GetFileName(full);
                Assert.That(Syscall.lstat(full, out Stat st), Is.Zero, full);
                uint mode = (uint)st.st_mode;
                uint type = mode & 0xF000;
                string what = type switch
                {
                    0x4000 => "dir",
                    0xA000 => "link->" + new FileInfo(full).LinkTarget,
                    0x8000 => "file:" + Hash(File.ReadAllBytes(full)),
                    _ => $"special:{Convert.ToString(type, 8)}:{st.st_rdev}",
                };
                long mtime = (st.st_mtime * 1_000_000_000L) + st.st_mtime_nsec;
                result[child] = Describe(what, mode, st.st_uid, st.st_gid, type == 0x4000 ? 0 : st.st_size, withTimes ? mtime : null);
                if (type == 0x4000)
                {
                    Walk(full, child);
                }
            }
        }
        Walk(root, "");
        return result;
    }

    /// <summary>Compares two trees and names every path that differs.</summary>
    internal static void AssertSameTree(SortedDictionary<string, string> actual, SortedDictionary<string, string> expected, string what)
    {
        var differences = actual.Keys.Union(expected.Keys).Order(StringComparer.Ordinal)
            .Where(k => actual.GetValueOrDefault(k) != expected.GetValueOrDefault(k))
            .Select(k => $"{k}: {actual.GetValueOrDefault(k) ?? "(missing)"}, overlay shows {expected.GetValueOrDefault(k) ?? "(nothing)"}")
            .ToList();
        Assert.That(differences, Is.Empty, $"{what}: paths that differ from what the overlay shows");
        Assert.That(actual, Is.Not.Empty, what);
    }

    /// <summary>A PAX record "LEN SCHILY.xattr.NAME=VALUE\n" as bytes.</summary>
    private static byte[] Record(string name, byte[] value)
    {
        byte[] body = [.. Encoding.UTF8.GetBytes(" SCHILY.xattr." + name + "="), .. value, (byte)'\n'];
        int length = body.Length + 1;
        while (length != body.Length + length.ToString().Length)
        {
            length = body.Length + length.ToString().Length;
        }
        return [.. Encoding.ASCII.GetBytes(length.ToString()), .. body];
    }

    private static string Describe(string what, uint mode, uint uid, uint gid, long size, long? mtime) =>
        $"{what} mode={Convert.ToString(mode & 0xFFF, 8)} owner={uid}:{gid} size={size}" + (mtime is long t ? $" mtime={t}" : "");

    private static string Hash(byte[] content) => Convert.ToHexString(SHA256.HashData(content))[..16];

    // ------------------------------------------------------------------ tar helpers

    private static List<PaxTarEntry> ReadTar(byte[] tar, out Dictionary<string, byte[]> contents)
    {
        var entries = new List<PaxTarEntry>();
        contents = new Dictionary<string, byte[]>(StringComparer.Ordinal);
        using var reader = new TarReader(new MemoryStream(tar));
        while (reader.GetNextEntry(copyData: true) is { } entry)
        {
            Assert.That(entry, Is.InstanceOf<PaxTarEntry>(), $"{entry.Name}: a PAX entry");
            entries.Add((PaxTarEntry)entry);
            if (entry.EntryType == TarEntryType.RegularFile)
            {
                var data = new MemoryStream();
                entry.DataStream?.CopyTo(data);
                contents[entry.Name] = data.ToArray();
            }
        }
        return entries;
    }

    /// <summary>Applies a layer as the image spec says: whiteouts and opaque markers remove what the lower tree has,
    /// then every other entry is extracted (a directory over a directory merges).</summary>
    private static void ApplyOciLayer(string root, List<PaxTarEntry> entries, Dictionary<string, byte[]> contents)
    {
        foreach (PaxTarEntry entry in entries)
        {
            string name = Path.GetFileName(entry.Name.TrimEnd('/'));
            string directory = Path.Combine(root, Path.GetDirectoryName(entry.Name.TrimEnd('/')) ?? "");
            if (name == ".wh..wh..opq")
            {
                foreach (string child in Directory.EnumerateFileSystemEntries(directory))
                {
                    Remove(child);
                }
            }
            else if (name.StartsWith(".wh.", StringComparison.Ordinal))
            {
                Remove(Path.Combine(directory, name[4..]));
            }
        }
        foreach (PaxTarEntry entry in entries)
        {
            string name = entry.Name.TrimEnd('/');
            if (Path.GetFileName(name).StartsWith(".wh.", StringComparison.Ordinal))
            {
                continue;
            }
            string path = Path.Combine(root, name);
            bool isDirectory = Syscall.lstat(path, out Stat existing) == 0 && (existing.st_mode & FilePermissions.S_IFMT) == FilePermissions.S_IFDIR;
            if (!(entry.EntryType == TarEntryType.Directory && isDirectory))
            {
                Remove(path);
            }
            switch (entry.EntryType)
            {
                case TarEntryType.Directory:
                    Directory.CreateDirectory(path);
                    break;
                case TarEntryType.RegularFile:
                    File.WriteAllBytes(path, contents[entry.Name]);
                    break;
                case TarEntryType.SymbolicLink:
                    File.CreateSymbolicLink(path, entry.LinkName);
                    break;
                case TarEntryType.HardLink:
                    Assert.That(Syscall.link(Path.Combine(root, entry.LinkName), path), Is.Zero, path);
                    continue;
                case TarEntryType.Fifo:
                    Assert.That(Syscall.mknod(path, FilePermissions.S_IFIFO, 0), Is.Zero, path);
                    break;
                default:
                    Assert.Fail($"{entry.Name}: unexpected {entry.EntryType}");
                    break;
            }
            Assert.That(Syscall.lchown(path, (uint)entry.Uid, (uint)entry.Gid), Is.Zero, path);
            if (entry.EntryType != TarEntryType.SymbolicLink)
            {
                Assert.That(Syscall.chmod(path, (FilePermissions)(uint)entry.Mode), Is.Zero, path);
            }
        }
    }

    private static void Remove(string path)
    {
        if (Syscall.lstat(path, out Stat st) != 0)
        {
            return;
        }
        if ((st.st_mode & FilePermissions.S_IFMT) == FilePermissions.S_IFDIR)
        {
            Directory.Delete(path, recursive: true);
        }
        else
        {
            File.Delete(path);
        }
    }

    /// <summary>Copies a lower layer (no whiteouts in the ones made here) over a tree, keeping modes, owners and links.</summary>
    private static void CopyTree(string from, string to)
    {
        Assert.That(Run("cp", $"-a {from}/. {to}/", out string output), Is.Zero, output);
    }

    // ------------------------------------------------------------------ processes

    /// <summary>Mounts; ignores the test where mounting overlayfs is not permitted or not available, and fails it
    /// where the kernel refuses the layers (which would be the export's fault).</summary>
    internal static void Mount(string arguments)
    {
        if (Run("mount", arguments, out string output) == 0)
        {
            return;
        }
        if (System.Text.RegularExpressions.Regex.IsMatch(output, "permission denied|not permitted|must be superuser|only root|unknown filesystem type", System.Text.RegularExpressions.RegexOptions.IgnoreCase))
        {
            Assert.Ignore($"kernel overlayfs cannot be mounted here: mount {arguments}: {output}");
        }
        Run("dmesg", "", out string kernelLog);
        Assert.Fail($"kernel overlayfs refused the exported layers: mount {arguments}: {output}\n{string.Join("\n", kernelLog.Split('\n').Where(l => l.Contains("overlay", StringComparison.Ordinal)).TakeLast(5))}");
    }

    /// <summary>Unmounts, lazily if the mount is busy, so the temporary folder can go.</summary>
    internal static void Unmount(string mountPoint)
    {
        if (Run("umount", mountPoint, out _) != 0)
        {
            Run("umount", "-l " + mountPoint, out _);
        }
    }

    private static int Run(string program, string arguments, out string output)
    {
        using var process = Process.Start(new ProcessStartInfo(program, arguments) { RedirectStandardOutput = true, RedirectStandardError = true })!;
        output = process.StandardOutput.ReadToEnd() + process.StandardError.ReadToEnd();
        process.WaitForExit();
        return process.ExitCode;
    }

    /// <summary>A write-only stream that cannot seek, like a pipe.</summary>
    private sealed class WriteOnlyPipe(Stream inner) : Stream
    {
        public override bool CanRead => false;
        public override bool CanSeek => false;
        public override bool CanWrite => true;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
        public override void Flush() => inner.Flush();
        public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => inner.Write(buffer, offset, count);
    }

    /// <summary>An IProgress that reports on the calling thread (Progress&lt;T&gt; would post to the thread pool).</summary>
    private sealed class Sync<T>(Action<T> report) : IProgress<T>
    {
        public void Report(T value) => report(value);
    }
}

/// <summary>Drops capabilities of the calling thread only (Linux capabilities are per thread).</summary>
internal static unsafe partial class ThreadCapabilities
{
    public const int CapDacOverride = 1;
    public const int CapDacReadSearch = 2;
    public const int CapSysAdmin = 21;

    private const uint Version3 = 0x20080522;

    public static void DropEffective(int capability)
    {
        var header = new Header { Version = Version3, Pid = 0 };
        Data* data = stackalloc Data[2];
        Assert.That(capget(&header, data), Is.Zero, "capget");
        data[capability / 32].Effective &= ~(1u << (capability % 32));
        Assert.That(capset(&header, data), Is.Zero, "capset");
    }

    private struct Header
    {
        public uint Version;
        public int Pid;
    }

    /// <summary>struct __user_cap_data_struct: effective, permitted, inheritable (filled by capget).</summary>
    [System.Runtime.InteropServices.StructLayout(System.Runtime.InteropServices.LayoutKind.Sequential, Size = 12)]
    private struct Data
    {
        public uint Effective;
    }

    // int capget(cap_user_header_t hdrp, cap_user_data_t datap);
    [System.Runtime.InteropServices.LibraryImport("libc", SetLastError = true)]
    private static partial int capget(Header* header, Data* data);

    // int capset(cap_user_header_t hdrp, const cap_user_data_t datap);
    [System.Runtime.InteropServices.LibraryImport("libc", SetLastError = true)]
    private static partial int capset(Header* header, Data* data);
}
