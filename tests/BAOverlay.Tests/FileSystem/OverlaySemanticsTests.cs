using System.Text;
using BAOverlay.Checking;
using BAOverlay.FileSystem;
using Mono.Unix.Native;
using static BAOverlay.Tests.FileSystem.OverlayFixture;

namespace BAOverlay.Tests.FileSystem;

/// <summary>
/// The overlay's semantic cases, each checked through the API and again after the file system is closed and
/// reopened (the whole visible tree must be the same). Needs root for 0/0 whiteout devices and trusted xattrs.
/// </summary>
public class OverlaySemanticsTests
{
    private static void RequireRoot()
    {
        if (Syscall.geteuid() != 0)
        {
            Assert.Ignore("needs root: whiteouts are 0/0 character devices and opaque directories use trusted.overlay.* xattrs");
        }
    }

    /// <summary>Runs <paramref name="act"/>, then compares the visible tree before and after a close and reopen.</summary>
    private static void SurvivesReopen(OverlayFixture fixture, Action<OverlayFileSystem> act, Action<OverlayFileSystem>? verify = null)
    {
        SortedDictionary<string, string> before;
        using (OverlayFileSystem fs = fixture.Open())
        {
            act(fs);
            verify?.Invoke(fs);
            before = Snapshot(fs);
        }
        using (OverlayFileSystem fs = fixture.Open())
        {
            verify?.Invoke(fs);
            Assert.That(Snapshot(fs), Is.EqualTo(before), "the visible tree after reopening");
        }
        CheckBCowFiles(fixture);
    }

    /// <summary>Every B-CoW file the overlay made in upper passes the checker.</summary>
    private static void CheckBCowFiles(OverlayFixture fixture)
    {
        if (fixture.Upper is null)
        {
            return;
        }
        foreach (string file in Directory.EnumerateFiles(fixture.Upper, "*", SearchOption.AllDirectories))
        {
            if (Syscall.lgetxattr(file, "user.baoverlay.bcow", out byte[] _) >= 0)
            {
                BCowCheckResult result = BCowChecker.Check(file);
                Assert.That(result.IsClean, Is.True, $"{file}: {string.Join("; ", result.Corruptions)}");
            }
        }
    }

    [Test]
    public void UpperHidesLowerAndHigherLowerHidesDeeperLower()
    {
        using var f = new OverlayFixture();
        WriteFile(Path.Combine(f.Lowers[1], "a"), "lower2");
        WriteFile(Path.Combine(f.Lowers[0], "a"), "lower1");
        WriteFile(Path.Combine(f.Lowers[1], "b"), "lower2");
        WriteFile(Path.Combine(f.Upper!, "b"), "upper");
        WriteFile(Path.Combine(f.Lowers[1], "c"), "only lower2");
        SurvivesReopen(f, _ => { }, fs =>
        {
            Assert.That(ReadText(fs, "a"), Is.EqualTo("lower1"));
            Assert.That(ReadText(fs, "b"), Is.EqualTo("upper"));
            Assert.That(ReadText(fs, "c"), Is.EqualTo("only lower2"));
            Assert.That(List(fs, "/"), Is.EqualTo(new[] { "a", "b", "c" }));
        });
    }

    [Test]
    public void DirectoriesMergeAcrossLayers()
    {
        using var f = new OverlayFixture();
        WriteFile(Path.Combine(f.Lowers[1], "d", "x"), "x");
        WriteFile(Path.Combine(f.Lowers[0], "d", "y"), "y");
        WriteFile(Path.Combine(f.Upper!, "d", "z"), "z");
        SurvivesReopen(f, _ => { }, fs => Assert.That(List(fs, "d"), Is.EqualTo(new[] { "x", "y", "z" })));
    }

