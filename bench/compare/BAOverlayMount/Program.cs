using System.Runtime.InteropServices;
using BAOverlay.FileSystem;
using BAOverlay.Fuse;

// Stand-in for baoverlayfs, used by bench/compare/run.sh until samples/BAOverlayFs exists on this branch.
// Same command line as fuse-overlayfs: BAOverlayMount [-f] -o lowerdir=A:B,upperdir=U,workdir=W MNT
// Always runs in the foreground (-f is accepted and ignored); SIGTERM/SIGINT or an external unmount end it.
// Production defaults on purpose: OverlayOptions() defaults (1 MiB B-CoW threshold, 64 KiB blocks) and
// FuseMountOptions() defaults (default_permissions, no write-back cache), so the benchmark measures what users get.
string? optionString = null;
string? mountPoint = null;
for (int i = 0; i < args.Length; i++)
{
    switch (args[i])
    {
        case "-f":
            break;
        case "-o" when i + 1 < args.Length:
            optionString = optionString is null ? args[++i] : optionString + "," + args[++i];
            break;
        default:
            if (args[i].StartsWith('-') || mountPoint is not null)
            {
                return Usage($"unexpected argument '{args[i]}'");
            }
            mountPoint = args[i];
            break;
    }
}
if (optionString is null || mountPoint is null)
{
    return Usage("missing -o or the mount point");
}

string[]? lowers = null;
string? upper = null;
string? work = null;
foreach (string option in optionString.Split(',', StringSplitOptions.RemoveEmptyEntries))
{
    int eq = option.IndexOf('=', StringComparison.Ordinal);
    string key = eq < 0 ? option : option[..eq];
    string value = eq < 0 ? "" : option[(eq + 1)..];
    switch (key)
    {
        case "lowerdir":
            lowers = value.Split(':', StringSplitOptions.RemoveEmptyEntries);
            break;
        case "upperdir":
            upper = value;
            break;
        case "workdir":
            work = value;
            break;
        default:
            Console.Error.WriteLine($"BAOverlayMount: option '{option}' ignored");
            break;
    }
}
if (lowers is null || lowers.Length == 0)
{
    return Usage("lowerdir= is required");
}

using OverlayFileSystem fileSystem = OverlayFileSystem.Open(new OverlayOptions
{
    LowerDirectories = lowers,
    UpperDirectory = upper,
    WorkDirectory = work,
});
var mountOptions = new FuseMountOptions { FsName = "baoverlayfs", Subtype = "baoverlayfs", ReadOnly = upper is null };
using var session = new FuseSession(new OverlayFuseAdapter(fileSystem, mountOptions.DefaultPermissions), mountOptions);
session.Mount(mountPoint);

void Stop(PosixSignalContext context)
{
    context.Cancel = true;
    ThreadPool.QueueUserWorkItem(_ => session.Exit());
}
using PosixSignalRegistration term = PosixSignalRegistration.Create(PosixSignal.SIGTERM, Stop);
using PosixSignalRegistration interrupt = PosixSignalRegistration.Create(PosixSignal.SIGINT, Stop);

int result = session.Run();
return result == 0 ? 0 : 1;

static int Usage(string why)
{
    Console.Error.WriteLine($"BAOverlayMount: {why}");
    Console.Error.WriteLine("usage: BAOverlayMount [-f] -o lowerdir=A:B,upperdir=U,workdir=W MOUNTPOINT");
    return 2;
}
