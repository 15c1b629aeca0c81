using System.Globalization;
using System.Text;

namespace BAOverlayFs;

/// <summary>A command line that cannot be used: the message is printed after "baoverlayfs: " and the exit code is 1.</summary>
internal sealed class UsageException(string message) : Exception(message);

/// <summary>One range of an id mapping: <c>ID:HOST:LEN</c>.</summary>
internal readonly record struct IdMapping(uint Id, uint Host, uint Length);

/// <summary>
/// The command line of baoverlayfs, compatible with fuse-overlayfs and mount.fuse3:
/// <c>baoverlayfs [-f] [-d] [-s] [-o OPTIONS]... [SOURCE] MOUNTPOINT</c>.
/// </summary>
internal sealed class CommandLine
{
    /// <summary>Options accepted (and, where the overlay has nothing to do for them, ignored) without a warning.</summary>
    private static readonly HashSet<string> QuietFlags = new(StringComparer.Ordinal)
    {
        "norelatime", "strictatime", "diratime", "nodiratime", "sync", "async", "dirsync", "lazytime", "allow_root", "static_nlink",
        "noacl", "volatile", "defaults", "auto", "noauto", "nofail", "_netdev", "user", "users", "nouser", "owner",
        "nonempty", "hard_remove", "use_ino", "readdir_ino", "clone_fd",
    };

    /// <summary>NAME=VALUE options accepted and ignored without a warning.</summary>
    private static readonly HashSet<string> QuietValues = new(StringComparer.Ordinal)
    {
        "fsync", "context", "fscontext", "defcontext", "rootcontext", "xattr_permissions", "threaded",
        "redirect_dir", "index", "metacopy", "plugins", "max_idle_threads", "uid", "gid", "umask", "max_read",
        "blksize",
    };

    public bool Help { get; private set; }
    public bool Version { get; private set; }
    public bool Foreground { get; private set; }
    public bool Debug { get; private set; }
    public bool SingleThreaded { get; private set; }
    public string? Source { get; private set; }
    public string MountPoint { get; private set; } = "";
    public List<string> LowerDirectories { get; } = [];

    /// <summary>store=DIR: a layer store (docs/layer-store.md) the lower directories come from, with <see cref="Image"/>.</summary>
    public string? Store { get; private set; }

    /// <summary>image=NAME|sha256:HEX: the image of <see cref="Store"/> whose layers are the lower directories.</summary>
    public string? Image { get; private set; }
    /// <summary>verify=always: hash every layer of the image at each mount, even when this host's record of an earlier
    /// verification (the layer's index in the cache directory) vouches for it; verify=once (the default): once per
    /// publication of a layer and host, when its index is made (every mount without cache=).</summary>
    public bool VerifyAlways { get; private set; }

    private bool VerifySet { get; set; }

    /// <summary>cache=DIR: a hot-zone cache directory (docs/layer-store.md) that
    /// every lower layer's files are read through.</summary>
    public string? CacheDirectory { get; private set; }

    /// <summary>cache_size=BYTES[K|M|G|T]: the cache's budget (default 1 GiB).</summary>
    public long? CacheSize { get; private set; }

    /// <summary>store_timeout=S: how long a read of a lower file not in the cache may take before it fails with EIO
    /// (default 2; needs cache=).</summary>
    public double? StoreTimeout { get; private set; }
    public string? UpperDirectory { get; private set; }
    public string? WorkDirectory { get; private set; }
    public bool ReadOnly { get; private set; }

    /// <summary>suid / nosuid: on by default, as fuse-overlayfs mounts.</summary>
    public bool SetUid { get; private set; } = true;

    /// <summary>dev / nodev: off by default, as fuse-overlayfs mounts.</summary>
    public bool Devices { get; private set; }

    /// <summary>noexec / exec.</summary>
    public bool NoExec { get; private set; }

    /// <summary>noatime (the default, as fuse-overlayfs mounts) / atime, relatime.</summary>
    public bool NoAtime { get; private set; } = true;
    public bool AllowOther { get; private set; }
    public bool DefaultPermissions { get; private set; } = true;
    public bool Writeback { get; private set; } = true;

    /// <summary>passthrough: let the kernel serve whole upper files itself (FUSE passthrough); needs writeback off.</summary>
    public bool Passthrough { get; private set; } = true;

