using BAOverlay.Fuse;
using static BAOverlay.Fuse.Interop.FuseKernel;

namespace BAOverlay.Tests.Fuse;

/// <summary>
/// What the channel asks for at INIT, for kernels that offer more or less than this machine's: passthrough only when
/// offered at 7.40, allowed (not rootless) and without the write-back cache; KILLPRIV_V2 where offered, v1 before;
/// never a flag the kernel did not offer. (Through a real mount, <see cref="PassthroughMountTests"/> and
/// <see cref="KillPrivilegesMountTests"/> show the same on this kernel.)
/// </summary>
[TestFixture]
public sealed class FuseNegotiationTests
{
    private const ulong Linux510 = FUSE_ASYNC_READ | FUSE_PARALLEL_DIROPS | FUSE_AUTO_INVAL_DATA | FUSE_HANDLE_KILLPRIV
        | FUSE_ASYNC_DIO | FUSE_ATOMIC_O_TRUNC | FUSE_BIG_WRITES | FUSE_MAX_PAGES | FUSE_WRITEBACK_CACHE | FUSE_DO_READDIRPLUS;
    private const ulong Linux62 = Linux510 | FUSE_HANDLE_KILLPRIV_V2 | FUSE_INIT_EXT;
    private const ulong Linux618 = Linux62 | FUSE_PASSTHROUGH;

    private static readonly FuseMountOptions Default = new();

    [Test]
    public void PassthroughIsAskedForWhereOfferedAndAllowed()
    {
        ulong want = FuseChannelWant(Linux618, 40, Default, allowed: true);
        Assert.That(want & FUSE_PASSTHROUGH, Is.Not.Zero);
        Assert.That(want & FUSE_HANDLE_KILLPRIV_V2, Is.Not.Zero);
        Assert.That(want & FUSE_HANDLE_KILLPRIV, Is.Zero, "v2 replaces v1");
    }

    [TestCase(38, true, false, TestName = "NoPassthroughBeforeProtocol740")]
    [TestCase(40, false, false, TestName = "NoPassthroughWhenRootless")]
    [TestCase(40, true, true, TestName = "NoPassthroughWithTheWritebackCache")]
    public void PassthroughIsNotAskedFor(int minor, bool allowed, bool writeback)
    {
        ulong want = FuseChannelWant(Linux618, (uint)minor, Default with { WritebackCache = writeback }, allowed);
        Assert.That(want & FUSE_PASSTHROUGH, Is.Zero);
        Assert.That(want & FUSE_WRITEBACK_CACHE, writeback ? Is.Not.Zero : Is.Zero);
    }

    [Test]
    public void PassthroughRefusedByTheOptionIsNotAskedFor() =>
        Assert.That(FuseChannelWant(Linux618, 40, Default with { Passthrough = false }, allowed: true) & FUSE_PASSTHROUGH, Is.Zero);

    [Test]
    public void AKernelWithoutPassthroughOrKillPrivV2GetsTheOlderForms()
    {
        ulong want = FuseChannelWant(Linux510, 31, Default, allowed: true);
        Assert.That(want & FUSE_HANDLE_KILLPRIV, Is.Not.Zero, "v1 where v2 is not offered");
        Assert.That(want & (FUSE_HANDLE_KILLPRIV_V2 | FUSE_PASSTHROUGH), Is.Zero);
        Assert.That(FuseChannelWant(Linux62, 38, Default, allowed: true) & FUSE_PASSTHROUGH, Is.Zero);
    }

    [Test]
    public void NothingTheKernelDidNotOfferIsAskedFor()
    {
        var random = new Random(7);
        for (int i = 0; i < 1000; i++)
        {
            ulong offered = (ulong)random.NextInt64() | ((ulong)random.Next(2) << 63);
            var options = new FuseMountOptions { WritebackCache = random.Next(2) == 0, ReaddirPlus = random.Next(2) == 0, Passthrough = random.Next(2) == 0 };
            ulong want = FuseChannelWant(offered, (uint)random.Next(31, 45), options, random.Next(2) == 0);
            Assert.That(want & ~offered, Is.Zero, $"offered {offered:x}");
        }
    }

    private static ulong FuseChannelWant(ulong offered, uint minor, FuseMountOptions options, bool allowed) =>
        FuseChannel.Want(offered, minor, options, allowed);
}
