using System.Buffers.Text;
using System.Security.Cryptography;
using System.Text;

namespace BAOverlay.Store;

/// <summary>
/// Where things live on the share and what their names may be. Every name read from the share is checked here before
/// it is used as a path component, so that nothing read from disk can name a place outside the store.
/// </summary>
internal static class StoreLayout
{
    public const string StoreFile = "store.json";
    public const string GenerationFile = "generation";
    public const string Layers = "layers";
    public const string Images = "images";
    public const string Names = "names";
    public const string Staging = "staging";
    public const string Leases = "leases";
    public const string Trash = "trash";
    public const string Manifest = "manifest.json";
    public const string Tree = "tree";
    public const string TreeList = "tree.list";

    public const string StoreSchema = "baoverlay-store/1";
    public const string LayerSchema = "baoverlay-layer/1";
    public const string ImageSchema = "baoverlay-image/1";
    public const string LeaseSchema = "baoverlay-lease/1";

    /// <summary>The largest manifest, lease or name record read (bigger ones are refused unread).</summary>
    public const int MaxRecordBytes = 64 * 1024;

    /// <summary>The largest image manifest read.</summary>
    public const int MaxImageBytes = 1024 * 1024;

    /// <summary>The most layers an image may have (the kernel's overlayfs takes 500 lower layers).</summary>
    public const int MaxImageLayers = 500;

    public const string DigestPrefix = "sha256:";

    /// <summary>The deepest a layer tree may be (directories below the root). Deeper trees are refused: the walks
    /// recurse, and a hostile tree must not exhaust the stack. Container layers are a few dozen levels deep.</summary>
    public const int MaxDepth = 500;

    /// <summary>True for <c>sha256:</c> and 64 lowercase hexadecimal digits, the only digest form the store writes.</summary>
    public static bool IsDigest(string? text) =>
        text is { Length: 71 } && text.StartsWith(DigestPrefix, StringComparison.Ordinal) && IsHex(text.AsSpan(7));

    /// <summary>The directory name of a digest: <c>sha256-HEX</c> (no colon, so the path can be a lowerdir= value).</summary>
    public static string DirectoryName(string digest) => "sha256-" + digest[7..];

    /// <summary>The digest a directory name stands for, or null when the name is not one the store makes.</summary>
    public static string? DigestOfDirectoryName(string name) =>
        name is { Length: 71 } && name.StartsWith("sha256-", StringComparison.Ordinal) && IsHex(name.AsSpan(7))
            ? DigestPrefix + name[7..]
            : null;

    public static string ImageFileName(string digest) => DirectoryName(digest) + ".json";

    public static string? DigestOfImageFileName(string name) =>
        name.EndsWith(".json", StringComparison.Ordinal) ? DigestOfDirectoryName(name[..^5]) : null;

    public static string Digest(ReadOnlySpan<byte> hash) => DigestPrefix + Convert.ToHexStringLower(hash);

    public static string DigestOf(ReadOnlySpan<byte> bytes) => Digest(SHA256.HashData(bytes));

    public static bool IsHex(ReadOnlySpan<char> text)
    {
        foreach (char c in text)
        {
            if (c is not ((>= '0' and <= '9') or (>= 'a' and <= 'f')))
            {
                return false;
            }
        }
        return true;
    }

    /// <summary>An image name: 1 to 255 of <c>A-Z a-z 0-9 . _ - : @ / +</c>, starting with a letter or digit, without
    /// an empty, <c>.</c> or <c>..</c> component between slashes (so <c>docker.io/library/alpine:3.20</c> is one).</summary>
    public static bool IsImageName(string? name)
    {
        if (name is null || name.Length is 0 or > 255 || !char.IsAsciiLetterOrDigit(name[0]))
        {
            return false;
        }
        foreach (char c in name)
        {
            if (!(char.IsAsciiLetterOrDigit(c) || c is '.' or '_' or '-' or ':' or '@' or '/' or '+'))
            {
                return false;
            }
        }
        return name.Split('/').All(part => part is not ("" or "." or ".."));
    }

    /// <summary>The file of a name under <c>names/</c>: slashes become <c>%</c>, a character names cannot hold, so the
    /// mapping is one to one and the file is one component.</summary>
    public static string NameFileName(string name) => name.Replace('/', '%');

    public static string? NameOfNameFile(string file)
    {
        string name = file.Replace('%', '/');
        return IsImageName(name) ? name : null;
    }

    /// <summary>A host id: 1 to 64 of <c>A-Z a-z 0-9 . _ -</c>, not starting with a dot.</summary>
    public static bool IsHostId(string? id) =>
        id is { Length: > 0 and <= 64 } && id[0] != '.' && id.All(c => char.IsAsciiLetterOrDigit(c) || c is '.' or '_' or '-');

    /// <summary>A lease id: <c>HOST.HEX16</c>.</summary>
    public static bool IsLeaseId(string? id) =>
        id is { Length: > 17 } && id[^17] == '.' && IsHostId(id[..^17]) && IsHex(id.AsSpan(id.Length - 16));

    /// <summary>The host id used when none is given: the host name, cut to what a host id may hold.</summary>
    public static string DefaultHostId()
    {
        var id = new StringBuilder();
        foreach (char c in Environment.MachineName)
        {
            if (id.Length < 64 && (char.IsAsciiLetterOrDigit(c) || c is '.' or '_' or '-'))
            {
                id.Append(c);
            }
        }
        string text = id.ToString().TrimStart('.');
        return text.Length == 0 ? "host" : text;
    }

    /// <summary>16 random hexadecimal digits, for names that must not collide between hosts.</summary>
    public static string RandomSuffix() => Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(8));

    /// <summary>Parses a non-negative decimal that fits a long.</summary>
    public static bool TryParseCount(ReadOnlySpan<byte> utf8, out long value) =>
        Utf8Parser.TryParse(utf8, out value, out int consumed) && consumed == utf8.Length && value >= 0;
}