    /// <summary>passthrough=all: untouched lower files too (read-only opens; writes to one refused while it is so
    /// open).</summary>
    public bool PassthroughLowerFiles { get; private set; }

    /// <summary>splice: large reads of plain files answered by splicing their pages into /dev/fuse.</summary>
    public bool Splice { get; private set; } = true;

    /// <summary>io_uring: requests taken through FUSE over io_uring where the kernel offers it.</summary>
    public bool IoUring { get; private set; }

    /// <summary>close_delay: seconds a written B-CoW file stays open after its last close before its durable commit.</summary>
    public double CloseDelay { get; private set; } = 5;
    public bool KeepCache { get; private set; } = true;

    /// <summary>entry_timeout / timeout: how long the kernel keeps a name, in seconds.</summary>
    public double EntryTimeout { get; private set; } = BAOverlay.Fuse.OverlayFuseAdapter.DefaultTimeout;

    /// <summary>attr_timeout / timeout: how long the kernel keeps attributes, in seconds.</summary>
    public double AttributeTimeout { get; private set; } = BAOverlay.Fuse.OverlayFuseAdapter.DefaultTimeout;

    /// <summary>negative_timeout / timeout: how long the kernel remembers that a name does not exist, in seconds.</summary>
    public double NegativeTimeout { get; private set; } = BAOverlay.Fuse.OverlayFuseAdapter.DefaultTimeout;
    /// <summary>128 KiB by default: measured twice as fast as libfuse's 1 MiB for sequential writes through the
    /// write-back cache (docs/benchmarks.md, "The FUSE options, measured").</summary>
    public uint? MaxWrite { get; private set; } = 128 * 1024;
    public uint? MaxReadahead { get; private set; }
    public bool AutoUnmount { get; private set; }
    public bool SquashToRoot { get; private set; }
    public uint? SquashToUid { get; private set; }
    public uint? SquashToGid { get; private set; }
    public List<IdMapping> UidMappings { get; } = [];
    public List<IdMapping> GidMappings { get; } = [];
    public int? MaxThreads { get; private set; }
    public string? FsName { get; private set; }
    public string? Subtype { get; private set; }

    /// <summary>Every option seen, in order, as NAME or NAME=VALUE (unescaped).</summary>
    public List<string> Options { get; } = [];

    /// <summary>One line per option that was not understood and is ignored.</summary>
    public List<string> Warnings { get; } = [];

    /// <summary>Parses the arguments (not the program name).</summary>
    /// <exception cref="UsageException">The command line is wrong.</exception>
    public static CommandLine Parse(IReadOnlyList<string> args)
    {
        var line = new CommandLine();
        var positional = new List<string>();
        bool endOfOptions = false;
        for (int i = 0; i < args.Count; i++)
        {
            string arg = args[i];
            if (endOfOptions || arg.Length < 2 || arg[0] != '-')
            {
                positional.Add(arg);
                continue;
            }
            switch (arg)
            {
                case "--":
                    endOfOptions = true;
                    continue;
                case "-h" or "--help":
                    line.Help = true;
                    continue;
                case "-V" or "--version":
                    line.Version = true;
                    continue;
                case "-f":
                    line.Foreground = true;
                    continue;
                case "-d" or "--debug":
                    line.Debug = true;
                    line.Foreground = true; // as libfuse: -d implies -f
                    continue;
                case "-s":
                    line.SingleThreaded = true;
                    continue;
                case "-o":
                    if (i + 1 >= args.Count)
                    {
                        throw new UsageException("-o needs an argument");
                    }
                    line.AddOptions(args[++i]);
                    continue;
            }
            if (arg.StartsWith("-o", StringComparison.Ordinal))
            {
                line.AddOptions(arg[2..]);
                continue;
            }
            throw new UsageException($"unknown argument '{arg}' (see baoverlayfs --help)");
        }
        if (line.Help || line.Version)
        {
            return line;
        }
        switch (positional.Count)
        {
            case 0:
                throw new UsageException("no mount point given (see baoverlayfs --help)");
            case 1:
                line.MountPoint = positional[0];
                break;
            case 2:
                line.Source = positional[0];
                line.MountPoint = positional[1];
                break;
            default:
                throw new UsageException($"too many arguments: {string.Join(' ', positional)} (expected [SOURCE] MOUNTPOINT)");
        }
        if ((line.Store is null) != (line.Image is null))
        {
            throw new UsageException(line.Store is null ? "image= needs store=" : "store= needs image=");
        }
        if (line.Store is not null && line.LowerDirectories.Count > 0)
        {
            throw new UsageException("lowerdir= and store= exclude each other: the store gives the lower directories");
        }
        if (line.LowerDirectories.Count == 0 && line.Store is null)
        {
            throw new UsageException("no lowerdir= given (-o lowerdir=DIR[:DIR...],upperdir=DIR,workdir=DIR, or store=DIR,image=NAME)");
        }
        if (line.VerifySet && line.Store is null)
        {
            throw new UsageException("verify= needs store=");
        }
        if (line.CacheDirectory is null && (line.CacheSize is not null || line.StoreTimeout is not null))
        {
            throw new UsageException(line.CacheSize is not null ? "cache_size= needs cache=DIR" : "store_timeout= needs cache=DIR");
        }
        if (line.StoreTimeout is <= 0)
        {
            throw new UsageException($"store_timeout={line.StoreTimeout}: must be more than 0 seconds");
        }
        if ((line.UpperDirectory is null) != (line.WorkDirectory is null))
        {
            throw new UsageException(line.UpperDirectory is null ? "workdir= needs upperdir=" : "upperdir= needs workdir=");
        }
        return line;
    }

