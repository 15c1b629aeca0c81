using System.Globalization;
using System.Text;

namespace BAOverlay.Cache;

/// <summary>One line of a heat map: a zone of a remote file and its heat when the map was taken.</summary>
internal readonly record struct HeatEntry(string Key, long Size, long MTimeNs, int Zone, double Heat, bool Cached);

/// <summary>
/// Answers "how is heat written down?": the cache's own heat file and the heat maps hosts exchange share one text
/// format (docs/layer-store.md). Read as untrusted input: a line that does not parse, or names a zone outside its
/// file, is skipped and counted, never used.
/// </summary>
internal static class HeatMap
{
    public const string Magic = "baoverlay-zone-heat 1";
    private const int MaxKeyLength = 4096;

    public static byte[] Write(int zoneSize, DateTimeOffset taken, IEnumerable<HeatEntry> entries)
    {
        var text = new StringBuilder();
        text.Append(Magic).Append('\n');
        text.Append("zone-size ").Append(zoneSize.ToString(CultureInfo.InvariantCulture)).Append('\n');
        text.Append("taken ").Append(taken.ToUnixTimeMilliseconds().ToString(CultureInfo.InvariantCulture)).Append('\n');
        text.Append("# heat\tzone\tcached\tsize\tmtime-ns\tkey\n");
        foreach (HeatEntry e in entries)
        {
            text.Append(e.Heat.ToString("R", CultureInfo.InvariantCulture)).Append('\t')
                .Append(e.Zone.ToString(CultureInfo.InvariantCulture)).Append('\t')
                .Append(e.Cached ? '1' : '0').Append('\t')
                .Append(e.Size.ToString(CultureInfo.InvariantCulture)).Append('\t')
                .Append(e.MTimeNs.ToString(CultureInfo.InvariantCulture)).Append('\t')
                .Append(EscapeKey(e.Key)).Append('\n');
        }
        return Encoding.UTF8.GetBytes(text.ToString());
    }

    /// <summary>Parses a heat map; <paramref name="source"/> names it in errors.</summary>
    /// <exception cref="FormatException">Not a heat map (first line), or its header is bad: the message names the source.</exception>
    public static (int ZoneSize, DateTimeOffset Taken, List<HeatEntry> Entries, int Skipped) Parse(ReadOnlySpan<byte> content, string source)
    {
        string text;
        try
        {
            text = new UTF8Encoding(false, throwOnInvalidBytes: true).GetString(content);
        }
        catch (DecoderFallbackException)
        {
            throw new FormatException($"{source}: not a heat map (not UTF-8 text)");
        }
        string[] lines = text.Split('\n');
        if (lines.Length < 3 || lines[0] != Magic)
        {
            throw new FormatException($"{source}: not a heat map (the first line is not '{Magic}')");
        }
        if (!lines[1].StartsWith("zone-size ", StringComparison.Ordinal) ||
            !int.TryParse(lines[1].AsSpan("zone-size ".Length), NumberStyles.None, CultureInfo.InvariantCulture, out int zoneSize) ||
            zoneSize < 4096 || (zoneSize & (zoneSize - 1)) != 0)
        {
            throw new FormatException($"{source}: line 2 must be 'zone-size N' with N a power of two of at least 4096");
        }
        if (!lines[2].StartsWith("taken ", StringComparison.Ordinal) ||
            !long.TryParse(lines[2].AsSpan("taken ".Length), NumberStyles.None, CultureInfo.InvariantCulture, out long takenMs) ||
            takenMs > DateTimeOffset.MaxValue.ToUnixTimeMilliseconds())
        {
            throw new FormatException($"{source}: line 3 must be 'taken MILLISECONDS-SINCE-1970'");
        }
        var entries = new List<HeatEntry>();
        int skipped = 0;
        for (int i = 3; i < lines.Length; i++)
        {
            string line = lines[i];
            if (line.Length == 0 || line[0] == '#')
            {
                continue;
            }
            if (TryParseLine(line, zoneSize) is { } entry)
            {
                entries.Add(entry);
            }
            else
            {
                skipped++;
            }
        }
        return (zoneSize, DateTimeOffset.FromUnixTimeMilliseconds(takenMs), entries, skipped);
    }

    private static HeatEntry? TryParseLine(string line, int zoneSize)
    {
        string[] f = line.Split('\t', 6);
        if (f.Length != 6 ||
            !double.TryParse(f[0], NumberStyles.Float, CultureInfo.InvariantCulture, out double heat) || !double.IsFinite(heat) || heat < 0 || heat > 1e12 ||
            !int.TryParse(f[1], NumberStyles.None, CultureInfo.InvariantCulture, out int zone) ||
            f[2] is not ("0" or "1") ||
            !long.TryParse(f[3], NumberStyles.None, CultureInfo.InvariantCulture, out long size) ||
            !long.TryParse(f[4], NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out long mtime) ||
            UnescapeKey(f[5]) is not { } key)
        {
            return null;
        }
        if ((long)zone * zoneSize >= size)
        {
            return null; // a zone beyond its file's end
        }
        return new HeatEntry(key, size, mtime, zone, heat, f[2] == "1");
    }

    /// <summary>Keys are any text but '%', control characters and DEL are written as %XX, so a key is one field of one line.</summary>
    public static string EscapeKey(string key)
    {
        var text = new StringBuilder(key.Length);
        foreach (char c in key)
        {
            if (c == '%' || c < 0x20 || c == 0x7f)
            {
                text.Append('%').Append(((int)c).ToString("X2", CultureInfo.InvariantCulture));
            }
            else
            {
                text.Append(c);
            }
        }
        return text.ToString();
    }

    public static string? UnescapeKey(string escaped)
    {
        var text = new StringBuilder(escaped.Length);
        for (int i = 0; i < escaped.Length; i++)
        {
            char c = escaped[i];
            if (c < 0x20 || c == 0x7f)
            {
                return null;
            }
            if (c != '%')
            {
                text.Append(c);
                continue;
            }
            if (i + 2 >= escaped.Length || !byte.TryParse(escaped.AsSpan(i + 1, 2), NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out byte value))
            {
                return null;
            }
            text.Append((char)value);
            i += 2;
        }
        return text.Length is 0 or > MaxKeyLength ? null : text.ToString();
    }
}
