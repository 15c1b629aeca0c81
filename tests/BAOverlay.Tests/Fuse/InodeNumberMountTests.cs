using System.Buffers.Binary;
using System.Text;
using BAOverlay.Tests.FileSystem;
using Mono.Unix.Native;
using static BAOverlay.Tests.Fuse.FuseMountTests;

namespace BAOverlay.Tests.Fuse;

/// <summary>
/// Two objects never share an inode number through the mount: a number an upper object kept from its lower origin
/// stops being its own once another lower object can show it (here the lower file renamed, which is what a deleted
/// file whose inode is reused by a new one looks like), and a forged record claims nothing; while copy-up in place,
/// rename and hard links keep their numbers across remounts.
/// </summary>
[TestFixture]
[Platform("Linux")]
[NonParallelizable]
public sealed class InodeNumberMountTests
{
    private static ulong Ino(string path)
    {
        Assert.That(Syscall.lstat(path, out Stat st), Is.Zero, $"stat {path}: {Stdlib.GetLastError()}");
        return st.st_ino;
    }

    private static Dictionary<string, ulong> Numbers(string mnt) =>
        Directory.GetFileSystemEntries(mnt).ToDictionary(p => Path.GetFileName(p)!, Ino);

    [Test]
    public void AKeptNumberWhoseOriginNowHoldsAnotherNameIsNotShared()
    {
        using var fixture = new OverlayFixture(lowers: 1);
        OverlayFixture.WriteFile(Path.Combine(fixture.Lowers[0], "a"), "a");
        ulong before;
        using (Mounted.Start(fixture, out string mnt))
        {
            before = Ino(Path.Combine(mnt, "a"));
            File.AppendAllText(Path.Combine(mnt, "a"), "+"); // copy-up, keeping the number
            Assert.That(Ino(Path.Combine(mnt, "a")), Is.EqualTo(before));
        }
        // The lower file's inode now has another name, as when a file is deleted and a new one reuses its inode.
        File.Move(Path.Combine(fixture.Lowers[0], "a"), Path.Combine(fixture.Lowers[0], "b"));
        using (Mounted.Start(fixture, out string mnt))
        {
            Dictionary<string, ulong> numbers = Numbers(mnt);
            Assert.That(numbers["a"], Is.Not.EqualTo(numbers["b"]), "two files, two numbers");
            Assert.That(File.ReadAllText(Path.Combine(mnt, "a")), Is.EqualTo("a+"));
            Assert.That(File.ReadAllText(Path.Combine(mnt, "b")), Is.EqualTo("a"), "each name serves its own bytes");
            Assert.That(Directory.GetFileSystemEntries(mnt).Select(p => Path.GetFileName(p)!).Select(n => Ino(Path.Combine(mnt, n))).Distinct().Count(), Is.EqualTo(2));
        }
        Assert.That(fixture.Log, Has.Some.Contains("belongs to no origin of its own"));
    }

    [TestCase(false)]
    [TestCase(true)]
    public void AForgedKeptNumberAliasesNothing(bool withOrigin)
    {
        using var fixture = new OverlayFixture(lowers: 1);
        OverlayFixture.WriteFile(Path.Combine(fixture.Lowers[0], "etc", "passwd"), "root:x:0:0");
        ulong victim;
        using (Mounted.Start(fixture, out string mnt))
        {
            victim = Ino(Path.Combine(mnt, "etc", "passwd"));
        }
        string evil = Path.Combine(fixture.Upper!, "evil");
        File.WriteAllText(evil, "forged");
        byte[] origin = withOrigin ? Encoding.UTF8.GetBytes("etc/passwd") : [];
        byte[] record = new byte[8 + origin.Length];
        BinaryPrimitives.WriteUInt64LittleEndian(record, victim);
        origin.CopyTo(record, 8);
        Assert.That(Syscall.lsetxattr(evil, "user.baoverlay.ino", record, XattrFlags.XATTR_AUTO), Is.Zero);

        using (Mounted.Start(fixture, out string mnt))
        {
            Assert.That(Ino(Path.Combine(mnt, "evil")), Is.Not.EqualTo(Ino(Path.Combine(mnt, "etc", "passwd"))));
            Assert.That(Ino(Path.Combine(mnt, "etc", "passwd")), Is.EqualTo(victim), "the real owner keeps its number");
            Assert.That(File.ReadAllText(Path.Combine(mnt, "evil")), Is.EqualTo("forged"));
        }
    }

    [Test]
    public void CopyUpRenameAndHardLinksKeepTheirNumbersAcrossRemounts()
    {
        using var fixture = new OverlayFixture(lowers: 1);
        OverlayFixture.WriteFile(Path.Combine(fixture.Lowers[0], "f"), "f");
        OverlayFixture.WriteFile(Path.Combine(fixture.Lowers[0], "g"), "g");
        OverlayFixture.WriteFile(Path.Combine(fixture.Lowers[0], "d", "x"), "x");
        Dictionary<string, ulong> first;
        using (Mounted.Start(fixture, out string mnt))
        {
            first = new()
            {
                ["f"] = Ino(Path.Combine(mnt, "f")), ["g"] = Ino(Path.Combine(mnt, "g")),
                ["d"] = Ino(Path.Combine(mnt, "d")), ["x"] = Ino(Path.Combine(mnt, "d", "x")),
            };
            File.AppendAllText(Path.Combine(mnt, "f"), "+");                          // copied up in place
            File.Move(Path.Combine(mnt, "g"), Path.Combine(mnt, "g2"));               // renamed
            Assert.That(Syscall.link(Path.Combine(mnt, "f"), Path.Combine(mnt, "f2")), Is.Zero); // hard link
            File.AppendAllText(Path.Combine(mnt, "d", "x"), "+");
            Directory.Move(Path.Combine(mnt, "d"), Path.Combine(mnt, "e"));           // a renamed directory
        }
        for (int round = 0; round < 2; round++)
        {
            using (Mounted.Start(fixture, out string mnt))
            {
                if (round == 0)
                {
                    Assert.That(Ino(Path.Combine(mnt, "f")), Is.EqualTo(first["f"]), "copied up in place");
                }
                Assert.That(Ino(Path.Combine(mnt, "f2")), Is.EqualTo(first["f"]), "its hard link");
                Assert.That(Ino(Path.Combine(mnt, "g2")), Is.EqualTo(first["g"]), "renamed");
                Assert.That(Ino(Path.Combine(mnt, "e")), Is.EqualTo(first["d"]), "the renamed directory");
                Assert.That(Ino(Path.Combine(mnt, "e", "x")), Is.EqualTo(first["x"]), "a file copied up inside it");
                if (round == 0)
                {
                    Assert.That(Syscall.unlink(Path.Combine(mnt, "f")), Is.Zero, "the first name goes; the link keeps the number");
                }
                else
                {
                    Assert.That(File.Exists(Path.Combine(mnt, "f")), Is.False);
                }
            }
        }
    }
}