    /// <summary>A merged directory reports one link, as with kernel overlayfs (its top layer's count would miss the
    /// subdirectories below); a directory of one layer reports its real count.</summary>
    [Test]
    public void AMergedDirectoryReportsOneLinkAndADirectoryOfOneLayerItsOwnCount()
    {
        using var f = new OverlayFixture();
        Directory.CreateDirectory(Path.Combine(f.Lowers[1], "merged", "below1"));
        Directory.CreateDirectory(Path.Combine(f.Lowers[1], "merged", "below2"));
        Directory.CreateDirectory(Path.Combine(f.Lowers[0], "merged", "above"));
        Directory.CreateDirectory(Path.Combine(f.Lowers[0], "single", "a"));
        Directory.CreateDirectory(Path.Combine(f.Lowers[0], "single", "b"));
        SurvivesReopen(f, fs => fs.MakeDirectory(Resolve(fs, "merged").Ino, "new", Mode("755"), OverlayCaller.Root), fs =>
        {
            Assert.That(Resolve(fs, "").Nlink, Is.EqualTo(1UL), "the root, merged");
            Assert.That(Resolve(fs, "merged").Nlink, Is.EqualTo(1UL), "merged, and copied up by the mkdir");
            Assert.That(Resolve(fs, "single").Nlink, Is.EqualTo(4UL), "2 + its two subdirectories");
            Assert.That(Resolve(fs, "merged/new").Nlink, Is.EqualTo(2UL), "a new empty directory");
        });
    }

    [Test]
    public void WhiteoutsInEveryFormHideLowerNamesAndAreNotListed()
    {
        RequireRoot();
        using var f = new OverlayFixture();
        WriteFile(Path.Combine(f.Lowers[1], "gone-by-device"), "x");
        WriteFile(Path.Combine(f.Lowers[1], "gone-by-wh-file"), "x");
        WriteFile(Path.Combine(f.Lowers[1], "kept"), "x");
        Whiteout(Path.Combine(f.Upper!, "gone-by-device"));
        WriteFile(Path.Combine(f.Lowers[0], ".wh.gone-by-wh-file"), "");
        SurvivesReopen(f, _ => { }, fs =>
        {
            Assert.That(List(fs, "/"), Is.EqualTo(new[] { "kept" }));
            Assert.That(Exists(fs, "gone-by-device"), Is.False);
            Assert.That(Exists(fs, "gone-by-wh-file"), Is.False);
            Assert.That(Exists(fs, ".wh.gone-by-wh-file"), Is.False);
        });
    }

    [TestCase("trusted.overlay.opaque")]
    [TestCase("user.overlay.opaque")]
    [TestCase("user.fuseoverlayfs.opaque")]
    [TestCase(".wh..wh..opq")]
    public void AnOpaqueDirectoryHidesWhatIsBelowIt(string marker)
    {
        RequireRoot();
        using var f = new OverlayFixture();
        WriteFile(Path.Combine(f.Lowers[1], "d", "old"), "x");
        WriteFile(Path.Combine(f.Lowers[0], "d", "new"), "y");
        if (marker.StartsWith('.'))
        {
            WriteFile(Path.Combine(f.Lowers[0], "d", marker), "");
        }
        else
        {
            SetXattr(Path.Combine(f.Lowers[0], "d"), marker, "y");
        }
        SurvivesReopen(f, _ => { }, fs => Assert.That(List(fs, "d"), Is.EqualTo(new[] { "new" })));
    }

    [Test]
    public void UnlinkingALowerFileLeavesAWhiteout()
    {
        RequireRoot();
        using var f = new OverlayFixture();
        WriteFile(Path.Combine(f.Lowers[0], "d", "victim"), "x");
        WriteFile(Path.Combine(f.Lowers[0], "d", "other"), "y");
        SurvivesReopen(f, fs => fs.Unlink(Resolve(fs, "d").Ino, "victim"), fs =>
        {
            Assert.That(List(fs, "d"), Is.EqualTo(new[] { "other" }));
            Assert.That(Exists(fs, "d/victim"), Is.False);
        });
        Assert.That(File.Exists(Path.Combine(f.Lowers[0], "d", "victim")), Is.True, "the lower layer is never changed");
    }

    [Test]
    public void UnlinkingAnUpperFileThatShadowsALowerOneKeepsTheLowerHidden()
    {
        RequireRoot();
        using var f = new OverlayFixture();
        WriteFile(Path.Combine(f.Lowers[0], "a"), "lower");
        WriteFile(Path.Combine(f.Upper!, "a"), "upper");
        SurvivesReopen(f, fs => fs.Unlink(OverlayFileSystem.RootIno, "a"), fs => Assert.That(Exists(fs, "a"), Is.False));
    }

