using BAOverlay.FileSystem;
using BAOverlay.Storage;

namespace BAOverlay.Tests.Engine;

/// <summary>
/// The examples of docs/testing-with-fake-storage.md, as a user's own tests would run them: if one of these fails,
/// the page is wrong.
/// </summary>
public class StorageFakesExampleTests
{
    [Test]
    public void WhatWasFlushedSurvivesAPowerCutAndWhatWasNotIsGone()
    {
        MemoryStorage lower = MemoryStorage.FromBytes(new byte[1 << 20], "base.img", canWrite: false);
        var upper = new FaultInjectingStorage();
        var options = new BCowCreateOptions { Open = new BCowOpenOptions { CopyUpMode = CopyUpMode.Synchronous } };

        BCowFile file = BCowFile.Create(upper, lower, options);
        file.WriteAt("saved"u8, 0);
        file.Flush();                                             // durable from here on
        upper.FailWrite(upper.WriteCount, StorageFault.PowerCut); // the power goes at the next write
        Assert.Throws<IOException>(() =>
        {
            file.WriteAt("unsaved"u8, 65536);
            file.Flush();
        });
        Assert.That(upper.IsPoweredOff, Is.True);
        try
        {
            file.Dispose();                                       // the closing commit fails too: no power
        }
        catch (IOException)
        {
        }

        // What the disk holds after the crash: what the last completed flush made durable.
        using BCowFile reopened = BCowFile.Open(upper.CrashImage(), lower);
        byte[] saved = new byte[5], unsaved = new byte[7];
        reopened.ReadAt(saved, 0);
        reopened.ReadAt(unsaved, 65536);
        Assert.That(saved, Is.EqualTo("saved"u8.ToArray()));
        Assert.That(unsaved, Is.EqualTo(new byte[7]), "the lower file's zeros: the unflushed write is gone");
    }

    [Test]
    public void AFullDiskReachesTheCallerAsENOSPCAndTheFileGoesOn()
    {
        MemoryStorage lower = MemoryStorage.FromBytes(new byte[1 << 20], "base.img", canWrite: false);
        var upper = new FaultInjectingStorage();
        var options = new BCowCreateOptions { Open = new BCowOpenOptions { CopyUpMode = CopyUpMode.Synchronous } };

        using BCowFile file = BCowFile.Create(upper, lower, options);
        upper.FailWrite(upper.WriteCount, StorageFault.NoSpace); // the next write finds the disk full
        IOException? full = Assert.Throws<IOException>(() => file.WriteAt("x"u8, 0));
        Assert.That((OverlayErrno)full!.HResult, Is.EqualTo(OverlayErrno.ENOSPC));

        file.WriteAt("x"u8, 0);                                 // space again: the same write succeeds
        file.Flush();
        Checks.AssertClean(upper);
    }
}
