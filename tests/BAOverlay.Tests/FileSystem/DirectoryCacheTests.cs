using System.Collections.Concurrent;
using System.Text;
using BAOverlay.FileSystem;
using Mono.Unix.Native;
using static BAOverlay.Tests.FileSystem.OverlayFixture;

namespace BAOverlay.Tests.FileSystem;

/// <summary>
/// Tries to break the listings the overlay keeps per directory: every kind of change made while the listings are
/// kept, then each kept listing is compared with a fresh overlay over the same layers (which has none) and with the
/// overlay's own check. Also: open directory handles across changes, permission checks on a kept listing, and
/// listings taken while other threads change the directory. Needs root for 0/0 whiteout devices.
/// </summary>
public class DirectoryCacheTests
{
    private const uint Fifo = 0x1000;
    private static readonly OverlayCaller Root = new(0, 0, 0x12);

    /// <summary>One change to the tree of <see cref="Layers"/>, by paths.</summary>
    public sealed record Change(string Name, Action<OverlayFileSystem> Apply)
    {
        public override string ToString() => Name;
    }

    private static (ulong Parent, string Name) Split(OverlayFileSystem fs, string path)
    {
        int slash = path.LastIndexOf('/');
        return slash < 0 ? (OverlayFileSystem.RootIno, path) : (Resolve(fs, path[..slash]).Ino, path[(slash + 1)..]);
    }

    private static void Create(OverlayFileSystem fs, string path, string content = "")
    {
        var (parent, name) = Split(fs, path);
        var (_, handle) = fs.Create(parent, name, Mode("644"), Root);
        using (handle)
        {
            handle.Write(Encoding.UTF8.GetBytes(content), 0);
        }
    }

    private static void Mkdir(OverlayFileSystem fs, string path)
    {
        var (parent, name) = Split(fs, path);
        fs.MakeDirectory(parent, name, Mode("755"), Root);
    }

    private static void Unlink(OverlayFileSystem fs, string path)
    {
        var (parent, name) = Split(fs, path);
        fs.Unlink(parent, name);
    }

    private static void Rmdir(OverlayFileSystem fs, string path)
    {
        var (parent, name) = Split(fs, path);
        fs.RemoveDirectory(parent, name);
    }

    private static void Rename(OverlayFileSystem fs, string from, string to, OverlayRenameFlags flags = OverlayRenameFlags.None)
    {
        var (parent, name) = Split(fs, from);
        var (newParent, newName) = Split(fs, to);
        fs.Rename(parent, name, newParent, newName, flags);
    }

    private static void Fails(OverlayErrno errno, Action action) =>
        Assert.That(Assert.Throws<OverlayException>(() => action())!.Errno, Is.EqualTo(errno));

    /// <summary>
    /// d merges three layers: a lower file hidden in the middle layer (b), hard links (h1, h2), a lower directory
    /// (ld), a middle one (ld2), an upper file and directory (u, ud); e is lower only.
    /// </summary>
    private static void Layers(OverlayFixture f)
    {
        string bottom = f.Lowers[1], middle = f.Lowers[0], upper = f.Upper!;
        WriteFile(Path.Combine(bottom, "d", "a"), "a");
        WriteFile(Path.Combine(bottom, "d", "b"), "b");
        WriteFile(Path.Combine(bottom, "d", "sub", "x"), "x");
        WriteFile(Path.Combine(bottom, "d", "h1"), "h");
        Assert.That(Syscall.link(Path.Combine(bottom, "d", "h1"), Path.Combine(bottom, "d", "h2")), Is.Zero);
        WriteFile(Path.Combine(bottom, "d", "ld", "y"), "y");
        WriteFile(Path.Combine(bottom, "d", "big"), new byte[200 * 1024]);
        WriteFile(Path.Combine(bottom, "e", "q"), "q");
        WriteFile(Path.Combine(middle, "d", "c"), "c");
        Whiteout(Path.Combine(middle, "d", "b"));
        WriteFile(Path.Combine(middle, "d", "ld2", "z"), "z");
        WriteFile(Path.Combine(middle, "d", "ld", "y2"), "y2");
        WriteFile(Path.Combine(upper, "d", "u"), "u");
        WriteFile(Path.Combine(upper, "d", "ud", "v"), "v");
    }