    [Test]
    public void RemovingADirectoryThatHoldsOnlyWhiteoutsWorks()
    {
        RequireRoot();
        using var f = new OverlayFixture();
        WriteFile(Path.Combine(f.Lowers[0], "d", "a"), "x");
        WriteFile(Path.Combine(f.Lowers[1], "d", "b"), "x");
        SurvivesReopen(f, fs =>
        {
            ulong d = Resolve(fs, "d").Ino;
            var notEmpty = Assert.Throws<OverlayException>(() => fs.RemoveDirectory(OverlayFileSystem.RootIno, "d"));
            Assert.That(notEmpty!.Errno, Is.EqualTo(OverlayErrno.ENOTEMPTY));
            fs.Unlink(d, "a");
            fs.Unlink(d, "b");
            fs.RemoveDirectory(OverlayFileSystem.RootIno, "d");
        }, fs => Assert.That(Exists(fs, "d"), Is.False));
    }

    [Test]
    public void ADirectoryMadeWhereALowerOneWasRemovedIsOpaque()
    {
        RequireRoot();
        using var f = new OverlayFixture();
        WriteFile(Path.Combine(f.Lowers[0], "d", "old"), "x");
        SurvivesReopen(f, fs =>
        {
            fs.Unlink(Resolve(fs, "d").Ino, "old");
            fs.RemoveDirectory(OverlayFileSystem.RootIno, "d");
            fs.MakeDirectory(OverlayFileSystem.RootIno, "d", Mode("755"), OverlayCaller.Root);
        }, fs => Assert.That(List(fs, "d"), Is.Empty));
    }

    [Test]
    public void WritingIntoALargeLowerFileCopiesUpOnlyBlocksAsABCowFile()
    {
        using var f = new OverlayFixture();
        byte[] lower = new byte[1 << 20];
        new Random(1).NextBytes(lower);
        WriteFile(Path.Combine(f.Lowers[0], "big"), lower);
        byte[] expected = (byte[])lower.Clone();
        byte[] patch = Encoding.UTF8.GetBytes("hello, blocks");
        patch.CopyTo(expected, 300_000);
        SurvivesReopen(f, fs => WriteAt(fs, "big", 300_000, patch), fs =>
        {
            Assert.That(ReadBytes(fs, "big"), Is.EqualTo(expected));
            OverlayStat stat = Resolve(fs, "big");
            Assert.That(stat.Size, Is.EqualTo(lower.Length), "stat shows the logical size");
            Assert.That(stat.Blocks * 512, Is.LessThan(64 * 1024), "stat shows the blocks really allocated");
        });
        string upper = Path.Combine(f.Upper!, "big");
        Assert.That(Syscall.lgetxattr(upper, "user.baoverlay.bcow", out byte[] _), Is.GreaterThanOrEqualTo(0), "the upper entry is a B-CoW file");
        Assert.That(File.ReadAllBytes(Path.Combine(f.Lowers[0], "big")), Is.EqualTo(lower), "the lower file is never changed");
    }

    [Test]
    public void WritingIntoASmallLowerFileCopiesItWhole()
    {
        using var f = new OverlayFixture();
        WriteFile(Path.Combine(f.Lowers[0], "small"), "0123456789");
        SurvivesReopen(f, fs => WriteAt(fs, "small", 2, "ab"u8.ToArray()), fs => Assert.That(ReadText(fs, "small"), Is.EqualTo("01ab456789")));
        Assert.That(File.ReadAllText(Path.Combine(f.Upper!, "small")), Is.EqualTo("01ab456789"), "a plain upper file");
    }

