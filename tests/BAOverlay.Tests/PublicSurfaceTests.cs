using System.Reflection;
using System.Runtime.Versioning;

namespace BAOverlay.Tests;

/// <summary>
/// What the analyzer's PublicAPI files cannot say: that the public surface of BAOverlay.dll names no type of another
/// package. The package uses Mono.Posix.NETStandard inside; a user who sees one of its types in a signature has to
/// reference it too, and we could never replace it without breaking them.
/// </summary>
public class PublicSurfaceTests
{
    private static readonly string FrameworkDirectory = Path.GetDirectoryName(typeof(object).Assembly.Location)!;

    [Test]
    public void PublicSignaturesNameOnlyOurTypesAndTheFrameworks()
    {
        Assembly library = typeof(BCowFile).Assembly;
        var foreign = new SortedSet<string>(StringComparer.Ordinal);
        foreach (Type type in library.GetExportedTypes())
        {
            Check(type.BaseType, type.FullName!);
            foreach (Type implemented in type.GetInterfaces())
            {
                Check(implemented, type.FullName!);
            }
            foreach (Type parameter in type.IsGenericTypeDefinition ? type.GetGenericArguments() : [])
            {
                foreach (Type constraint in parameter.GetGenericParameterConstraints())
                {
                    Check(constraint, type.FullName!);
                }
            }
            const BindingFlags all = BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.Instance | BindingFlags.Static | BindingFlags.DeclaredOnly;
            foreach (MemberInfo member in type.GetMembers(all).Where(m => IsVisible(m, type)))
            {
                string where = $"{type.FullName}.{member.Name}";
                switch (member)
                {
                    case FieldInfo f:
                        Check(f.FieldType, where);
                        break;
                    case PropertyInfo p:
                        Check(p.PropertyType, where);
                        foreach (ParameterInfo index in p.GetIndexParameters())
                        {
                            Check(index.ParameterType, where);
                        }
                        break;
                    case EventInfo e:
                        Check(e.EventHandlerType, where);
                        break;
                    case MethodBase m:
                        if (m is MethodInfo method)
                        {
                            Check(method.ReturnType, where);
                        }
                        foreach (ParameterInfo parameter in m.GetParameters())
                        {
                            Check(parameter.ParameterType, where);
                        }
                        break;
                }
            }
        }
        Assert.That(foreign, Is.Empty, "public or protected signatures of BAOverlay.dll that name another package's type");

        void Check(Type? type, string where)
        {
            if (type is null || type.IsGenericParameter)
            {
                return;
            }
            if (type.HasElementType)
            {
                Check(type.GetElementType(), where);
                return;
            }
            if (type.IsGenericType && !type.IsGenericTypeDefinition)
            {
                Check(type.GetGenericTypeDefinition(), where);
                foreach (Type argument in type.GetGenericArguments())
                {
                    Check(argument, where);
                }
                return;
            }
            if (type.Assembly != library && Path.GetDirectoryName(type.Assembly.Location) != FrameworkDirectory)
            {
                foreign.Add($"{where}: {type.FullName} ({type.Assembly.GetName().Name})");
            }
        }
    }

    [Test]
    public void LibrarySaysItSupportsLinuxOnly()
    {
        // The platform analyzer (CA1416) of a user's project reads this to warn a call from code built for other systems.
        string[] platforms = typeof(BCowFile).Assembly.GetCustomAttributes<SupportedOSPlatformAttribute>().Select(a => a.PlatformName).ToArray();
        Assert.That(platforms, Is.EqualTo(new[] { "linux" }));
    }

    /// <summary>Public, or protected in a type a user can derive from.</summary>
    private static bool IsVisible(MemberInfo member, Type declaring)
    {
        bool derivable = !declaring.IsSealed && !declaring.IsInterface;
        return member switch
        {
            FieldInfo f => f.IsPublic || derivable && (f.IsFamily || f.IsFamilyOrAssembly),
            MethodBase m => m.IsPublic || derivable && (m.IsFamily || m.IsFamilyOrAssembly),
            PropertyInfo p => p.GetAccessors(nonPublic: true).Any(a => IsVisible(a, declaring)),
            EventInfo e => e.AddMethod is { } add && IsVisible(add, declaring),
            _ => false, // nested types are exported types of their own
        };
    }
}
