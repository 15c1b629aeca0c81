using System.Formats.Tar;
using System.Globalization;
using System.Text;

namespace BAOverlay.FileSystem.Export;

/// <summary>
/// Writes an upper directory as an OCI image layer (a PAX tar): whiteouts as empty files <c>DIR/.wh.NAME</c>, an
/// opaque directory as its entry followed by <c>DIR/.wh..wh..opq</c>, B-CoW files with their merged content.
/// </summary>
internal static class OciTarExporter
{
    private const string XattrRecordPrefix = "SCHILY.xattr.";

    /// <summary>The largest size and id a ustar header holds (11 and 7 octal digits).</summary>
    private const long UstarMaxSize = (1L << 33) - 1;
    private const uint UstarMaxId = (1u << 21) - 1;

    public static UpperExportResult Export(string upperDirectory, Stream destination, UpperExportOptions options)
    {
        ArgumentNullException.ThrowIfNull(destination);
        if (!destination.CanWrite)
        {
            throw new ArgumentException("the destination stream is not writable", nameof(destination));
        }
        var warnings = new List<string>();
        List<ExportEntry> entries = UpperTree.Scan(upperDirectory, options.LowerDirectories, warnings, options.CancellationToken);
        long bytesTotal = entries.Where(e => e.Kind is ExportKind.RegularFile or ExportKind.BCowFile).Sum(e => e.Size);
        int entriesTotal = entries.Count(e => e.Path.Length > 0 && e.Kind != ExportKind.Socket) + entries.Count(e => e.Opaque);
        var progress = new ExportProgressTracker(options.Progress, bytesTotal, entriesTotal, options.CancellationToken);
        progress.Begin();
        int whiteouts = 0, opaque = 0, materialized = 0;
        // Not disposed on failure: disposing writes the end-of-archive blocks, and a tar cut between two entries would
        // then be a well-formed archive missing entries. Without them, strict readers (GNU tar) report the truncation.
        // (The writer holds nothing else.)
        var writer = new TarWriter(destination, TarEntryFormat.Pax, leaveOpen: true);
        foreach (ExportEntry entry in entries)
        {
            progress.StartEntry(entry.Path);
            if (entry.Kind == ExportKind.Socket)
            {
                warnings.Add($"{entry.Source}: a socket: left out (a tar cannot hold one)");
                continue;
            }
            if (entry.Path.Length > 0)
            {
                WriteEntry(writer, destination, entry, progress, warnings);
                progress.EndEntry();
            }
            switch (entry.Kind)
            {
                case ExportKind.Whiteout:
                    whiteouts++;
                    break;
                case ExportKind.BCowFile:
                    materialized++;
                    break;
                case ExportKind.Directory when entry.Opaque:
                    progress.StartEntry(Child(entry.Path, Whiteouts.OpaqueMarker));
                    writer.WriteEntry(new PaxTarEntry(TarEntryType.RegularFile, Child(entry.Path, Whiteouts.OpaqueMarker))
                    {
                        Mode = (UnixFileMode)entry.Permissions,
                        Uid = (int)entry.Stat.st_uid,
                        Gid = (int)entry.Stat.st_gid,
                        ModificationTime = Time(entry.MTimeNs),
                    });
                    progress.EndEntry();
                    opaque++;
                    break;
            }
        }
        writer.Dispose();
        destination.Flush();
        progress.Finish();
        return new UpperExportResult(progress.EntriesDone, progress.BytesDone, materialized, whiteouts, opaque, warnings);
    }

    public static UpperExportResult ExportToFile(string upperDirectory, string destination, UpperExportOptions options)
    {
        ExportDestination target = ExportDestination.Prepare(upperDirectory, destination, options.Overwrite);
        try
        {
            UpperExportResult result;
            using (var output = new FileStream(target.Temporary, FileMode.CreateNew, FileAccess.Write, FileShare.None, bufferSize: 1 << 20))
            {
                result = Export(upperDirectory, output, options);
            }
            target.Commit();
            return result;
        }
        catch
        {
            target.Abandon();
            throw;
        }
    }

