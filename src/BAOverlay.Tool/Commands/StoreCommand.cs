using System.Diagnostics;
using System.Globalization;
using BAOverlay.Store;
using BAOverlay.Tool.Cli;

namespace BAOverlay.Tool.Commands;

/// <summary><c>bcow store</c>: the shared read-only layer store (docs/layer-store.md) from the command line.</summary>
internal sealed class StoreCommand : ICommand
{
    /// <summary>Test seam: the name of a publication step after which the process kills itself (SIGKILL), so that tests
    /// can leave a writer dead at every step. Never set outside tests.</summary>
    internal const string KillAfterVariable = "BCOW_STORE_KILL_AFTER";

    public string Name => "store";

    public string Summary => "a layer store shared by many hosts: publish, import, list, lease, collect, verify";

    public string Synopsis => "store ACTION [--host ID] [--name NAME] [--duration TIME] [--cache DIR] [--verify|--no-verify] STORE [ARG...]";

    public string Help => """
        Manages a read-only layer store: a directory, local or on a network file system
        (NFS, CephFS, sshfs) shared by many hosts, that one host publishes layers and images
        into and every host mounts from. No lock is taken on the share. See docs/layer-store.md.

        Actions:
          init STORE                  make a store in STORE (created if missing)
          publish STORE DIR...        publish each directory tree as a layer, and the layers (the
                                      first DIR the base) as an image; prints the layers' and the
                                      image's digests
          import STORE TAR...         the same from OCI layer tars (plain or gzip, base first):
                                      .wh. entries become overlay whiteouts (needs root)
          list STORE                  the complete layers: digest, entries, bytes, publishing host
          images STORE                the images: digest, layer count, names
          resolve STORE IMAGE         the image's layer directories, highest first, joined by ':'
                                      (a lowerdir= value for mount -t overlay or fuse-overlayfs);
                                      each layer's content is verified first (with --cache: once
                                      per host and publication of the layer)
          lease STORE IMAGE           take a lease on the image's layers for --duration (default
                                      5m; not renewed) and print its id
          release STORE ID            remove the lease ID
          rm STORE NAME               remove an image name (its layers go at the next gc once
                                      unleased and older than the grace period)
          gc STORE                    remove unreferenced unleased layers, images without names,
                                      expired leases, crashed writers' staging (by age)
          verify STORE [DIGEST...]    recompute each layer's digest from its content and check its
                                      tree list (all layers without DIGEST); exit status 1 when one
                                      does not match

        Options:
          --host ID          this host's id in leases and staging (default: the host name)
          --name NAME        publish, import: name the image (e.g. example.org/app:1)
          --duration TIME    lease: how long (30s, 10m, 2h; default 5m)
          --cache DIR        resolve, lease: the cache directory of baoverlayfs -o cache=DIR: the
                             layers' indexes in DIR/index are this host's record of their
                             verification; a layer verified before (the same publication, its
                             tree root unchanged) is not read again, the others are hashed and
                             their index written. Without it every run hashes every layer
          --verify           resolve, lease: hash every layer even when --cache vouches for it
          --no-verify        resolve, lease: check manifests only, not content

        IMAGE is a name or the image's digest (sha256:HEX); a layer is named by its digest.
        """;

    public IReadOnlyList<OptionSpec> Options { get; } =
    [
        OptionSpec.Valued("ID", "--host"),
        OptionSpec.Valued("NAME", "--name"),
        OptionSpec.Valued("TIME", "--duration"),
        OptionSpec.Valued("DIR", "--cache"),
        OptionSpec.Flag("--verify"),
        OptionSpec.Flag("--no-verify"),
    ];

    public string? Subject(ParsedArguments args) => null;