    [Test]
    public void ChmodOfALargeLowerFileCopiesUpMetadataOnly()
    {
        using var f = new OverlayFixture();
        byte[] lower = new byte[4 << 20];
        new Random(2).NextBytes(lower);
        WriteFile(Path.Combine(f.Lowers[0], "bin"), lower);
        SurvivesReopen(f, fs => fs.SetAttr(Resolve(fs, "bin").Ino, new OverlaySetAttr { Mode = Mode("700") }, OverlayCaller.Root), fs =>
        {
            OverlayStat stat = Resolve(fs, "bin");
            Assert.That(stat.Mode & 0xFFF, Is.EqualTo(Mode("700")));
            Assert.That(stat.Size, Is.EqualTo(lower.Length));
            Assert.That(ReadBytes(fs, "bin"), Is.EqualTo(lower));
        });
        Assert.That(new FileInfo(Path.Combine(f.Upper!, "bin")).Length, Is.LessThan(64 * 1024), "no data was copied");
    }

    [Test]
    public void TruncatingALowerFileShrinksAndGrowsWithZeros()
    {
        using var f = new OverlayFixture();
        byte[] lower = new byte[200_000];
        new Random(3).NextBytes(lower);
        WriteFile(Path.Combine(f.Lowers[0], "t"), lower);
        byte[] expected = new byte[150_000];
        lower.AsSpan(0, 100_000).CopyTo(expected);
        SurvivesReopen(f, fs =>
        {
            ulong ino = Resolve(fs, "t").Ino;
            fs.SetAttr(ino, new OverlaySetAttr { Size = 100_000 }, OverlayCaller.Root);
            fs.SetAttr(ino, new OverlaySetAttr { Size = 150_000 }, OverlayCaller.Root);
        }, fs => Assert.That(ReadBytes(fs, "t"), Is.EqualTo(expected)));
    }

    [Test]
    public void RenamingALowerFileMovesItAndHidesTheOldName()
    {
        RequireRoot();
        using var f = new OverlayFixture();
        byte[] lower = new byte[300_000];
        new Random(4).NextBytes(lower);
        WriteFile(Path.Combine(f.Lowers[0], "a", "file"), lower);
        Directory.CreateDirectory(Path.Combine(f.Lowers[0], "b"));
        SurvivesReopen(f, fs => fs.Rename(Resolve(fs, "a").Ino, "file", Resolve(fs, "b").Ino, "moved"), fs =>
        {
            Assert.That(Exists(fs, "a/file"), Is.False);
            Assert.That(ReadBytes(fs, "b/moved"), Is.EqualTo(lower));
        });
    }

    [Test]
    public void RenameWithNoReplaceRefusesAnExistingTarget()
    {
        using var f = new OverlayFixture();
        WriteFile(Path.Combine(f.Lowers[0], "a"), "a");
        WriteFile(Path.Combine(f.Lowers[0], "b"), "b");
        using OverlayFileSystem fs = f.Open();
        var e = Assert.Throws<OverlayException>(() => fs.Rename(OverlayFileSystem.RootIno, "a", OverlayFileSystem.RootIno, "b", OverlayRenameFlags.NoReplace));
        Assert.That(e!.Errno, Is.EqualTo(OverlayErrno.EEXIST));
        Assert.That(ReadText(fs, "b"), Is.EqualTo("b"));
    }

    [Test]
    public void RenamingAnUpperDirectoryMovesItsContent()
    {
        using var f = new OverlayFixture();
        SurvivesReopen(f, fs =>
        {
            OverlayStat d = fs.MakeDirectory(OverlayFileSystem.RootIno, "d", Mode("755"), OverlayCaller.Root);
            var (_, handle) = fs.Create(d.Ino, "f", Mode("644"), OverlayCaller.Root);
            using (handle)
            {
                handle.Write("content"u8, 0);
            }
            fs.Rename(OverlayFileSystem.RootIno, "d", OverlayFileSystem.RootIno, "e");
        }, fs =>
        {
            Assert.That(Exists(fs, "d"), Is.False);
            Assert.That(ReadText(fs, "e/f"), Is.EqualTo("content"));
        });
    }

