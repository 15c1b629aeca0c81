namespace BAOverlay.Format;

/// <summary>Where the bytes of one block of an overlay file come from.</summary>
public enum BlockState
{
    /// <summary>Not in the upper file: read from the lower file (or zeros where there is no lower byte).</summary>
    Lower = 0,

    /// <summary>Reads as zeros; no space allocated.</summary>
    Zero = 1,

    /// <summary>Wholly present in the upper file.</summary>
    Present = 2,

    /// <summary>
    /// Allocated in the upper file, but only the sub-blocks marked in the entry's bitmap are valid there; the
    /// others still read from the lower file until the background copier fills them.
    /// </summary>
    Partial = 3,
}