    public int Run(ParsedArguments args, CommandContext context)
    {
        if (args.Operands.Count == 0)
        {
            throw new UsageException("missing ACTION (init, publish, import, list, images, resolve, lease, release, rm, gc, verify)");
        }
        string action = args.Operands[0];
        if (args.Operands.Count < 2)
        {
            throw new UsageException($"{action}: missing STORE");
        }
        string storeDirectory = args.Operands[1];
        List<string> rest = args.Operands.Skip(2).ToList();
        TimeSpan duration = args.Value("--duration") is { } text ? ParseDuration(text) : TimeSpan.FromMinutes(5);
        if (args.Has("--verify") && args.Has("--no-verify"))
        {
            throw new UsageException("--verify and --no-verify exclude each other");
        }
        string? cache = args.Value("--cache");
        if (cache is not null && args.Has("--no-verify"))
        {
            throw new UsageException("--cache keeps records of verifications: it has no use with --no-verify");
        }
        var options = new LayerStoreOptions
        {
            HostId = args.Value("--host"),
            VerifyContent = !args.Has("--no-verify"),
            ReverifyIndexedLayers = args.Has("--verify"),
            LeaseDuration = duration,
            PublishStepHook = KillHook(),
        };
        TextWriter output = context.Out;
        switch (action)
        {
            case "init":
                Expect(rest, 0, action);
                using (LayerStore.Create(storeDirectory, options))
                {
                    output.WriteLine($"initialized layer store {storeDirectory}");
                }
                return BcowCli.Success;
            case "publish" or "import":
                if (rest.Count == 0)
                {
                    throw new UsageException($"{action}: missing {(action == "publish" ? "DIR" : "TAR")}");
                }
                using (LayerStore store = LayerStore.Open(storeDirectory, options))
                {
                    var digests = new List<string>();
                    foreach (string input in rest)
                    {
                        context.Cancellation.ThrowIfCancellationRequested();
                        StoreLayer layer = action == "publish"
                            ? store.PublishDirectory(input, context.Cancellation)
                            : store.ImportTarFile(input, context.Cancellation);
                        output.WriteLine($"layer {layer.Digest} {input}");
                        digests.Add(layer.Digest);
                    }
                    StoreImage image = store.PublishImage(args.Value("--name"), digests);
                    output.WriteLine($"image {image.Digest}{(args.Value("--name") is { } name ? " " + name : "")}");
                }
                return BcowCli.Success;
            case "list":
                Expect(rest, 0, action);
                using (LayerStore store = LayerStore.Open(storeDirectory, options))
                {
                    foreach (StoreLayer layer in store.Layers)
                    {
                        output.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{layer.Digest} {layer.Entries} {layer.Bytes} {layer.Host}"));
                    }
                    WriteProblems(store.Problems, context);
                }
                return BcowCli.Success;
            case "images":
                Expect(rest, 0, action);
                using (LayerStore store = LayerStore.Open(storeDirectory, options))
                {
                    foreach (StoreImage image in store.Images)
                    {
                        output.WriteLine($"{image.Digest} {image.Layers.Count} {string.Join(' ', image.Names)}".TrimEnd());
                    }
                    WriteProblems(store.Problems, context);
                }
                return BcowCli.Success;
            case "resolve":
                Expect(rest, 1, action, "IMAGE");
                using (LayerStore store = LayerStore.Open(storeDirectory, options))
                {
                    OpenIndexes(store, rest[0], cache, context);
                    output.WriteLine(string.Join(':', store.ResolveLowerDirectories(rest[0]).Select(d => d.Replace("\\", "\\\\").Replace(":", "\\:"))));
                }
                return BcowCli.Success;
            case "lease":
                Expect(rest, 1, action, "IMAGE");
                using (LayerStore store = LayerStore.Open(storeDirectory, options))
                {
                    OpenIndexes(store, rest[0], cache, context);
                    StoreLease lease = store.LeaseImage(rest[0], renew: false);
                    output.WriteLine($"{lease.Id} expires {lease.Expires.UtcDateTime.ToString("O", CultureInfo.InvariantCulture)}");
                }
                return BcowCli.Success;
            case "release":
                Expect(rest, 1, action, "ID");
                using (LayerStore store = LayerStore.Open(storeDirectory, options))
                {
                    if (!store.ReleaseLease(rest[0]))
                    {
                        throw new LayerStoreException(rest[0], "no such lease");
                    }
                }
                return BcowCli.Success;
            case "rm":
                Expect(rest, 1, action, "NAME");
                using (LayerStore store = LayerStore.Open(storeDirectory, options))
                {
                    if (!store.DeleteName(rest[0]))
                    {
                        throw new LayerStoreException(rest[0], "no such image name");
                    }
                }
                return BcowCli.Success;
            case "gc":
                Expect(rest, 0, action);
                using (LayerStore store = LayerStore.Open(storeDirectory, options))
                {
                    StoreCollectionResult result = store.CollectGarbage(context.Cancellation);
                    foreach (string layer in result.RemovedLayers)
                    {
                        output.WriteLine($"removed layer {layer}");
                    }
                    foreach (string image in result.RemovedImages)
                    {
                        output.WriteLine($"removed image {image}");
                    }
                    foreach (string lease in result.RemovedLeases)
                    {
                        output.WriteLine($"removed expired lease {lease}");
                    }
                    foreach (string staging in result.RemovedStaging)
                    {
                        output.WriteLine($"removed leftover {staging}");
                    }
                    foreach (string layer in result.KeptForLeases)
                    {
                        output.WriteLine($"kept leased layer {layer}");
                    }
                    WriteProblems(result.Problems, context);
                }
                return BcowCli.Success;
            case "verify":
                using (LayerStore store = LayerStore.Open(storeDirectory, options))
                {
                    IEnumerable<string> digests = rest.Count > 0 ? rest : store.Layers.Select(l => l.Digest);
                    int failures = 0;
                    foreach (string digest in digests)
                    {
                        try
                        {
                            store.VerifyLayer(digest, context.Cancellation);
                            output.WriteLine($"{digest} ok");
                        }
                        catch (LayerStoreException e)
                        {
                            failures++;
                            context.Error.WriteLine($"bcow: {e.Message}");
                        }
                    }
                    WriteProblems(store.Problems, context);
                    return failures == 0 ? BcowCli.Success : BcowCli.Failure;
                }
            default:
                throw new UsageException($"unknown action '{action}' (init, publish, import, list, images, resolve, lease, release, rm, gc, verify)");
        }
    }

