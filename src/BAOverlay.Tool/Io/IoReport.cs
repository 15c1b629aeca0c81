using System.Diagnostics;
using System.Globalization;
using BAOverlay.Tool.Text;

namespace BAOverlay.Tool.Io;

/// <summary>
/// qemu-io's per-command report, to the letter, so scripts and eyes trained on qemu-io output read it unchanged:
/// <code>
/// wrote 4096/4096 bytes at offset 1000000
/// 4 KiB, 1 ops; 00.00 sec (158.655 MiB/sec and 40615.7515 ops/sec)
/// </code>
/// </summary>
internal static class IoReport
{
    public static void Write(TextWriter output, string verb, long offset, long count, long total, TimeSpan elapsed)
    {
        // A zero interval (a tiny op on a coarse clock) would print "inf" rates; one tick is the honest lower bound.
        double seconds = Math.Max(elapsed.TotalSeconds, 1.0 / Stopwatch.Frequency);
        output.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{verb} {total}/{count} bytes at offset {offset}"));
        output.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"{SizeFormatter.IoStyle(total)}, 1 ops; {Time(elapsed)} ({SizeFormatter.IoStyle(total / seconds)}/sec and {1 / seconds:F4} ops/sec)"));
    }

    /// <summary>qemu-io's timestr: <c>00.00 sec</c> under a second, <c>H:MM:SS.ss</c> from one second on.</summary>
    private static string Time(TimeSpan elapsed)
    {
        double seconds = elapsed.TotalSeconds;
        if (seconds < 1)
        {
            return seconds.ToString("00.00", CultureInfo.InvariantCulture) + " sec";
        }
        long whole = (long)seconds;
        double secondsInMinute = whole % 60 + (seconds - whole);
        return string.Create(CultureInfo.InvariantCulture, $"{whole / 3600}:{whole / 60 % 60:00}:{secondsInMinute:00.00}");
    }

    /// <summary>qemu-io's read -v: offset, 16 bytes in hex, then the printable ones.</summary>
    public static void Dump(TextWriter output, ReadOnlySpan<byte> bytes, long offset)
    {
        for (int i = 0; i < bytes.Length; i += 16)
        {
            ReadOnlySpan<byte> line = bytes.Slice(i, Math.Min(16, bytes.Length - i));
            var text = new System.Text.StringBuilder();
            text.Append(CultureInfo.InvariantCulture, $"{offset + i:x8}:  ");
            foreach (byte b in line)
            {
                text.Append(CultureInfo.InvariantCulture, $"{b:x2} ");
            }
            text.Append(' ');
            foreach (byte b in line)
            {
                text.Append(char.IsAsciiLetterOrDigit((char)b) ? (char)b : '.');
            }
            output.WriteLine(text.ToString());
        }
    }
}
