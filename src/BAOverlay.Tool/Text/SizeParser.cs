using System.Globalization;

namespace BAOverlay.Tool.Text;

/// <summary>
/// Sizes and offsets as qemu-img and qemu-io read them: plain bytes (<c>4096</c>), hex (<c>0x1000</c>), or a number
/// with a binary suffix (<c>4k</c>, <c>1.5M</c>, <c>1G</c>; k M G T P E, any case, optionally followed by <c>iB</c>;
/// <c>B</c> means bytes). Suffixes are powers of 1024, as in qemu; a result that is not a whole number of bytes is
/// refused rather than rounded, so <c>0.1k</c> is an error instead of a surprise.
/// </summary>
internal static class SizeParser
{
    private const string Suffixes = "bkmgtpe";

    public static bool TryParse(string? text, out long bytes)
    {
        bytes = 0;
        string s = text?.Trim() ?? "";
        if (s.Length == 0)
        {
            return false;
        }
        decimal number;
        int end;
        if (s.StartsWith("0x", StringComparison.OrdinalIgnoreCase))
        {
            end = 2;
            while (end < s.Length && char.IsAsciiHexDigit(s[end]))
            {
                end++;
            }
            if (end == 2 || !ulong.TryParse(s.AsSpan(2, end - 2), NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out ulong hex))
            {
                return false;
            }
            number = hex;
        }
        else
        {
            end = 0;
            while (end < s.Length && (char.IsAsciiDigit(s[end]) || s[end] == '.'))
            {
                end++;
            }
            if (end == 0 || !decimal.TryParse(s.AsSpan(0, end), NumberStyles.AllowDecimalPoint, CultureInfo.InvariantCulture, out number))
            {
                return false;
            }
        }
        if (!TryMultiplier(s.AsSpan(end), out long multiplier))
        {
            return false;
        }
        try
        {
            decimal value = number * multiplier;
            if (value != decimal.Truncate(value) || value > long.MaxValue)
            {
                return false;
            }
            bytes = (long)value;
            return true;
        }
        catch (OverflowException)
        {
            return false;
        }
    }

    private static bool TryMultiplier(ReadOnlySpan<char> suffix, out long multiplier)
    {
        multiplier = 1;
        if (suffix.IsEmpty)
        {
            return true;
        }
        int power = Suffixes.IndexOf(char.ToLowerInvariant(suffix[0]));
        ReadOnlySpan<char> rest = suffix[1..];
        bool restOk = rest.IsEmpty || (power > 0 && rest.Equals("iB", StringComparison.OrdinalIgnoreCase));
        if (power < 0 || !restOk)
        {
            return false;
        }
        multiplier = 1L << (10 * power);
        return true;
    }
}
