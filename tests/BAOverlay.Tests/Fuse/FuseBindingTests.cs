using BAOverlay.FileSystem;
using BAOverlay.Fuse;
using BAOverlay.Fuse.Interop;

namespace BAOverlay.Tests.Fuse;

/// <summary>The binding's own logic, without a mount: library loading, symbol versions, option strings, readdir offsets.</summary>
[TestFixture]
[Platform("Linux")]
public sealed class FuseBindingTests
{
    [Test]
    public void AMissingLibfuseIsReportedWithInstallInstructions()
    {
        var e = Assert.Throws<FuseUnavailableException>(() => LibFuse.OpenLibrary(["libfuse3-not-here.so.9"]));
        Assert.That(e!.Message, Does.Contain("libfuse3-not-here.so.9")
            .And.Contain("apt-get install fuse3 (Debian/Ubuntu)")
            .And.Contain("dnf install fuse3 (Fedora)"));
    }

    [Test]
    public void SymbolsAreResolvedAtExplicitVersions()
    {
        IReadOnlyList<string> resolved;
        try
        {
            resolved = FuseSession.ResolvedSymbols;
        }
        catch (FuseUnavailableException e)
        {
            Assert.Ignore(e.Message);
            return;
        }
        TestContext.Out.WriteLine(string.Join(Environment.NewLine, resolved));
        Assert.That(resolved[0], Is.AnyOf("libfuse3.so.4", "libfuse3.so.3"));
        Assert.That(resolved, Does.Contain("fuse_session_new@FUSE_3.0").And.Contain("fuse_reply_entry@FUSE_3.0"));
        Assert.That(resolved.Count(s => s.StartsWith("fuse_session_loop_mt@", StringComparison.Ordinal)), Is.EqualTo(1));
        if (LibFuse.LoopConfig312)
        {
            Assert.That(resolved, Does.Contain("fuse_session_loop_mt@FUSE_3.12").And.Contain("fuse_loop_cfg_set_max_threads@FUSE_3.12"));
        }
        else
        {
            Assert.That(resolved, Does.Contain("fuse_session_loop_mt@FUSE_3.2"));
        }
    }

    [Test]
    public void MountOptionsBecomeOneEscapedDashOString()
    {
        var options = new FuseMountOptions { FsName = "a,b\\c", Subtype = "st", AllowOther = true, DefaultPermissions = true, ReadOnly = true };
        Assert.That(options.OptionString(), Is.EqualTo("fsname=a\\,b\\\\c,subtype=st,allow_other,default_permissions,ro"));
        Assert.That(new FuseMountOptions { DefaultPermissions = false, Subtype = null }.OptionString(), Is.EqualTo("fsname=baoverlay"));
    }

    [Test]
    public void ReaddirResumesAfterTheEntryWhoseNextOffsetTheKernelSent()
    {
        var entries = new List<OverlayDirEntry>
        {
            new(".", 1, 0x4000, 1),
            new("..", 1, 0x4000, 2),
            new("a", 5, 0x8000, 3),
            new("b", 6, 0x8000, 7), // offsets need not be dense
            new("c", 7, 0x8000, 9),
        };
        Assert.That(FuseDirectoryOffsets.StartIndex(entries, 0), Is.EqualTo(0));
        Assert.That(FuseDirectoryOffsets.StartIndex(entries, 2), Is.EqualTo(2));
        Assert.That(FuseDirectoryOffsets.StartIndex(entries, 3), Is.EqualTo(3));
        Assert.That(FuseDirectoryOffsets.StartIndex(entries, 7), Is.EqualTo(4));
        Assert.That(FuseDirectoryOffsets.StartIndex(entries, 9), Is.EqualTo(5));
        Assert.That(FuseDirectoryOffsets.StartIndex(entries, 100), Is.EqualTo(5));
    }
}
