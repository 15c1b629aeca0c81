using BAOverlay.Format;
using BAOverlay.Storage;

namespace BAOverlay.Tests.Tool;

/// <summary><c>bcow check</c>: qemu-img check's exit codes for clean, corrupt, leaking and unreadable files.</summary>
public class CheckCommandTests
{
    [Test]
    public void ACleanFileExitsZero()
    {
        using var dir = new TempDir();
        string path = ToolFiles.MakeStandalone(dir);
        Assert.That(Bcow.Run("io", path, "-c", "write 0 64k").ExitCode, Is.Zero);
        BcowResult result = Bcow.Run("check", path);
        Assert.That(result.ExitCode, Is.Zero, result.ToString());
        Assert.That(result.Out, Does.Contain("No errors were found on the file."));
        Checks.AssertClean(path);
    }

    [Test]
    public void ACorruptedRootTableIsReportedWithExitTwoAndInfoFailsInOneLine()
    {
        using var dir = new TempDir();
        string path = ToolFiles.MakeStandalone(dir);
        Assert.That(Bcow.Run("io", path, "-c", "write -P 0x5a 0 8k").ExitCode, Is.Zero);
        long root;
        using (var storage = new FileStorage(path, FileMode.Open, FileAccess.Read))
        {
            root = BCowFile.ReadHeader(storage).RootTableOffset;
        }
        FlipByte(path, root + 3);

        BcowResult check = Bcow.Run("check", path);
        Assert.That(check.ExitCode, Is.EqualTo(2), check.ToString());
        Assert.That(check.Out, Does.StartWith("ERROR ").And.Contain("errors were found on the file."));

        BcowResult info = Bcow.Run("info", path);
        Assert.That(info.ExitCode, Is.EqualTo(1));
        Assert.That(info.Error, Does.StartWith($"bcow: {path}: "));
        Assert.That(info.Error.TrimEnd('\n'), Does.Not.Contain("\n"), "one line");
    }

    [Test]
    public void RepairDoesNotTouchACorruptFile()
    {
        using var dir = new TempDir();
        string path = ToolFiles.MakeStandalone(dir);
        FlipByte(path, Layout.HeaderSlotSize + 20);
        FlipByte(path, 20);
        byte[] before = File.ReadAllBytes(path);
        BcowResult result = Bcow.Run("check", "--repair", path);
        Assert.That(result.ExitCode, Is.EqualTo(2), result.ToString());
        Assert.That(File.ReadAllBytes(path), Is.EqualTo(before));
    }

    [Test]
    public void LeakedDataExitsThreeAndRepairReclaimsIt()
    {
        using var dir = new TempDir();
        string path = MakeLeakyFile(dir, out long cleanLength);

        BcowResult leaky = Bcow.Run("check", path);
        Assert.That(leaky.ExitCode, Is.EqualTo(3), leaky.ToString());
        Assert.That(leaky.Out, Does.Contain("leaked ranges (8192 bytes) were found on the file."));

        BcowResult repaired = Bcow.Run("check", "-r", path);
        Assert.That(repaired.ExitCode, Is.Zero, repaired.ToString());
        Assert.That(repaired.Out, Does.Contain("found and repaired").And.Contain("No errors were found on the file."));
        Assert.That(new FileInfo(path).Length, Is.EqualTo(cleanLength));

        Assert.That(Bcow.Run("check", path).ExitCode, Is.Zero);
        Assert.That(Bcow.Run("io", path, "-c", "read -P 0x42 4k 8k", "-c", "read -P 0 12k 4k").ExitCode, Is.Zero);
        Checks.AssertClean(path);
    }

    [Test]
    public void AFileLeftDirtyByACrashIsShownDirtyAndRepairClearsTheFlag()
    {
        using var dir = new TempDir();
        string path = ToolFiles.MakeStandalone(dir);
        string crashed = dir.File("crashed.bcow");
        using (BCowFile file = BCowFile.Open(path))
        {
            file.WriteAt(new byte[8192], 0);
            file.Flush();
            // A copy taken while the file is open is what a crash leaves: committed, but with the dirty flag set.
            File.Copy(path, crashed);
        }

        Assert.That(Bcow.Run("info", crashed).Out, Does.Contain("dirty: yes\n"));
        BcowResult check = Bcow.Run("check", crashed);
        // Space the crashed session had replaced but not yet released may show as leaks: 3, not corruption.
        Assert.That(check.ExitCode, Is.AnyOf(0, 3), check.ToString());
        Assert.That(check.Out, Does.Contain("Note: the dirty flag is set"));

        BcowResult repair = Bcow.Run("check", "--repair", crashed);
        Assert.That(repair.ExitCode, Is.Zero, repair.ToString());
        Assert.That(Bcow.Run("info", "--json", crashed).Json.GetProperty("dirty").GetBoolean(), Is.False);
        Checks.AssertClean(crashed);
        Checks.AssertClean(path);
    }

    [Test]
    public void AMissingFileCannotBeCheckedExitOne()
    {
        using var dir = new TempDir();
        string path = dir.File("missing.bcow");
        BcowResult result = Bcow.Run("check", path);
        Assert.That(result.ExitCode, Is.EqualTo(1));
        Assert.That(result.Error, Is.EqualTo($"bcow: {path}: No such file or directory\n"));
    }

