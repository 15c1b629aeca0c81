using System.Text;
using System.Text.Json;

namespace BAOverlay.Store;

/// <summary>
/// The manifest of a layer (<c>layers/sha256-HEX/manifest.json</c>), written last into the staging directory, before
/// the rename that publishes the layer. <see cref="Complete"/> is the completion record: a manifest without
/// <c>"complete": true</c> is never exposed.
/// </summary>
internal sealed record LayerManifest(
    string Digest, string PortableDigest, string? TarDigest, long Entries, long Bytes, string Host, DateTimeOffset Created, bool Complete)
{
    public byte[] ToJson()
    {
        var buffer = new MemoryStream();
        using (var json = new Utf8JsonWriter(buffer, new JsonWriterOptions { Indented = true }))
        {
            json.WriteStartObject();
            json.WriteString("schema", StoreLayout.LayerSchema);
            json.WriteString("digest", Digest);
            json.WriteString("portableDigest", PortableDigest);
            if (TarDigest is not null)
            {
                json.WriteString("tarDigest", TarDigest);
            }
            json.WriteNumber("entries", Entries);
            json.WriteNumber("bytes", Bytes);
            json.WriteString("host", Host);
            json.WriteString("created", Created.UtcDateTime.ToString("O", System.Globalization.CultureInfo.InvariantCulture));
            json.WriteBoolean("complete", Complete);
            json.WriteEndObject();
        }
        buffer.WriteByte((byte)'\n');
        return buffer.ToArray();
    }

    /// <summary>Parses and checks a manifest read from <paramref name="file"/>; the problem when it is not one.</summary>
    public static LayerManifest Parse(byte[] bytes, string file)
    {
        using JsonDocument document = RecordJson.Parse(bytes, file);
        JsonElement root = document.RootElement;
        RecordJson.ExpectSchema(root, StoreLayout.LayerSchema, file);
        string digest = RecordJson.Digest(root, "digest", file)!;
        string portable = RecordJson.Digest(root, "portableDigest", file)!;
        string? tar = RecordJson.Digest(root, "tarDigest", file, optional: true);
        long entries = RecordJson.Count(root, "entries", file);
        long size = RecordJson.Count(root, "bytes", file);
        if (entries < 1)
        {
            throw new LayerStoreException(file, "\"entries\" is 0: a layer holds at least its root directory");
        }
        string host = RecordJson.String(root, "host", file);
        DateTimeOffset created = RecordJson.Time(root, "created", file);
        bool complete = root.TryGetProperty("complete", out JsonElement c) && c.ValueKind == JsonValueKind.True;
        return new LayerManifest(digest, portable, tar, entries, size, host, created, complete);
    }
}

/// <summary>An image: its layers, base first (the order of an OCI manifest). Stored as
/// <c>images/sha256-HEX.json</c>, HEX being the sha256 of the file's bytes, so the record checks itself.</summary>
internal sealed record ImageManifest(IReadOnlyList<string> Layers)
{
    public byte[] ToJson()
    {
        var buffer = new MemoryStream();
        using (var json = new Utf8JsonWriter(buffer, new JsonWriterOptions { Indented = true }))
        {
            json.WriteStartObject();
            json.WriteString("schema", StoreLayout.ImageSchema);
            json.WriteStartArray("layers");
            foreach (string layer in Layers)
            {
                json.WriteStringValue(layer);
            }
            json.WriteEndArray();
            json.WriteEndObject();
        }
        buffer.WriteByte((byte)'\n');
        return buffer.ToArray();
    }

    public static ImageManifest Parse(byte[] bytes, string file)
    {
        using JsonDocument document = RecordJson.Parse(bytes, file);
        JsonElement root = document.RootElement;
        RecordJson.ExpectSchema(root, StoreLayout.ImageSchema, file);
        if (!root.TryGetProperty("layers", out JsonElement layers) || layers.ValueKind != JsonValueKind.Array)
        {
            throw new LayerStoreException(file, "no \"layers\" array");
        }
        int count = layers.GetArrayLength();
        if (count is 0 or > StoreLayout.MaxImageLayers)
        {
            throw new LayerStoreException(file, $"{count} layers: an image has 1 to {StoreLayout.MaxImageLayers}");
        }
        var list = new List<string>(count);
        foreach (JsonElement layer in layers.EnumerateArray())
        {
            string? digest = layer.ValueKind == JsonValueKind.String ? layer.GetString() : null;
            if (!StoreLayout.IsDigest(digest))
            {
                throw new LayerStoreException(file, "a layer that is not a sha256: digest");
            }
            list.Add(digest!);
        }
        return new ImageManifest(list);
    }
}

