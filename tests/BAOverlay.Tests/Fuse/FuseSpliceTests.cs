using System.Runtime.InteropServices;
using BAOverlay.Fuse;
using BAOverlay.Fuse.Interop;
using Microsoft.Win32.SafeHandles;

namespace BAOverlay.Tests.Fuse;

/// <summary>
/// <see cref="FuseSplice"/> without a mount: the reply it splices is what <c>/dev/fuse</c> would receive (written here
/// into a plain file, which takes a splice from a pipe too): the header with the length and request id, then the file's
/// bytes; a file that gives fewer bytes than asked (its end) sends nothing and hands them back, the pipe left empty for
/// the next reply.
/// </summary>
[TestFixture]
[Platform("Linux")]
public sealed unsafe class FuseSpliceTests
{
    [Test]
    public void AReplyIsTheHeaderThenTheBytesAndAShortReadComesBackWithThePipeLeftEmpty()
    {
        using var temp = new TempDir();
        byte[] content = new byte[100_000];
        new Random(11).NextBytes(content);
        string source = temp.File("source");
        File.WriteAllBytes(source, content);
        using SafeFileHandle file = File.OpenHandle(source);
        using SafeFileHandle sink = File.OpenHandle(temp.File("sink"), FileMode.CreateNew, FileAccess.Write);
        using FuseSplice? pipe = FuseSplice.TryCreate();
        Assert.That(pipe, Is.Not.Null, "a pipe of 1 or 2 MiB");
        Assert.That(pipe!.MaxData, Is.GreaterThanOrEqualTo((1 << 20) - (2 * 4096)));
        int fd = (int)sink.DangerousGetHandle();
        byte[] buffer = new byte[65536];
        fixed (byte* into = buffer)
        {
            // The file's end inside the request: nothing sent, the bytes handed back.
            Assert.That(pipe.TrySend(fd, 7, file, 90_000, 65536, into, out int n, out int errno), Is.EqualTo(FuseSplice.Outcome.Short));
            Assert.That(n, Is.EqualTo(10_000));
            Assert.That(buffer.AsSpan(0, n).SequenceEqual(content.AsSpan(90_000, 10_000)), Is.True, "the bytes the file gave");
            Assert.That(RandomAccess.GetLength(sink), Is.Zero, "nothing sent");

            // Then a whole reply: header, then the bytes (nothing of the short one left in the pipe before it).
            Assert.That(pipe.TrySend(fd, 8, file, 4096, 40_000, into, out n, out errno), Is.EqualTo(FuseSplice.Outcome.Sent));
            Assert.That(errno, Is.Zero);
            Assert.That(pipe.Usable, Is.True);
        }
        byte[] sent = File.ReadAllBytes(temp.File("sink"));
        int header = Marshal.SizeOf<fuse_out_header>();
        Assert.That(sent, Has.Length.EqualTo(header + 40_000));
        fuse_out_header h = MemoryMarshal.Read<fuse_out_header>(sent);
        Assert.That((h.len, h.error, h.unique), Is.EqualTo(((uint)(header + 40_000), 0, 8UL)));
        Assert.That(sent.AsSpan(header).SequenceEqual(content.AsSpan(4096, 40_000)), Is.True, "the file's bytes after the header");
    }
}
