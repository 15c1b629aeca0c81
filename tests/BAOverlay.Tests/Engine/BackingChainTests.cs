using BAOverlay.Format;
using BAOverlay.Storage;
using BAOverlay.Tests.Tool;

namespace BAOverlay.Tests.Engine;

/// <summary>
/// Backing chains: a B-CoW file whose lower file is a B-CoW file reads it through its map, recursively; writes go to
/// the top only; members below are opened read-only with a shared lock; loops and chains deeper than 16 B-CoW files
/// are refused; bcow info --backing-chain, check, flatten and commit work on chains.
/// </summary>
[Platform("Linux")]
public class BackingChainTests
{
    private const int Size = 1 << 20;

    /// <summary>base.img (random) under <paramref name="depth"/> B-CoW files b1..bN, each writing its own pattern at
    /// its own offsets; returns the paths (top last) and the model of the top's content.</summary>
    private static (List<string> Chain, byte[] Model) MakeChain(TempDir dir, int depth)
    {
        byte[] model = Checks.RandomBytes(new Random(11), Size);
        string lower = dir.File("base.img");
        File.WriteAllBytes(lower, model);
        var chain = new List<string> { lower };
        for (int i = 1; i <= depth; i++)
        {
            string path = dir.File($"b{i}.bcow");
            using (BCowFile file = BCowFile.Create(path, new BCowCreateOptions { LowerPath = chain[^1], BlockSize = 4096 }))
            {
                byte[] data = Enumerable.Repeat((byte)(0x10 * i), 5000).ToArray();
                long at = i * 60_000L;
                file.WriteAt(data, at);
                data.CopyTo(model, at);
                file.WriteAt(data.AsSpan(0, 10), 100 + i); // overlaps the writes of the members below
                data.AsSpan(0, 10).CopyTo(model.AsSpan(100 + i));
            }
            chain.Add(path);
        }
        return (chain, model);
    }

    private static byte[] ReadAll(string path)
    {
        using BCowFile file = BCowFile.Open(path, new BCowOpenOptions { ReadOnly = true });
        byte[] all = new byte[file.Length];
        Assert.That(file.ReadAt(all, 0), Is.EqualTo(all.Length));
        return all;
    }

    [Test]
    public void ChainsTwoAndThreeDeepReadBackTheMergedContent([Values(2, 3)] int depth)
    {
        using var dir = new TempDir();
        var (chain, model) = MakeChain(dir, depth);
        Assert.That(ReadAll(chain[^1]), Is.EqualTo(model));
        BcowResult flatten = Bcow.Run("flatten", chain[^1], dir.File("flat.raw"));
        Assert.That(flatten.ExitCode, Is.Zero, flatten.ToString());
        Assert.That(File.ReadAllBytes(dir.File("flat.raw")), Is.EqualTo(model), "flatten of the top: the whole merged content");
        BcowResult check = Bcow.Run("check", chain[^1]);
        Assert.That(check.ExitCode, Is.Zero, check.ToString());
    }

    [Test]
    public void WritesInTheTopLeaveTheLowerMembersAsTheyWere()
    {
        using var dir = new TempDir();
        var (chain, model) = MakeChain(dir, 3);
        byte[][] before = chain.Select(File.ReadAllBytes).ToArray();
        byte[] middle = ReadAll(chain[2]);
        using (BCowFile top = BCowFile.Open(chain[^1]))
        {
            byte[] data = Enumerable.Repeat((byte)0xEE, 200_000).ToArray();
            top.WriteAt(data, 50_000);
            data.CopyTo(model, 50_000);
            top.SetLength(Size / 2);
            top.SetLength(Size);
            model.AsSpan(Size / 2).Clear();
        }
        Assert.That(ReadAll(chain[^1]), Is.EqualTo(model));
        for (int i = 0; i < chain.Count - 1; i++)
        {
            Assert.That(File.ReadAllBytes(chain[i]), Is.EqualTo(before[i]), $"{Path.GetFileName(chain[i])} untouched");
        }
        Assert.That(ReadAll(chain[2]), Is.EqualTo(middle));
        Checks.AssertClean(chain[^1]);
    }

    [Test]
    public void ALoopIsRefused()
    {
        using var dir = new TempDir();
        var (chain, _) = MakeChain(dir, 2);
        // b1 made to name b2 as its lower file: b2 -> b1 -> b2.
        using (var storage = new FileStorage(chain[1], FileMode.Open, FileAccess.ReadWrite))
        {
            byte[] slot = new byte[Layout.HeaderSlotSize];
            for (int i = 0; i < Layout.HeaderSlotCount; i++)
            {
                storage.ReadAt(slot, (long)i * Layout.HeaderSlotSize);
                if (BCowHeader.TryRead(slot, out _) is { } header)
                {
                    (header with { LowerPath = chain[2] }).Write(slot);
                    storage.WriteAt(slot, (long)i * Layout.HeaderSlotSize);
                }
            }
        }

        var e = Assert.Throws<BCowFormatException>(() => BCowFile.Open(chain[2], new BCowOpenOptions { ReadOnly = true }).Dispose());
        Assert.That(e!.Message, Is.EqualTo($"{chain[1]}: backing chain loop: {chain[2]} -> {chain[1]} -> {chain[2]}"));
        BcowResult info = Bcow.Run("info", "--backing-chain", chain[2]);
        Assert.That(info.ExitCode, Is.EqualTo(1));
        Assert.That(info.Error, Does.Contain("backing chain loop"));
        BcowResult rebase = Bcow.Run("rebase", "-u", "--lower", chain[2], chain[1]);
        Assert.That(rebase.ExitCode, Is.EqualTo(1), "rebase may not make a loop either");
        Assert.That(rebase.Error, Does.Contain("backing chain loop"));
    }

