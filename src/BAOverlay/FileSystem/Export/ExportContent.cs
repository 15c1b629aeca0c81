using BAOverlay.Storage;

namespace BAOverlay.FileSystem.Export;

/// <summary>The content of a regular file to export: a plain upper file, or the merged bytes of a B-CoW file.</summary>
internal abstract class ExportContent : IDisposable
{
    protected ExportContent(string path, long length)
    {
        Path = path;
        Length = length;
    }

    public string Path { get; }

    public long Length { get; }

    /// <summary>Ranges that hold data, in order; everything else reads as zeros and may stay a hole.</summary>
    public abstract IReadOnlyList<(long Offset, long Length)> DataRanges();

    /// <summary>Fills <paramref name="buffer"/> from <paramref name="offset"/> (which with the buffer lies within <see cref="Length"/>).</summary>
    /// <exception cref="IOException">A read failed, or the file is shorter than when it was scanned.</exception>
    public void ReadExactly(Span<byte> buffer, long offset)
    {
        while (!buffer.IsEmpty)
        {
            int n;
            try
            {
                n = ReadAt(buffer, offset);
            }
            catch (BCowFormatException)
            {
                throw;
            }
            catch (IOException e) when (!e.Message.Contains(Path, StringComparison.Ordinal))
            {
                throw new IOException($"{Path}: read failed at offset {offset}: {e.Message}", e);
            }
            if (n <= 0)
            {
                throw new IOException($"{Path}: ends at {offset}, was {Length} bytes long when the export began: the upper directory changed during the export");
            }
            buffer = buffer[n..];
            offset += n;
        }
    }

    protected abstract int ReadAt(Span<byte> buffer, long offset);

    public abstract void Dispose();

    public static ExportContent Open(ExportEntry entry)
    {
        try
        {
            return entry.Kind == ExportKind.BCowFile ? new BCow(entry) : new Plain(entry);
        }
        catch (BCowFormatException e) when (e.Message.Contains(entry.Source, StringComparison.Ordinal))
        {
            throw;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new IOException($"{entry.Source}: cannot open for reading: {e.Message}", e);
        }
    }

    private sealed class Plain : ExportContent
    {
        private readonly FileStorage _file;

        public Plain(ExportEntry entry)
            : base(entry.Source, entry.Size)
        {
            _file = new FileStorage(entry.Source, FileMode.Open, FileAccess.Read);
        }

        public override IReadOnlyList<(long Offset, long Length)> DataRanges() => _file.GetDataRanges(0, Length).ToList();

        protected override int ReadAt(Span<byte> buffer, long offset) => _file.ReadAt(buffer, offset);

        public override void Dispose() => _file.Dispose();
    }

    private sealed class BCow : ExportContent
    {
        private readonly BCowFile _file;

        public BCow(ExportEntry entry)
            : this(entry.Source, BCowFile.Open(entry.Source, new BCowOpenOptions { ReadOnly = true }))
        {
        }

        private BCow(string path, BCowFile file)
            : base(path, file.Length)
        {
            _file = file;
        }

        public override IReadOnlyList<(long Offset, long Length)> DataRanges()
        {
            var ranges = new List<(long Offset, long Length)>();
            foreach (BCowExtent extent in _file.GetExtents())
            {
                if (extent.Source == ExtentSource.Zero)
                {
                    continue;
                }
                if (ranges.Count > 0 && ranges[^1].Offset + ranges[^1].Length == extent.Offset)
                {
                    ranges[^1] = (ranges[^1].Offset, ranges[^1].Length + extent.Length);
                }
                else
                {
                    ranges.Add((extent.Offset, extent.Length));
                }
            }
            return ranges;
        }

        protected override int ReadAt(Span<byte> buffer, long offset) => _file.ReadAt(buffer, offset);

        public override void Dispose() => _file.Dispose();
    }
}

/// <summary>A read-only, seekable stream over <see cref="ExportContent"/> that counts progress (for a tar entry).</summary>
internal sealed class ExportContentStream(ExportContent content, ExportProgressTracker progress) : Stream
{
    private long _position;

    public override bool CanRead => true;
    public override bool CanSeek => true;
    public override bool CanWrite => false;
    public override long Length => content.Length;

    public override long Position
    {
        get => _position;
        set => _position = Math.Clamp(value, 0, content.Length);
    }

    public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

    public override int Read(Span<byte> buffer)
    {
        progress.ThrowIfCancellationRequested();
        int n = (int)Math.Min(buffer.Length, content.Length - _position);
        if (n <= 0)
        {
            return 0;
        }
        content.ReadExactly(buffer[..n], _position);
        _position += n;
        progress.AddBytes(n);
        return n;
    }

    public override long Seek(long offset, SeekOrigin origin) => Position = origin switch
    {
        SeekOrigin.Begin => offset,
        SeekOrigin.Current => _position + offset,
        _ => content.Length + offset,
    };

    public override void Flush()
    {
    }

    public override void SetLength(long value) => throw new NotSupportedException();

    public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
}

/// <summary>Counts what an export did and reports it.</summary>
internal sealed class ExportProgressTracker(IProgress<UpperExportProgress>? sink, long bytesTotal, int entriesTotal, CancellationToken cancellationToken)
{
    private const long ReportEvery = 4 << 20;
    private long _sinceReport;

    public long BytesDone { get; private set; }

    public int EntriesDone { get; private set; }

    public string Current { get; private set; } = "";

    public void ThrowIfCancellationRequested() => cancellationToken.ThrowIfCancellationRequested();

    public void Begin() => Report();

    public void StartEntry(string path)
    {
        cancellationToken.ThrowIfCancellationRequested();
        Current = path;
    }

    public void AddBytes(long n)
    {
        BytesDone += n;
        _sinceReport += n;
        if (_sinceReport >= ReportEvery)
        {
            Report();
        }
    }

    public void EndEntry()
    {
        EntriesDone++;
        Report();
    }

    public void Finish()
    {
        Current = "";
        Report();
    }

    private void Report()
    {
        _sinceReport = 0;
        sink?.Report(new UpperExportProgress(BytesDone, bytesTotal, EntriesDone, entriesTotal, Current));
    }
}