    /// <summary>Checks that the directories exist; resolves them to full paths.</summary>
    /// <param name="checkedMountPoint">The mount point as the mounting process of a backgrounded mount checked and
    /// resolved it: taken as it is, never looked at, since it may be mounted already and looking would then wait for
    /// this very process to answer.</param>
    /// <exception cref="UsageException">A directory is missing or is not a directory.</exception>
    public void Validate(string? checkedMountPoint = null)
    {
        for (int i = 0; i < LowerDirectories.Count; i++)
        {
            LowerDirectories[i] = CheckDirectory("lowerdir", LowerDirectories[i]);
        }
        if (UpperDirectory is not null)
        {
            UpperDirectory = CheckDirectory("upperdir", UpperDirectory);
        }
        if (WorkDirectory is not null)
        {
            WorkDirectory = CheckDirectory("workdir", WorkDirectory);
        }
        if (CacheDirectory is not null)
        {
            CacheDirectory = Path.GetFullPath(CacheDirectory); // created by the cache if missing
        }
        // canonical, as /proc/self/mountinfo will show it (the auto_unmount watcher looks the mount up there)
        MountPoint = checkedMountPoint ?? Native.RealPath(CheckDirectory(null, MountPoint));
    }

    private static string CheckDirectory(string? option, string path)
    {
        string label = option is null ? path : $"{option}={path}";
        if (Directory.Exists(path))
        {
            return Path.GetFullPath(path);
        }
        throw new UsageException(File.Exists(path) ? $"{label}: Not a directory" : $"{label}: No such file or directory");
    }

    /// <summary>Splits an option string on commas outside double quotes; <c>\,</c> is a literal comma. Other
    /// backslashes are kept, for <see cref="SplitLowerDirectories"/>.</summary>
    public static List<string> SplitOptions(string options)
    {
        var result = new List<string>();
        var current = new StringBuilder();
        bool quoted = false;
        for (int i = 0; i < options.Length; i++)
        {
            char c = options[i];
            if (c == '\\' && i + 1 < options.Length && options[i + 1] == ',')
            {
                current.Append(',');
                i++;
            }
            else if (c == '\\' && i + 1 < options.Length)
            {
                current.Append(c).Append(options[++i]);
            }
            else if (c == '"')
            {
                quoted = !quoted;
                current.Append(c);
            }
            else if (c == ',' && !quoted)
            {
                result.Add(current.ToString());
                current.Clear();
            }
            else
            {
                current.Append(c);
            }
        }
        result.Add(current.ToString());
        return result.Where(o => o.Length > 0).ToList();
    }