    [Test]
    public void SixteenBCowFilesAreReadAndASeventeenthIsRefused()
    {
        using var dir = new TempDir();
        var (chain, model) = MakeChain(dir, 16);
        Assert.That(ReadAll(chain[^1]), Is.EqualTo(model));

        var e = Assert.Throws<BCowFormatException>(() => BCowFile.Create(dir.File("b17.bcow"), new BCowCreateOptions { LowerPath = chain[^1] }).Dispose());
        Assert.That(e!.Message, Does.Contain("the backing chain is deeper than 16 B-CoW files"));
        Assert.That(File.Exists(dir.File("b17.bcow")), Is.False);
    }

    [Test]
    public void AChainMemberAnotherProcessWritesKeepsTheTopFromOpening()
    {
        using var dir = new TempDir();
        var (chain, _) = MakeChain(dir, 3);
        using BcowProcess writer = Bcow.Start(dir.Path, "io", chain[1], "-c", "write -P 0x11 0 4k", "-c", "sleep 60000");
        writer.WaitForLine("wrote ");

        var e = Assert.Throws<BCowFileInUseException>(() => BCowFile.Open(chain[^1], new BCowOpenOptions { ReadOnly = true }).Dispose());
        Assert.That(e!.FilePath, Is.EqualTo(chain[1]));
        BcowResult io = Bcow.Run("io", chain[^1], "-c", "read 0 4k");
        Assert.That(io.ExitCode, Is.EqualTo(1));
        Assert.That(io.Error, Does.StartWith($"bcow: {chain[1]}: the file is in use by another process"));
    }

    [Test]
    public void WhileAChainIsOpenNoOtherProcessMayWriteAMember()
    {
        using var dir = new TempDir();
        var (chain, _) = MakeChain(dir, 2);
        using BCowFile top = BCowFile.Open(chain[^1]);
        BcowResult io = Bcow.RunProcess(dir.Path, "io", chain[1], "-c", "write 0 4k");
        Assert.That(io.ExitCode, Is.EqualTo(1));
        Assert.That(io.Error, Does.Contain("the file is in use by another process"));
    }

    [Test]
    public void InfoShowsTheBackingChain()
    {
        using var dir = new TempDir();
        var (chain, _) = MakeChain(dir, 2);
        BcowResult info = Bcow.Run("info", "--backing-chain", chain[^1]);
        Assert.That(info.ExitCode, Is.Zero, info.ToString());
        string[] entries = info.Out.Split("\n\n");
        Assert.That(entries, Has.Length.EqualTo(3));
        Assert.That(entries[0], Does.StartWith($"image: {chain[2]}\nfile format: bcow\n").And.Contain($"lower file: {chain[1]}"));
        Assert.That(entries[1], Does.StartWith($"image: {chain[1]}\nfile format: bcow\n"));
        Assert.That(entries[2], Is.EqualTo($"image: {chain[0]}\nfile format: raw\nvirtual size: 1 MiB (1048576 bytes)\n"));

        var json = Bcow.Run("info", "--backing-chain", "--json", chain[^1]).Json;
        Assert.That(json.GetArrayLength(), Is.EqualTo(3));
        Assert.That(json[2].GetProperty("format").GetString(), Is.EqualTo("raw"));
    }

    [Test]
    public void CommitOfTheTopWritesIntoTheBCowMemberBelow()
    {
        using var dir = new TempDir();
        var (chain, model) = MakeChain(dir, 2);
        byte[] baseBytes = File.ReadAllBytes(chain[0]);

        BcowResult commit = Bcow.Run("commit", chain[2]);
        Assert.That(commit.ExitCode, Is.Zero, commit.ToString());

        Assert.That(ReadAll(chain[1]), Is.EqualTo(model), "b1 now has the merged content");
        Assert.That(ReadAll(chain[2]), Is.EqualTo(model));
        Assert.That(File.ReadAllBytes(chain[0]), Is.EqualTo(baseBytes), "the plain file at the bottom is untouched");
        Assert.That(Bcow.Run("info", "--json", chain[2]).Json.GetProperty("data-bytes").GetInt64(), Is.Zero);
        Checks.AssertClean(chain[1]);
        Checks.AssertClean(chain[2]);
    }
}
