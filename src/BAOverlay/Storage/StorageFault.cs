namespace BAOverlay.Storage;

/// <summary>What <see cref="FaultInjectingStorage"/> does at a scheduled operation.</summary>
public enum StorageFault
{
    /// <summary>The operation fails with EIO and changes nothing.</summary>
    IOError,

    /// <summary>The operation fails with ENOSPC and changes nothing.</summary>
    NoSpace,

    /// <summary>A write stores only its first half (rounded down to 512 bytes) and then fails with EIO.</summary>
    TornWrite,

    /// <summary>
    /// Power is cut before the operation: it and every later operation fail, and only what was durable at the
    /// last completed flush survives (see <see cref="FaultInjectingStorage.CrashImage"/>).
    /// </summary>
    PowerCut,
}
