using System.Security.Cryptography;
using System.Text;
using Mono.Unix.Native;

namespace BAOverlay.Store;

/// <summary>Reading the share: the generation record, then the layers, images and names it stands for.</summary>
public sealed partial class LayerStore
{
    /// <summary>One consistent reading of the share.</summary>
    private sealed class View
    {
        public static readonly View Empty = new(null, 0, new(StringComparer.Ordinal), new(StringComparer.Ordinal), new(StringComparer.Ordinal), []);

        public View(byte[]? generationRecord, long generation, Dictionary<string, StoreLayer> layers, Dictionary<string, StoreImage> images,
            Dictionary<string, string> names, List<string> problems)
        {
            GenerationRecord = generationRecord;
            Generation = generation;
            Layers = layers;
            Images = images;
            Names = names;
            Problems = problems;
            LayerList = layers.Values.OrderBy(l => l.Digest, StringComparer.Ordinal).ToList();
            ImageList = images.Values.OrderBy(i => i.Digest, StringComparer.Ordinal).ToList();
        }

        public byte[]? GenerationRecord { get; }
        public long Generation { get; }
        public Dictionary<string, StoreLayer> Layers { get; }
        public Dictionary<string, StoreImage> Images { get; }
        public Dictionary<string, string> Names { get; }
        public List<string> Problems { get; }
        public List<StoreLayer> LayerList { get; }
        public List<StoreImage> ImageList { get; }
    }

    /// <summary>
    /// Reads the generation record and, when it changed since the last refresh (or <paramref name="force"/>), rereads
    /// the layers, images and names. Returns true when the record changed. A layer is exposed only when its manifest
    /// is present, valid, names the layer's own digest and carries the completion record, and its tree is a directory;
    /// an image only when all its layers are exposed. What is refused is listed in <see cref="Problems"/>.
    /// </summary>
    /// <exception cref="LayerStoreException">The store's directories cannot be read.</exception>
    public bool Refresh(bool force = false)
    {
        ThrowIfDisposed();
        lock (_refreshGate)
        {
            View old = _view;
            using StoreDirectory top = StoreDirectory.Open(Root);
            var problems = new List<string>();
            byte[]? record;
            try
            {
                record = StoreFiles.TryRead(top, StoreLayout.GenerationFile, 256);
            }
            catch (LayerStoreException e)
            {
                problems.Add(e.Message);
                record = null;
            }
            bool changed = record is null || old.GenerationRecord is null || !record.AsSpan().SequenceEqual(old.GenerationRecord);
            if (!changed && !force)
            {
                return false;
            }
            long generation = ParseGeneration(record, top.Describe(StoreLayout.GenerationFile), problems);
            // The record is read before the directories: whatever it announces is in place by then, and a later
            // publication shows as a change at the next refresh even if this scan already saw its layer.
            Dictionary<string, StoreLayer> layers = ScanLayers(top, old, problems);
            Dictionary<string, string> names = ScanNames(top, problems);
            Dictionary<string, StoreImage> images = ScanImages(top, layers, names, problems);
            _view = new View(record, generation, layers, images, names, problems);
            return changed;
        }
    }

