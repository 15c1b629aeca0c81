namespace BAOverlay.Tool;

internal static class Program
{
    private static int Main(string[] args)
    {
        Console.Error.WriteLine("bcow: not yet implemented");
        return 1;
    }
}
