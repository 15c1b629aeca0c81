using System.Diagnostics;
using System.IO.Compression;
using System.Reflection;
using System.Reflection.Metadata;
using System.Reflection.PortableExecutable;
using System.Text;
using System.Xml.Linq;

namespace BAOverlay.Tests;

/// <summary>
/// The NuGet package as <c>dotnet pack</c> makes it: what a user sees on the package page, what the debugger finds.
/// It packs the build these tests run on (<c>--no-build</c>: a few seconds, no second compile).
/// </summary>
[NonParallelizable]
public class PackageTests
{
    private static readonly Guid EmbeddedSourceKind = new("0E8A571B-6926-466E-B4AD-8AB04611F5FE");

    [Test]
    public void PackedLibraryCarriesItsMetadataSymbolsAndSources()
    {
        Assembly library = typeof(BCowFile).Assembly;
        string configuration = library.GetCustomAttribute<AssemblyConfigurationAttribute>()!.Configuration;
        string project = Path.Combine(RepositoryRoot(), "src", "BAOverlay", "BAOverlay.csproj");
        using var output = new TempDir();
        Pack(project, configuration, output.Path);

        string[] packages = Directory.GetFiles(output.Path, "BAOverlay.*.nupkg");
        Assert.That(packages, Has.Length.EqualTo(1), "one package");
        string symbols = Path.ChangeExtension(packages[0], ".snupkg");
        Assert.That(File.Exists(symbols), Is.True, "a symbols package (.snupkg) beside it");

        using ZipArchive package = ZipFile.OpenRead(packages[0]);
        Assert.That(package.GetEntry("lib/net10.0/BAOverlay.dll"), Is.Not.Null, "the library for net10.0");
        Assert.That(package.GetEntry("lib/net10.0/BAOverlay.xml"), Is.Not.Null, "its XML documentation");
        Assert.That(package.GetEntry("lib/net10.0/BAOverlay.pdb"), Is.Null, "symbols go in the .snupkg");

        XElement metadata = Nuspec(package);
        XNamespace ns = metadata.Name.Namespace;
        Assert.That(metadata.Element(ns + "description")?.Value, Is.Not.Empty, "description");
        Assert.That(metadata.Element(ns + "license")?.Attribute("type")?.Value, Is.EqualTo("expression"), "a license expression");
        Assert.That(metadata.Element(ns + "license")?.Value, Is.EqualTo("MIT"));
        Assert.That(metadata.Element(ns + "tags")?.Value.Split(' '), Does.Contain("overlayfs").And.Contain("copy-on-write").And.Contain("fuse"), "tags");
        string? readme = metadata.Element(ns + "readme")?.Value;
        Assert.That(readme, Is.EqualTo("README.md"), "a readme");
        Assert.That(package.GetEntry(readme!), Is.Not.Null, "the readme is in the package");
        XElement? repository = metadata.Element(ns + "repository");
        Assert.That(repository?.Attribute("type")?.Value, Is.EqualTo("git"), "repository type");
        Assert.That(repository?.Attribute("commit")?.Value, Does.Match("^[0-9a-f]{40}$"), "the commit it was built from");
        string[] dependencies = metadata.Descendants(ns + "dependency").Select(d => d.Attribute("id")!.Value).ToArray();
        Assert.That(dependencies, Is.EqualTo(new[] { "Mono.Posix.NETStandard" }), "build-time analyzers are no dependency of users");

        using ZipArchive symbolPackage = ZipFile.OpenRead(symbols);
        ZipArchiveEntry? pdbEntry = symbolPackage.GetEntry("lib/net10.0/BAOverlay.pdb");
        Assert.That(pdbEntry, Is.Not.Null, "the pdb in the symbols package");

        using var pe = new PEReader(new MemoryStream(ReadAll(package.GetEntry("lib/net10.0/BAOverlay.dll")!)));
        DebugDirectoryEntry codeView = pe.ReadDebugDirectory().Single(e => e.Type == DebugDirectoryEntryType.CodeView);
        Guid pdbGuid = pe.ReadCodeViewDebugDirectoryData(codeView).Guid;

        using MetadataReaderProvider pdbProvider = MetadataReaderProvider.FromPortablePdbStream(new MemoryStream(ReadAll(pdbEntry!)));
        MetadataReader pdb = pdbProvider.GetMetadataReader(); // throws unless it is a portable pdb
        Assert.That(new Guid(pdb.DebugMetadataHeader!.Id.AsSpan(0, 16)), Is.EqualTo(pdbGuid), "the pdb is the packed dll's");

        // The sources are embedded in the pdb, so a debugger shows them with no repository to download from.
        var notEmbedded = new List<string>();
        string? bcowFileSource = null;
        foreach (DocumentHandle handle in pdb.Documents)
        {
            string name = pdb.GetString(pdb.GetDocument(handle).Name);
            byte[]? source = EmbeddedSource(pdb, handle);
            if (source is null)
            {
                notEmbedded.Add(name);
            }
            else if (name.EndsWith("/BCowFile.cs", StringComparison.Ordinal))
            {
                bcowFileSource = Encoding.UTF8.GetString(source);
            }
        }
        Assert.That(pdb.Documents.Count, Is.GreaterThan(50), "documents in the pdb");
        Assert.That(notEmbedded, Is.Empty, "source files whose text is not in the pdb");
        Assert.That(bcowFileSource, Does.Contain("public sealed partial class BCowFile"), "BCowFile.cs as embedded");
    }

