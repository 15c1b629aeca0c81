using System.Buffers;
using Mono.Unix.Native;

namespace BAOverlay.Store;

/// <summary>
/// Copies a directory tree (a layer as container tools unpack it: overlay whiteouts as 0/0 character devices, opaque
/// directories marked by <c>trusted.overlay.opaque</c>) into a staging directory, with owners, modes, times and
/// extended attributes. Symbolic links are copied as links, never followed; hard links become separate files (link
/// counts are not part of a layer's identity). Sockets are refused.
/// </summary>
internal static class TreeCopier
{
    public static void Copy(StoreDirectory source, StoreDirectory destination, Action heartbeat, CancellationToken cancellation)
    {
        byte[] buffer = ArrayPool<byte>.Shared.Rent(1 << 20);
        try
        {
            CopyChildren(source, destination, buffer, heartbeat, 0, cancellation);
            TreeBuilder.FinishDirectory(destination, Metadata(source, null, source.StatSelf()), isRoot: true);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    private static void CopyChildren(StoreDirectory source, StoreDirectory destination, byte[] buffer, Action heartbeat, int depth, CancellationToken cancellation)
    {
        if (depth > StoreLayout.MaxDepth)
        {
            throw new LayerStoreException(source.Described, $"deeper than the {StoreLayout.MaxDepth} levels a layer may have");
        }
        foreach (string name in source.Names())
        {
            cancellation.ThrowIfCancellationRequested();
            heartbeat();
            if (!source.TryLstat(name, out Stat stat))
            {
                throw new LayerStoreException(source.Describe(name), "removed while the layer was copied");
            }
            NodeMetadata metadata = Metadata(source, name, stat);
            FilePermissions type = stat.st_mode & FilePermissions.S_IFMT;
            switch (type)
            {
                case FilePermissions.S_IFDIR:
                    TreeBuilder.CreateDirectory(destination, name, metadata);
                    using (StoreDirectory from = source.OpenChild(name))
                    using (StoreDirectory to = destination.OpenChild(name))
                    {
                        CopyChildren(from, to, buffer, heartbeat, depth + 1, cancellation);
                        TreeBuilder.FinishDirectory(to, metadata, isRoot: false);
                    }
                    break;
                case FilePermissions.S_IFREG:
                    using (var handle = source.OpenFileForReading(name, out long length))
                    using (var stream = new FileStream(handle, FileAccess.Read, bufferSize: 0))
                    {
                        TreeBuilder.CreateFile(destination, name, metadata, stream, length, buffer);
                    }
                    break;
                case FilePermissions.S_IFLNK:
                    TreeBuilder.CreateSymbolicLink(destination, name, source.ReadLink(name), metadata);
                    break;
                case FilePermissions.S_IFCHR:
                case FilePermissions.S_IFBLK:
                    (uint major, uint minor) = TreeDigest.Device(stat.st_rdev);
                    TreeBuilder.CreateNode(destination, name, type, major, minor, metadata);
                    break;
                case FilePermissions.S_IFIFO:
                    TreeBuilder.CreateNode(destination, name, type, 0, 0, metadata);
                    break;
                default:
                    throw new LayerStoreException(source.Describe(name), "a socket or an unknown kind of file: a layer cannot hold one");
            }
        }
    }

    private static NodeMetadata Metadata(StoreDirectory directory, string? name, Stat stat) =>
        new((uint)stat.st_mode & 0xFFF, stat.st_uid, stat.st_gid, stat.st_mtime, stat.st_mtime_nsec, directory.Xattrs(name) ?? []);
}
