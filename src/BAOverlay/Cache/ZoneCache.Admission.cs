using System.Buffers;
using System.Collections.Concurrent;
using BAOverlay.Storage;

namespace BAOverlay.Cache;

/// <summary>Admission off the reader's thread (<see cref="ZoneCacheOptions.AdmitInBackground"/>).</summary>
public sealed partial class ZoneCache
{
    private const int MaxQueuedAdmissions = 256;

    /// <summary>A zone fetched whole by a reader, to be copied into the cache: the zone's bytes (a pooled buffer the
    /// admission returns), the remote file (for a new cache file's identity samples) and what to call when done with it.</summary>
    private sealed record QueuedAdmission(CachedFile File, int Zone, byte[] Buffer, int Length, IBlockStorage Remote, Action Done);

    private readonly BlockingCollection<QueuedAdmission> _queued = new(MaxQueuedAdmissions);
    private readonly object _drainGate = new();
    private Thread? _admitter;
    private int _pending;

    /// <summary>Whether admissions go to the cache's own thread.</summary>
    internal bool AdmitsInBackground => _options.AdmitInBackground;

    /// <summary>
    /// Queues the admission of a zone a reader fetched whole (its plan was <see cref="Plan.Admit"/>); on success the
    /// queue owns <paramref name="buffer"/> (returned to the shared pool after) and calls <paramref name="done"/> once
    /// it no longer reads <paramref name="remote"/>. False (nothing taken) when admissions are not made in the
    /// background, the queue is full, or the cache is closing: the caller admits the zone itself.
    /// </summary>
    internal bool TryAdmitLater(CachedFile file, int zone, byte[] buffer, int length, IBlockStorage remote, Action done)
    {
        if (!_options.AdmitInBackground || Volatile.Read(ref _disposed) != 0)
        {
            return false;
        }
        EnsureAdmitter();
        Interlocked.Increment(ref _pending);
        bool queued;
        try
        {
            queued = _queued.TryAdd(new QueuedAdmission(file, zone, buffer, length, remote, done));
        }
        catch (InvalidOperationException)
        {
            queued = false; // closing
        }
        if (!queued)
        {
            AdmissionDone();
        }
        return queued;
    }

    private void EnsureAdmitter()
    {
        if (Volatile.Read(ref _admitter) is not null)
        {
            return;
        }
        var thread = new Thread(AdmitQueued) { IsBackground = true, Name = "cache admission" };
        if (Interlocked.CompareExchange(ref _admitter, thread, null) is null)
        {
            thread.Start();
        }
    }

    private void AdmitQueued()
    {
        foreach (QueuedAdmission admission in _queued.GetConsumingEnumerable())
        {
            try
            {
                Admit(admission.File, admission.Zone, admission.Buffer.AsMemory(0, admission.Length), admission.Remote);
            }
            catch (Exception e)
            {
                // Admit logs and cancels what it expects; anything else must not end the thread.
                CancelAdmission(admission.File, admission.Zone);
                _log($"{admission.File.Key}: zone {admission.Zone} not cached: {e.Message}");
            }
            finally
            {
                ArrayPool<byte>.Shared.Return(admission.Buffer);
                admission.Done();
                AdmissionDone();
            }
        }
    }

    private void AdmissionDone()
    {
        if (Interlocked.Decrement(ref _pending) == 0)
        {
            lock (_drainGate)
            {
                Monitor.PulseAll(_drainGate);
            }
        }
    }

    /// <summary>Waits until the admissions queued so far are made (not on the admission thread itself).</summary>
    private void DrainAdmissions()
    {
        if (Thread.CurrentThread == Volatile.Read(ref _admitter))
        {
            return;
        }
        lock (_drainGate)
        {
            while (Volatile.Read(ref _pending) > 0)
            {
                Monitor.Wait(_drainGate, 100);
            }
        }
    }

    /// <summary>Makes the admissions queued, then lets the admission thread end.</summary>
    private void StopAdmitter()
    {
        _queued.CompleteAdding();
        if (Volatile.Read(ref _admitter) is { } thread && thread != Thread.CurrentThread)
        {
            thread.Join();
        }
    }
}
