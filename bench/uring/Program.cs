using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Text;
using BAOverlay.Fuse.Interop;
using BAOverlay.UringBench;
using BAOverlay.UringBench.Interop;

// uringbench: FUSE over io_uring against read/writev on /dev/fuse, on a trivial read-only file system.
//   serve MOUNTPOINT [--transport classic|uring] [--queue-depth N] [--no-pin] [--data-files N] [--data-size BYTES]
//                    [--small-files N] [--timeout SECONDS]
//   stat DIR COUNT SECONDS      stat(2) of DIR/f00000.. round robin for SECONDS; prints stats per second
// Needs root (mount(2)); the io_uring transport needs /sys/module/fuse/parameters/enable_uring = Y (see bench/uring/README.md).

return args.Length > 0 && args[0] == "stat" ? StatLoop(args) : args.Length > 1 && args[0] == "serve" ? Serve(args) : Usage();

static int Usage()
{
    Console.Error.WriteLine("usage: uringbench serve MOUNTPOINT [--transport classic|uring] [--queue-depth N] [--no-pin] "
        + "[--data-files N] [--data-size BYTES] [--small-files N] [--timeout SECONDS]\n       uringbench stat DIR COUNT SECONDS");
    return 2;
}

static int Serve(string[] args)
{
    string mountPoint = Path.GetFullPath(args[1]);
    var transport = Transport.Uring;
    int depth = 8, dataFiles = 4, smallFiles = 10000;
    long dataSize = 1L << 30;
    ulong timeout = 0;
    bool pin = true;
    for (int i = 2; i < args.Length; i++)
    {
        string Value() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{args[i]} needs a value");
        switch (args[i])
        {
            case "--transport": transport = Value() == "classic" ? Transport.Classic : Transport.Uring; break;
            case "--queue-depth": depth = int.Parse(Value(), CultureInfo.InvariantCulture); break;
            case "--no-pin": pin = false; break;
            case "--data-files": dataFiles = int.Parse(Value(), CultureInfo.InvariantCulture); break;
            case "--data-size": dataSize = long.Parse(Value(), CultureInfo.InvariantCulture); break;
            case "--small-files": smallFiles = int.Parse(Value(), CultureInfo.InvariantCulture); break;
            case "--timeout": timeout = ulong.Parse(Value(), CultureInfo.InvariantCulture); break;
            default: return Usage();
        }
    }
    int fd = Native.open("/dev/fuse", Native.O_RDWR | Native.O_CLOEXEC);
    if (fd < 0)
    {
        Console.Error.WriteLine($"uringbench: open /dev/fuse: {Native.Describe(Native.Errno)}");
        return 1;
    }
    string data = $"fd={fd},rootmode=40000,user_id=0,group_id=0,allow_other";
    if (Native.mount("uringbench", mountPoint, "fuse.uringbench", Native.MS_NOSUID | Native.MS_NODEV | Native.MS_RDONLY, data) != 0)
    {
        Console.Error.WriteLine($"uringbench: mount on {mountPoint}: {Native.Describe(Native.Errno)} (needs root)");
        return 1;
    }
    using var term = PosixSignalRegistration.Create(PosixSignal.SIGTERM, c => { c.Cancel = true; Native.umount2(mountPoint, Native.MNT_DETACH); });
    using var interrupt = PosixSignalRegistration.Create(PosixSignal.SIGINT, c => { c.Cancel = true; Native.umount2(mountPoint, Native.MNT_DETACH); });
    var fs = new TrivialFs(dataFiles, dataSize, smallFiles, timeout);
    var server = new Server(fs, fd, transport, depth, pin) { Ready = () => Console.Out.WriteLine("ready") };
    (long[] classic, long[] ring) = server.Run();
    Console.Error.WriteLine($"uringbench: served through read(2):{Summary(classic)}");
    Console.Error.WriteLine($"uringbench: served through the rings:{Summary(ring)}");
    return 0;
}

static string Summary(long[] counts)
{
    var summary = new StringBuilder();
    for (int op = 0; op < counts.Length; op++)
    {
        if (counts[op] != 0)
        {
            summary.Append(CultureInfo.InvariantCulture, $" {((FuseOpcode)op).ToString().Replace("FUSE_", "", StringComparison.Ordinal)}={counts[op]}");
        }
    }
    return summary.Length == 0 ? " nothing" : summary.ToString();
}

static unsafe int StatLoop(string[] args)
{
    string dir = args[1];
    int count = int.Parse(args[2], CultureInfo.InvariantCulture);
    double seconds = double.Parse(args[3], CultureInfo.InvariantCulture);
    byte[][] paths = new byte[count][];
    for (int i = 0; i < count; i++)
    {
        paths[i] = Encoding.UTF8.GetBytes(string.Create(CultureInfo.InvariantCulture, $"{dir}/f{i:D5}\0"));
    }
    byte* buffer = stackalloc byte[256]; // struct statx
    long done = 0;
    var clock = Stopwatch.StartNew();
    long limit = (long)(seconds * Stopwatch.Frequency);
    while (clock.ElapsedTicks < limit)
    {
        for (int k = 0; k < 256; k++, done++)
        {
            fixed (byte* p = paths[done % count])
            {
                if (Native.statx(Native.AT_FDCWD, p, 0, Native.STATX_BASIC_STATS, buffer) != 0)
                {
                    Console.Error.WriteLine($"stat {Encoding.UTF8.GetString(paths[done % count]).TrimEnd('\0')}: {Native.Describe(Native.Errno)}");
                    return 1;
                }
            }
        }
    }
    double elapsed = clock.Elapsed.TotalSeconds;
    Console.Out.WriteLine(string.Create(CultureInfo.InvariantCulture, $"stat {done / elapsed:F0} ops/s {elapsed / done * 1e6:F2} us/op"));
    return 0;
}
