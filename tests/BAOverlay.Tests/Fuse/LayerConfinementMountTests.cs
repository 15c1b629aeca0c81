using System.Diagnostics;
using System.Text;
using BAOverlay.FileSystem;
using BAOverlay.Tests.FileSystem;
using Mono.Unix.Native;
using static BAOverlay.Tests.Fuse.FuseMountTests;

namespace BAOverlay.Tests.Fuse;

/// <summary>
/// Layers reached by handle, through a real mount: paths as long as the kernel accepts whatever the layer roots' own
/// lengths, a lower directory detached after the mount still served, redirects and B-CoW lower files that point out of
/// the layers refused, and layers written by the overlay stacked under another one (each in turn an upper, then a
/// lower). Needs root and /dev/fuse (<see cref="Mounted.RequireFuse"/> says which is missing).
/// </summary>
[TestFixture]
[Platform("Linux")]
[NonParallelizable]
public sealed class LayerConfinementMountTests
{
    /// <summary>A name of 200 bytes, distinct per index.</summary>
    private static string LongName(int i) => i.ToString("D3") + new string('n', 197);

    [Test]
    public void PathsInsideTheMountAreNotShortenedByTheLengthOfTheLayerRoots()
    {
        using var temp = new TempDir();
        // Layer roots about 1 000 bytes long (containers-storage's are ~120): the old join of root + path refused any
        // path inside the mount past 4095 - 1000 bytes.
        string deepRoot = Path.Combine(temp.Path, LongName(1), LongName(2), LongName(3), LongName(4));
        string lower = Path.Combine(deepRoot, "lower"), upper = Path.Combine(deepRoot, "upper"), work = Path.Combine(deepRoot, "work");
        Directory.CreateDirectory(lower);
        Directory.CreateDirectory(upper);
        Directory.CreateDirectory(work);
        OverlayFixture.WriteFile(Path.Combine(lower, "top.txt"), "top");
        string mnt = Path.Combine(temp.Path, "mnt");
        Func<OverlayFileSystem> open = () => OverlayFileSystem.Open(new OverlayOptions
        {
            LowerDirectories = [lower], UpperDirectory = upper, WorkDirectory = work, BlockSize = 4096,
        });

        // 18 levels of 200-byte names: 3 617 bytes below the mount point, within PATH_MAX for the caller, and past
        // 4095 once joined to an upper root of ~860 bytes.
        string relative = string.Join('/', Enumerable.Range(10, 18).Select(LongName));
        try
        {
            MountDeepTreeTwice(open, mnt, relative);
        }
        finally
        {
            // The upper now holds paths longer than PATH_MAX from its root: .NET cannot delete them, rm walks by handle.
            Checks.Run("rm", $"-rf {temp.Path}/{LongName(1)}");
        }
    }

    private static void MountDeepTreeTwice(Func<OverlayFileSystem> open, string mnt, string relative)
    {
        using (Mounted.Start(open, mnt))
        {
            string deep = Path.Combine(mnt, relative);
            Assert.That(Encoding.UTF8.GetByteCount(deep), Is.LessThan(4095), "the caller's own path is legal");
            Directory.CreateDirectory(deep);
            File.WriteAllText(Path.Combine(deep, "f.txt"), "deep");
            File.Move(Path.Combine(deep, "f.txt"), Path.Combine(deep, "g.txt"));
            Assert.That(File.ReadAllText(Path.Combine(deep, "g.txt")), Is.EqualTo("deep"));
            Assert.That(Directory.GetFiles(deep).Select(Path.GetFileName), Is.EqualTo(new[] { "g.txt" }));
        }
        using (Mounted.Start(open, mnt))
        {
            Assert.That(File.ReadAllText(Path.Combine(mnt, relative, "g.txt")), Is.EqualTo("deep"), "found again after a remount");
            Assert.That(File.ReadAllText(Path.Combine(mnt, "top.txt")), Is.EqualTo("top"));
        }
    }

