using BAOverlay.FileSystem;
using Mono.Unix.Native;
using static BAOverlay.Tests.FileSystem.OverlayFixture;

namespace BAOverlay.Tests.FileSystem;

/// <summary>Broken layer trees fail the operations on the paths concerned, with a clear errno and a log line; the
/// rest of the file system keeps working.</summary>
public class BrokenLayerTests
{
    [Test]
    public void ACorruptBCowFileInUpperFailsWithEIOAndTheRestStillWorks()
    {
        using var f = new OverlayFixture();
        WriteFile(Path.Combine(f.Lowers[0], "big"), new byte[200_000]);
        WriteFile(Path.Combine(f.Lowers[0], "fine"), "fine");
        using (OverlayFileSystem fs = f.Open())
        {
            WriteAt(fs, "big", 0, [1, 2, 3]);
        }
        string upper = Path.Combine(f.Upper!, "big");
        using (var stream = new FileStream(upper, FileMode.Open, FileAccess.Write))
        {
            stream.Write(new byte[16], 0, 16); // wipe the first header slot's magic
            stream.Position = 4096;
            stream.Write(new byte[16], 0, 16); // and the second's
        }
        using (OverlayFileSystem fs = f.Open())
        {
            var e = Assert.Throws<OverlayException>(() => ReadBytes(fs, "big"));
            Assert.That(e!.Errno, Is.EqualTo(OverlayErrno.EIO));
            Assert.That(e.Message, Does.Contain(upper));
            Assert.That(f.Log, Has.Some.Contains(upper), "a log line names the file");
            Assert.That(ReadText(fs, "fine"), Is.EqualTo("fine"));
            Assert.That(List(fs, "/"), Is.EqualTo(new[] { "big", "fine" }));
        }
    }

    [Test]
    public void ALowerDirectoryThatDisappearsFailsOnlyItsOwnPaths()
    {
        using var f = new OverlayFixture();
        WriteFile(Path.Combine(f.Lowers[1], "d", "x"), "x");
        WriteFile(Path.Combine(f.Lowers[0], "other"), "other");
        using OverlayFileSystem fs = f.Open();
        ulong d = Resolve(fs, "d").Ino;
        Directory.Delete(Path.Combine(f.Lowers[1], "d"), recursive: true);
        var e = Assert.Throws<OverlayException>(() => fs.ReadDirectory(d));
        Assert.That(e!.Errno, Is.AnyOf(OverlayErrno.EIO, OverlayErrno.ENOENT));
        Assert.That(Assert.Throws<OverlayException>(() => fs.Lookup(d, "x"))!.Errno, Is.EqualTo(OverlayErrno.ENOENT));
        Assert.That(ReadText(fs, "other"), Is.EqualTo("other"));
    }

    [Test]
    public void AMissingLayerDirectoryIsRefusedAtOpenWithItsName()
    {
        using var f = new OverlayFixture();
        string missing = Path.Combine(f.Root, "nope");
        var e = Assert.Throws<OverlayException>(() => OverlayFileSystem.Open(new OverlayOptions { LowerDirectories = [missing] }));
        Assert.That(e!.Errno, Is.EqualTo(OverlayErrno.ENOENT));
        Assert.That(e.Message, Does.Contain(missing));
    }

    [Test]
    public void AnUpperDirectoryWithoutAWorkDirectoryIsRefused()
    {
        using var f = new OverlayFixture();
        var e = Assert.Throws<OverlayException>(() => OverlayFileSystem.Open(new OverlayOptions { LowerDirectories = f.Lowers, UpperDirectory = f.Upper }));
        Assert.That(e!.Errno, Is.EqualTo(OverlayErrno.EINVAL));
    }

    [Test]
    public void AnUnknownInodeNumberFailsWithESTALE()
    {
        using var f = new OverlayFixture();
        using OverlayFileSystem fs = f.Open();
        Assert.That(Assert.Throws<OverlayException>(() => fs.GetAttr(123456789))!.Errno, Is.EqualTo(OverlayErrno.ESTALE));
    }

    [Test]
    public void AnUnreadableLowerDirectoryFailsWithEACCESAndALogLineAndTheRestStillWorks()
    {
        if (Syscall.geteuid() != 0)
        {
            Assert.Ignore("needs root: the test drops the DAC capabilities of one thread to make a directory unreadable to root");
        }
        using var f = new OverlayFixture();
        WriteFile(Path.Combine(f.Lowers[1], "locked", "inside"), "x");
        WriteFile(Path.Combine(f.Lowers[0], "fine"), "fine");
        Assert.That(Syscall.chmod(Path.Combine(f.Lowers[1], "locked"), 0), Is.Zero);
        Exception? failure = null;
        string? fine = null;
        using OverlayFileSystem fs = f.Open();
        ulong locked = Resolve(fs, "locked").Ino;
        // Capabilities are per thread: without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH root is held to mode 000.
        var thread = new Thread(() =>
        {
            ThreadCapabilities.DropEffective(ThreadCapabilities.CapDacOverride);
            ThreadCapabilities.DropEffective(ThreadCapabilities.CapDacReadSearch);
            try
            {
                fs.ReadDirectory(locked);
            }
            catch (Exception e)
            {
                failure = e;
            }
            fine = ReadText(fs, "fine");
        });
        thread.Start();
        thread.Join();
        Assert.That(failure, Is.InstanceOf<OverlayException>());
        Assert.That(((OverlayException)failure!).Errno, Is.EqualTo(OverlayErrno.EACCES));
        Assert.That(f.Log, Has.Some.Contains("locked"), "a log line names the directory");
        Assert.That(fine, Is.EqualTo("fine"));
    }
}

