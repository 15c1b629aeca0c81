using System.Globalization;

namespace BAOverlay.Tool.Text;

/// <summary>
/// Sizes for people, in the two styles users know from qemu: qemu-img's (<c>1 GiB</c>, <c>977 KiB</c>: three
/// significant digits) and qemu-io's statistics (<c>4 KiB</c>, <c>158.655 MiB</c>: three decimals, ".000" trimmed).
/// </summary>
internal static class SizeFormatter
{
    private static readonly string[] s_prefixes = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];

    /// <summary>qemu-img's size_to_str: the unit switches up once the number would reach 1000, so it never shows 4 digits.</summary>
    public static string Human(long bytes)
    {
        if (bytes <= 0)
        {
            return $"{bytes} B";
        }
        // floor(log2(bytes * 1024 / 1000)) / 10, as qemu computes it with frexp.
        int exponent = (int)Math.Floor(Math.Log2(bytes / (1000.0 / 1024.0)));
        int unit = Math.Min(exponent / 10, s_prefixes.Length - 1);
        double value = bytes / Math.Pow(1024, unit);
        string digits = value.ToString("G3", CultureInfo.InvariantCulture);
        if (digits.Contains('E', StringComparison.Ordinal))
        {
            digits = value.ToString("0", CultureInfo.InvariantCulture);
        }
        return $"{digits} {s_prefixes[unit]}B";
    }

    /// <summary>The human size followed by the exact count, as qemu-img info prints sizes.</summary>
    public static string HumanAndExact(long bytes) => $"{Human(bytes)} ({bytes.ToString(CultureInfo.InvariantCulture)} bytes)";

    /// <summary>qemu-io's cvtstr: used for byte counts and rates in its per-command statistics.</summary>
    public static string IoStyle(double value)
    {
        string[] units = ["EiB", "PiB", "TiB", "GiB", "MiB", "KiB"];
        for (int i = 0; i < units.Length; i++)
        {
            double unit = Math.Pow(2, 10 * (units.Length - i));
            if (value >= unit)
            {
                return Trim((value / unit).ToString("F3", CultureInfo.InvariantCulture), units[i]);
            }
        }
        return Trim(value.ToString("F6", CultureInfo.InvariantCulture), "bytes");
    }

    private static string Trim(string number, string unit)
    {
        int trim = number.IndexOf(".000", StringComparison.Ordinal);
        return $"{(trim >= 0 ? number[..trim] : number)} {unit}";
    }
}
