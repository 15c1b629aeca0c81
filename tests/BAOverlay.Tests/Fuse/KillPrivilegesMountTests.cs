using System.Diagnostics;
using BAOverlay.Fuse;
using BAOverlay.Tests.FileSystem;
using Mono.Unix.Native;
using static BAOverlay.Tests.Fuse.FuseMountTests;

namespace BAOverlay.Tests.Fuse;

/// <summary>
/// FUSE_HANDLE_KILLPRIV_V2: the kernel leaves to the daemon what a write, truncate or chown does to a file's
/// set-user-ID, set-group-ID and capabilities. The same operations run through baoverlayfs and through kernel overlayfs
/// over copies of one lower layer must leave the same modes and attributes. Needs root (kernel overlayfs, setting
/// security.capability, dropping to another user with setpriv); CI is root.
/// </summary>
[TestFixture]
[Platform("Linux")]
[NonParallelizable]
public sealed class KillPrivilegesMountTests
{
    private const int OtherUser = 1000;
    private const string Capability = "security.capability";

    /// <summary>VFS_CAP_REVISION_2 with CAP_NET_RAW permitted and effective (struct vfs_cap_data, 20 bytes).</summary>
    private static readonly byte[] CapNetRaw = [0x01, 0x00, 0x00, 0x02, 0x00, 0x20, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

    /// <summary>File name, octal mode, capability or not, and the command that changes it (run as <c>who</c>).</summary>
    private static readonly (string Name, string Mode, bool Cap, string Who, string Command)[] Cases =
    [
        ("write-suid", "6777", false, "other", "printf x >> write-suid"),
        ("write-sgid-noexec", "2766", false, "other", "printf x >> write-sgid-noexec"),
        ("truncate-suid", "4777", false, "other", "truncate -s 1 truncate-suid"),
        ("open-trunc-sgid", "2777", false, "other", "printf y > open-trunc-sgid"),
        ("write-suid-by-root", "4777", false, "root", "printf x >> write-suid-by-root"),
        ("chown-suid-by-root", "6755", false, "root", "chown 0:0 chown-suid-by-root"),
        ("write-cap", "0755", true, "root", "printf x >> write-cap"),
        ("truncate-cap", "0755", true, "root", "truncate -s 0 truncate-cap"),
        ("chmod-cap", "0755", true, "root", "chmod 0700 chmod-cap"),
    ];

    [Test]
    public void WritesTruncatesAndChownsClearWhatKernelOverlayfsClears()
    {
        if (Syscall.geteuid() != 0)
        {
            Assert.Ignore("needs root: kernel overlayfs, security.capability and setpriv; CI is root");
        }
        using var fixture = new OverlayFixture(lowers: 1);
        using var kernelLayers = new OverlayFixture(lowers: 1);
        foreach (string lower in new[] { fixture.Lowers[0], kernelLayers.Lowers[0] })
        {
            Prepare(lower);
        }
        using Mounted mounted = Mounted.Start(fixture, out string mnt, options: new FuseMountOptions { AllowOther = true });
        using KernelOverlayMount kernel = KernelOverlayMount.Mount(kernelLayers.Lowers, kernelLayers.Upper, kernelLayers.Work);
        foreach (string root in new[] { mnt, kernel.MountPoint })
        {
            Assert.That(File.Exists(Path.Combine(root, "write-suid")), Is.True); // INIT done, layers visible
        }
        Assert.That(mounted.Session.Connection!.KillPrivilegesV2, Is.True, "this kernel offers FUSE_HANDLE_KILLPRIV_V2 (5.11+)");

        foreach ((_, _, _, string who, string command) in Cases)
        {
            Exec(mnt, who, command);
            Exec(kernel.MountPoint, who, command);
        }
        Assert.Multiple(() =>
        {
            foreach ((string name, _, _, string who, string command) in Cases)
            {
                string ours = Describe(Path.Combine(mnt, name));
                string theirs = Describe(Path.Combine(kernel.MountPoint, name));
                Assert.That(ours, Is.EqualTo(theirs), $"{name} after `{command}` as {who}: baoverlayfs vs kernel overlayfs");
            }
        });
        Assert.That(mounted.Log, Is.Empty);
    }

    /// <summary>With KILLPRIV_V2 the kernel marks the file system SB_NOSEC: once a file is known to carry no
    /// capability, its writes go out without a GETXATTR of <c>security.capability</c> first (with the first version,
    /// one per write: 200 for the writes below).</summary>
    [Test]
    public void ServedWritesDoNotAskForTheCapabilityEachTime()
    {
        using var fixture = new OverlayFixture(lowers: 1);
        OverlayFixture.WriteFile(Path.Combine(fixture.Lowers[0], "disk.img"), new byte[1 << 20]); // a B-CoW file once written: served
        CountingCapabilityReads? counting = null;
        using Mounted mounted = Mounted.Start(fixture, out string mnt, fs => counting = new CountingCapabilityReads(new OverlayFuseAdapter(fs)));
        using (var file = new FileStream(Path.Combine(mnt, "disk.img"), FileMode.Open, FileAccess.Write, FileShare.ReadWrite, 1, FileOptions.WriteThrough))
        {
            for (int i = 0; i < 200; i++)
            {
                file.Position = i * 4096L;
                file.Write(new byte[] { (byte)i });
                file.Flush();
            }
        }
        Assert.That(mounted.Session.Connection!.KillPrivilegesV2, Is.True);
        Assert.That(counting!.CapabilityReads, Is.LessThanOrEqualTo(1), "security.capability asked at most once for 200 writes");
        Assert.That(mounted.Log, Is.Empty);
    }

    /// <summary>
    /// What <c>tar -x</c> does to each file it makes, create, write, chown, chmod, through the mount: the kernel asks
    /// for a privilege check at every chown of a file (FATTR_KILL_SUIDGID), and each one reached the overlay, which
    /// read the caller's groups from /proc and the file's capability from disk; a file made through the overlay
    /// without set-id bits is known clean, so none does. A set-group-ID file without group execute written by another
    /// user is still cleared (the caller's groups read then, and only then).
    /// </summary>
    [Test]
    public void FilesMadeThroughTheMountAreChownedWithoutAPrivilegeCheck()
    {
        if (Syscall.geteuid() != 0)
        {
            Assert.Ignore("needs root: chown to another user, setpriv; CI is root");
        }
        using var fixture = new OverlayFixture(lowers: 1);
        CountingCapabilityReads? counting = null;
        using Mounted mounted = Mounted.Start(fixture, out string mnt, fs => counting = new CountingCapabilityReads(new OverlayFuseAdapter(fs)),
            new FuseMountOptions { AllowOther = true });
        long groupReads = ProcessGroups.OnDemand.Reads;
        for (int i = 0; i < 20; i++)
        {
            string path = Path.Combine(mnt, $"f{i}");
            File.WriteAllText(path, "x");
            Assert.That(Syscall.chown(path, OtherUser, OtherUser), Is.Zero);
            Assert.That(Syscall.chmod(path, (FilePermissions)Convert.ToUInt32("0644", 8)), Is.Zero);
        }
        Assert.That(counting!.PrivilegeChecks, Is.Zero, "no chown of a new file needed a privilege check");
        Assert.That(ProcessGroups.OnDemand.Reads - groupReads, Is.Zero, "no caller's groups read");

        string sgid = Path.Combine(mnt, "sgid");
        File.WriteAllText(sgid, "x");
        Assert.That(Syscall.chmod(sgid, (FilePermissions)Convert.ToUInt32("2766", 8)), Is.Zero);
        Assert.That(Syscall.chmod(mnt, (FilePermissions)Convert.ToUInt32("0777", 8)), Is.Zero);
        Exec(mnt, "other", "printf y >> sgid");
        Assert.That(Describe(sgid), Is.EqualTo("mode 766 uid 0 size 2 capability no"), "set-group-ID cleared: the writer is not in the file's group");
        Assert.That(ProcessGroups.OnDemand.Reads - groupReads, Is.EqualTo(1), "the writer's groups read once, where they decide");
        Assert.That(mounted.Log, Is.Empty);
    }

    private static void Prepare(string lower)
    {
        foreach ((string name, string mode, bool cap, _, _) in Cases)
        {
            string path = Path.Combine(lower, name);
            File.WriteAllText(path, "content\n");
            Assert.That(Syscall.chmod(path, (FilePermissions)Convert.ToUInt32(mode, 8)), Is.Zero);
            if (cap)
            {
                Assert.That(Syscall.lsetxattr(path, Capability, CapNetRaw, XattrFlags.XATTR_AUTO), Is.Zero, $"setxattr {Capability}: {Stdlib.GetLastError()}");
            }
        }
        Assert.That(Syscall.chmod(lower, (FilePermissions)Convert.ToUInt32("0777", 8)), Is.Zero); // the other user may write there
    }

    /// <summary>Mode (octal, permission and set-id bits), owner and whether the capability is there.</summary>
    private static string Describe(string path)
    {
        Assert.That(Syscall.lstat(path, out Stat st), Is.Zero, $"lstat {path}: {Stdlib.GetLastError()}");
        bool cap = Syscall.lgetxattr(path, Capability, out byte[] _) >= 0;
        return $"mode {Convert.ToString((int)st.st_mode & 0xFFF, 8)} uid {st.st_uid} size {st.st_size} capability {(cap ? "yes" : "no")}";
    }

    private static void Exec(string directory, string who, string command)
    {
        var start = new ProcessStartInfo("setpriv") { WorkingDirectory = directory, RedirectStandardError = true };
        foreach (string a in who == "root"
            ? new[] { "--", "sh", "-c", command }
            : new[] { $"--reuid={OtherUser}", $"--regid={OtherUser}", "--clear-groups", "--inh-caps=-all", "--", "sh", "-c", command })
        {
            start.ArgumentList.Add(a);
        }
        using Process p = Process.Start(start)!;
        string error = p.StandardError.ReadToEnd();
        Assert.That(p.WaitForExit(30_000), Is.True);
        Assert.That(p.ExitCode, Is.Zero, $"`{command}` as {who} in {directory}: {error}");
    }

    private sealed class CountingCapabilityReads(IFuseLowLevelHandler inner) : DelegatingFuseHandler(inner)
    {
        private int _reads;

        public int CapabilityReads => Volatile.Read(ref _reads);

        private int _checks;

        public int PrivilegeChecks => Volatile.Read(ref _checks);

        public override bool DropPrivileges(ulong ino, FuseContext context)
        {
            Interlocked.Increment(ref _checks);
            return base.DropPrivileges(ino, context);
        }

        public override byte[]? GetXattr(ulong ino, string name, FuseContext context)
        {
            if (name == Capability)
            {
                Interlocked.Increment(ref _reads);
            }
            return base.GetXattr(ino, name, context);
        }
    }
}