    [TestCase("--json")]
    [TestCase("--output=json")]
    [TestCase("--output", "json")]
    public void JsonOfACleanFileHasQemuImgChecksFieldsAndExitsZero(params string[] json)
    {
        using var dir = new TempDir();
        string path = ToolFiles.MakeStandalone(dir);
        Assert.That(Bcow.Run("io", path, "-c", "write 0 64k").ExitCode, Is.Zero);
        BcowResult result = Bcow.Run(["check", .. json, path]);
        Assert.That(result.ExitCode, Is.Zero, result.ToString());
        var root = result.Json;
        Assert.That(root.GetProperty("filename").GetString(), Is.EqualTo(path));
        Assert.That(root.GetProperty("format").GetString(), Is.EqualTo("bcow"));
        Assert.That(root.GetProperty("check-errors").GetInt32(), Is.Zero);
        Assert.That(root.GetProperty("corruptions").GetInt32(), Is.Zero);
        Assert.That(root.GetProperty("leaks").GetInt32(), Is.Zero);
        Assert.That(root.GetProperty("leaked-bytes").GetInt64(), Is.Zero);
        Assert.That(root.GetProperty("errors").GetArrayLength(), Is.Zero);
        Assert.That(root.GetProperty("leaked-ranges").GetArrayLength(), Is.Zero);
        Assert.That(root.GetProperty("notes").GetArrayLength(), Is.Zero);
        Assert.That(root.TryGetProperty("leaks-fixed", out _), Is.False, "only after a repair");
    }

    [Test]
    public void JsonListsLeaksAndCorruptionsWithTheSameExitCodes()
    {
        using var dir = new TempDir();
        string path = MakeLeakyFile(dir, out long cleanLength);
        BcowResult leaky = Bcow.Run("check", "--output=json", path);
        Assert.That(leaky.ExitCode, Is.EqualTo(3), leaky.ToString());
        Assert.That(leaky.Json.GetProperty("leaks").GetInt32(), Is.EqualTo(1));
        Assert.That(leaky.Json.GetProperty("leaked-bytes").GetInt64(), Is.EqualTo(8192));
        var range = leaky.Json.GetProperty("leaked-ranges")[0];
        Assert.That(range.GetProperty("offset").GetInt64(), Is.EqualTo(cleanLength));
        Assert.That(range.GetProperty("length").GetInt64(), Is.EqualTo(8192));

        BcowResult repaired = Bcow.Run("check", "--json", "-r", path);
        Assert.That(repaired.ExitCode, Is.Zero, repaired.ToString());
        Assert.That(repaired.Json.GetProperty("leaks-fixed").GetInt32(), Is.EqualTo(1), "as qemu-img check -r --output=json");
        Assert.That(repaired.Json.GetProperty("corruptions-fixed").GetInt32(), Is.Zero);
        Assert.That(repaired.Json.GetProperty("leaks").GetInt32(), Is.Zero, "the second check's findings");

        FlipByte(path, Layout.HeaderSlotSize + 20);
        FlipByte(path, 20);
        BcowResult corrupt = Bcow.Run("check", "--json", path);
        Assert.That(corrupt.ExitCode, Is.EqualTo(2), corrupt.ToString());
        Assert.That(corrupt.Json.GetProperty("corruptions").GetInt32(), Is.GreaterThan(0));
        Assert.That(corrupt.Json.GetProperty("errors")[0].GetString(), Does.StartWith("header: "));
    }

    [Test]
    public void JsonOfAFileThatCannotBeCheckedIsAnErrorLineNotJson()
    {
        using var dir = new TempDir();
        string path = dir.File("missing.bcow");
        BcowResult result = Bcow.Run("check", "--json", path);
        Assert.That(result.ExitCode, Is.EqualTo(1));
        Assert.That(result.Out, Is.Empty, "as qemu-img: no JSON for an image it could not open");
        Assert.That(result.Error, Is.EqualTo($"bcow: {path}: No such file or directory\n"));
        BcowResult usage = Bcow.Run("check", "--output=xml", path);
        Assert.That(usage.ExitCode, Is.EqualTo(1));
        Assert.That(usage.Error, Does.StartWith("bcow: check: --output must be 'json' or 'human'"));
    }

    private static void FlipByte(string path, long offset)
    {
        using var stream = new FileStream(path, FileMode.Open, FileAccess.ReadWrite);
        stream.Position = offset;
        int value = stream.ReadByte();
        stream.Position = offset;
        stream.WriteByte((byte)(value ^ 0xff));
    }

    /// <summary>A standalone file with data at 4k, then 8 KiB of garbage appended past its end: a leak of 8 KiB.</summary>
    private static string MakeLeakyFile(TempDir dir, out long cleanLength)
    {
        string path = ToolFiles.MakeStandalone(dir);
        Assert.That(Bcow.Run("io", path, "-c", "write -P 0x42 4k 8k").ExitCode, Is.Zero);
        cleanLength = new FileInfo(path).Length;
        using (var stream = new FileStream(path, FileMode.Append, FileAccess.Write))
        {
            stream.Write(Enumerable.Repeat((byte)0x99, 8192).ToArray());
        }
        return path;
    }
}
