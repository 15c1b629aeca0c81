using System.Diagnostics;
using System.Runtime.InteropServices;

namespace BAOverlay.Tests.Fuse;

/// <summary>
/// A small file system of its own mounted on a directory for one test: a tmpfs (to run out of space) or a loop-mounted
/// ext4 (whose largest file is smaller than the kernel's). Root only; disposing unmounts it (lazily when busy).
/// </summary>
internal sealed partial class ScratchFileSystem : IDisposable
{
    private readonly string? _image;

    private ScratchFileSystem(string mountPoint, string? image)
    {
        MountPoint = mountPoint;
        _image = image;
    }

    public string MountPoint { get; }

    /// <summary>Mounts a tmpfs of <paramref name="size"/> (mount(8)'s syntax: 8m) on <paramref name="mountPoint"/>.</summary>
    public static ScratchFileSystem Tmpfs(string mountPoint, string size = "8m")
    {
        Directory.CreateDirectory(mountPoint);
        // mount(2) itself, not mount(8): tests race it against a process on its way out
        if (mount("baoverlay-test-scratch", mountPoint, "tmpfs", 0, $"size={size},mode=755") != 0)
        {
            Assert.Fail($"mount -t tmpfs {mountPoint}: {Marshal.GetPInvokeErrorMessage(Marshal.GetLastPInvokeError())}");
        }
        return new ScratchFileSystem(mountPoint, null);
    }

    /// <summary>umount(2) of <paramref name="path"/>, at once (mount(8) would take milliseconds to start); 0 or the errno.</summary>
    public static int UnmountNow(string path) => umount2(path, 0) == 0 ? 0 : Marshal.GetLastPInvokeError();

    // int umount2(const char *target, int flags);
    [LibraryImport("libc", EntryPoint = "umount2", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int umount2(string target, int flags);

    // int mount(const char *source, const char *target, const char *filesystemtype, unsigned long mountflags, const void *data);
    [LibraryImport("libc", EntryPoint = "mount", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int mount(string source, string target, string fstype, ulong flags, string data);

    /// <summary>Mounts a fresh ext4 of <paramref name="megabytes"/> MiB with 1 KiB blocks (largest file about 4 TiB)
    /// from an image file beside <paramref name="mountPoint"/>; ignores the test when loop devices are unavailable.</summary>
    public static ScratchFileSystem Ext4(string mountPoint, int megabytes = 32)
    {
        Directory.CreateDirectory(mountPoint);
        string image = mountPoint + ".img";
        using (var file = new FileStream(image, FileMode.Create))
        {
            file.SetLength(megabytes << 20);
        }
        Run("mkfs.ext4", "-q", "-F", "-b", "1024", image);
        if (Exec("mount", "-o", "loop", image, mountPoint).ExitCode != 0)
        {
            File.Delete(image);
            Assert.Ignore("cannot loop-mount an ext4 image here (no loop devices?)");
        }
        return new ScratchFileSystem(mountPoint, image);
    }

    public static bool IsMountPoint(string path) =>
        File.ReadLines("/proc/self/mountinfo").Any(l => l.Split(' ') is { Length: > 4 } f && f[4] == path);

    public void Dispose()
    {
        if (IsMountPoint(MountPoint) && Exec("umount", MountPoint).ExitCode != 0)
        {
            Exec("umount", "-l", MountPoint);
        }
        if (_image is not null)
        {
            File.Delete(_image);
        }
    }

    private static void Run(string program, params string[] args)
    {
        (int rc, string error) = Exec(program, args);
        Assert.That(rc, Is.Zero, $"{program} {string.Join(' ', args)}: {error}");
    }

    private static (int ExitCode, string Error) Exec(string program, params string[] args)
    {
        var start = new ProcessStartInfo(program) { UseShellExecute = false, RedirectStandardError = true, RedirectStandardOutput = true };
        foreach (string arg in args)
        {
            start.ArgumentList.Add(arg);
        }
        using Process process = Process.Start(start)!;
        Task<string> output = process.StandardOutput.ReadToEndAsync();
        string error = process.StandardError.ReadToEnd();
        process.WaitForExit();
        output.Wait();
        return (process.ExitCode, error);
    }
}