    /// <summary>Splits a lowerdir value on colons; <c>\:</c> is a literal colon and <c>\\</c> a backslash.</summary>
    /// <exception cref="UsageException">An empty layer (data-only layers, <c>::</c>, are not supported).</exception>
    public static List<string> SplitLowerDirectories(string value)
    {
        var result = new List<string>();
        var current = new StringBuilder();
        for (int i = 0; i < value.Length; i++)
        {
            char c = value[i];
            if (c == '\\' && i + 1 < value.Length && value[i + 1] is ':' or '\\')
            {
                current.Append(value[++i]);
            }
            else if (c == ':')
            {
                result.Add(current.ToString());
                current.Clear();
            }
            else
            {
                current.Append(c);
            }
        }
        result.Add(current.ToString());
        if (result.Any(d => d.Length == 0))
        {
            throw new UsageException($"lowerdir={value}: empty layer path (data-only layers, '::', are not supported)");
        }
        return result;
    }

    /// <summary>Parses <c>ID:HOST:LEN[:ID:HOST:LEN...]</c>; an empty leading field (<c>:0:1000:1</c>) is tolerated,
    /// as containers-storage writes it.</summary>
    /// <exception cref="UsageException">Not a list of number triples.</exception>
    public static List<IdMapping> ParseMapping(string option, string value)
    {
        string text = value.StartsWith(':') ? value[1..] : value;
        string[] fields = text.Split(':');
        if (text.Length == 0 || fields.Length % 3 != 0)
        {
            throw new UsageException($"{option}={value}: invalid mapping (expected ID:HOST:LEN[:ID:HOST:LEN...])");
        }
        var result = new List<IdMapping>();
        for (int i = 0; i < fields.Length; i += 3)
        {
            if (!uint.TryParse(fields[i], NumberStyles.None, CultureInfo.InvariantCulture, out uint id)
                || !uint.TryParse(fields[i + 1], NumberStyles.None, CultureInfo.InvariantCulture, out uint host)
                || !uint.TryParse(fields[i + 2], NumberStyles.None, CultureInfo.InvariantCulture, out uint length))
            {
                throw new UsageException($"{option}={value}: invalid mapping (expected ID:HOST:LEN[:ID:HOST:LEN...])");
            }
            result.Add(new IdMapping(id, host, length));
        }
        return result;
    }

    private void AddOptions(string text)
    {
        foreach (string option in SplitOptions(text))
        {
            AddOption(option);
        }
    }