    [Test]
    public void SymbolicLinksAreStoredAndNeverFollowedByTheOverlay()
    {
        using var f = new OverlayFixture();
        Assert.That(Syscall.symlink("/etc/passwd", Path.Combine(f.Lowers[0], "abs")), Is.Zero);
        Assert.That(Syscall.symlink("../../outside", Path.Combine(f.Lowers[0], "dangling")), Is.Zero);
        SurvivesReopen(f, fs => fs.MakeSymbolicLink(OverlayFileSystem.RootIno, "new", "target", OverlayCaller.Root), fs =>
        {
            Assert.That(fs.ReadLink(Resolve(fs, "abs").Ino), Is.EqualTo("/etc/passwd"));
            Assert.That(fs.ReadLink(Resolve(fs, "dangling").Ino), Is.EqualTo("../../outside"));
            Assert.That(fs.ReadLink(Resolve(fs, "new").Ino), Is.EqualTo("target"));
            Assert.That(Resolve(fs, "abs").IsSymbolicLink, Is.True);
            var e = Assert.Throws<OverlayException>(() => fs.Open(Resolve(fs, "abs").Ino, write: false, truncate: false));
            Assert.That(e!.Errno, Is.EqualTo(OverlayErrno.EINVAL), "opening a link through the overlay does not follow it");
        });
    }

    /// <summary>
    /// A new object gets the mode asked for less the caller's umask, whatever this process's own umask, set-user-ID
    /// included; in a set-group-ID lower directory it takes the directory's group, a new directory its set-group-ID
    /// bit, and a group-executable set-group-ID file of a caller outside that group loses the bit, as the kernel
    /// gives them.
    /// </summary>
    [Test]
    public void NewObjectsGetTheCallersModeAndTheGroupOfASetGroupIdDirectory()
    {
        RequireRoot();
        using var f = new OverlayFixture();
        Directory.CreateDirectory(Path.Combine(f.Lowers[0], "shared"));
        Assert.That(Syscall.chown(Path.Combine(f.Lowers[0], "shared"), 0, 4321), Is.Zero);
        Assert.That(Syscall.chmod(Path.Combine(f.Lowers[0], "shared"), (FilePermissions)Mode("2777")), Is.Zero);
        Assert.That(Syscall.chmod(f.Upper!, (FilePermissions)Mode("777")), Is.Zero);
        var caller = new OverlayCaller(1000, 1000, Umask: Mode("002"));
        FilePermissions processUmask = Syscall.umask((FilePermissions)Mode("077"));
        try
        {
            SurvivesReopen(f, fs =>
            {
                ulong root = OverlayFileSystem.RootIno, shared = Resolve(fs, "shared").Ino;
                fs.Create(root, "file", Mode("4777"), caller).Handle.Dispose();
                fs.MakeDirectory(root, "dir", Mode("1777"), caller);
                fs.MakeNode(root, "fifo", 0x1000 | Mode("666"), 0, caller);
                fs.Create(shared, "file", Mode("666"), caller).Handle.Dispose();
                fs.Create(shared, "sgid-exec", Mode("2775"), caller).Handle.Dispose();
                fs.MakeDirectory(shared, "dir", Mode("755"), caller);
            }, fs =>
            {
                void Expect(string path, string mode, uint gid)
                {
                    OverlayStat stat = Resolve(fs, path);
                    Assert.That((Convert.ToString(stat.Mode & 0xFFF, 8), stat.Uid, stat.Gid), Is.EqualTo((mode, 1000u, gid)), path);
                }
                Expect("file", "4775", 1000);
                Expect("dir", "1775", 1000);
                Expect("fifo", "664", 1000);
                Expect("shared/file", "664", 4321);
                Expect("shared/sgid-exec", "775", 4321);
                Expect("shared/dir", "2755", 4321);
            });
        }
        finally
        {
            Syscall.umask(processUmask);
        }
    }

    [Test]
    public void InodeNumbersSurviveCopyUpAndRemountAndDifferAcrossLayers()
    {
        using var f = new OverlayFixture();
        WriteFile(Path.Combine(f.Lowers[0], "a"), new byte[100_000]);
        WriteFile(Path.Combine(f.Lowers[1], "b"), "b");
        ulong before;
        using (OverlayFileSystem fs = f.Open())
        {
            before = Resolve(fs, "a").Ino;
            Assert.That(Resolve(fs, "b").Ino, Is.Not.EqualTo(before));
            WriteAt(fs, "a", 10, [1]);
            Assert.That(Resolve(fs, "a").Ino, Is.EqualTo(before), "after copy-up");
        }
        using (OverlayFileSystem fs = f.Open())
        {
            Assert.That(Resolve(fs, "a").Ino, Is.EqualTo(before), "after remount");
        }
    }

