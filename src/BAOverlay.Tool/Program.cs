namespace BAOverlay.Tool;

internal static class Program
{
    private static int Main(string[] args)
    {
        using var cancellation = new CancellationTokenSource();
        // Ctrl+C cancels instead of killing the process, so flatten can remove its OUT.tmp on the way out.
        Console.CancelKeyPress += (_, e) =>
        {
            e.Cancel = true;
            cancellation.Cancel();
        };
        return BcowCli.Run(args, Console.Out, Console.Error, errorIsTerminal: !Console.IsErrorRedirected, cancellation.Token);
    }
}