    public static IEnumerable<Change> Changes()
    {
        yield return new("create", fs => Create(fs, "d/n", "n"));
        yield return new("create over a lower name whited out below", fs => Create(fs, "d/b", "new b"));
        yield return new("mkdir", fs => Mkdir(fs, "d/n"));
        yield return new("mkdir, then fill it", fs =>
        {
            Mkdir(fs, "d/n");
            List(fs, "d/n");
            Create(fs, "d/n/f");
            Mkdir(fs, "d/n/g");
        });
        yield return new("mkdir over a lower name whited out below", fs => Mkdir(fs, "d/b"));
        yield return new("symlink", fs =>
        {
            var (parent, name) = Split(fs, "d/n");
            fs.MakeSymbolicLink(parent, name, "../nowhere", Root);
        });
        yield return new("mknod fifo", fs =>
        {
            var (parent, name) = Split(fs, "d/n");
            fs.MakeNode(parent, name, Fifo | Mode("644"), 0, Root);
        });
        yield return new("hard link of a lower file", fs =>
        {
            var (parent, name) = Split(fs, "d/n");
            fs.Link(Resolve(fs, "d/a").Ino, parent, name);
        });
        yield return new("hard link into another directory", fs =>
        {
            var (parent, name) = Split(fs, "e/n");
            fs.Link(Resolve(fs, "d/u").Ino, parent, name);
        });
        yield return new("unlink an upper file", fs => Unlink(fs, "d/u"));
        yield return new("unlink a lower file (whiteout)", fs => Unlink(fs, "d/a"));
        yield return new("unlink a lower hard link", fs => Unlink(fs, "d/h1"));
        yield return new("unlink, then create the name again", fs =>
        {
            Unlink(fs, "d/a");
            List(fs, "d");
            Create(fs, "d/a", "again");
        });
        yield return new("create, then unlink", fs =>
        {
            Create(fs, "d/n");
            List(fs, "d");
            Unlink(fs, "d/n");
        });
        yield return new("rmdir an upper directory", fs =>
        {
            List(fs, "d/ud");
            Unlink(fs, "d/ud/v");
            Rmdir(fs, "d/ud");
        });
        yield return new("rmdir a merged lower directory", fs =>
        {
            List(fs, "d/ld");
            Unlink(fs, "d/ld/y");
            Unlink(fs, "d/ld/y2");
            Rmdir(fs, "d/ld");
        });
        yield return new("rmdir, then mkdir the name again (opaque)", fs =>
        {
            List(fs, "d/ld2");
            Unlink(fs, "d/ld2/z");
            Rmdir(fs, "d/ld2");
            List(fs, "d");
            Mkdir(fs, "d/ld2");
        });
        yield return new("rmdir of a directory that is not empty fails", fs => Fails(OverlayErrno.ENOTEMPTY, () => Rmdir(fs, "d/sub")));
        yield return new("create of an existing name fails", fs => Fails(OverlayErrno.EEXIST, () => Create(fs, "d/a")));
        yield return new("rename a lower file in its directory", fs => Rename(fs, "d/a", "d/a2"));
        yield return new("rename an upper file over a lower file", fs => Rename(fs, "d/u", "d/c"));
        yield return new("rename a lower file over an upper file", fs => Rename(fs, "d/c", "d/u"));
        yield return new("rename a hard link over its twin", fs => Rename(fs, "d/h1", "d/h2"));
        yield return new("rename a merged directory (redirect)", fs =>
        {
            List(fs, "d/ld");
            Rename(fs, "d/ld", "d/ld3");
        });
        yield return new("rename a directory over an empty one", fs =>
        {
            Mkdir(fs, "d/empty");
            List(fs, "d/empty");
            Rename(fs, "d/ud", "d/empty");
        });
        yield return new("rename a directory to another directory", fs =>
        {
            List(fs, "d/ud");
            Rename(fs, "d/ud", "e/ud");
            Create(fs, "e/ud/w");
        });
        yield return new("rename a lower file from another directory", fs => Rename(fs, "e/q", "d/q"));
        yield return new("rename with noreplace onto an existing name fails", fs =>
            Fails(OverlayErrno.EEXIST, () => Rename(fs, "d/a", "d/c", OverlayRenameFlags.NoReplace)));
        yield return new("exchange a lower file and an upper file", fs => Rename(fs, "d/a", "d/u", OverlayRenameFlags.Exchange));
        yield return new("exchange a file and a directory across directories", fs =>
            Rename(fs, "e/q", "d/ud", OverlayRenameFlags.Exchange));
        yield return new("write into a lower file (copy-up)", fs => WriteAt(fs, "d/a", 0, "A"u8.ToArray()));
        yield return new("write into a large lower file (block copy-up)", fs => WriteAt(fs, "d/big", 4096, "B"u8.ToArray()));
        yield return new("write into a lower hard link", fs => WriteAt(fs, "d/h2", 0, "H"u8.ToArray()));
        yield return new("truncate a lower file", fs => fs.SetAttr(Resolve(fs, "d/c").Ino, new OverlaySetAttr { Size = 0 }, Root));
        yield return new("chmod a lower directory (copy-up of the directory)", fs =>
            fs.SetAttr(Resolve(fs, "d/ld").Ino, new OverlaySetAttr { Mode = Mode("700") }, Root));
        yield return new("set an xattr on a lower file", fs => fs.SetXattr(Resolve(fs, "d/a").Ino, "user.test", "1"u8));
        yield return new("create in a lower-only directory (copy-up of the directory)", fs => Create(fs, "e/n"));
        yield return new("open for writing with truncate", fs =>
        {
            using OverlayHandle handle = fs.Open(Resolve(fs, "d/c").Ino, write: true, truncate: true);
        });
    }