    private static void WriteEntry(TarWriter writer, Stream destination, ExportEntry entry, ExportProgressTracker progress, List<string> warnings)
    {
        (TarEntryType type, string name) = entry.Kind switch
        {
            ExportKind.Directory => (TarEntryType.Directory, entry.Path + "/"),
            ExportKind.RegularFile or ExportKind.BCowFile => (TarEntryType.RegularFile, entry.Path),
            ExportKind.SymbolicLink => (TarEntryType.SymbolicLink, entry.Path),
            ExportKind.HardLink => (TarEntryType.HardLink, entry.Path),
            ExportKind.CharacterDevice => (TarEntryType.CharacterDevice, entry.Path),
            ExportKind.BlockDevice => (TarEntryType.BlockDevice, entry.Path),
            ExportKind.Fifo => (TarEntryType.Fifo, entry.Path),
            ExportKind.Whiteout => (TarEntryType.RegularFile, Child(entry.Parent, Whiteouts.Prefix + entry.Name)),
            _ => throw new InvalidOperationException($"{entry.Source}: no tar form for {entry.Kind}"),
        };
        uint mode = entry.Kind == ExportKind.Whiteout ? 0x180u : entry.Permissions; // Docker and containerd write whiteouts as 0600 files
        IReadOnlyList<(string Name, byte[] Value)> xattrs = entry.Kind == ExportKind.Whiteout ? [] : entry.Xattrs;
        bool binary = xattrs.Any(x => UpperTree.AsText(x.Value) is null);
        if (binary && entry.Size >= UstarMaxSize)
        {
            xattrs = xattrs.Where(x => UpperTree.AsText(x.Value) is not null).ToList();
            binary = false;
            warnings.Add($"{entry.Source}: binary extended attributes left out: the file is too large for the entry form that carries them");
        }
        PosixTarEntry tarEntry;
        if (binary)
        {
            // TarWriter writes PAX records as text only: the records go in a header of our own, the entry as ustar.
            var records = new List<(string, byte[])> { ("path", Encoding.UTF8.GetBytes(name)) };
            if (entry.LinkTarget is { } target)
            {
                records.Add(("linkpath", Encoding.UTF8.GetBytes(target)));
            }
            records.Add(("mtime", Encoding.ASCII.GetBytes(RawPaxHeader.Time(entry.MTimeNs / 100 * 100)))); // to 100 ns, as TarWriter writes it
            records.Add(("uid", Encoding.ASCII.GetBytes(entry.Stat.st_uid.ToString(CultureInfo.InvariantCulture))));
            records.Add(("gid", Encoding.ASCII.GetBytes(entry.Stat.st_gid.ToString(CultureInfo.InvariantCulture))));
            records.AddRange(xattrs.Select(x => (XattrRecordPrefix + x.Name, x.Value)));
            RawPaxHeader.Write(destination, name, records);
            tarEntry = new UstarTarEntry(type, UstarText(name, 100, type == TarEntryType.Directory))
            {
                Uid = entry.Stat.st_uid <= UstarMaxId ? (int)entry.Stat.st_uid : 0,
                Gid = entry.Stat.st_gid <= UstarMaxId ? (int)entry.Stat.st_gid : 0,
                ModificationTime = DateTimeOffset.FromUnixTimeSeconds(Math.Max(0, entry.Stat.st_mtime)),
            };
        }
        else
        {
            var records = xattrs.ToDictionary(x => XattrRecordPrefix + x.Name, x => UpperTree.AsText(x.Value)!, StringComparer.Ordinal);
            tarEntry = new PaxTarEntry(type, name, records)
            {
                Uid = (int)entry.Stat.st_uid,
                Gid = (int)entry.Stat.st_gid,
                ModificationTime = Time(entry.MTimeNs),
            };
        }
        tarEntry.Mode = (UnixFileMode)mode;
        switch (entry.Kind)
        {
            case ExportKind.SymbolicLink:
            case ExportKind.HardLink:
                tarEntry.LinkName = binary ? UstarText(entry.LinkTarget!, 100, directory: false) : entry.LinkTarget!;
                break;
            case ExportKind.CharacterDevice:
            case ExportKind.BlockDevice:
                ulong rdev = entry.Stat.st_rdev;
                tarEntry.DeviceMajor = (int)(((rdev >> 8) & 0xFFF) | ((rdev >> 32) & ~0xFFFUL));
                tarEntry.DeviceMinor = (int)((rdev & 0xFF) | ((rdev >> 12) & ~0xFFUL));
                break;
        }
        if (entry.Kind is ExportKind.RegularFile or ExportKind.BCowFile)
        {
            using ExportContent content = ExportContent.Open(entry);
            tarEntry.DataStream = new ExportContentStream(content, progress);
            writer.WriteEntry(tarEntry);
        }
        else
        {
            writer.WriteEntry(tarEntry);
        }
    }

    /// <summary>A name or link target for a ustar field: itself when it fits, else a prefix that fits (the PAX record
    /// before the entry carries the whole one).</summary>
    private static string UstarText(string text, int bytes, bool directory)
    {
        if (Encoding.UTF8.GetByteCount(text) <= bytes)
        {
            return text;
        }
        string cut = Encoding.UTF8.GetString(RawPaxHeader.Truncate(text, bytes - 1)).TrimEnd('/');
        return directory ? cut + "/" : cut;
    }

    private static string Child(string directory, string name) => directory.Length == 0 ? name : directory + "/" + name;

    private static DateTimeOffset Time(long ns) => DateTimeOffset.UnixEpoch.AddTicks(ns / 100);
}