    [Test]
    public void AReaderOpenedBeforeAWriterSeesTheNewData()
    {
        using var f = new OverlayFixture();
        WriteFile(Path.Combine(f.Lowers[0], "shared"), new byte[200_000]);
        using OverlayFileSystem fs = f.Open();
        ulong ino = Resolve(fs, "shared").Ino;
        using OverlayHandle reader = fs.Open(ino, write: false, truncate: false);
        using (OverlayHandle writer = fs.Open(ino, write: true, truncate: false))
        {
            writer.Write("new"u8, 1000);
        }
        byte[] buffer = new byte[3];
        reader.Read(buffer, 1000);
        Assert.That(Encoding.UTF8.GetString(buffer), Is.EqualTo("new"), "kernel overlayfs before 4.19 returned the old lower bytes here (docker/for-linux#72)");
    }

    [Test]
    public void WithoutAnUpperDirectoryEveryChangeFailsWithEROFS()
    {
        using var f = new OverlayFixture(withUpper: false);
        WriteFile(Path.Combine(f.Lowers[0], "a"), "a");
        using OverlayFileSystem fs = f.Open();
        ulong ino = Resolve(fs, "a").Ino;
        Assert.That(Assert.Throws<OverlayException>(() => fs.Open(ino, write: true, truncate: false))!.Errno, Is.EqualTo(OverlayErrno.EROFS));
        Assert.That(Assert.Throws<OverlayException>(() => fs.Unlink(OverlayFileSystem.RootIno, "a"))!.Errno, Is.EqualTo(OverlayErrno.EROFS));
        Assert.That(Assert.Throws<OverlayException>(() => fs.MakeDirectory(OverlayFileSystem.RootIno, "d", Mode("755"), OverlayCaller.Root))!.Errno, Is.EqualTo(OverlayErrno.EROFS));
        Assert.That(ReadText(fs, "a"), Is.EqualTo("a"));
    }

    [Test]
    public void NamesUpTo255BytesWorkAndLongerOnesFailWithENAMETOOLONG()
    {
        using var f = new OverlayFixture();
        using OverlayFileSystem fs = f.Open();
        string longest = new('n', 255);
        fs.MakeDirectory(OverlayFileSystem.RootIno, longest, Mode("755"), OverlayCaller.Root);
        Assert.That(Exists(fs, longest), Is.True);
        var e = Assert.Throws<OverlayException>(() => fs.MakeDirectory(OverlayFileSystem.RootIno, longest + "x", Mode("755"), OverlayCaller.Root));
        Assert.That(e!.Errno, Is.EqualTo(OverlayErrno.ENAMETOOLONG));
        Assert.That(Assert.Throws<OverlayException>(() => fs.Lookup(OverlayFileSystem.RootIno, ".."))!.Errno, Is.EqualTo(OverlayErrno.EINVAL));
    }

    [Test]
    public void LeftoversOfACrashedCopyUpAreRemovedOnOpenAndNeverVisible()
    {
        using var f = new OverlayFixture();
        WriteFile(Path.Combine(f.Lowers[0], "a"), "a");
        WriteFile(Path.Combine(f.Work!, "baoverlay", "tmp-1-1"), "half a copy-up");
        using OverlayFileSystem fs = f.Open();
        Assert.That(Directory.EnumerateFileSystemEntries(Path.Combine(f.Work!, "baoverlay")), Is.Empty);
        Assert.That(List(fs, "/"), Is.EqualTo(new[] { "a" }));
    }

