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
        string approvedPath = Path.Combine(SourceFolder(), "PublicApi.approved.txt");
        string approved = File.Exists(approvedPath) ? File.ReadAllText(approvedPath) : "";
        if (actual != approved)
        {
            string received = Path.Combine(SourceFolder(), "PublicApi.received.txt");
            File.WriteAllText(received, actual);
            Assert.Fail($"The public API changed. Compare {received} with {approvedPath}; if the change is meant, replace the approved file.");
        }
    }

    private static string SourceFolder([System.Runtime.CompilerServices.CallerFilePath] string path = "") => Path.GetDirectoryName(path)!;

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