/// <summary>A lease (<c>leases/HOST.HEX16.json</c>): the layers a holder uses, until <see cref="Expires"/> (the
/// holder's clock) unless renewed.</summary>
internal sealed record LeaseRecord(string Id, string Host, int ProcessId, DateTimeOffset Expires, IReadOnlyList<string> Layers)
{
    public byte[] ToJson()
    {
        var buffer = new MemoryStream();
        using (var json = new Utf8JsonWriter(buffer, new JsonWriterOptions { Indented = true }))
        {
            json.WriteStartObject();
            json.WriteString("schema", StoreLayout.LeaseSchema);
            json.WriteString("id", Id);
            json.WriteString("host", Host);
            json.WriteNumber("pid", ProcessId);
            json.WriteString("expires", Expires.UtcDateTime.ToString("O", System.Globalization.CultureInfo.InvariantCulture));
            json.WriteStartArray("layers");
            foreach (string layer in Layers)
            {
                json.WriteStringValue(layer);
            }
            json.WriteEndArray();
            json.WriteEndObject();
        }
        buffer.WriteByte((byte)'\n');
        return buffer.ToArray();
    }

    public static LeaseRecord Parse(byte[] bytes, string file, string expectedId)
    {
        using JsonDocument document = RecordJson.Parse(bytes, file);
        JsonElement root = document.RootElement;
        RecordJson.ExpectSchema(root, StoreLayout.LeaseSchema, file);
        string id = RecordJson.String(root, "id", file);
        if (id != expectedId)
        {
            throw new LayerStoreException(file, $"the lease names itself '{id}', not its file's name");
        }
        string host = RecordJson.String(root, "host", file);
        long pid = RecordJson.Count(root, "pid", file);
        DateTimeOffset expires = RecordJson.Time(root, "expires", file);
        if (!root.TryGetProperty("layers", out JsonElement layers) || layers.ValueKind != JsonValueKind.Array)
        {
            throw new LayerStoreException(file, "no \"layers\" array");
        }
        var list = new List<string>();
        foreach (JsonElement layer in layers.EnumerateArray())
        {
            string? digest = layer.ValueKind == JsonValueKind.String ? layer.GetString() : null;
            if (!StoreLayout.IsDigest(digest))
            {
                throw new LayerStoreException(file, "a layer that is not a sha256: digest");
            }
            list.Add(digest!);
        }
        return new LeaseRecord(id, host, (int)Math.Min(pid, int.MaxValue), expires, list);
    }
}

/// <summary>Reading the JSON records: every field checked for its type and form, every failure naming the file.</summary>
internal static class RecordJson
{
    public static JsonDocument Parse(byte[] bytes, string file)
    {
        try
        {
            JsonDocument document = JsonDocument.Parse(bytes, new JsonDocumentOptions { MaxDepth = 8 });
            if (document.RootElement.ValueKind != JsonValueKind.Object)
            {
                document.Dispose();
                throw new LayerStoreException(file, "not a JSON object");
            }
            return document;
        }
        catch (JsonException e)
        {
            throw new LayerStoreException(file, $"not valid JSON: {e.Message}");
        }
    }

    public static void ExpectSchema(JsonElement root, string schema, string file)
    {
        string found = root.TryGetProperty("schema", out JsonElement s) && s.ValueKind == JsonValueKind.String ? s.GetString()! : "(none)";
        if (found != schema)
        {
            throw new LayerStoreException(file, $"schema '{Printable(found)}', expected '{schema}'");
        }
    }

    public static string String(JsonElement root, string name, string file)
    {
        if (!root.TryGetProperty(name, out JsonElement value) || value.ValueKind != JsonValueKind.String)
        {
            throw new LayerStoreException(file, $"no \"{name}\" string");
        }
        string text = value.GetString()!;
        if (text.Length > 1024)
        {
            throw new LayerStoreException(file, $"\"{name}\" is longer than 1024 characters");
        }
        return text;
    }

    public static string? Digest(JsonElement root, string name, string file, bool optional = false)
    {
        if (optional && !root.TryGetProperty(name, out _))
        {
            return null;
        }
        string text = String(root, name, file);
        return StoreLayout.IsDigest(text) ? text : throw new LayerStoreException(file, $"\"{name}\" is not a sha256: digest");
    }

    public static long Count(JsonElement root, string name, string file)
    {
        if (!root.TryGetProperty(name, out JsonElement value) || value.ValueKind != JsonValueKind.Number
            || !value.TryGetInt64(out long count) || count < 0)
        {
            throw new LayerStoreException(file, $"\"{name}\" is not a non-negative whole number");
        }
        return count;
    }

    public static DateTimeOffset Time(JsonElement root, string name, string file)
    {
        if (!root.TryGetProperty(name, out JsonElement value) || value.ValueKind != JsonValueKind.String
            || !value.TryGetDateTimeOffset(out DateTimeOffset time))
        {
            throw new LayerStoreException(file, $"\"{name}\" is not a time");
        }
        return time;
    }

    /// <summary>Text from the share shown in a message: control characters replaced, cut to 64 characters.</summary>
    public static string Printable(string text)
    {
        var builder = new StringBuilder();
        foreach (char c in text.Length > 64 ? text[..64] : text)
        {
            builder.Append(char.IsControl(c) ? '?' : c);
        }
        return builder.ToString();
    }
}