    [Test]
    public void RenamingADirectoryFromLowerLayersKeepsItsMergedContentAcrossRemount()
    {
        RequireRoot();
        using var f = new OverlayFixture();
        WriteFile(Path.Combine(f.Lowers[1], "src", "deep", "a"), "from lower2");
        WriteFile(Path.Combine(f.Lowers[0], "src", "b"), "from lower1");
        WriteFile(Path.Combine(f.Lowers[0], "dst-lower-only", "stale"), "must not merge into the moved directory");
        SurvivesReopen(f, fs =>
        {
            fs.Rename(OverlayFileSystem.RootIno, "src", OverlayFileSystem.RootIno, "moved");
            fs.Rename(OverlayFileSystem.RootIno, "moved", OverlayFileSystem.RootIno, "moved-again");
        }, fs =>
        {
            Assert.That(Exists(fs, "src"), Is.False);
            Assert.That(Exists(fs, "moved"), Is.False);
            Assert.That(List(fs, "moved-again"), Is.EqualTo(new[] { "b", "deep" }));
            Assert.That(ReadText(fs, "moved-again/deep/a"), Is.EqualTo("from lower2"));
            Assert.That(ReadText(fs, "moved-again/b"), Is.EqualTo("from lower1"));
        });
    }

    [Test]
    public void ADirectoryMovedOntoARemovedLowerDirectoryDoesNotMergeWithIt()
    {
        RequireRoot();
        using var f = new OverlayFixture();
        WriteFile(Path.Combine(f.Lowers[0], "target", "old"), "x");
        SurvivesReopen(f, fs =>
        {
            fs.Unlink(Resolve(fs, "target").Ino, "old");
            fs.RemoveDirectory(OverlayFileSystem.RootIno, "target");
            OverlayStat d = fs.MakeDirectory(OverlayFileSystem.RootIno, "fresh", Mode("755"), OverlayCaller.Root);
            fs.MakeSymbolicLink(d.Ino, "inside", "x", OverlayCaller.Root);
            fs.Rename(OverlayFileSystem.RootIno, "fresh", OverlayFileSystem.RootIno, "target");
        }, fs => Assert.That(List(fs, "target"), Is.EqualTo(new[] { "inside" })));
    }

    [Test]
    public void ExchangeSwapsALowerFileAndAnUpperDirectory()
    {
        RequireRoot();
        using var f = new OverlayFixture();
        WriteFile(Path.Combine(f.Lowers[0], "file"), "lower file");
        SurvivesReopen(f, fs =>
        {
            OverlayStat d = fs.MakeDirectory(OverlayFileSystem.RootIno, "dir", Mode("755"), OverlayCaller.Root);
            fs.MakeSymbolicLink(d.Ino, "l", "t", OverlayCaller.Root);
            fs.Rename(OverlayFileSystem.RootIno, "file", OverlayFileSystem.RootIno, "dir", OverlayRenameFlags.Exchange);
        }, fs =>
        {
            Assert.That(ReadText(fs, "dir"), Is.EqualTo("lower file"));
            Assert.That(List(fs, "file"), Is.EqualTo(new[] { "l" }));
        });
    }

    [Test]
    public void AHardLinkToACopiedUpFileSharesItsDataAndInode()
    {
        using var f = new OverlayFixture();
        WriteFile(Path.Combine(f.Lowers[0], "orig"), new byte[100_000]);
        SurvivesReopen(f, fs =>
        {
            OverlayStat linked = fs.Link(Resolve(fs, "orig").Ino, OverlayFileSystem.RootIno, "link");
            Assert.That(linked.Ino, Is.EqualTo(Resolve(fs, "orig").Ino));
            WriteAt(fs, "link", 5, "via link"u8.ToArray());
        }, fs =>
        {
            Assert.That(Encoding.UTF8.GetString(ReadBytes(fs, "orig"), 5, 8), Is.EqualTo("via link"));
            Assert.That(Resolve(fs, "orig").Nlink, Is.EqualTo(2UL));
        });
    }