    [Test]
    public void ALowerDirectoryDetachedAfterTheMountIsStillServed()
    {
        using var fixture = new OverlayFixture(lowers: 1);
        string lower = fixture.Lowers[0];
        Mounted.RequireFuse();
        Checks.Run("mount", $"-t tmpfs -o size=16m baoverlay-test-lower {lower}");
        bool lowerMounted = true;
        try
        {
            OverlayFixture.WriteFile(Path.Combine(lower, "etc", "os-release"), "ID=test");
            using Mounted mounted = Mounted.Start(fixture, out string mnt);
            Assert.That(File.ReadAllText(Path.Combine(mnt, "etc", "os-release")), Is.EqualTo("ID=test"));

            // As Podman does with the temporary lower mounts it makes for --uidmap: detached once the overlay is up.
            Checks.Run("umount", $"-l {lower}");
            lowerMounted = false;
            Assert.That(Directory.GetFileSystemEntries(lower), Is.Empty, "the lower path no longer shows the tmpfs");

            Assert.That(Directory.GetFileSystemEntries(mnt).Select(Path.GetFileName), Is.EqualTo(new[] { "etc" }), "the merged tree still lists it");
            Assert.That(File.ReadAllText(Path.Combine(mnt, "etc", "os-release")), Is.EqualTo("ID=test"), "and reads it");
            File.AppendAllText(Path.Combine(mnt, "etc", "os-release"), "\nVERSION=1");
            Assert.That(File.ReadAllText(Path.Combine(mnt, "etc", "os-release")), Is.EqualTo("ID=test\nVERSION=1"), "copy-up from the detached lower works");
        }
        finally
        {
            if (lowerMounted)
            {
                Checks.Run("umount", $"-l {lower}");
            }
        }
    }

    [TestCase("user.baoverlay.redirect", "../outside")]
    [TestCase("user.baoverlay.redirect", "d/../../outside")]
    [TestCase("trusted.overlay.redirect", "/../outside")]
    [TestCase("trusted.overlay.redirect", "..")]
    public void ARedirectOutOfTheLayersIsRefusedWithALogLine(string xattr, string value)
    {
        using var fixture = new OverlayFixture(lowers: 1);
        // "outside" sits next to the layer roots: ../outside from a layer root reaches it.
        string outside = Path.Combine(fixture.Root, "outside");
        OverlayFixture.WriteFile(Path.Combine(outside, "secret"), "not yours");
        OverlayFixture.WriteFile(Path.Combine(fixture.Lowers[0], "d", "inside"), "in the layer");
        Directory.CreateDirectory(Path.Combine(fixture.Upper!, "d"));
        OverlayFixture.SetXattr(Path.Combine(fixture.Upper!, "d"), xattr, value);

        using (Mounted mounted = Mounted.Start(fixture, out string mnt))
        {
            string[] listed = Directory.GetFileSystemEntries(Path.Combine(mnt, "d")).Select(Path.GetFileName).ToArray()!;
            Assert.That(listed, Does.Not.Contain("secret"), "nothing outside the layers is listed");
            Assert.That(File.Exists(Path.Combine(mnt, "d", "secret")), Is.False, "nor looked up");
        }
        Assert.That(fixture.Log, Has.Some.Contains("redirect").And.Some.Contains("refused"), "the refusal is logged, naming the file");

        // Export refuses the layer rather than copy what the redirect points at.
        string destination = Path.Combine(fixture.Root, "exported");
        Assert.That(() => UpperExport.ToDirectory(fixture.Upper!, destination, new UpperExportOptions { LowerDirectories = fixture.Lowers }),
            Throws.InstanceOf<IOException>().With.Message.Contains("refused"));
        Assert.That(Directory.Exists(Path.Combine(destination, "d")) && File.Exists(Path.Combine(destination, "d", "secret")), Is.False);
    }

    [Test]
    public void ASymbolicLinkInALowerLayerNeverLeadsARedirectOut()
    {
        using var fixture = new OverlayFixture(lowers: 1);
        string outside = Path.Combine(fixture.Root, "outside");
        OverlayFixture.WriteFile(Path.Combine(outside, "etc", "secret"), "not yours");
        Directory.CreateSymbolicLink(Path.Combine(fixture.Lowers[0], "link"), outside);
        Directory.CreateDirectory(Path.Combine(fixture.Upper!, "d"));
        OverlayFixture.SetXattr(Path.Combine(fixture.Upper!, "d"), "user.baoverlay.redirect", "link/etc");

        using Mounted mounted = Mounted.Start(fixture, out string mnt);
        Assert.That(Directory.GetFileSystemEntries(Path.Combine(mnt, "d")), Is.Empty, "the redirect's walk stops at the link");
    }

