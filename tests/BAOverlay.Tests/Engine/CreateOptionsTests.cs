namespace BAOverlay.Tests.Engine;

/// <summary>Bad create options are refused before anything is written: they never cost an existing file.</summary>
public class CreateOptionsTests
{
    [TestCase(3000, 1L << 20)]
    [TestCase(1 << 21, 1L << 20)]
    [TestCase(65536, 1L << 50)]
    [TestCase(65536, -1L)]
    public void BadOptionsLeaveAnExistingFileUntouchedEvenWithOverwrite(int blockSize, long size)
    {
        using var temp = new TempDir();
        string path = temp.File("keep.bcow");
        File.WriteAllText(path, "precious");
        Assert.Throws<ArgumentException>(() => BCowFile.Create(path, new BCowCreateOptions { Overwrite = true, BlockSize = blockSize, VirtualSize = size }));
        Assert.That(File.ReadAllText(path), Is.EqualTo("precious"));
    }

    [Test]
    public void CreatingOverAnExistingFileWithoutOverwriteFailsAndKeepsIt()
    {
        using var temp = new TempDir();
        string path = temp.File("keep.bcow");
        File.WriteAllText(path, "precious");
        var e = Assert.Throws<IOException>(() => BCowFile.Create(path, new BCowCreateOptions { VirtualSize = 1 << 20 }));
        Assert.That(e!.Message, Does.Contain(path));
        Assert.That(File.ReadAllText(path), Is.EqualTo("precious"));
    }
}