    /// <summary>
    /// Waits until a refresh sees a new generation: polls every <see cref="LayerStoreOptions.RefreshInterval"/>, and
    /// wakes at once when the file system reports the generation record changed (inotify: for changes made on this
    /// host, or on a local store; a network file system reports only those too, so other hosts' changes are seen by
    /// polling).
    /// </summary>
    public async Task WaitForChangeAsync(CancellationToken cancellation = default)
    {
        var signal = new SemaphoreSlim(0);
        FileSystemWatcher? watcher = null;
        try
        {
            watcher = new FileSystemWatcher(Root, StoreLayout.GenerationFile)
            {
                NotifyFilter = NotifyFilters.FileName | NotifyFilters.LastWrite | NotifyFilters.Size,
            };
            watcher.Created += (_, _) => signal.Release();
            watcher.Changed += (_, _) => signal.Release();
            watcher.Renamed += (_, _) => signal.Release();
            watcher.EnableRaisingEvents = true;
        }
        catch (Exception e) when (e is IOException or ArgumentException or PlatformNotSupportedException)
        {
            watcher?.Dispose();
            watcher = null; // no inotify here (out of watches, or not supported): polling alone
        }
        try
        {
            while (!Refresh())
            {
                using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellation);
                timeout.CancelAfter(_options.RefreshInterval);
                try
                {
                    await signal.WaitAsync(timeout.Token).ConfigureAwait(false);
                }
                catch (OperationCanceledException) when (!cancellation.IsCancellationRequested)
                {
                }
            }
        }
        finally
        {
            watcher?.Dispose();
            signal.Dispose();
        }
    }

    private static long ParseGeneration(byte[]? record, string file, List<string> problems)
    {
        if (record is null)
        {
            problems.Add($"{file}: missing");
            return 0;
        }
        int space = Array.IndexOf(record, (byte)' ');
        if (space <= 0 || !StoreLayout.TryParseCount(record.AsSpan(0, space), out long generation))
        {
            problems.Add($"{file}: not a generation record");
            return 0;
        }
        return generation;
    }

    private Dictionary<string, StoreLayer> ScanLayers(StoreDirectory top, View old, List<string> problems)
    {
        var layers = new Dictionary<string, StoreLayer>(StringComparer.Ordinal);
        using StoreDirectory directory = top.OpenChild(StoreLayout.Layers);
        foreach (string name in directory.Names())
        {
            string? digest = StoreLayout.DigestOfDirectoryName(name);
            if (digest is null)
            {
                problems.Add($"{directory.Describe(name)}: not a layer's name (sha256-HEX): ignored");
                continue;
            }
            try
            {
                using StoreDirectory? layer = directory.TryOpenChild(name);
                if (layer is null)
                {
                    continue; // removed since the listing
                }
                // A layer once checked stays as it was (it is immutable and its name is its content), so only its
                // presence is checked again.
                if (old.Layers.TryGetValue(digest, out StoreLayer? known))
                {
                    layers[digest] = known;
                    continue;
                }
                LayerManifest manifest = ReadManifest(layer, digest);
                layers[digest] = new StoreLayer(digest, Path.Combine(Root, StoreLayout.Layers, name, StoreLayout.Tree), manifest);
            }
            catch (LayerStoreException e)
            {
                problems.Add(e.Message);
            }
        }
        return layers;
    }

    private static Dictionary<string, string> ScanNames(StoreDirectory top, List<string> problems)
    {
        var names = new Dictionary<string, string>(StringComparer.Ordinal);
        using StoreDirectory directory = top.OpenChild(StoreLayout.Names);
        foreach (string file in directory.Names())
        {
            string? name = StoreLayout.NameOfNameFile(file);
            if (name is null)
            {
                problems.Add($"{directory.Describe(file)}: not an image name: ignored");
                continue;
            }
            try
            {
                byte[]? bytes = StoreFiles.TryRead(directory, file, 256);
                if (bytes is null)
                {
                    continue;
                }
                string text = Encoding.ASCII.GetString(bytes).TrimEnd('\n');
                if (!StoreLayout.IsDigest(text))
                {
                    throw new LayerStoreException(directory.Describe(file), "does not hold an image digest");
                }
                names[name] = text;
            }
            catch (LayerStoreException e)
            {
                problems.Add(e.Message);
            }
        }
        return names;
    }

    private static Dictionary<string, StoreImage> ScanImages(StoreDirectory top, Dictionary<string, StoreLayer> layers,
        Dictionary<string, string> names, List<string> problems)
    {
        var images = new Dictionary<string, StoreImage>(StringComparer.Ordinal);
        ILookup<string, string> namesOf = names.ToLookup(n => n.Value, n => n.Key, StringComparer.Ordinal);
        using StoreDirectory directory = top.OpenChild(StoreLayout.Images);
        foreach (string file in directory.Names())
        {
            string? digest = StoreLayout.DigestOfImageFileName(file);
            if (digest is null)
            {
                problems.Add($"{directory.Describe(file)}: not an image record's name (sha256-HEX.json): ignored");
                continue;
            }
            try
            {
                ImageManifest? image = ReadImage(directory, file, digest);
                if (image is null)
                {
                    continue;
                }
                string? missing = image.Layers.FirstOrDefault(l => !layers.ContainsKey(l));
                if (missing is not null)
                {
                    problems.Add($"{directory.Describe(file)}: layer {missing} is not (or not completely) in the store: the image is not shown");
                    continue;
                }
                images[digest] = new StoreImage(digest, image.Layers, namesOf[digest].Order(StringComparer.Ordinal).ToList());
            }
            catch (LayerStoreException e)
            {
                problems.Add(e.Message);
            }
        }
        foreach ((string name, string digest) in names)
        {
            if (!images.ContainsKey(digest))
            {
                problems.Add($"{name}: names image {digest}, which is not (or not completely) in the store");
            }
        }
        return images;
    }

    /// <summary>An image record, checked against its own name (the sha256 of its bytes); null when it is gone.</summary>
    private static ImageManifest? ReadImage(StoreDirectory images, string file, string digest)
    {
        byte[]? bytes = StoreFiles.TryRead(images, file, StoreLayout.MaxImageBytes);
        if (bytes is null)
        {
            return null;
        }
        string found = StoreLayout.Digest(SHA256.HashData(bytes));
        if (found != digest)
        {
            throw new LayerStoreException(images.Describe(file), $"its content's digest is {found}: the record is damaged");
        }
        return ImageManifest.Parse(bytes, images.Describe(file));
    }

    /// <summary>Whether the layer <paramref name="digest"/> holds a complete layer now (read from the share,
    /// not from the view).</summary>
    private static bool IsCompleteLayer(StoreDirectory layers, string digest)
    {
        try
        {
            using StoreDirectory? layer = layers.TryOpenChild(StoreLayout.DirectoryName(digest));
            if (layer is null)
            {
                return false;
            }
            ReadManifest(layer, digest);
            return true;
        }
        catch (LayerStoreException)
        {
            return false;
        }
    }

    private static bool IsDirectory(Stat stat) => (stat.st_mode & FilePermissions.S_IFMT) == FilePermissions.S_IFDIR;
}
