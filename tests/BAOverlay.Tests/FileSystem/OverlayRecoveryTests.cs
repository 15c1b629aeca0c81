using System.Diagnostics;
using BAOverlay.FileSystem;
using Mono.Unix.Native;
using static BAOverlay.Tests.FileSystem.OverlayFixture;

namespace BAOverlay.Tests.FileSystem;

/// <summary>After a failure the overlay carries on from what is on disk; markers from disk count only in the exact
/// form the kernel reads.</summary>
[NonParallelizable]
public class OverlayRecoveryTests
{
    /// <param name="deferred">The commit made later, by <see cref="OverlayFileSystem.CloseIdleFiles()"/> (a close delay,
    /// as baoverlayfs's), instead of by the release: its failure must be said and thrown all the same.</param>
    [Test]
    public void ACloseWhoseCommitFailsLeavesTheNextOpenWorkingOnWhatIsOnDisk([Values(false, true)] bool deferred)
    {
        if (Syscall.geteuid() != 0)
        {
            Assert.Ignore("needs root to mount a small tmpfs as the upper file system");
        }
        using var temp = new TempDir();
        string lower = Directory.CreateDirectory(Path.Combine(temp.Path, "lower")).FullName;
        string small = Directory.CreateDirectory(Path.Combine(temp.Path, "small")).FullName;
        // 64 MiB (sparse) in 4 KiB blocks: the block map spans 32 pages of 512 entries.
        const int Spread = 2 << 20;
        using (var lowerFile = new FileStream(Path.Combine(lower, "big"), FileMode.CreateNew))
        {
            lowerFile.SetLength(32L * Spread);
        }
        Checks.Run("mount", $"-t tmpfs -o size=2m baoverlay-test-small {small}");
        try
        {
            string upper = Directory.CreateDirectory(Path.Combine(small, "upper")).FullName;
            string work = Directory.CreateDirectory(Path.Combine(small, "work")).FullName;
            var log = new List<string>();
            using OverlayFileSystem fs = OverlayFileSystem.Open(new OverlayOptions
            {
                LowerDirectories = [lower], UpperDirectory = upper, WorkDirectory = work,
                BlockCopyUpThreshold = 64 * 1024, BlockSize = 4096, Log = log.Add,
                CloseDelay = deferred ? TimeSpan.FromHours(1) : TimeSpan.Zero,
            });
            ulong ino = Resolve(fs, "big").Ino;
            OverlayHandle handle = fs.Open(ino, write: true, truncate: false);
            // Whole blocks, so that no background fill from lower is left running into the full disk below; one under
            // each page of the map, so that the commit at close must write 32 new map pages (copy-on-write).
            byte[] block = new byte[4096];
            block.AsSpan().Fill(9);
            for (int i = 0; i < 32; i++)
            {
                handle.Write(block, (long)i * Spread);
            }
            // Nothing left for those pages.
            string filler = Path.Combine(small, "filler");
            Fill(filler);

            Exception? closing = null;
            try
            {
                handle.Dispose();
                if (deferred)
                {
                    fs.CloseIdleFiles();
                }
            }
            catch (Exception e)
            {
                closing = e;
            }
            Assert.That(closing, Is.Not.Null, "the commit at close fails");
            File.Delete(filler);

            // The next open starts from the file on disk: the last durable state (here, the copy-up, which wrote no
            // data) or a later one, byte for byte one of the two.
            byte[] read = ReadBytes(fs, "big");
            Assert.That(read, Has.Length.EqualTo(32L * Spread));
            bool old = read[0] == 0;
            for (int i = 0; i < 32; i++)
            {
                Assert.That(read.AsSpan(i * Spread, 4096).SequenceEqual(old ? new byte[4096] : block), Is.True,
                    $"block {i}: all blocks from the same state");
            }
            WriteAt(fs, "big", 500, [7]);
            Assert.That(ReadBytes(fs, "big")[500], Is.EqualTo(7), "and can be written again");
            Assert.That(closing, Is.InstanceOf<OverlayException>().With.Property(nameof(OverlayException.Errno)).EqualTo(OverlayErrno.ENOSPC),
                "the failed close says why, as an errno");
            Assert.That(log, Has.Some.Contains("closing failed"));
        }
        finally
        {
            Checks.Run("umount", $"-l {small}");
        }
    }

    [TestCase("y", true)]
    [TestCase("yes", false)]
    [TestCase("n", false)]
    [TestCase("y\n", false)]
    public void AnOpaqueXattrCountsOnlyWhenItIsExactlyY(string value, bool opaque)
    {
        using var f = new OverlayFixture();
        WriteFile(Path.Combine(f.Lowers[1], "d", "below"), "below");
        WriteFile(Path.Combine(f.Lowers[0], "d", "above"), "above");
        SetXattr(Path.Combine(f.Lowers[0], "d"), "trusted.overlay.opaque", value);
        using OverlayFileSystem fs = f.Open();
        Assert.That(List(fs, "d"), opaque ? Is.EqualTo(new[] { "above" }) : Is.EqualTo(new[] { "above", "below" }),
            "kernel overlayfs reads the value as opaque only when it is the one byte 'y'");
    }

    [Test]
    public void ALowerDirectoryThatIsARegularFileIsRefusedSayingSo()
    {
        using var f = new OverlayFixture();
        string file = Path.Combine(f.Root, "file");
        File.WriteAllText(file, "x");
        var e = Assert.Throws<OverlayException>(() => OverlayFileSystem.Open(new OverlayOptions { LowerDirectories = [file] }));
        Assert.That(e!.Errno, Is.EqualTo(OverlayErrno.ENOTDIR));
        Assert.That(e.Message, Does.Contain(file).And.Contain("not a directory"));
    }

    private static void Fill(string path)
    {
        using var stream = new FileStream(path, FileMode.CreateNew, FileAccess.Write);
        byte[] chunk = new byte[4096];
        try
        {
            while (true)
            {
                stream.Write(chunk);
                stream.Flush();
            }
        }
        catch (IOException)
        {
            // full
        }
    }

}
