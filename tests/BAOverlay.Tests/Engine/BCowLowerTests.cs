using BAOverlay.Storage;
using BAOverlay.Tests.Tool;

namespace BAOverlay.Tests.Engine;

/// <summary>
/// A B-CoW file given as the lower of another was read as raw bytes (its headers and map merged into the virtual
/// file). Opened by path it is now a backing chain, read through its own map (<see cref="BackingChainTests"/>); given
/// as storage the caller opened (as the overlay does), it is still refused, naming both files.
/// </summary>
public class BCowLowerTests
{
    private const string Refusal = "is itself a B-CoW file; backing chains are not supported";

    [TestCase(false, TestName = "ABCowLowerJustCreatedIsReadThroughItsMap")]
    [TestCase(true, TestName = "ABCowLowerThatWasWrittenIsReadThroughItsMap")]
    public void ABCowLowerIsReadThroughItsMap(bool written)
    {
        using var dir = new TempDir();
        string lower = dir.File("base.bcow");
        BCowFile.Create(lower, new BCowCreateOptions { VirtualSize = 1 << 20 }).Dispose(); // only header slot 1 written
        if (written)
        {
            using BCowFile file = BCowFile.Open(lower); // commits into slot 0 as well
            file.WriteAt(new byte[] { 1 }, 0);
        }
        string upper = dir.File("top.bcow");

        using (BCowFile top = BCowFile.Create(upper, new BCowCreateOptions { LowerPath = lower }))
        {
            byte[] first = new byte[8192];
            Assert.That(top.ReadAt(first, 0), Is.EqualTo(first.Length));
            Assert.That(first[0], Is.EqualTo(written ? 1 : 0), "the merged content, not the header bytes");
            Assert.That(first.Skip(1).All(b => b == 0), Is.True);
            Assert.That(top.Length, Is.EqualTo(1 << 20));
        }

        using (var upperStorage = new MemoryStorage("memory"))
        using (var lowerStorage = new FileStorage(lower, FileMode.Open, FileAccess.Read))
        {
            var e = Assert.Throws<BCowFormatException>(() => BCowFile.Create(upperStorage, lowerStorage).Dispose());
            Assert.That(e!.Message, Is.EqualTo($"memory: the lower file {lower} {Refusal}"), "storage the caller opened stays refused");
        }
    }

    /// <summary>A pair an older build made whose plain lower file was replaced by a B-CoW file: opened by path, the
    /// B-CoW file is read as a chain, and its merged content is compared with the recorded identity like any lower.</summary>
    [Test]
    public void APairWhoseLowerWasReplacedByABCowFileIsCheckedByItsMergedContent()
    {
        using var dir = new TempDir();
        string lower = dir.File("base.img");
        File.WriteAllBytes(lower, Checks.RandomBytes(new Random(1), 1 << 20));
        string upper = dir.File("top.bcow");
        BCowFile.Create(upper, new BCowCreateOptions { LowerPath = lower }).Dispose();
        BCowFile.Create(lower, new BCowCreateOptions { VirtualSize = 1 << 20, Overwrite = true }).Dispose();

        var e = Assert.Throws<BCowFormatException>(() => BCowFile.Open(upper).Dispose());
        Assert.That(e!.Message, Does.StartWith($"{upper}: lower file {lower} changed since").And.Contain("content differs"));
        BcowResult io = Bcow.Run("io", upper, "-c", "read 0 4k");
        Assert.That(io.ExitCode, Is.EqualTo(1));
        Assert.That(io.Error, Does.Contain("content differs"));
    }
}
