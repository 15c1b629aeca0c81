using BAOverlay.Tool.Text;

namespace BAOverlay.Tests.Tool;

public class SizeTextTests
{
    [TestCase("0", 0L)]
    [TestCase("4096", 4096L)]
    [TestCase("1000000", 1_000_000L)]
    [TestCase("0x1000", 4096L)]
    [TestCase("0XfF", 255L)]
    [TestCase("4k", 4096L)]
    [TestCase("4K", 4096L)]
    [TestCase("4KiB", 4096L)]
    [TestCase("1M", 1L << 20)]
    [TestCase("1.5M", 3L << 19)]
    [TestCase("1G", 1L << 30)]
    [TestCase("2T", 2L << 40)]
    [TestCase("1P", 1L << 50)]
    [TestCase("1E", 1L << 60)]
    [TestCase("512b", 512L)]
    [TestCase("0x10k", 16384L)]
    [TestCase(" 64k ", 65536L)]
    public void SizesAreReadAsQemuReadsThem(string text, long expected)
    {
        Assert.That(SizeParser.TryParse(text, out long bytes), Is.True);
        Assert.That(bytes, Is.EqualTo(expected));
    }

    [TestCase("")]
    [TestCase("k")]
    [TestCase("-1")]
    [TestCase("4q")]
    [TestCase("4kk")]
    [TestCase("0x")]
    [TestCase("0xg")]
    [TestCase("0.1k")]
    [TestCase("1.5")]
    [TestCase("1.2.3")]
    [TestCase("8E")]
    [TestCase("99999999999999999999")]
    [TestCase("4 k")]
    public void MalformedOrOutOfRangeSizesAreRefused(string text)
    {
        Assert.That(SizeParser.TryParse(text, out _), Is.False);
    }

    [TestCase(0L, "0 B")]
    [TestCase(512L, "512 B")]
    [TestCase(4096L, "4 KiB")]
    [TestCase(1_000_000L, "977 KiB")]
    [TestCase(1023L, "0.999 KiB")]
    [TestCase(3L << 19, "1.5 MiB")]
    [TestCase(1L << 30, "1 GiB")]
    [TestCase(64L << 20, "64 MiB")]
    public void HumanSizesUseQemuImgsThreeSignificantDigits(long bytes, string expected)
    {
        Assert.That(SizeFormatter.Human(bytes), Is.EqualTo(expected));
    }

    [Test]
    public void ExactSizesFollowTheHumanOneAsInQemuImgInfo()
    {
        Assert.That(SizeFormatter.HumanAndExact(1L << 30), Is.EqualTo("1 GiB (1073741824 bytes)"));
    }

    [TestCase(4096.0, "4 KiB")]
    [TestCase(512.0, "512 bytes")]
    [TestCase(166_361_088.0, "158.654 MiB")]
    [TestCase(1536.0, "1.500 KiB")]
    public void IoStatisticsUseQemuIosThreeDecimals(double value, string expected)
    {
        Assert.That(SizeFormatter.IoStyle(value), Is.EqualTo(expected));
    }
}