    private static void Pack(string project, string configuration, string output)
    {
        var start = new ProcessStartInfo(Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") ?? "dotnet")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (string argument in new[] { "pack", project, "-c", configuration, "--no-build", "--no-restore", "-o", output, "-nodeReuse:false", "-p:UseSharedCompilation=false" })
        {
            start.ArgumentList.Add(argument);
        }
        // The test host may run under MSBuild's environment; the pack is a fresh command, as a user or CI runs it.
        foreach (string name in start.Environment.Keys.Where(k => k.StartsWith("MSBUILD", StringComparison.OrdinalIgnoreCase)).ToList())
        {
            start.Environment.Remove(name);
        }
        using Process process = Process.Start(start)!;
        Task<string> error = process.StandardError.ReadToEndAsync();
        string text = process.StandardOutput.ReadToEnd();
        Assert.That(process.WaitForExit(TimeSpan.FromMinutes(3)), Is.True, "dotnet pack finished");
        Assert.That(process.ExitCode, Is.Zero, $"dotnet pack: {text}{error.Result}");
    }

    private static string RepositoryRoot() =>
        typeof(PackageTests).Assembly.GetCustomAttributes<AssemblyMetadataAttribute>().Single(a => a.Key == "RepositoryRoot").Value!;

    private static XElement Nuspec(ZipArchive package)
    {
        ZipArchiveEntry entry = package.Entries.Single(e => e.FullName == "BAOverlay.nuspec");
        using Stream stream = entry.Open();
        XElement root = XDocument.Load(stream).Root!;
        return root.Element(root.Name.Namespace + "metadata")!;
    }

    private static byte[] ReadAll(ZipArchiveEntry entry)
    {
        using Stream stream = entry.Open();
        using var memory = new MemoryStream();
        stream.CopyTo(memory);
        return memory.ToArray();
    }

    /// <summary>The document's text from its EmbeddedSource debug information (a length, then the text deflated when
    /// the length is not zero), or null when it has none.</summary>
    private static byte[]? EmbeddedSource(MetadataReader pdb, DocumentHandle document)
    {
        foreach (CustomDebugInformationHandle handle in pdb.GetCustomDebugInformation(document))
        {
            CustomDebugInformation info = pdb.GetCustomDebugInformation(handle);
            if (pdb.GetGuid(info.Kind) != EmbeddedSourceKind)
            {
                continue;
            }
            byte[] blob = pdb.GetBlobBytes(info.Value);
            int size = BitConverter.ToInt32(blob, 0);
            if (size == 0)
            {
                return blob[4..];
            }
            using var inflate = new DeflateStream(new MemoryStream(blob, 4, blob.Length - 4), CompressionMode.Decompress);
            var text = new byte[size];
            inflate.ReadExactly(text);
            return text;
        }
        return null;
    }
}
