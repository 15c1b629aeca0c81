using System.Reflection;
using System.Text;

namespace BAOverlay.Tests;

/// <summary>
/// The library's public surface, compared with an approved snapshot, so that a change to it is a visible decision:
/// when this fails, read the diff, and if the change is meant, copy the received file over the approved one.
/// </summary>
public class PublicApiTests
{
    [Test]
    public void PublicSurfaceMatchesTheApprovedSnapshot()
    {
        string actual = Describe(typeof(BCowFile).Assembly);
        // The approved file is copied next to the test assembly (source paths are not real paths in CI builds).
        string approvedPath = Path.Combine(AppContext.BaseDirectory, "PublicApi.approved.txt");
        Assert.That(File.Exists(approvedPath), Is.True, $"{approvedPath} is missing from the test output");
        string approved = File.ReadAllText(approvedPath);
        if (actual != approved)
        {
            // Beside the approved file in the source tree when the tests run from it, else beside the assembly.
            string sourceFolder = Path.GetFullPath(Path.Combine(AppContext.BaseDirectory, "..", "..", "..", ""));
            string folder = File.Exists(Path.Combine(sourceFolder, "PublicApi.approved.txt")) ? sourceFolder : AppContext.BaseDirectory;
            string received = Path.Combine(folder, "PublicApi.received.txt");
            File.WriteAllText(received, actual);
            Assert.Fail($"The public API changed. Compare {received} with {Path.Combine(folder, "PublicApi.approved.txt")}; if the change is meant, replace the approved file.");
        }
    }

    private static string Describe(Assembly assembly)
    {
        var text = new StringBuilder();
        foreach (Type type in assembly.GetExportedTypes().OrderBy(t => t.FullName, StringComparer.Ordinal))
        {
            string kind = type.IsEnum ? "enum" : type.IsInterface ? "interface" : type.IsValueType ? "struct" : type.IsAbstract && type.IsSealed ? "static class" : "class";
            string baseType = type.BaseType is { } b && b != typeof(object) && b != typeof(ValueType) && b != typeof(Enum) ? $" : {b.Name}" : "";
            text.AppendLine($"{kind} {type.FullName}{baseType}");
            if (type.IsEnum)
            {
                foreach (string name in Enum.GetNames(type))
                {
                    text.AppendLine($"  {name} = {Convert.ToInt64(Enum.Parse(type, name))}");
                }
                continue;
            }
            const BindingFlags flags = BindingFlags.Public | BindingFlags.Instance | BindingFlags.Static | BindingFlags.DeclaredOnly;
            var members = new List<string>();
            foreach (MemberInfo member in type.GetMembers(flags))
            {
                switch (member)
                {
                    case ConstructorInfo c:
                        members.Add($"ctor({Parameters(c)})");
                        break;
                    case MethodInfo m when !m.IsSpecialName:
                        members.Add($"{(m.IsStatic ? "static " : "")}{Name(m.ReturnType)} {m.Name}({Parameters(m)})");
                        break;
                    case PropertyInfo p:
                        members.Add($"{Name(p.PropertyType)} {p.Name} {{{(p.GetMethod?.IsPublic == true ? " get;" : "")}{(p.SetMethod?.IsPublic == true ? " set;" : "")} }}");
                        break;
                    case FieldInfo f:
                        members.Add($"{(f.IsLiteral ? "const " : f.IsStatic ? "static " : "")}{Name(f.FieldType)} {f.Name}");
                        break;
                }
            }
            foreach (string member in members.Order(StringComparer.Ordinal))
            {
                text.AppendLine("  " + member);
            }
        }
        return text.ToString();
    }

    private static string Parameters(MethodBase method) =>
        string.Join(", ", method.GetParameters().Select(p => $"{Name(p.ParameterType)} {p.Name}{(p.HasDefaultValue ? " = " + (p.DefaultValue ?? "null") : "")}"));

    private static string Name(Type type)
    {
        if (type.IsGenericType)
        {
            string name = type.Name[..type.Name.IndexOf('`')];
            return $"{name}<{string.Join(", ", type.GetGenericArguments().Select(Name))}>";
        }
        return type.IsByRef ? "ref " + Name(type.GetElementType()!) : type.Name;
    }
}
