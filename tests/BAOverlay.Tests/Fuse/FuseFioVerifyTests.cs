using System.Diagnostics;
using BAOverlay.Checking;
using BAOverlay.Tests.FileSystem;
using Mono.Unix.Native;

namespace BAOverlay.Tests.Fuse;

/// <summary>
/// Data integrity through the mount, checked by fio: random 4 KiB writes with crc32c verify headers into large lower
/// files (so they are copied up block by block into B-CoW files), verified at once, and verified again after an
/// unmount and a remount. The B-CoW files are checked clean in between.
/// </summary>
public sealed partial class FuseMountTests
{
    [TestCase(false, TestName = "FioVerifiesRandomWritesIntoLowerFilesAcrossAnUnmountAndRemount")]
    [TestCase(true, TestName = "FioVerifiesRandomWritesIntoLowerFilesAcrossAnUnmountAndRemountWithTheWritebackCache")]
    public void FioVerifiesRandomWritesIntoLowerFilesAcrossAnUnmountAndRemount(bool writeback)
    {
        string? fio = FindFio();
        if (fio is null)
        {
            Assert.Ignore("fio is not installed (apt-get install fio); CI installs it");
        }
        using var fixture = new OverlayFixture();
        var random = new Random(11);
        byte[] chunk = new byte[1 << 20];
        for (int i = 0; i < 2; i++)
        {
            using var stream = new FileStream(Path.Combine(fixture.Lowers[0], $"disk{i}.img"), FileMode.CreateNew);
            for (int m = 0; m < 32; m++)
            {
                random.NextBytes(chunk);
                stream.Write(chunk);
            }
        }
        var options = new BAOverlay.Fuse.FuseMountOptions { WritebackCache = writeback };
        using (Mounted.Start(fixture, out string mountPoint, options: options))
        {
            RunFio(fio, mountPoint, verifyOnly: false);
        }
        foreach (string upper in Directory.EnumerateFiles(fixture.Upper!))
        {
            Assert.That(Syscall.lgetxattr(upper, "user.baoverlay.bcow", out byte[] _), Is.GreaterThanOrEqualTo(0), $"{upper} is a B-CoW file");
            BCowCheckResult check = BCowChecker.Check(upper);
            Assert.That(check.IsClean, Is.True, $"{upper}: {string.Join("; ", check.Corruptions)} leaks {check.LeakedBytes}");
            Assert.That(new FileInfo(upper).Length, Is.LessThan(32L << 20), $"{upper}: only written blocks are in upper");
        }
        using (Mounted.Start(fixture, out string mountPoint, options: options))
        {
            RunFio(fio, mountPoint, verifyOnly: true);
        }
    }

    private static void RunFio(string fio, string mountPoint, bool verifyOnly)
    {
        // 8 MiB of random 4 KiB writes over each 32 MiB file: a quarter of its blocks copied up, the rest still lower.
        // randrepeat (the default) makes the verify-only run replay the same offsets.
        string files = string.Join(':', Enumerable.Range(0, 2).Select(i => Path.Combine(mountPoint, $"disk{i}.img")));
        string arguments = $"--name=verify --filename={files} --rw=randwrite --bs=4k --size=32M --io_size=8M " +
            "--ioengine=psync --verify=crc32c --verify_fatal=1 --do_verify=1 --numjobs=1 --randrepeat=1 " +
            (verifyOnly ? "--verify_only=1 " : "") + "--output-format=terse";
        using var process = Process.Start(new ProcessStartInfo(fio, arguments) { RedirectStandardOutput = true, RedirectStandardError = true })!;
        string output = process.StandardOutput.ReadToEnd();
        string error = process.StandardError.ReadToEnd();
        Assert.That(process.WaitForExit(120_000), Is.True, "fio finished within 2 minutes");
        Assert.That(process.ExitCode, Is.Zero, $"fio {(verifyOnly ? "verify-only" : "write+verify")} failed: {error}\n{output}");
    }

    private static string? FindFio() =>
        (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':').Select(d => Path.Combine(d, "fio")).FirstOrDefault(File.Exists);
}