    [TestCaseSource(nameof(Changes))]
    public void AKeptListingEqualsAFreshReadAfter(Change change)
    {
        RequireRoot();
        using var f = new OverlayFixture();
        Layers(f);
        using OverlayFileSystem fs = f.Open();
        Listings(fs); // every directory's listing is now kept
        change.Apply(fs);
        Assert.That(fs.CheckListings(), Is.Empty, "kept listings that differ from their layers");
        SortedDictionary<string, string> kept = Listings(fs);
        using OverlayFileSystem fresh = f.Open();
        Assert.That(kept, Is.EqualTo(Listings(fresh)), "the listings of an overlay that kept them, and of a fresh one");
        Assert.That(fs.CheckListings(), Is.Empty, "kept listings after listing everything again");
    }

    [Test]
    public void AnOpenDirectoryListingKeepsItsEntriesAndOffsetsAcrossChanges()
    {
        RequireRoot();
        using var f = new OverlayFixture();
        Layers(f);
        using OverlayFileSystem fs = f.Open();
        ulong d = Resolve(fs, "d").Ino;
        IReadOnlyList<OverlayDirEntry> first = fs.ReadDirectory(d);
        string[] firstNames = first.Select(e => e.Name).ToArray();
        Create(fs, "d/n");
        IReadOnlyList<OverlayDirEntry> second = fs.ReadDirectory(d);
        Unlink(fs, "d/a");
        Unlink(fs, "d/u");
        IReadOnlyList<OverlayDirEntry> third = fs.ReadDirectory(d);

        Assert.That(first.Select(e => e.Name), Is.EqualTo(firstNames), "the first handle still reads what it read at opendir");
        Assert.That(first.Select(e => e.NextOffset), Is.EqualTo(Enumerable.Range(1, first.Count).Select(i => (long)i)), "offsets by position");
        Assert.That(Names(second), Is.EquivalentTo(Names(first).Append("n")));
        Assert.That(Names(third), Is.EquivalentTo(Names(second).Except(["a", "u"])));
        Assert.That(Names(third), Is.Unique);
        Assert.That(first[0].Name, Is.EqualTo("."));
        Assert.That(first[1].Name, Is.EqualTo(".."));
        Assert.That(third[0].Name, Is.EqualTo("."));
        Assert.That(third[1].Name, Is.EqualTo(".."));
    }

