using System.Reflection;
using System.Text;

namespace BAOverlay.Tests;

/// <summary>
/// The part of the public surface that the PublicAPI analyzer (src/BAOverlay/PublicAPI.*.txt, RS0016/RS0017) does not
/// record: each public type's kind, whether it is sealed, its base type and every interface it implements. The
/// analyzer lists members only, so an interface implemented explicitly, a base class changed or a class unsealed would
/// pass it unseen. When this fails, read the diff, and if the change is meant, copy the received file over the
/// approved one.
/// </summary>
public class PublicApiTests
{
    private const string Approved = "PublicTypes.approved.txt";

    [Test]
    public void PublicTypesKeepTheirKindBaseTypeAndInterfaces()
    {
        string actual = Describe(typeof(BCowFile).Assembly);
        // The approved file is copied next to the test assembly (source paths are not real paths in CI builds).
        string approvedPath = Path.Combine(AppContext.BaseDirectory, Approved);
        Assert.That(File.Exists(approvedPath), Is.True, $"{approvedPath} is missing from the test output");
        string approved = File.ReadAllText(approvedPath);
        if (actual != approved)
        {
            // Beside the approved file in the source tree when the tests run from it, else beside the assembly.
            string sourceFolder = Path.GetFullPath(Path.Combine(AppContext.BaseDirectory, "..", "..", ".."));
            string folder = File.Exists(Path.Combine(sourceFolder, Approved)) ? sourceFolder : AppContext.BaseDirectory;
            string received = Path.Combine(folder, "PublicTypes.received.txt");
            File.WriteAllText(received, actual);
            Assert.Fail($"A public type's kind, base type or interfaces changed. Compare {received} with {Path.Combine(folder, Approved)}; if the change is meant, replace the approved file.");
        }
    }

    private static string Describe(Assembly assembly)
    {
        var text = new StringBuilder();
        foreach (Type type in assembly.GetExportedTypes().OrderBy(t => t.FullName, StringComparer.Ordinal))
        {
            if (type.IsEnum)
            {
                // What the runtime gives every enum is left out; the underlying type is the enum's own choice.
                text.AppendLine($"enum {type.FullName} : {Name(Enum.GetUnderlyingType(type))}");
                continue;
            }
            if (type.IsSubclassOf(typeof(Delegate)))
            {
                text.AppendLine($"delegate {type.FullName}"); // its Invoke signature is in the analyzer's files
                continue;
            }
            string kind = type.IsInterface ? "interface" : type.IsValueType ? "struct"
                : type.IsAbstract && type.IsSealed ? "static class" : type.IsAbstract ? "abstract class"
                : type.IsSealed ? "sealed class" : "class";
            var bases = new List<string>();
            if (type.BaseType is { } b && b != typeof(object) && b != typeof(ValueType))
            {
                bases.Add(Name(b));
            }
            bases.AddRange(type.GetInterfaces().Select(Name).Order(StringComparer.Ordinal));
            text.AppendLine($"{kind} {type.FullName}{(bases.Count > 0 ? " : " + string.Join(", ", bases) : "")}");
        }
        return text.ToString();
    }

    private static string Name(Type type) =>
        type.IsGenericType
            ? $"{type.Namespace}.{type.Name[..type.Name.IndexOf('`')]}<{string.Join(", ", type.GetGenericArguments().Select(Name))}>"
            : type.FullName ?? type.Name;
}
