namespace BAOverlay.Fuse;

/// <summary>libfuse3 cannot be used here: not installed, too old, or an unsupported platform. The message says what
/// to install.</summary>
public sealed class FuseUnavailableException : Exception
{
    /// <summary>Creates the exception with a message that says what is missing and how to install it.</summary>
    public FuseUnavailableException(string message)
        : base(message)
    {
    }
}
