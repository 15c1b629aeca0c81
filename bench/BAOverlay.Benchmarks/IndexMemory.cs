using System.Diagnostics;
using System.Globalization;
using BAOverlay.Store;

namespace BAOverlay.Benchmarks;

/// <summary>
/// The managed memory a layer's metadata index holds (<c>--index-memory [FILES]</c>): a layer of FILES regular files
/// (default 50,000) in directories of 100, with paths as long as a Python installation's
/// (<c>usr/lib/python3.11/site-packages/package-NNN/module_NNNNN.py</c>), is published to a store on tmpfs, its
/// index made once; then a new <see cref="LayerStore"/> (a new mount) opens the index from its file, and the heap
/// after a full collection, with the index held, is compared with the heap before. Measured, not estimated.
/// </summary>
internal static class IndexMemory
{
    public static void Run(int files)
    {
        string root = Path.Combine(Directory.Exists("/dev/shm") ? "/dev/shm" : Path.GetTempPath(), $"baoverlay-index-memory-{Environment.ProcessId}");
        try
        {
            string layer = Path.Combine(root, "layer");
            for (int i = 0; i < files; i++)
            {
                string directory = Path.Combine(layer, "usr", "lib", "python3.11", "site-packages", $"package-{i / 100:D3}");
                if (i % 100 == 0)
                {
                    Directory.CreateDirectory(directory);
                }
                File.WriteAllText(Path.Combine(directory, $"module_{i:D5}.py"), $"# module {i}\n");
            }
            using (LayerStore writer = LayerStore.Create(Path.Combine(root, "store"), new LayerStoreOptions { HostId = "writer" }))
            {
                writer.PublishImage("app", [writer.PublishDirectory(layer).Digest]);
            }
            string indexDirectory = Path.Combine(root, "index");
            using (LayerStore first = LayerStore.Open(Path.Combine(root, "store"), new LayerStoreOptions { HostId = "reader" }))
            {
                first.OpenIndexes("app", indexDirectory); // the verification that writes the index file
            }

            using LayerStore store = LayerStore.Open(Path.Combine(root, "store"), new LayerStoreOptions { HostId = "reader" });
            long before = GC.GetTotalMemory(forceFullCollection: true);
            long allocated = GC.GetAllocatedBytesForCurrentThread();
            var watch = Stopwatch.StartNew();
            IReadOnlyList<LayerIndex> indexes = store.OpenIndexes("app", indexDirectory);
            watch.Stop();
            allocated = GC.GetAllocatedBytesForCurrentThread() - allocated;
            long after = GC.GetTotalMemory(forceFullCollection: true);
            int objects = indexes[0].Count;
            long fileBytes = new FileInfo(Directory.GetFiles(indexDirectory).Single()).Length;
            GC.KeepAlive(indexes);
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"files {files}, objects {objects} (with directories), index file {fileBytes:N0} B"));
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"held after a full collection: {after - before:N0} B = {(after - before) / (double)objects:F0} B per object ({(after - before) / 1048576.0:F1} MiB)"));
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"opening it (read, checked, parsed; no content read): {watch.ElapsedMilliseconds} ms, {allocated:N0} B allocated"));
        }
        finally
        {
            if (Directory.Exists(root))
            {
                Directory.Delete(root, recursive: true);
            }
        }
    }
}
