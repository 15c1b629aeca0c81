using System.Formats.Tar;

namespace BAOverlay.FileSystem.Export;

/// <summary>
/// Writes an upper directory as an OCI image layer (a PAX tar): whiteouts as empty files <c>DIR/.wh.NAME</c>, an
/// opaque directory as its entry followed by <c>DIR/.wh..wh..opq</c>, B-CoW files with their merged content.
/// </summary>
internal static class OciTarExporter
{
    private const string XattrRecordPrefix = "SCHILY.xattr.";

    public static UpperExportResult Export(string upperDirectory, Stream destination, UpperExportOptions options)
    {
        ArgumentNullException.ThrowIfNull(destination);
        if (!destination.CanWrite)
        {
            throw new ArgumentException("the destination stream is not writable", nameof(destination));
        }
        var warnings = new List<string>();
        List<ExportEntry> entries = UpperTree.Scan(upperDirectory, warnings, options.CancellationToken);
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
                WriteEntry(writer, entry, progress, warnings);
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

    private static void WriteEntry(TarWriter writer, ExportEntry entry, ExportProgressTracker progress, List<string> warnings)
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
        var records = new Dictionary<string, string>(StringComparer.Ordinal);
        if (entry.Kind != ExportKind.Whiteout)
        {
            foreach (var (xattr, value) in entry.Xattrs)
            {
                if (UpperTree.AsText(value) is { } text)
                {
                    records[XattrRecordPrefix + xattr] = text;
                }
                else
                {
                    warnings.Add($"{entry.Source}: extended attribute {xattr} left out: its value is not text, which a PAX record written here must be");
                }
            }
        }
        var tarEntry = new PaxTarEntry(type, name, records)
        {
            // Docker and containerd write whiteouts as 0600 files with the owner and time of what they hide.
            Mode = (UnixFileMode)(entry.Kind == ExportKind.Whiteout ? 0x180 : entry.Permissions),
            Uid = (int)entry.Stat.st_uid,
            Gid = (int)entry.Stat.st_gid,
            ModificationTime = Time(entry.MTimeNs),
        };
        switch (entry.Kind)
        {
            case ExportKind.SymbolicLink:
            case ExportKind.HardLink:
                tarEntry.LinkName = entry.LinkTarget!;
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

    private static string Child(string directory, string name) => directory.Length == 0 ? name : directory + "/" + name;

    private static DateTimeOffset Time(long ns) => DateTimeOffset.UnixEpoch.AddTicks(ns / 100);
}