    /// <summary>With --cache: the image's layers checked against this host's records of their verification (and
    /// verified, their records written, where there is none), before the action hashes them otherwise.</summary>
    private static void OpenIndexes(LayerStore store, string image, string? cache, CommandContext context)
    {
        if (cache is not null)
        {
            store.OpenIndexes(image, Path.Combine(cache, "index"), message => context.Error.WriteLine($"bcow: index: {message}"));
        }
    }

    private static void Expect(List<string> rest, int count, string action, params string[] names)
    {
        if (rest.Count < count)
        {
            throw new UsageException($"{action}: missing {names[rest.Count]}");
        }
        if (rest.Count > count)
        {
            throw new UsageException($"{action}: unexpected argument '{rest[count]}'");
        }
    }

    private static void WriteProblems(IReadOnlyList<string> problems, CommandContext context)
    {
        foreach (string problem in problems)
        {
            context.Error.WriteLine($"bcow: warning: {problem}");
        }
    }

    internal static TimeSpan ParseDuration(string text)
    {
        (string number, double unit) = text switch
        {
            _ when text.EndsWith('s') => (text[..^1], 1.0),
            _ when text.EndsWith('m') => (text[..^1], 60.0),
            _ when text.EndsWith('h') => (text[..^1], 3600.0),
            _ when text.EndsWith('d') => (text[..^1], 86400.0),
            _ => (text, 1.0),
        };
        return double.TryParse(number, NumberStyles.AllowDecimalPoint, CultureInfo.InvariantCulture, out double value) && value > 0 && double.IsFinite(value * unit)
            ? TimeSpan.FromSeconds(value * unit)
            : throw new UsageException($"invalid duration '{text}': expected a number with s, m, h or d (30s, 10m, 2h)");
    }

    private static Action<PublishStep>? KillHook()
    {
        string? step = Environment.GetEnvironmentVariable(KillAfterVariable);
        if (string.IsNullOrEmpty(step))
        {
            return null;
        }
        return reached =>
        {
            if (reached.ToString() == step)
            {
                Console.Out.Flush();
                Process.GetCurrentProcess().Kill(); // SIGKILL: no finally block runs, nothing is cleaned up
            }
        };
    }
}