    private void AddOption(string option)
    {
        int eq = option.IndexOf('=', StringComparison.Ordinal);
        string name = eq < 0 ? option : option[..eq];
        string? value = eq < 0 ? null : option[(eq + 1)..];
        Options.Add(option);
        switch (name, value)
        {
            case ("lowerdir", not null):
                LowerDirectories.Clear();
                LowerDirectories.AddRange(SplitLowerDirectories(value));
                return;
            case ("store", not null):
                Store = Unescape(value);
                return;
            case ("image", not null):
                Image = value;
                return;
            case ("cache", not null):
                CacheDirectory = Unescape(value);
                return;
            case ("verify", "always" or "once"):
                VerifyAlways = value == "always";
                VerifySet = true;
                return;
            case ("verify", _):
                throw new UsageException($"{option}: verify=always or verify=once");
            case ("cache_size", not null):
                CacheSize = ParseBytes(option, value);
                return;
            case ("store_timeout", not null):
                StoreTimeout = ParseSeconds(option, value);
                return;
            case ("upperdir", not null):
                UpperDirectory = Unescape(value);
                return;
            case ("workdir", not null):
                WorkDirectory = Unescape(value);
                return;
            case ("suid" or "nosuid", null):
                SetUid = name == "suid";
                return;
            case ("dev" or "nodev", null):
                Devices = name == "dev";
                return;
            case ("exec" or "noexec", null):
                NoExec = name == "noexec";
                return;
            case ("noatime" or "atime" or "relatime", null):
                NoAtime = name == "noatime";
                return;
            case ("ro", null):
                ReadOnly = true;
                return;
            case ("rw", null):
                ReadOnly = false;
                return;
            case ("allow_other", null):
                AllowOther = true;
                return;
            case ("default_permissions", null):
                DefaultPermissions = true;
                return;
            case ("debug", null):
                Debug = true;
                Foreground = true; // as libfuse's -o debug
                return;
            case ("auto_unmount", null):
                AutoUnmount = true;
                return;
            case ("writeback", null):
                Writeback = true;
                return;
            case ("writeback", "1" or "0"):
                Writeback = value == "1";
                return;
            case ("splice", _):
                Splice = ParseSwitch(option, name, value);
                return;
            case ("io_uring", _):
                IoUring = ParseSwitch(option, name, value);
                return;
            case ("passthrough", null):
                Passthrough = true;
                PassthroughLowerFiles = false;
                return;
            case ("passthrough", "1" or "0" or "all"):
                Passthrough = value != "0";
                PassthroughLowerFiles = value == "all";
                return;
            case ("passthrough", not null):
                throw new UsageException($"bad value in '{option}': passthrough takes 1, 0 or all");
            case ("close_delay", not null):
                CloseDelay = ParseSeconds(option, value);
                return;
            case ("squash_to_root", null):
                SquashToRoot = true;
                return;
            case ("squash_to_uid", not null):
                SquashToUid = ParseId(option, value);
                return;
            case ("squash_to_gid", not null):
                SquashToGid = ParseId(option, value);
                return;
            case ("uidmapping", not null):
                UidMappings.AddRange(ParseMapping(name, value));
                return;
            case ("gidmapping", not null):
                GidMappings.AddRange(ParseMapping(name, value));
                return;
            case ("max_write", not null):
                MaxWrite = ParseId(option, value);
                return;
            case ("max_readahead", not null):
                MaxReadahead = ParseId(option, value);
                return;
            case ("keep_cache", "1" or "0"):
                KeepCache = value == "1";
                return;
            case ("timeout", not null):
                EntryTimeout = AttributeTimeout = NegativeTimeout = ParseSeconds(option, value);
                return;
            case ("entry_timeout", not null):
                EntryTimeout = ParseSeconds(option, value);
                return;
            case ("attr_timeout", not null):
                AttributeTimeout = ParseSeconds(option, value);
                return;
            case ("negative_timeout", not null):
                NegativeTimeout = ParseSeconds(option, value);
                return;
            case ("max_threads", not null):
                MaxThreads = (int)Math.Clamp(ParseId(option, value), 1, 1000);
                return;
            case ("fsname", not null):
                FsName = value;
                return;
            case ("subtype", not null):
                Subtype = value;
                return;
        }
        if ((value is null && QuietFlags.Contains(name)) || (value is not null && QuietValues.Contains(name)))
        {
            return;
        }
        Warnings.Add($"unknown option '{option}' ignored");
    }

    /// <summary>An on/off option: NAME or NAME=1 on, NAME=0 off; any other value is a usage error.</summary>
    private static bool ParseSwitch(string option, string name, string? value) => value switch
    {
        null or "1" => true,
        "0" => false,
        _ => throw new UsageException($"bad value in '{option}': {name} takes 1 or 0"),
    };

    private static double ParseSeconds(string option, string value) =>
        double.TryParse(value, NumberStyles.AllowDecimalPoint, CultureInfo.InvariantCulture, out double seconds) && double.IsFinite(seconds)
            ? seconds
            : throw new UsageException($"{option}: not a number of seconds");

    /// <summary>A number of bytes, with an optional binary suffix: K, M, G or T (KiB, MiB, GiB, TiB).</summary>
    private static long ParseBytes(string option, string value)
    {
        int shift = value.Length > 0 ? char.ToUpperInvariant(value[^1]) switch { 'K' => 10, 'M' => 20, 'G' => 30, 'T' => 40, _ => 0 } : 0;
        string digits = shift == 0 ? value : value[..^1];
        if (!long.TryParse(digits, NumberStyles.None, CultureInfo.InvariantCulture, out long number) || number > long.MaxValue >> shift)
        {
            throw new UsageException($"{option}: not a number of bytes (e.g. 1073741824, 1G, 512M)");
        }
        return number << shift;
    }

    private static uint ParseId(string option, string value) =>
        uint.TryParse(value, NumberStyles.None, CultureInfo.InvariantCulture, out uint id)
            ? id
            : throw new UsageException($"{option}: not a number");

    /// <summary>A single path option: <c>\:</c> and <c>\\</c> unescaped as in lowerdir.</summary>
    private static string Unescape(string value) => value.Replace("\\:", ":", StringComparison.Ordinal).Replace("\\\\", "\\", StringComparison.Ordinal);
}
