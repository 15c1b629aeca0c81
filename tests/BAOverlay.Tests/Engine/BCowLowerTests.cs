using BAOverlay.Storage;
using BAOverlay.Tests.Tool;

namespace BAOverlay.Tests.Engine;

/// <summary>
/// A B-CoW file given as the lower of another was read as raw bytes (its headers and map merged into the virtual
/// file). Until backing chains exist, create and open refuse it, naming both files.
/// </summary>
public class BCowLowerTests
{
    private const string Refusal = "is itself a B-CoW file; backing chains are not supported";

    [TestCase(false, TestName = "ABCowLowerJustCreatedIsRefusedAtCreate")]
    [TestCase(true, TestName = "ABCowLowerThatWasWrittenIsRefusedAtCreate")]
    public void ABCowLowerIsRefusedAtCreate(bool written)
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

        var e = Assert.Throws<BCowFormatException>(() => BCowFile.Create(upper, new BCowCreateOptions { LowerPath = lower }).Dispose());
        Assert.That(e!.Message, Is.EqualTo($"{upper}: the lower file {lower} {Refusal}"));
        Assert.That(File.Exists(upper), Is.False, "nothing made");

        using (var upperStorage = new MemoryStorage("memory"))
        using (var lowerStorage = new FileStorage(lower, FileMode.Open, FileAccess.Read))
        {
            Assert.Throws<BCowFormatException>(() => BCowFile.Create(upperStorage, lowerStorage).Dispose());
        }

        BcowResult tool = Bcow.Run("create", "--lower", lower, upper);
        Assert.That(tool.ExitCode, Is.EqualTo(1));
        Assert.That(tool.Error, Does.StartWith($"bcow: {upper}: the lower file ").And.EndWith($"base.bcow {Refusal}\n"));
        Assert.That(File.Exists(upper), Is.False);
    }

    /// <summary>A pair an older build made (its lower a B-CoW file) is refused at open, before anything is read.</summary>
    [Test]
    public void APairWhoseLowerIsABCowFileIsRefusedAtOpen()
    {
        using var dir = new TempDir();
        string lower = dir.File("base.img");
        File.WriteAllBytes(lower, new byte[1 << 20]);
        string upper = dir.File("top.bcow");
        BCowFile.Create(upper, new BCowCreateOptions { LowerPath = lower }).Dispose();
        BCowFile.Create(lower, new BCowCreateOptions { VirtualSize = 1 << 20, Overwrite = true }).Dispose();

        var e = Assert.Throws<BCowFormatException>(() => BCowFile.Open(upper).Dispose());
        Assert.That(e!.Message, Is.EqualTo($"{upper}: the lower file {lower} {Refusal}"));
        BcowResult io = Bcow.Run("io", upper, "-c", "read 0 4k");
        Assert.That(io.ExitCode, Is.EqualTo(1));
        Assert.That(io.Error, Does.Contain(Refusal));
    }
}