    [Test]
    public void ABCowFileWhoseLowerBecameAFifoFailsWithEIOAndTheMountKeepsServing()
    {
        using var fixture = new OverlayFixture(lowers: 1);
        string lowerBig = Path.Combine(fixture.Lowers[0], "big.bin");
        OverlayFixture.WriteFile(lowerBig, new byte[1 << 20]);
        OverlayFixture.WriteFile(Path.Combine(fixture.Lowers[0], "other.txt"), "other");
        using (Mounted.Start(fixture, out string mnt))
        {
            using var stream = new FileStream(Path.Combine(mnt, "big.bin"), FileMode.Open, FileAccess.Write);
            stream.Position = 4096;
            stream.Write("x"u8);
        }
        Assert.That(Syscall.lgetxattr(Path.Combine(fixture.Upper!, "big.bin"), "user.baoverlay.bcow", out byte[] _), Is.GreaterThanOrEqualTo(0), "a B-CoW file");
        File.Delete(lowerBig);
        Assert.That(Syscall.mkfifo(lowerBig, FilePermissions.S_IRUSR | FilePermissions.S_IWUSR), Is.Zero);

        using (Mounted mounted = Mounted.Start(fixture, out string mnt))
        {
            Task<Exception?> read = Task.Run(() =>
            {
                try
                {
                    File.ReadAllBytes(Path.Combine(mnt, "big.bin"));
                    return null;
                }
                catch (Exception e)
                {
                    return e;
                }
            });
            Assert.That(read.Wait(TimeSpan.FromSeconds(20)), Is.True, "the open does not block on the fifo");
            Assert.That(read.Result, Is.InstanceOf<IOException>(), "the file fails to open");
            Assert.That(read.Result!.HResult, Is.EqualTo((int)NativeConvert.FromErrno(Errno.EIO)), "with EIO");
            Assert.That(File.ReadAllText(Path.Combine(mnt, "other.txt")), Is.EqualTo("other"), "the rest of the mount still works");
        }
        Assert.That(fixture.Log, Has.Some.Contains("not a regular file"));
    }

    private static readonly byte[] Block = Enumerable.Range(0, 4096).Select(i => (byte)(i * 7)).ToArray();

    [Test]
    public void UppersStackedAsLowersKeepRenamesAndBlockCopyUps()
    {
        using var temp = new TempDir();
        string Dir(string name) => Directory.CreateDirectory(Path.Combine(temp.Path, name)).FullName;
        string base0 = Dir("base"), mnt = Path.Combine(temp.Path, "mnt");
        string[] uppers = [Dir("upper1"), Dir("upper2"), Dir("upper3")];
        string[] works = [Dir("work1"), Dir("work2"), Dir("work3")];
        byte[] big = Checks.RandomBytes(new Random(11), 1 << 20);
        OverlayFixture.WriteFile(Path.Combine(base0, "big.bin"), big);
        OverlayFixture.WriteFile(Path.Combine(base0, "d", "a.txt"), "a");
        OverlayFixture.WriteFile(Path.Combine(base0, "d", "sub", "b.txt"), "b");

        // Overlay n has upper n over uppers n-1 .. 1 and the base: each written layer is in turn the upper, then a lower.
        Func<OverlayFileSystem> Stack(int n) => () => OverlayFileSystem.Open(new OverlayOptions
        {
            LowerDirectories = [.. uppers.Take(n).Reverse(), base0],
            UpperDirectory = uppers[n],
            WorkDirectory = works[n],
            BlockCopyUpThreshold = 64 * 1024,
            BlockSize = 4096,
        });
        string[] names = ["d", "e", "f"];
        for (int n = 0; n < 3; n++)
        {
            using (Mounted.Start(Stack(n), mnt))
            {
                AssertTree(mnt, names[n], big, $"layer stack {n + 1}, before its changes");
                Directory.Move(Path.Combine(mnt, names[n]), Path.Combine(mnt, n < 2 ? names[n + 1] : "g"));
                using (var stream = new FileStream(Path.Combine(mnt, "big.bin"), FileMode.Open, FileAccess.Write))
                {
                    stream.Position = (n + 1) * 100_000;
                    stream.Write(Block);
                }
                Block.CopyTo(big, (n + 1) * 100_000);
                AssertTree(mnt, n < 2 ? names[n + 1] : "g", big, $"layer stack {n + 1}, after its changes");
            }
            using (Mounted.Start(Stack(n), mnt))
            {
                AssertTree(mnt, n < 2 ? names[n + 1] : "g", big, $"layer stack {n + 1}, remounted");
            }
        }
        Assert.That(Syscall.lgetxattr(Path.Combine(uppers[0], "big.bin"), "user.baoverlay.bcow", out byte[] _), Is.GreaterThanOrEqualTo(0),
            "the first write was a block-level copy-up");
    }

    private static void AssertTree(string mnt, string directory, byte[] big, string when)
    {
        Assert.That(Directory.GetFileSystemEntries(mnt).Select(Path.GetFileName).Order(), Is.EqualTo(new[] { "big.bin", directory }), when);
        Assert.That(File.ReadAllText(Path.Combine(mnt, directory, "a.txt")), Is.EqualTo("a"), when);
        Assert.That(File.ReadAllText(Path.Combine(mnt, directory, "sub", "b.txt")), Is.EqualTo("b"), when);
        Assert.That(new FileInfo(Path.Combine(mnt, "big.bin")).Length, Is.EqualTo(big.Length), when);
        Assert.That(File.ReadAllBytes(Path.Combine(mnt, "big.bin")), Is.EqualTo(big), when);
    }

}