    [Test]
    public void DotDotOfAKeptListingFollowsTheDirectoryWhenItMoves()
    {
        RequireRoot();
        using var f = new OverlayFixture();
        Layers(f);
        using OverlayFileSystem fs = f.Open();
        ulong ud = Resolve(fs, "d/ud").Ino;
        Assert.That(fs.ReadDirectory(ud)[1].Ino, Is.EqualTo(Resolve(fs, "d").Ino));
        Rename(fs, "d/ud", "e/ud");
        Assert.That(fs.ReadDirectory(Resolve(fs, "e/ud").Ino)[1].Ino, Is.EqualTo(Resolve(fs, "e").Ino));
    }

    [Test]
    public void AKeptListingStillChecksTheCallersReadPermission()
    {
        RequireRoot();
        using var f = new OverlayFixture();
        WriteFile(Path.Combine(f.Upper!, "private", "secret"), "s");
        Assert.That(Syscall.chmod(Path.Combine(f.Upper!, "private"), (FilePermissions)Mode("700")), Is.Zero);
        using OverlayFileSystem fs = f.Open();
        ulong ino = Resolve(fs, "private").Ino;
        Assert.That(Names(fs.ReadDirectory(ino, Root)), Is.EquivalentTo(new[] { "secret" }));
        Fails(OverlayErrno.EACCES, () => fs.ReadDirectory(ino, new OverlayCaller(1000, 1000)));
    }

    [Test]
    public void ListingsTakenWhileOtherThreadsChangeTheDirectoryAreEachAMomentOfEveryThreadsHistory()
    {
        RequireRoot();
        const int writers = 3, readers = 2, rounds = 60;
        using var f = new OverlayFixture();
        for (int i = 0; i < 20; i++)
        {
            WriteFile(Path.Combine(f.Lowers[0], "shared", $"lower{i:D2}"), "l");
        }
        using OverlayFileSystem fs = f.Open();
        ulong shared = Resolve(fs, "shared").Ino;

        // Each writer walks its own names through a fixed sequence of states; a listing must show, for every writer,
        // one of its states, and a later listing on the same thread never an earlier state.
        var histories = new List<string>[writers];
        var steps = new Action[writers][];
        for (int w = 0; w < writers; w++)
        {
            int writer = w;
            var names = new SortedSet<string>(StringComparer.Ordinal);
            var history = new List<string> { "" };
            var actions = new List<Action>();
            void Step(Action act, Action<SortedSet<string>> model)
            {
                actions.Add(act);
                model(names);
                history.Add(string.Join(",", names));
            }
            for (int r = 0; r < rounds; r++)
            {
                string a = $"w{writer}-a{r % 5}", b = $"w{writer}-b{r % 5}", c = $"w{writer}-c{r % 5}";
                Step(() => Create(fs, $"shared/{a}"), s => s.Add(a));
                Step(() => Mkdir(fs, $"shared/{b}"), s => s.Add(b));
                Step(() => Rename(fs, $"shared/{a}", $"shared/{c}"), s => { s.Remove(a); s.Add(c); });
                Step(() => Rmdir(fs, $"shared/{b}"), s => s.Remove(b));
                Step(() => Unlink(fs, $"shared/{c}"), s => s.Remove(c));
                if (r % 3 == 0)
                {
                    string lower = $"lower{(writer * 6) + (r / 3 % 6):D2}";
                    Step(() => WriteAt(fs, $"shared/{lower}", 0, "w"u8.ToArray()), _ => { });
                }
            }
            histories[writer] = history;
            steps[writer] = actions.ToArray();
        }

        var failures = new ConcurrentQueue<string>();
        using var stop = new CancellationTokenSource();
        var readerThreads = Enumerable.Range(0, readers).Select(_ => new Thread(() =>
        {
            int[] seen = new int[writers];
            while (!stop.IsCancellationRequested)
            {
                try
                {
                    List<string> listed = Names(fs.ReadDirectory(shared)).ToList();
                    if (listed.Count != listed.Distinct().Count())
                    {
                        failures.Enqueue("a name listed twice: " + string.Join(",", listed));
                    }
                    if (listed.Count(n => n.StartsWith("lower", StringComparison.Ordinal)) != 20)
                    {
                        failures.Enqueue("lower names missing: " + string.Join(",", listed));
                    }
                    for (int w = 0; w < writers; w++)
                    {
                        string mine = string.Join(",", listed.Where(n => n.StartsWith($"w{w}-", StringComparison.Ordinal)).Order(StringComparer.Ordinal));
                        int at = histories[w].FindIndex(seen[w], state => state == mine);
                        if (at < 0)
                        {
                            failures.Enqueue($"writer {w}: listed [{mine}], which is not one of its states from {seen[w]} on");
                        }
                        else
                        {
                            seen[w] = at;
                        }
                    }
                }
                catch (Exception e)
                {
                    failures.Enqueue(e.ToString());
                }
            }
        })).ToList();
        var writerThreads = Enumerable.Range(0, writers).Select(w => new Thread(() =>
        {
            try
            {
                foreach (Action step in steps[w])
                {
                    step();
                }
            }
            catch (Exception e)
            {
                failures.Enqueue($"writer {w}: {e}");
            }
        })).ToList();
        readerThreads.ForEach(t => t.Start());
        writerThreads.ForEach(t => t.Start());
        writerThreads.ForEach(t => t.Join());
        stop.Cancel();
        readerThreads.ForEach(t => t.Join());

        Assert.That(failures, Is.Empty);
        Assert.That(fs.CheckListings(), Is.Empty);
        using OverlayFileSystem fresh = f.Open();
        Assert.That(Listings(fs), Is.EqualTo(Listings(fresh)));
    }

