using BAOverlay.FileSystem;

namespace BAOverlay.Tests.FileSystem;

/// <summary>What the export cannot carry yet is refused with a clear error, never exported wrong.</summary>
public class ExportRefusalTests
{
    [Test]
    public void ARenamedLowerDirectoryIsRefusedRatherThanExportedWithoutItsLowerContent()
    {
        using var f = new OverlayFixture();
        OverlayFixture.WriteFile(Path.Combine(f.Lowers[0], "dir", "content"), "lives in lower");
        using (OverlayFileSystem fs = f.Open())
        {
            fs.Rename(OverlayFileSystem.RootIno, "dir", OverlayFileSystem.RootIno, "renamed");
        }
        string exported = Path.Combine(f.Root, "exported");
        Assert.That(() => UpperExport.ToDirectory(f.Upper!, exported),
            Throws.InstanceOf<IOException>().With.Message.Contains("renamed directory").And.Message.Contains(Path.Combine(f.Upper!, "renamed")));
        Assert.That(Directory.Exists(exported), Is.False, "nothing is left under the destination's name");
    }
}
