using System.Text;
using System.Text.Json;

namespace BAOverlay.Tool.Text;

/// <summary>
/// Writes one JSON document to a <see cref="TextWriter"/>. Utf8JsonWriter rather than serialising records: the
/// kebab-case names (<c>virtual-size</c>, as qemu-img uses) and the optional members are the output contract, so
/// they are spelled out where they are written, and nothing needs reflection or a source generator.
/// </summary>
internal static class JsonOutput
{
    public static void Write(TextWriter output, Action<Utf8JsonWriter> write)
    {
        using var buffer = new MemoryStream();
        using (var writer = new Utf8JsonWriter(buffer, new JsonWriterOptions { Indented = true, NewLine = "\n" }))
        {
            write(writer);
        }
        output.WriteLine(Encoding.UTF8.GetString(buffer.GetBuffer(), 0, (int)buffer.Length));
    }
}
