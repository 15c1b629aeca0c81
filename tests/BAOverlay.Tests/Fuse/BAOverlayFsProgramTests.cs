using System.Diagnostics;
using System.Text;
using BAOverlay.Fuse;
using BAOverlay.Tests.FileSystem;
using BAOverlayFs;
using Mono.Unix.Native;

namespace BAOverlay.Tests.Fuse;

/// <summary>
/// The baoverlayfs program (samples/BAOverlayFs): its command line (in process), and real mounts made by running it
/// (root and /dev/fuse needed; ignored, saying which is missing, otherwise). Every mount test unmounts in a
/// finally block and kills, by pid, any baoverlayfs process it left that names its temp directory.
/// </summary>
[TestFixture]
[Platform("Linux")]
[NonParallelizable]
public sealed class BAOverlayFsProgramTests
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(30);

    // ---- command line ----------------------------------------------------------------------------------------

    [Test]
    public void LowerdirSplitsOnColonsAndKeepsEscapedOnes()
    {
        CommandLine line = CommandLine.Parse(["-o", @"lowerdir=/a\:b:/c\\d:/e,upperdir=/u\:x,workdir=/w", "/mnt"]);
        Assert.That(line.LowerDirectories, Is.EqualTo(new[] { "/a:b", @"/c\d", "/e" }));
        Assert.That(line.UpperDirectory, Is.EqualTo("/u:x"));
        Assert.That(line.WorkDirectory, Is.EqualTo("/w"));
        Assert.That(line.MountPoint, Is.EqualTo("/mnt"));
        Assert.That(line.Source, Is.Null);
        Assert.That(line.Warnings, Is.Empty);
        Assert.That(() => CommandLine.Parse(["-o", "lowerdir=/a::/b", "/mnt"]), Throws.InstanceOf<UsageException>().With.Message.Contains("empty layer"));
    }

    [Test]
    public void EveryFuseOverlayfsOptionIsAcceptedWithoutAWarning()
    {
        string[] options =
        [
            "lowerdir=/l", "upperdir=/u", "workdir=/w", "squash_to_root", "squash_to_uid=1000", "squash_to_gid=1001",
            "uidmapping=0:1000:1:1:100000:65536", "gidmapping=:0:1000:1", "static_nlink", "noacl", "fsync=0", "volatile",
            "rw", "dev", "suid", "nodev", "nosuid", "exec", "noatime", "allow_other", "allow_root", "default_permissions",
            "auto_unmount", "context=\"system_u:object_r:container_file_t:s0:c1,c2\"", "xattr_permissions=2", "writeback",
            "max_threads=4", "fsname=src", "subtype=baoverlayfs",
        ];
        CommandLine line = CommandLine.Parse(["-f", "-d", "-o", string.Join(',', options), "SOURCE", "/mnt"]);
        Assert.That(line.Warnings, Is.Empty);
        Assert.That(line.Options, Has.Count.EqualTo(options.Length), "the quoted context= kept its comma");
        Assert.That((line.Foreground, line.Debug, line.AllowOther, line.AutoUnmount, line.Writeback, line.SquashToRoot), Is.EqualTo((true, true, true, true, true, true)));
        Assert.That((line.SquashToUid, line.SquashToGid, line.MaxThreads, line.FsName, line.Source), Is.EqualTo(((uint?)1000, (uint?)1001, (int?)4, "src", "SOURCE")));
        Assert.That(CommandLine.Parse(["-o", "lowerdir=/l,ro", "/m"]).ReadOnly, Is.True);
        CommandLine defaults = CommandLine.Parse(["-o", "lowerdir=/l", "/m"]);
        Assert.That((defaults.Writeback, defaults.KeepCache, defaults.MaxWrite, defaults.MaxReadahead), Is.EqualTo((true, true, (uint?)131072, (uint?)null)),
            "write-back cache and keep_cache on by default, 128 KiB max_write, the kernel's readahead");
        CommandLine tuned = CommandLine.Parse(["-o", "lowerdir=/l,writeback=0,keep_cache=0,max_write=1048576,max_readahead=1048576", "/m"]);
        Assert.That(tuned.Warnings, Is.Empty);
        Assert.That((tuned.Writeback, tuned.KeepCache, tuned.MaxWrite, tuned.MaxReadahead), Is.EqualTo((false, false, (uint?)1048576, (uint?)1048576)));
        Assert.That(() => CommandLine.Parse(["-o", "lowerdir=/l,max_write=lots", "/m"]), Throws.InstanceOf<UsageException>().With.Message.Contains("max_write=lots"));
        Assert.That(CommandLine.Parse(["-olowerdir=/l", "-o", "writeback=0", "/m"]).LowerDirectories, Is.EqualTo(new[] { "/l" }), "-oOPTS");
    }

    [Test]
    public void PassthroughOptionChoosesWhichFilesTheKernelServes()
    {
        (bool, bool) Of(string option)
        {
            CommandLine line = CommandLine.Parse(["-o", "lowerdir=/l" + option, "/m"]);
            Assert.That(line.Warnings, Is.Empty, option);
            return (line.Passthrough, line.PassthroughLowerFiles);
        }
        Assert.That(Of(""), Is.EqualTo((true, false)), "default: whole upper files only");
        Assert.That(Of(",passthrough"), Is.EqualTo((true, false)));
        Assert.That(Of(",passthrough=1"), Is.EqualTo((true, false)));
        Assert.That(Of(",passthrough=all"), Is.EqualTo((true, true)), "untouched lower files too");
        Assert.That(Of(",passthrough=all,passthrough=0"), Is.EqualTo((false, false)), "the last one wins");
        Assert.That(() => CommandLine.Parse(["-o", "lowerdir=/l,passthrough=lower", "/m"]), Throws.InstanceOf<UsageException>().With.Message.Contains("passthrough=lower"));
    }

    [Test]
    public void SpliceOptionTurnsSplicedReadsOnAndOff()
    {
        bool Of(string option)
        {
            CommandLine line = CommandLine.Parse(["-o", "lowerdir=/l" + option, "/m"]);
            Assert.That(line.Warnings, Is.Empty, option);
            return line.Splice;
        }
        Assert.That(Of(""), Is.True, "default on");
        Assert.That(Of(",splice=0"), Is.False);
        Assert.That(Of(",splice=0,splice"), Is.True, "the last one wins");
        Assert.That(() => CommandLine.Parse(["-o", "lowerdir=/l,splice=yes", "/m"]), Throws.InstanceOf<UsageException>().With.Message.Contains("splice=yes"));
    }

    [Test]
    public void IoUringOptionTurnsTheRingTransportOnAndOff()
    {
        bool Of(string option)
        {
            CommandLine line = CommandLine.Parse(["-o", "lowerdir=/l" + option, "/m"]);
            Assert.That(line.Warnings, Is.Empty, option);
            return line.IoUring;
        }
        Assert.That(Of(""), Is.False, "default off");
        Assert.That(Of(",io_uring"), Is.True);
        Assert.That(Of(",io_uring=1,io_uring=0"), Is.False, "the last one wins");
        Assert.That(Of(",io_uring=0,io_uring"), Is.True, "the last one wins");
        Assert.That(() => CommandLine.Parse(["-o", "lowerdir=/l,io_uring=yes", "/m"]), Throws.InstanceOf<UsageException>().With.Message.Contains("io_uring=yes"));
    }

    [Test]
    public void TimeoutOptionsSetHowLongTheKernelKeepsNamesAndAttributes()
    {
        CommandLine defaults = CommandLine.Parse(["-o", "lowerdir=/l", "/m"]);
        Assert.That((defaults.EntryTimeout, defaults.AttributeTimeout, defaults.NegativeTimeout),
            Is.EqualTo((OverlayFuseAdapter.DefaultTimeout, OverlayFuseAdapter.DefaultTimeout, OverlayFuseAdapter.DefaultTimeout)));
        CommandLine all = CommandLine.Parse(["-o", "lowerdir=/l,timeout=2.5", "/m"]);
        Assert.That((all.EntryTimeout, all.AttributeTimeout, all.NegativeTimeout), Is.EqualTo((2.5, 2.5, 2.5)));
        CommandLine each = CommandLine.Parse(["-o", "lowerdir=/l,timeout=9,entry_timeout=1,attr_timeout=0,negative_timeout=3", "/m"]);
        Assert.That((each.EntryTimeout, each.AttributeTimeout, each.NegativeTimeout), Is.EqualTo((1.0, 0.0, 3.0)));
        Assert.That(each.Warnings, Is.Empty);
        Assert.That(() => CommandLine.Parse(["-o", "lowerdir=/l,timeout=soon", "/m"]),
            Throws.InstanceOf<UsageException>().With.Message.Contains("timeout=soon"));
        Assert.That(() => CommandLine.Parse(["-o", "lowerdir=/l,attr_timeout=-1", "/m"]), Throws.InstanceOf<UsageException>());
    }

    [Test]
    public void UnknownOptionsAreWarnedAboutAndIgnored()
    {
        CommandLine line = CommandLine.Parse(["-o", "lowerdir=/l,frobnicate,colour=blue", "/m"]);
        Assert.That(line.Warnings, Is.EqualTo(new[] { "unknown option 'frobnicate' ignored", "unknown option 'colour=blue' ignored" }));
        Assert.That(() => CommandLine.Parse(["--frobnicate", "/m"]), Throws.InstanceOf<UsageException>());
        Assert.That(() => CommandLine.Parse(["/m"]), Throws.InstanceOf<UsageException>().With.Message.Contains("lowerdir"));
        Assert.That(() => CommandLine.Parse(["-o", "lowerdir=/l,upperdir=/u", "/m"]), Throws.InstanceOf<UsageException>().With.Message.Contains("workdir"));
        Assert.That(() => CommandLine.Parse(["-o", "lowerdir=/l", "a", "b", "c"]), Throws.InstanceOf<UsageException>());
    }

    [Test]
    public void IdMappingsTolerateAnEmptyLeadingField()
    {
        Assert.That(CommandLine.ParseMapping("uidmapping", ":0:1000:1:1:100000:65536"),
            Is.EqualTo(new[] { new IdMapping(0, 1000, 1), new IdMapping(1, 100000, 65536) }));
        Assert.That(CommandLine.ParseMapping("uidmapping", "0:1000:1"), Is.EqualTo(new[] { new IdMapping(0, 1000, 1) }));
        Assert.That(() => CommandLine.ParseMapping("gidmapping", "0:1000"), Throws.InstanceOf<UsageException>().With.Message.StartsWith("gidmapping=0:1000"));
        Assert.That(() => CommandLine.ParseMapping("gidmapping", "0:x:1"), Throws.InstanceOf<UsageException>());
        Assert.That(CommandLine.Parse(["-o", "lowerdir=/l,uidmapping=:0:1:2,gidmapping=:0:1:2", "/m"]).GidMappings, Has.Count.EqualTo(1));
    }

    [Test]
    public void HelpAndVersionTellAndExitZero()
    {
        (int rc, string output, _) = Run(["--help"]);
        Assert.That(rc, Is.Zero);
        Assert.That(output, Does.Contain("lowerdir=").And.Contain("auto_unmount").And.Contain("writeback").And.Contain("fusermount3 -u"));
        (rc, output, _) = Run(["--version"]);
        Assert.That(rc, Is.Zero);
        Assert.That(output, Does.StartWith("baoverlayfs version "));
        (rc, _, string error) = Run(["-o", "lowerdir=/l"]);
        Assert.That(rc, Is.EqualTo(1));
        Assert.That(error.Trim(), Does.StartWith("baoverlayfs: no mount point"));
    }

    // ---- real mounts --------------------------------------------------------------------------------------------

    [Test]
    public void BackgroundsAndReturnsZeroOnlyOnceTheMountIsLive()
    {
        RequireFuse();
        using var fixture = new OverlayFixture(lowers: 1);
        OverlayFixture.WriteFile(Path.Combine(fixture.Lowers[0], "hello.txt"), "hello");
        string mnt = MountPoint(fixture);
        try
        {
            (int rc, string output, string error) = Run(["-o", Label(fixture), mnt]);
            Assert.That(rc, Is.Zero, error);
            Assert.That(IsMounted(mnt), Is.True, "/proc/self/mountinfo shows the mount as soon as the command returns");
            Assert.That(output, Is.Empty, "the parent passes nothing of the child's handshake on");
            Assert.That(File.ReadAllText(Path.Combine(mnt, "hello.txt")), Is.EqualTo("hello"));
            Assert.That(MountLine(mnt), Does.Contain(" - fuse.baoverlayfs baoverlayfs "), "type fuse.baoverlayfs, source baoverlayfs");
            Assert.That(MountFlags(mnt), Is.EquivalentTo(new[] { "rw", "nodev", "noatime" }), "suid, nodev, noatime: as fuse-overlayfs mounts");
            int[] pids = ProgramPids(mnt);
            Assert.That(pids, Has.Length.EqualTo(1), "one mount process, in the background");
            Assert.That(File.ReadAllText($"/proc/{pids[0]}/stat").Split(' ')[5], Is.EqualTo(pids[0].ToString()), "it leads its own session (setsid)");
        }
        finally
        {
            Cleanup(mnt);
        }
    }

    [Test]
    public void BackgroundsWhenRunAsDotnetBaoverlayfsDll()
    {
        RequireFuse();
        string dll = Path.Combine(AppContext.BaseDirectory, "baoverlayfs.dll");
        string dotnet = Environment.ProcessPath is string host && Path.GetFileNameWithoutExtension(host) == "dotnet" ? host : "dotnet";
        using var fixture = new OverlayFixture(lowers: 1);
        OverlayFixture.WriteFile(Path.Combine(fixture.Lowers[0], "f"), "through dotnet");
        string mnt = MountPoint(fixture);
        try
        {
            (int rc, _, string error) = Exec(dotnet, [dll, "-o", Label(fixture), mnt]);
            Assert.That(rc, Is.Zero, error);
            Assert.That(IsMounted(mnt), Is.True, "the re-executed child is 'dotnet baoverlayfs.dll', not the bare dll");
            Assert.That(File.ReadAllText(Path.Combine(mnt, "f")), Is.EqualTo("through dotnet"));
            int pid = ProgramPids(mnt).Single();
            Assert.That(Exec("fusermount3", ["-u", mnt]).ExitCode, Is.Zero);
            Assert.That(WaitFor(() => !Directory.Exists($"/proc/{pid}")), Is.True);
        }
        finally
        {
            Cleanup(mnt);
        }
    }

    [Test]
    public void AMissingLowerdirFailsWithOneLineAndLeavesNoProcess()
    {
        RequireFuse();
        using var fixture = new OverlayFixture(lowers: 1);
        string mnt = MountPoint(fixture);
        string missing = Path.Combine(fixture.Root, "missing");
        try
        {
            (int rc, _, string error) = Run(["-o", $"lowerdir={missing},upperdir={fixture.Upper},workdir={fixture.Work}", mnt]);
            Assert.That(rc, Is.EqualTo(1));
            Assert.That(error.Trim(), Is.EqualTo($"baoverlayfs: lowerdir={missing}: No such file or directory"));
            Assert.That(IsMounted(mnt), Is.False);
            Assert.That(ProgramPids(mnt), Is.Empty, "no process is left behind");

            // a failure inside the re-executed child (the mount point is not a directory) is reported by the parent's exit code too
            (rc, _, error) = Run(["-o", Label(fixture), Path.Combine(fixture.Root, "no-such-mountpoint")]);
            Assert.That(rc, Is.EqualTo(1));
            Assert.That(error, Does.Contain("No such file or directory"));

            // a failure only the re-executed child finds (the overlay refuses a workdir on another file system)
            if (Directory.Exists("/dev/shm")) // a tmpfs of its own: never the file system of the temp upper
            {
                string work = Directory.CreateDirectory($"/dev/shm/baoverlayfs-test-{Guid.NewGuid():N}").FullName;
                try
                {
                    (rc, _, error) = Run(["-o", $"lowerdir={fixture.Lowers[0]},upperdir={fixture.Upper},workdir={work}", mnt]);
                    Assert.That(rc, Is.EqualTo(1));
                    Assert.That(error.Trim(), Does.StartWith("baoverlayfs: ").And.Contain("same file system"), "one line from the child");
                    Assert.That(error.Trim(), Does.Not.Contain("\n"));
                    Assert.That(IsMounted(mnt), Is.False);
                    Assert.That(ProgramPids(mnt), Is.Empty, "the failed child is gone");
                }
                finally
                {
                    Directory.Delete(work, recursive: true);
                }
            }
        }
        finally
        {
            Cleanup(mnt);
        }
    }

    [Test]
    public void ALayerErrorFoundAfterTheMountWasMadeLeavesNoMountAndExitsOne()
    {
        RequireFuse();
        if (!Directory.Exists("/dev/shm"))
        {
            Assert.Ignore("needs /dev/shm, a tmpfs of its own, for a workdir on another file system than the upper");
        }
        using var fixture = new OverlayFixture(lowers: 1);
        string mnt = MountPoint(fixture);
        string work = Directory.CreateDirectory($"/dev/shm/baoverlayfs-test-{Guid.NewGuid():N}").FullName;
        try
        {
            // The first process mounts while the serving one starts; the serving one then finds the workdir on another
            // file system than the upper. The start trace shows the mount was made before that.
            (int rc, _, string error) = Exec(ProgramPath, ["-o", $"lowerdir={fixture.Lowers[0]},upperdir={fixture.Upper},workdir={work}", mnt],
                ("BAOVERLAYFS_START_TRACE", "1"));
            string[] lines = error.Split('\n', StringSplitOptions.RemoveEmptyEntries);
            Assert.That(rc, Is.EqualTo(1));
            Assert.That(lines.Any(l => l.StartsWith("baoverlayfs: start-trace ", StringComparison.Ordinal) && l.Split(' ')[3] == "mounted"),
                Is.True, "the first process had mounted: " + error);
            string[] messages = lines.Where(l => !l.StartsWith("baoverlayfs: start-trace ", StringComparison.Ordinal)).ToArray();
            Assert.That(messages, Has.Length.EqualTo(1), "one line: " + error);
            Assert.That(messages[0], Does.StartWith("baoverlayfs: ").And.Contain("same file system"));
            Assert.That(IsMounted(mnt), Is.False, "the mount made before the error is gone");
            Assert.That(ProgramPids(mnt), Is.Empty, "no process is left behind");
        }
        finally
        {
            Cleanup(mnt);
            Directory.Delete(work, recursive: true);
        }
    }

    [Test]
    public void AnOverlayMountedOnItsOwnLowerDirectoryShowsTheLowerFilesAsSoonAsTheCommandReturns()
    {
        RequireFuse();
        using var fixture = new OverlayFixture(lowers: 1);
        string mnt = MountPoint(fixture);
        OverlayFixture.WriteFile(Path.Combine(mnt, "beneath.txt"), "from the lower directory under the mount");
        try
        {
            // The layer must be opened before the mount covers it: the first process waits for the serving one.
            (int rc, _, string error) = Run(["-o", $"lowerdir={mnt},upperdir={fixture.Upper},workdir={fixture.Work}", mnt]);
            Assert.That(rc, Is.Zero, error);
            Assert.That(File.ReadAllText(Path.Combine(mnt, "beneath.txt")), Is.EqualTo("from the lower directory under the mount"),
                "served at once, from the layer opened before the mount");
            File.WriteAllText(Path.Combine(mnt, "new.txt"), "written through the mount");
            Assert.That(File.Exists(Path.Combine(fixture.Upper!, "new.txt")), Is.True, "writes go to the upper");
        }
        finally
        {
            Cleanup(mnt);
        }
        Assert.That(Directory.GetFileSystemEntries(mnt).Select(Path.GetFileName), Is.EquivalentTo(new[] { "beneath.txt" }),
            "the lower directory itself is unchanged");
    }

    [Test]
    public void ForegroundStaysAndSigtermUnmountsCleanly()
    {
        RequireFuse();
        using var fixture = new OverlayFixture(lowers: 1);
        OverlayFixture.WriteFile(Path.Combine(fixture.Lowers[0], "f"), "f");
        string mnt = MountPoint(fixture);
        Process? process = null;
        try
        {
            process = Start(["-f", "-o", Label(fixture), mnt]);
            Assert.That(WaitFor(() => IsMounted(mnt)), Is.True, "mounted in the foreground");
            Assert.That(process.HasExited, Is.False, "-f stays in the foreground");
            File.WriteAllText(Path.Combine(mnt, "new.txt"), "written");
            Assert.That(Syscall.kill(process.Id, Signum.SIGTERM), Is.Zero);
            Assert.That(process.WaitForExit(Patience), Is.True, "SIGTERM ends the process");
            Assert.That(process.ExitCode, Is.Zero, "a clean exit");
            Assert.That(IsMounted(mnt), Is.False, "SIGTERM unmounted");
            Assert.That(File.ReadAllText(Path.Combine(fixture.Upper!, "new.txt")), Is.EqualTo("written"));
        }
        finally
        {
            Cleanup(mnt, process);
        }
    }

    [Test]
    public void TheDaemonSpeaksTheProtocolItselfWithoutLoadingLibfuse()
    {
        RequireFuse();
        using var fixture = new OverlayFixture(lowers: 1);
        OverlayFixture.WriteFile(Path.Combine(fixture.Lowers[0], "f"), "from the lower layer");
        string mnt = MountPoint(fixture);
        Process? process = null;
        try
        {
            process = Start(["-f", "-o", Label(fixture), mnt]);
            Assert.That(WaitFor(() => IsMounted(mnt)), Is.True, "mounted");
            Assert.That(File.ReadAllText(Path.Combine(mnt, "f")), Is.EqualTo("from the lower layer"));
            File.WriteAllText(Path.Combine(mnt, "new.txt"), "written");
            string maps = File.ReadAllText($"/proc/{process.Id}/maps");
            Assert.That(maps, Does.Not.Contain("libfuse"), "no libfuse in the serving process");
            Assert.That(Syscall.kill(process.Id, Signum.SIGTERM), Is.Zero);
            Assert.That(process.WaitForExit(Patience), Is.True, "SIGTERM ends the process");
            Assert.That(process.ExitCode, Is.Zero, "a clean exit");
            Assert.That(File.ReadAllText(Path.Combine(fixture.Upper!, "new.txt")), Is.EqualTo("written"));
        }
        finally
        {
            Cleanup(mnt, process);
        }
    }

    [Test]
    public void SigintToTheBackgroundProcessUnmountsCleanly()
    {
        RequireFuse();
        using var fixture = new OverlayFixture(lowers: 1);
        string mnt = MountPoint(fixture);
        try
        {
            Assert.That(Run(["-o", Label(fixture), mnt]).ExitCode, Is.Zero);
            int pid = ProgramPids(mnt).Single();
            Assert.That(Syscall.kill(pid, Signum.SIGINT), Is.Zero);
            Assert.That(WaitFor(() => !Directory.Exists($"/proc/{pid}")), Is.True, "SIGINT ends the process");
            Assert.That(IsMounted(mnt), Is.False);
        }
        finally
        {
            Cleanup(mnt);
        }
    }

    [TestCase("fusermount3", "-u")]
    [TestCase("umount", "")]
    public void UnmountingFromOutsideEndsTheProcess(string program, string flags)
    {
        RequireFuse();
        using var fixture = new OverlayFixture(lowers: 1);
        string mnt = MountPoint(fixture);
        try
        {
            Assert.That(Run(["-o", Label(fixture), mnt]).ExitCode, Is.Zero);
            int pid = ProgramPids(mnt).Single();
            (int rc, _, string error) = Exec(program, [.. flags.Split(' ', StringSplitOptions.RemoveEmptyEntries), mnt]);
            Assert.That(rc, Is.Zero, error);
            Assert.That(WaitFor(() => !Directory.Exists($"/proc/{pid}")), Is.True, $"{program} ends the process");
            Assert.That(IsMounted(mnt), Is.False);
        }
        finally
        {
            Cleanup(mnt);
        }
    }

    [Test]
    public void AutoUnmountRemovesTheMountOfAKilledProcess()
    {
        RequireFuse();
        using var fixture = new OverlayFixture(lowers: 1);
        OverlayFixture.WriteFile(Path.Combine(fixture.Lowers[0], "f"), "f");
        string mnt = MountPoint(fixture);
        string link = Path.Combine(fixture.Root, "link-to-merged");
        try
        {
            // given through a symbolic link with a trailing slash: the watcher still finds the mount in mountinfo
            File.CreateSymbolicLink(link, mnt);
            Assert.That(Run(["-o", Label(fixture) + ",auto_unmount", link + "/"]).ExitCode, Is.Zero);
            Assert.That(File.ReadAllText(Path.Combine(mnt, "f")), Is.EqualTo("f"));
            int[] pids = ProgramPids(mnt, link + "/");
            Assert.That(pids, Has.Length.EqualTo(2), "the mount process and its watcher");
            int mount = pids.Single(p => File.ReadAllText($"/proc/{p}/environ").Contains(Program.ChildVariable + "=1", StringComparison.Ordinal));
            int watcher = pids.Single(p => p != mount);
            Assert.That(Directory.GetFileSystemEntries($"/proc/{watcher}/fd").Select(fd => new FileInfo(fd).LinkTarget), Does.Not.Contain("/dev/fuse"),
                "the watcher does not hold the FUSE connection (the mount process's inherited /dev/fuse is close-on-exec)");
            Assert.That(Syscall.kill(mount, Signum.SIGKILL), Is.Zero);
            Assert.That(WaitFor(() => !IsMounted(mnt), TimeSpan.FromSeconds(10)), Is.True, "the watcher unmounted the dead mount within seconds");
            Assert.That(WaitFor(() => ProgramPids(mnt, link + "/").Length == 0), Is.True, "the watcher exits too");
            Assert.That(Directory.GetFileSystemEntries(mnt), Is.Empty, "the mount point is a plain directory again");
        }
        finally
        {
            Cleanup(mnt);
            foreach (int pid in ProgramPids(link + "/"))
            {
                Syscall.kill(pid, Signum.SIGKILL);
            }
        }
    }

    [Test]
    public void SigtermAfterALazyUnmountLeavesTheFileSystemMountedThereSinceAlone()
    {
        RequireFuse();
        using var fixture = new OverlayFixture(lowers: 1);
        OverlayFixture.WriteFile(Path.Combine(fixture.Lowers[0], "f"), "f");
        string mnt = MountPoint(fixture);
        ScratchFileSystem? tmpfs = null;
        try
        {
            Assert.That(Run(["-o", Label(fixture), mnt]).ExitCode, Is.Zero);
            int pid = ProgramPids(mnt).Single();
            using (var held = new FileStream(Path.Combine(mnt, "f"), FileMode.Open, FileAccess.Read))
            {
                // held open: the detached mount stays in use, so the process lives on after umount -l
                Assert.That(Exec("umount", ["-l", mnt]).ExitCode, Is.Zero);
                tmpfs = ScratchFileSystem.Tmpfs(mnt, "1m");
                File.WriteAllText(Path.Combine(mnt, "marker"), "someone else's");
                Assert.That(Syscall.kill(pid, Signum.SIGTERM), Is.Zero);
                Thread.Sleep(1000); // time to unmount the wrong file system, if it were going to
                Assert.That(File.Exists(Path.Combine(mnt, "marker")), Is.True, "the tmpfs mounted since is still there after SIGTERM");
            }
            Assert.That(WaitFor(() => !Directory.Exists($"/proc/{pid}")), Is.True, "the process exits (at the latest once the detached mount's last user lets go)");
            Assert.That(File.ReadAllText(Path.Combine(mnt, "marker")), Is.EqualTo("someone else's"), "and the tmpfs is still there");
        }
        finally
        {
            tmpfs?.Dispose();
            Cleanup(mnt);
        }
    }

    [Test]
    public void ExitingAfterUmountLeavesTheFileSystemMountedThereSinceAlone()
    {
        RequireFuse();
        using var fixture = new OverlayFixture(lowers: 1);
        string mnt = MountPoint(fixture);
        try
        {
            for (int round = 0; round < 10; round++)
            {
                Assert.That(Run(["-o", Label(fixture), mnt]).ExitCode, Is.Zero);
                int pid = ProgramPids(mnt).Single();
                Assert.That(ScratchFileSystem.UnmountNow(mnt), Is.Zero, "umount");
                // at once, while the process is still on its way out
                using ScratchFileSystem tmpfs = ScratchFileSystem.Tmpfs(mnt, "1m");
                File.WriteAllText(Path.Combine(mnt, "marker"), "someone else's");
                Assert.That(WaitFor(() => !Directory.Exists($"/proc/{pid}")), Is.True, "umount ends the process");
                Assert.That(File.Exists(Path.Combine(mnt, "marker")), Is.True, $"round {round}: the exiting process left the tmpfs mounted since alone");
            }
        }
        finally
        {
            Cleanup(mnt);
        }
    }

    [Test]
    public void TheAutoUnmountWatcherLeavesAnotherFuseMountAlone()
    {
        RequireFuse();
        using var fixture = new OverlayFixture(lowers: 1);
        OverlayFixture.WriteFile(Path.Combine(fixture.Lowers[0], "f"), "first");
        string mnt = MountPoint(fixture);
        using var second = new OverlayFixture(lowers: 1);
        OverlayFixture.WriteFile(Path.Combine(second.Lowers[0], "f"), "second");
        int watcher = 0;
        try
        {
            Assert.That(Run(["-o", Label(fixture) + ",auto_unmount", mnt]).ExitCode, Is.Zero);
            int[] pids = ProgramPids(mnt);
            Assert.That(pids, Has.Length.EqualTo(2), "the mount process and its watcher");
            watcher = pids.Single(p => File.ReadAllText($"/proc/{p}/environ").Contains(Program.WatchVariable + "=1", StringComparison.Ordinal));
            int mount = pids.Single(p => p != watcher);
            // The watcher is held still while the first mount goes and a second baoverlayfs mounts on the same path
            // (the kernel may give it the first one's mount id and connection number again).
            Assert.That(Syscall.kill(watcher, Signum.SIGSTOP), Is.Zero);
            Assert.That(Exec("umount", [mnt]).ExitCode, Is.Zero);
            Assert.That(WaitFor(() => !Directory.Exists($"/proc/{mount}")), Is.True);
            Assert.That(Run(["-o", Label(second), mnt]).ExitCode, Is.Zero);
            Assert.That(Syscall.kill(watcher, Signum.SIGCONT), Is.Zero);
            Assert.That(WaitFor(() => !Directory.Exists($"/proc/{watcher}")), Is.True, "the watcher exits");
            Assert.That(File.ReadAllText(Path.Combine(mnt, "f")), Is.EqualTo("second"), "the second mount is still there");
        }
        finally
        {
            if (watcher != 0)
            {
                Syscall.kill(watcher, Signum.SIGCONT);
            }
            Cleanup(mnt);
        }
    }

    [Test]
    public void ContainersStorageArgvMountsTheLayersInOrder()
    {
        RequireFuse();
        using var fixture = new OverlayFixture(lowers: 2);
        OverlayFixture.WriteFile(Path.Combine(fixture.Lowers[0], "both"), "top");
        OverlayFixture.WriteFile(Path.Combine(fixture.Lowers[1], "both"), "bottom");
        OverlayFixture.WriteFile(Path.Combine(fixture.Lowers[1], "only-bottom"), "b");
        string mnt = MountPoint(fixture);
        try
        {
            // as containers-storage runs a mount_program: exactly "-o LABEL MERGED"
            string label = $"lowerdir={fixture.Lowers[0]}:{fixture.Lowers[1]},upperdir={fixture.Upper},workdir={fixture.Work},volatile,"
                + "uidmapping=:0:1000:1:1:100000:65536,gidmapping=:0:1000:1:1:100000:65536,squash_to_root";
            // containers-storage collects standard error into a buffer, so it waits for end-of-file on that pipe:
            // the backgrounded process (and the watcher) must not keep it open.
            var start = new ProcessStartInfo(ProgramPath) { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = "/" };
            start.ArgumentList.Add("-o");
            start.ArgumentList.Add(label + ",auto_unmount");
            start.ArgumentList.Add(mnt);
            start.Environment.Remove(Program.ChildVariable);
            using (var process = Process.Start(start)!)
            {
                Task<string> output = process.StandardOutput.ReadToEndAsync();
                Task<string> errors = process.StandardError.ReadToEndAsync();
                Assert.That(Task.WaitAll([output, errors], Patience), Is.True, "standard output and error reach end-of-file once the command returns");
                Assert.That(process.WaitForExit(Patience), Is.True);
                Assert.That(process.ExitCode, Is.Zero, errors.Result);
                Assert.That(errors.Result, Is.Empty, "no warnings for what containers-storage passes");
            }
            Assert.That(File.ReadAllText(Path.Combine(mnt, "both")), Is.EqualTo("top"), "the first lowerdir is the highest");
            Assert.That(File.ReadAllText(Path.Combine(mnt, "only-bottom")), Is.EqualTo("b"));
            File.WriteAllText(Path.Combine(mnt, "both"), "changed");
            Assert.That(File.ReadAllText(Path.Combine(fixture.Upper!, "both")), Is.EqualTo("changed"));
            Assert.That(File.ReadAllText(Path.Combine(fixture.Lowers[0], "both")), Is.EqualTo("top"));
        }
        finally
        {
            Cleanup(mnt);
        }
    }

    [Test]
    public void SquashOptionsChangeTheOwnersShownButNotStored()
    {
        RequireFuse();
        using var fixture = new OverlayFixture(lowers: 1);
        OverlayFixture.WriteFile(Path.Combine(fixture.Lowers[0], "f"), "f");
        string mnt = MountPoint(fixture);
        try
        {
            Assert.That(Run(["-o", Label(fixture) + ",squash_to_root,squash_to_uid=1234,squash_to_gid=4321", mnt]).ExitCode, Is.Zero);
            File.WriteAllText(Path.Combine(mnt, "new.txt"), "n");
            foreach (string name in new[] { "f", "new.txt", "." })
            {
                Assert.That(Syscall.lstat(Path.Combine(mnt, name), out Stat shown), Is.Zero);
                Assert.That((shown.st_uid, shown.st_gid), Is.EqualTo((1234u, 4321u)), name);
            }
            Assert.That(Syscall.lstat(Path.Combine(fixture.Upper!, "new.txt"), out Stat stored), Is.Zero);
            Assert.That((stored.st_uid, stored.st_gid), Is.EqualTo((0u, 0u)), "stored with the caller's ids");
        }
        finally
        {
            Cleanup(mnt);
        }
    }

    [Test]
    public void IdMappingsMapStoredOwnersToShownOnesAndBack()
    {
        IdMapping[] map = [new(0, 100000, 65536), new(70000, 5000, 10)];
        Assert.That(OwnerMappingHandler.Shown(0, map), Is.EqualTo(100000u));
        Assert.That(OwnerMappingHandler.Shown(65535, map), Is.EqualTo(165535u));
        Assert.That(OwnerMappingHandler.Shown(70003, map), Is.EqualTo(5003u));
        Assert.That(OwnerMappingHandler.Shown(65536, map), Is.EqualTo(OwnerMappingHandler.Overflow), "outside every range");
        Assert.That(OwnerMappingHandler.Stored(100007, map), Is.EqualTo(7u));
        Assert.That(OwnerMappingHandler.Stored(5009, map), Is.EqualTo(70009u));
        Assert.That(OwnerMappingHandler.Stored(0, map), Is.EqualTo(OwnerMappingHandler.Overflow));
        Assert.That(OwnerMappingHandler.Stored(42, []), Is.EqualTo(42u), "no mapping: ids pass unchanged");
    }

    /// <summary>The option strings containers-storage writes for rootless <c>podman run --userns=keep-id</c> (user 1001)
    /// and for <c>--uidmap 0:1:65536</c>. The kernel has checked permissions (default_permissions) with the shown
    /// owners; the overlay must not check again with the stored ones, where container root is not uid 0.</summary>
    [TestCase(":0:1:1001:1001:0:1:1002:1002:64535", 1001u)]
    [TestCase("0:1:65536", 65534u)]
    public void MappedMountsLetContainerRootCreateInRootOwnedDirectories(string mapping, uint storedOwner)
    {
        RequireFuse();
        using var fixture = new OverlayFixture(lowers: 1);
        string etc = Path.Combine(fixture.Lowers[0], "etc");
        OverlayFixture.WriteFile(Path.Combine(etc, "hostname"), "h");
        Assert.That(Syscall.chmod(etc, (FilePermissions)OverlayFixture.Mode("755")), Is.Zero);
        string mnt = MountPoint(fixture);
        try
        {
            (int rc, _, string error) = Run(["-o", Label(fixture) + $",uidmapping={mapping},gidmapping={mapping}", mnt]);
            Assert.That(rc, Is.Zero, error);
            string shownEtc = Path.Combine(mnt, "etc");
            Assert.That(Syscall.lstat(shownEtc, out Stat shown), Is.Zero);
            Assert.That(shown.st_uid, Is.Not.Zero, "stored root is shown as another user: the test process (root) is not its owner");

            // As Podman does when it prepares a container's /etc.
            Assert.That(Syscall.symlink("../proc/self/mounts", Path.Combine(shownEtc, "mtab")), Is.Zero, $"symlink: {Stdlib.GetLastError()}");
            File.WriteAllText(Path.Combine(shownEtc, "resolv.conf"), "nameserver 127.0.0.1");
            Directory.CreateDirectory(Path.Combine(shownEtc, "containers"));
            Assert.That(Syscall.mkfifo(Path.Combine(shownEtc, "fifo"), FilePermissions.S_IRUSR | FilePermissions.S_IWUSR), Is.Zero, $"mkfifo: {Stdlib.GetLastError()}");

            foreach (string name in new[] { "mtab", "resolv.conf", "containers", "fifo" })
            {
                Assert.That(Syscall.lstat(Path.Combine(fixture.Upper!, "etc", name), out Stat stored), Is.Zero, name);
                Assert.That(stored.st_uid, Is.EqualTo(storedOwner), $"{name}: the creator (shown uid 0) stored through the mapping");
            }
            Assert.That(File.ReadAllText(Path.Combine(shownEtc, "resolv.conf")), Is.EqualTo("nameserver 127.0.0.1"));
        }
        finally
        {
            Cleanup(mnt);
        }
    }

    [Test]
    public void UidAndGidMappingsApplyThroughTheMount()
    {
        RequireFuse();
        using var fixture = new OverlayFixture(lowers: 1);
        string lower = Path.Combine(fixture.Lowers[0], "f");
        OverlayFixture.WriteFile(lower, "f");
        Assert.That(Syscall.lchown(lower, 3, 4), Is.Zero);
        OverlayFixture.WriteFile(Path.Combine(fixture.Lowers[0], "unmapped"), "u");
        Assert.That(Syscall.lchown(Path.Combine(fixture.Lowers[0], "unmapped"), 70000, 70000), Is.Zero);
        string mnt = MountPoint(fixture);
        try
        {
            (int rc, _, string error) = Run(["-o", Label(fixture) + ",uidmapping=:0:100000:65536,gidmapping=:0:200000:65536", mnt]);
            Assert.That(rc, Is.Zero, error);
            Assert.That(Syscall.lstat(Path.Combine(mnt, "f"), out Stat shown), Is.Zero);
            Assert.That((shown.st_uid, shown.st_gid), Is.EqualTo((100003u, 200004u)), "stored 3:4 is shown through the mappings");
            Assert.That(Syscall.lstat(Path.Combine(mnt, "unmapped"), out shown), Is.Zero);
            Assert.That((shown.st_uid, shown.st_gid), Is.EqualTo((65534u, 65534u)), "an owner outside the mappings is the overflow id");

            Assert.That(Syscall.lchown(Path.Combine(mnt, "f"), 100005, 200006), Is.Zero, "chown through the mount");
            Assert.That(Syscall.lstat(Path.Combine(fixture.Upper!, "f"), out Stat stored), Is.Zero);
            Assert.That((stored.st_uid, stored.st_gid), Is.EqualTo((5u, 6u)), "stored mapped back");
            Assert.That(Syscall.lstat(Path.Combine(mnt, "f"), out shown), Is.Zero);
            Assert.That((shown.st_uid, shown.st_gid), Is.EqualTo((100005u, 200006u)));
        }
        finally
        {
            Cleanup(mnt);
        }
    }

    [Test]
    public void MountFlagOptionsReachTheKernel()
    {
        RequireFuse();
        using var fixture = new OverlayFixture(lowers: 1);
        OverlayFixture.WriteFile(Path.Combine(fixture.Lowers[0], "f"), "f");
        string mnt = MountPoint(fixture);
        try
        {
            (int rc, _, string error) = Run(["-o", Label(fixture) + ",nosuid,noexec,dev,relatime,ro", mnt]);
            Assert.That(rc, Is.Zero, error);
            Assert.That(error, Is.Empty, "no warning for the mount flags");
            Assert.That(MountFlags(mnt), Is.EquivalentTo(new[] { "ro", "nosuid", "noexec", "relatime" }));
        }
        finally
        {
            Cleanup(mnt);
        }
    }

    /// <summary>The per-mount options of /proc/self/mountinfo (field 6).</summary>
    private static string[] MountFlags(string mnt) => (MountLine(mnt) ?? throw new AssertionException($"{mnt} is not mounted")).Split(' ')[5].Split(',');

    [Test]
    public void MountTypeFuseBaoverlayfsGoesThroughMountFuse3()
    {
        RequireFuse();
        if (!File.Exists("/sbin/mount.fuse3") && !File.Exists("/usr/sbin/mount.fuse3"))
        {
            Assert.Ignore("mount.fuse3 is not installed (apt-get install fuse3)");
        }
        const string installed = "/usr/local/bin/baoverlayfs";
        if (File.Exists(installed) || new FileInfo(installed).LinkTarget is not null)
        {
            Assert.Ignore($"{installed} already exists; this test installs its own and would not remove someone else's");
        }
        using var fixture = new OverlayFixture(lowers: 1);
        OverlayFixture.WriteFile(Path.Combine(fixture.Lowers[0], "f"), "via mount.fuse3");
        string mnt = MountPoint(fixture);
        try
        {
            File.CreateSymbolicLink(installed, ProgramPath);
            (int rc, _, string error) = Exec("mount", ["-t", "fuse.baoverlayfs", "baoverlayfs", mnt, "-o", Label(fixture)]);
            Assert.That(rc, Is.Zero, error);
            Assert.That(error, Is.Empty, "mount.fuse3's added options (rw, dev, suid) are accepted quietly");
            Assert.That(IsMounted(mnt), Is.True);
            Assert.That(MountLine(mnt), Does.Contain(" - fuse.baoverlayfs baoverlayfs "));
            Assert.That(File.ReadAllText(Path.Combine(mnt, "f")), Is.EqualTo("via mount.fuse3"));
            int pid = ProgramPids(mnt).Single();
            Assert.That(Exec("umount", [mnt]).ExitCode, Is.Zero);
            Assert.That(WaitFor(() => !Directory.Exists($"/proc/{pid}")), Is.True, "umount ends the process");
        }
        finally
        {
            Cleanup(mnt);
            File.Delete(installed);
        }
    }

    [Test]
    public void WritingIntoALargeLowerFileMakesABCowFileInUpper()
    {
        RequireFuse();
        using var fixture = new OverlayFixture(lowers: 1);
        byte[] big = Checks.RandomBytes(new Random(11), 4 << 20);
        OverlayFixture.WriteFile(Path.Combine(fixture.Lowers[0], "big.bin"), big);
        string mnt = MountPoint(fixture);
        try
        {
            Assert.That(Run(["-o", Label(fixture), mnt]).ExitCode, Is.Zero);
            byte[] patch = Encoding.ASCII.GetBytes("written through baoverlayfs");
            using (var stream = new FileStream(Path.Combine(mnt, "big.bin"), FileMode.Open, FileAccess.ReadWrite))
            {
                stream.Position = 2_000_000;
                stream.Write(patch);
                stream.Flush(flushToDisk: true);
            }
            patch.CopyTo(big, 2_000_000);
            Assert.That(File.ReadAllBytes(Path.Combine(mnt, "big.bin")), Is.EqualTo(big), "read back through the mount");
            string upper = Path.Combine(fixture.Upper!, "big.bin");
            Assert.That(Syscall.lgetxattr(upper, "user.baoverlay.bcow", out byte[] _), Is.GreaterThanOrEqualTo(0), "the upper file is a B-CoW file");
            Assert.That(new FileInfo(upper).Length, Is.LessThan(big.Length / 2), "only the written blocks are in upper");
            Assert.That(File.ReadAllBytes(Path.Combine(fixture.Lowers[0], "big.bin")), Is.Not.EqualTo(big), "the lower file is untouched");
        }
        finally
        {
            Cleanup(mnt);
        }
    }

    // ---- helpers ----------------------------------------------------------------------------------------------

    /// <summary>The program's apphost, copied beside the test assembly by the project reference.</summary>
    private static string ProgramPath => Path.Combine(AppContext.BaseDirectory, "baoverlayfs");

    private static string Label(OverlayFixture fixture) => $"lowerdir={fixture.Lowers[0]},upperdir={fixture.Upper},workdir={fixture.Work}";

    private static string MountPoint(OverlayFixture fixture)
    {
        string mnt = Path.Combine(fixture.Root, "merged");
        Directory.CreateDirectory(mnt);
        return mnt;
    }

    private static Process Start(IEnumerable<string> args, string? program = null)
    {
        var start = new ProcessStartInfo(program ?? ProgramPath)
        {
            UseShellExecute = false,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        foreach (string arg in args)
        {
            start.ArgumentList.Add(arg);
        }
        start.Environment.Remove(Program.ChildVariable);
        start.Environment.Remove(Program.WatchVariable);
        var process = Process.Start(start)!;
        process.OutputDataReceived += (_, e) => TestContext.Progress.WriteLine("baoverlayfs out: " + e.Data);
        process.ErrorDataReceived += (_, e) => TestContext.Progress.WriteLine("baoverlayfs err: " + e.Data);
        return process;
    }

    private static (int ExitCode, string Output, string Error) Run(IEnumerable<string> args) => Exec(ProgramPath, args);

    /// <summary>Runs a command to its exit (not to the end of its output: a backgrounded child may hold it).</summary>
    private static (int ExitCode, string Output, string Error) Exec(string program, IEnumerable<string> args, params (string Name, string Value)[] environment)
    {
        // From "/": mount(8) would canonicalise a source named like a file in the current directory (the test's bin
        // folder holds a file named baoverlayfs).
        var start = new ProcessStartInfo(program) { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = "/" };
        foreach (string arg in args)
        {
            start.ArgumentList.Add(arg);
        }
        start.Environment.Remove(Program.ChildVariable);
        start.Environment.Remove(Program.WatchVariable);
        foreach ((string name, string value) in environment)
        {
            start.Environment[name] = value;
        }
        using var process = Process.Start(start)!;
        var output = new StringBuilder();
        var error = new StringBuilder();
        process.OutputDataReceived += (_, e) => { lock (output) { if (e.Data is not null) { output.AppendLine(e.Data); } } };
        process.ErrorDataReceived += (_, e) => { lock (error) { if (e.Data is not null) { error.AppendLine(e.Data); } } };
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        if (!process.WaitForExit(Patience))
        {
            process.Kill(entireProcessTree: true);
            Assert.Fail($"{program} {string.Join(' ', start.ArgumentList)} did not exit within {Patience}");
        }
        Thread.Sleep(100); // let the last lines arrive
        lock (output)
        {
            lock (error)
            {
                return (process.ExitCode, output.ToString(), error.ToString());
            }
        }
    }

    private static bool WaitFor(Func<bool> condition, TimeSpan? timeout = null)
    {
        var watch = Stopwatch.StartNew();
        while (watch.Elapsed < (timeout ?? Patience))
        {
            if (condition())
            {
                return true;
            }
            Thread.Sleep(20);
        }
        return condition();
    }

    private static string? MountLine(string mnt) =>
        File.ReadLines("/proc/self/mountinfo").LastOrDefault(l => l.Split(' ') is { Length: > 4 } f && AutoUnmountWatcher.Unescape(f[4]) == mnt);

    private static bool IsMounted(string mnt) => MountLine(mnt) is not null;

    /// <summary>baoverlayfs processes (mount processes and watchers) whose command line names one of <paramref name="mountPoints"/>.</summary>
    private static int[] ProgramPids(params string[] mountPoints)
    {
        var pids = new List<int>();
        foreach (string dir in Directory.GetDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(dir), out int pid) || pid == Environment.ProcessId)
            {
                continue;
            }
            try
            {
                string[] argv = File.ReadAllText(Path.Combine(dir, "cmdline")).Split('\0');
                string stat = File.ReadAllText(Path.Combine(dir, "stat"));
                bool zombie = stat[(stat.LastIndexOf(')') + 2)..].StartsWith('Z');
                if (!zombie && argv.Length > 1 && Path.GetFileName(argv[0]) is "baoverlayfs" or "dotnet" && argv.Intersect(mountPoints).Any())
                {
                    pids.Add(pid);
                }
            }
            catch (IOException)
            {
                // gone meanwhile
            }
            catch (UnauthorizedAccessException)
            {
            }
        }
        return [.. pids];
    }

    /// <summary>Unmounts (fusermount3 -u -z, then umount -l) and kills, by pid, the processes this test started.</summary>
    private static void Cleanup(string mnt, Process? process = null)
    {
        for (int i = 0; i < 5 && IsMounted(mnt); i++)
        {
            Exec("fusermount3", ["-u", "-z", mnt]);
            if (IsMounted(mnt))
            {
                Exec("umount", ["-l", mnt]);
            }
        }
        if (process is not null)
        {
            if (!process.WaitForExit(TimeSpan.FromSeconds(10)))
            {
                process.Kill();
            }
            process.Dispose();
        }
        WaitFor(() => ProgramPids(mnt).Length == 0, TimeSpan.FromSeconds(10));
        foreach (int pid in ProgramPids(mnt))
        {
            TestContext.Out.WriteLine($"killing leftover baoverlayfs process {pid}");
            Syscall.kill(pid, Signum.SIGKILL);
        }
    }

    private static void RequireFuse()
    {
        if (!File.Exists("/dev/fuse"))
        {
            Assert.Ignore("/dev/fuse does not exist (load the fuse module, or give the container --device /dev/fuse)");
        }
        if (Syscall.geteuid() != 0)
        {
            Assert.Ignore("mounting needs root (CAP_SYS_ADMIN): baoverlayfs mounts with mount(2) and never runs fusermount3");
        }
        if (!File.Exists(ProgramPath))
        {
            Assert.Ignore($"{ProgramPath} is missing (the test project references samples/BAOverlayFs, which builds it)");
        }
    }
}
