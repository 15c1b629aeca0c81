using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using BAOverlay.Interop;

namespace BAOverlay.Tests.Engine;

/// <summary>
/// The locking's <c>struct flock</c> and fcntl constants (<see cref="LibC"/>) against the C headers: a small C program
/// prints sizeof/offsetof and the constants. Needs cc; ignored, saying so, without it.
/// </summary>
[TestFixture]
[Platform("Linux")]
public sealed class FlockLayoutTests
{
    [Test]
    public void FlockAndTheLockConstantsMatchTheHeaders()
    {
        if (RuntimeInformation.ProcessArchitecture != Architecture.X64)
        {
            Assert.Ignore($"struct flock is declared for x86_64 (LP64), not checked on {RuntimeInformation.ProcessArchitecture}");
        }
        using var temp = new TempDir();
        string source = temp.File("flock.c");
        File.WriteAllText(source, """
            #define _GNU_SOURCE
            #include <fcntl.h>
            #include <errno.h>
            #include <stddef.h>
            #include <stdio.h>
            int main(void) {
              printf("sizeof %zu\n", sizeof(struct flock));
              printf("l_type %zu\n", offsetof(struct flock, l_type));
              printf("l_whence %zu\n", offsetof(struct flock, l_whence));
              printf("l_start %zu\n", offsetof(struct flock, l_start));
              printf("l_len %zu\n", offsetof(struct flock, l_len));
              printf("l_pid %zu\n", offsetof(struct flock, l_pid));
              printf("F_OFD_GETLK %d\nF_OFD_SETLK %d\nF_RDLCK %d\nF_WRLCK %d\nF_UNLCK %d\n", F_OFD_GETLK, F_OFD_SETLK, F_RDLCK, F_WRLCK, F_UNLCK);
              printf("EAGAIN %d\nEACCES %d\nENOLCK %d\nENOSYS %d\nEINVAL %d\nENOSPC %d\nEISDIR %d\n", EAGAIN, EACCES, ENOLCK, ENOSYS, EINVAL, ENOSPC, EISDIR);
              return 0;
            }
            """);
        string? unavailable = null;
        Dictionary<string, long> native = BAOverlay.Tests.Fuse.CLayoutProgram.Values(File.ReadAllText(source), "-D_FILE_OFFSET_BITS=64",
            ("fcntl.h", "apt-get install gcc (Debian/Ubuntu) to check struct flock"), ref unavailable);
        Assert.Multiple(() =>
        {
            Assert.That(Unsafe.SizeOf<LibC.Flock>(), Is.EqualTo(native["sizeof"]), "sizeof(struct flock)");
            foreach (string field in new[] { "l_type", "l_whence", "l_start", "l_len", "l_pid" })
            {
                Assert.That((long)Marshal.OffsetOf<LibC.Flock>(field), Is.EqualTo(native[field]), $"offsetof(struct flock, {field})");
            }
            Assert.That(native["F_OFD_GETLK"], Is.EqualTo(LibC.F_OFD_GETLK), "F_OFD_GETLK");
            Assert.That(native["F_OFD_SETLK"], Is.EqualTo(LibC.F_OFD_SETLK), "F_OFD_SETLK");
            Assert.That(native["F_RDLCK"], Is.EqualTo(LibC.F_RDLCK), "F_RDLCK");
            Assert.That(native["F_WRLCK"], Is.EqualTo(LibC.F_WRLCK), "F_WRLCK");
            Assert.That(native["F_UNLCK"], Is.EqualTo(LibC.F_UNLCK), "F_UNLCK");
            Assert.That(native["EAGAIN"], Is.EqualTo(LibC.EAGAIN), "EAGAIN");
            Assert.That(native["EACCES"], Is.EqualTo(LibC.EACCES), "EACCES");
            Assert.That(native["ENOLCK"], Is.EqualTo(LibC.ENOLCK), "ENOLCK");
            Assert.That(native["ENOSYS"], Is.EqualTo(LibC.ENOSYS), "ENOSYS");
            Assert.That(native["EINVAL"], Is.EqualTo(LibC.EINVAL), "EINVAL");
            Assert.That(native["ENOSPC"], Is.EqualTo(LibC.ENOSPC), "ENOSPC");
            Assert.That(native["EISDIR"], Is.EqualTo(LibC.EISDIR), "EISDIR");
        });
    }
}
