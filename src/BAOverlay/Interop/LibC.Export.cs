using System.Runtime.InteropServices;

namespace BAOverlay.Interop;

/// <summary>Calls the upper-layer export needs (kept in a file of their own next to <c>LibC.cs</c>).</summary>
internal static partial class LibC
{
    // int syncfs(int fd);
    [LibraryImport(Library, EntryPoint = "syncfs", SetLastError = true)]
    public static partial int syncfs(int fd);
}
