using System.Globalization;
using System.Text;

namespace BAOverlay.FileSystem.Export;

/// <summary>
/// A PAX extended header (typeflag <c>x</c>) written byte by byte, for the entries whose records
/// <see cref="System.Formats.Tar.TarWriter"/> cannot write: it takes record values as strings, while an extended
/// attribute such as <c>security.capability</c> is binary, and GNU tar, Go's archive/tar (Docker, containerd) and
/// libarchive all read <c>SCHILY.xattr.NAME</c> values as raw bytes. The entry itself follows as a ustar entry
/// written by TarWriter; the records here (path, linkpath, mtime, uid, gid, size) override its narrower fields.
/// </summary>
internal static class RawPaxHeader
{
    private const int Block = 512;

    public static void Write(Stream stream, string entryName, IReadOnlyList<(string Key, byte[] Value)> records)
    {
        var data = new MemoryStream();
        foreach (var (key, value) in records)
        {
            // "LEN KEY=VALUE\n", LEN counting every byte of the record including its own digits.
            int rest = 1 + Encoding.UTF8.GetByteCount(key) + 1 + value.Length + 1;
            int length = rest + 1;
            while (length != rest + Digits(length))
            {
                length = rest + Digits(length);
            }
            data.Write(Encoding.ASCII.GetBytes(length.ToString(CultureInfo.InvariantCulture) + " "));
            data.Write(Encoding.UTF8.GetBytes(key + "="));
            data.Write(value);
            data.WriteByte((byte)'\n');
        }

        byte[] header = new byte[Block];
        string leaf = entryName.TrimEnd('/');
        leaf = leaf[(leaf.LastIndexOf('/') + 1)..];
        Put(header, 0, 100, Truncate("PaxHeaders/" + leaf, 100));
        Put(header, 100, 8, Octal(0x1A4, 8));      // mode 0644
        Put(header, 108, 8, Octal(0, 8));          // uid
        Put(header, 116, 8, Octal(0, 8));          // gid
        Put(header, 124, 12, Octal(data.Length, 12));
        Put(header, 136, 12, Octal(0, 12));        // mtime
        header[156] = (byte)'x';
        Put(header, 257, 6, "ustar\0"u8.ToArray());
        Put(header, 263, 2, "00"u8.ToArray());
        for (int i = 148; i < 156; i++)
        {
            header[i] = (byte)' ';
        }
        int checksum = header.Sum(b => b);
        Put(header, 148, 8, Encoding.ASCII.GetBytes(Convert.ToString(checksum, 8).PadLeft(6, '0') + "\0 "));

        stream.Write(header);
        stream.Write(data.GetBuffer().AsSpan(0, (int)data.Length));
        int padding = (int)((Block - (data.Length % Block)) % Block);
        stream.Write(new byte[padding]);
    }

    /// <summary>A PAX time: seconds, and the fraction without trailing zeros when there is one.</summary>
    public static string Time(long ns)
    {
        long seconds = Math.DivRem(ns, 1_000_000_000L, out long fraction);
        if (fraction < 0)
        {
            seconds--;
            fraction += 1_000_000_000L;
        }
        return fraction == 0
            ? seconds.ToString(CultureInfo.InvariantCulture)
            : $"{seconds.ToString(CultureInfo.InvariantCulture)}.{fraction.ToString("D9", CultureInfo.InvariantCulture).TrimEnd('0')}";
    }

    /// <summary>The longest prefix of <paramref name="text"/> whose UTF-8 form fits in <paramref name="bytes"/> bytes.</summary>
    public static byte[] Truncate(string text, int bytes)
    {
        byte[] utf8 = Encoding.UTF8.GetBytes(text);
        if (utf8.Length <= bytes)
        {
            return utf8;
        }
        int end = bytes;
        while (end > 0 && (utf8[end] & 0xC0) == 0x80)
        {
            end--; // not inside a character
        }
        return utf8[..end];
    }

    private static int Digits(int n) => n.ToString(CultureInfo.InvariantCulture).Length;

    private static byte[] Octal(long value, int field) => Encoding.ASCII.GetBytes(Convert.ToString(value, 8).PadLeft(field - 1, '0') + "\0");

    private static void Put(byte[] header, int offset, int length, byte[] value) => value.AsSpan(0, Math.Min(length, value.Length)).CopyTo(header.AsSpan(offset, length));
}