    [Test]
    public void XattrsCopyUpMetadataAndTheOverlaysOwnAreHidden()
    {
        RequireRoot();
        using var f = new OverlayFixture();
        WriteFile(Path.Combine(f.Lowers[0], "x"), new byte[100_000]);
        SetXattr(Path.Combine(f.Lowers[0], "x"), "user.kept", "lower value");
        SurvivesReopen(f, fs =>
        {
            ulong ino = Resolve(fs, "x").Ino;
            fs.SetXattr(ino, "user.added", "v"u8);
            Assert.That(Assert.Throws<OverlayException>(() => fs.SetXattr(ino, "trusted.overlay.opaque", "y"u8))!.Errno, Is.EqualTo(OverlayErrno.EPERM));
            Assert.That(Assert.Throws<OverlayException>(() => fs.SetXattr(ino, "user.added", "w"u8, OverlayXattrFlags.Create))!.Errno, Is.EqualTo(OverlayErrno.EEXIST));
        }, fs =>
        {
            ulong ino = Resolve(fs, "x").Ino;
            Assert.That(fs.ListXattrs(ino).Order(), Is.EqualTo(new[] { "user.added", "user.kept" }), "user.baoverlay.* are hidden");
            Assert.That(Encoding.UTF8.GetString(fs.GetXattr(ino, "user.kept")), Is.EqualTo("lower value"));
            Assert.That(Assert.Throws<OverlayException>(() => fs.GetXattr(ino, "user.baoverlay.ino"))!.Errno, Is.EqualTo(OverlayErrno.ENODATA));
        });
    }

    [Test]
    public void PunchHoleAndSeekDataWorkOnABCowFile()
    {
        using var f = new OverlayFixture();
        byte[] lower = new byte[1 << 20];
        new Random(5).NextBytes(lower);
        WriteFile(Path.Combine(f.Lowers[0], "big"), lower);
        using OverlayFileSystem fs = f.Open();
        using OverlayHandle handle = fs.Open(Resolve(fs, "big").Ino, write: true, truncate: false);
        handle.Allocate(0, 512 * 1024, OverlayAllocateMode.PunchHole, keepSize: true);
        Assert.That(handle.Seek(0, data: true), Is.EqualTo(512 * 1024), "SEEK_DATA skips the punched range");
        Assert.That(handle.Seek(0, data: false), Is.EqualTo(0), "SEEK_HOLE finds the hole at once");
        byte[] back = new byte[4096];
        handle.Read(back, 4096);
        Assert.That(back, Is.All.EqualTo(0));
        Assert.That(Assert.Throws<OverlayException>(() => handle.Seek(2 << 20, data: true))!.Errno, Is.EqualTo(OverlayErrno.ENXIO));
    }

    [Test]
    public void AFileUnlinkedWhileOpenStaysReadableAndItsAttributesStayAvailable()
    {
        RequireRoot();
        using var f = new OverlayFixture();
        WriteFile(Path.Combine(f.Lowers[0], "doomed"), new byte[300_000]);
        using OverlayFileSystem fs = f.Open();
        ulong ino = Resolve(fs, "doomed").Ino;
        using OverlayHandle handle = fs.Open(ino, write: true, truncate: false);
        handle.Write("still here"u8, 0);
        fs.Unlink(OverlayFileSystem.RootIno, "doomed");
        Assert.That(Exists(fs, "doomed"), Is.False);
        OverlayStat stat = fs.GetAttr(ino);
        Assert.That(stat.Size, Is.EqualTo(300_000));
        Assert.That(stat.Nlink, Is.EqualTo(0UL));
        byte[] back = new byte[10];
        handle.Read(back, 0);
        Assert.That(Encoding.UTF8.GetString(back), Is.EqualTo("still here"));
    }

    [Test]
    public void ReadingABCowFileLeavesItsTimesAloneAndATruncateIsSeenByOpenReaders()
    {
        using var f = new OverlayFixture();
        byte[] lower = new byte[2 << 20];
        new Random(6).NextBytes(lower);
        WriteFile(Path.Combine(f.Lowers[0], "big"), lower);
        using OverlayFileSystem fs = f.Open();
        WriteAt(fs, "big", 100, [1, 2, 3]);
        ulong ino = Resolve(fs, "big").Ino;
        long mtime = fs.GetAttr(ino).MTimeNs;
        Thread.Sleep(20);
        ReadBytes(fs, "big");
        Assert.That(fs.GetAttr(ino).MTimeNs, Is.EqualTo(mtime), "a read does not commit");
        using OverlayHandle reader = fs.Open(ino, write: false, truncate: false);
        fs.SetAttr(ino, new OverlaySetAttr { Size = 1000 }, OverlayCaller.Root);
        byte[] buffer = new byte[4096];
        Assert.That(reader.Read(buffer, 0), Is.EqualTo(1000), "the open reader sees the new size");
        Assert.That(buffer[101], Is.EqualTo(2));
    }
}