    private static void RequireRoot()
    {
        if (Syscall.geteuid() != 0)
        {
            Assert.Ignore("needs root: whiteouts are 0/0 character devices");
        }
    }

    private static IEnumerable<string> Names(IReadOnlyList<OverlayDirEntry> entries) =>
        entries.Select(e => e.Name).Where(n => n is not "." and not "..");

    /// <summary>Every directory's listing ("name ino type" lines, sorted), by path; also checks that "." and ".."
    /// come first with the right numbers and that lookup agrees with each entry.</summary>
    private static SortedDictionary<string, string> Listings(OverlayFileSystem fs)
    {
        var result = new SortedDictionary<string, string>(StringComparer.Ordinal);
        void From(ulong ino, ulong parent, string path)
        {
            IReadOnlyList<OverlayDirEntry> entries = fs.ReadDirectory(ino);
            Assert.That(entries[0], Is.EqualTo(new OverlayDirEntry(".", ino, 0x4000, 1)), $"{path}: .");
            Assert.That(entries[1], Is.EqualTo(new OverlayDirEntry("..", parent, 0x4000, 2)), $"{path}: ..");
            var lines = new List<string>();
            for (int i = 2; i < entries.Count; i++)
            {
                OverlayDirEntry entry = entries[i];
                Assert.That(entry.NextOffset, Is.EqualTo(i + 1), $"{path}/{entry.Name}: offset");
                OverlayStat stat = fs.Lookup(ino, entry.Name);
                Assert.That((stat.Ino, stat.Mode & 0xF000), Is.EqualTo((entry.Ino, entry.Type)), $"{path}/{entry.Name}: lookup agrees with the listing");
                lines.Add($"{entry.Name} {entry.Ino:x} {entry.Type:x}");
                if (stat.IsDirectory)
                {
                    From(stat.Ino, ino, path + "/" + entry.Name);
                }
            }
            lines.Sort(StringComparer.Ordinal);
            result[path.Length == 0 ? "/" : path] = string.Join("\n", lines);
        }
        From(OverlayFileSystem.RootIno, OverlayFileSystem.RootIno, "");
        return result;
    }
}
