using System.Diagnostics.CodeAnalysis;

// RS0026 (no two public overloads with optional parameters) guards against a call that binds to a different overload
// once a later version adds one. Each pair below is told apart by its first, required parameter (a path, or the
// storage seam: IBlockStorage), which no optional parameter can make ambiguous; a new overload elsewhere is still
// flagged, which a project-wide NoWarn would not do.
[assembly: SuppressMessage("ApiDesign", "RS0026", Justification = "Told apart by the first, required parameter: a path or an IBlockStorage.", Scope = "member", Target = "~M:BAOverlay.BCowFile.Create(System.String,BAOverlay.BCowCreateOptions)~BAOverlay.BCowFile")]
[assembly: SuppressMessage("ApiDesign", "RS0026", Justification = "Told apart by the first, required parameter: a path or an IBlockStorage.", Scope = "member", Target = "~M:BAOverlay.BCowFile.Create(BAOverlay.Storage.IBlockStorage,BAOverlay.Storage.IBlockStorage,BAOverlay.BCowCreateOptions,System.Boolean)~BAOverlay.BCowFile")]
[assembly: SuppressMessage("ApiDesign", "RS0026", Justification = "Told apart by the first, required parameter: a path or an IBlockStorage.", Scope = "member", Target = "~M:BAOverlay.BCowFile.Open(System.String,BAOverlay.BCowOpenOptions)~BAOverlay.BCowFile")]
[assembly: SuppressMessage("ApiDesign", "RS0026", Justification = "Told apart by the first, required parameter: a path or an IBlockStorage.", Scope = "member", Target = "~M:BAOverlay.BCowFile.Open(BAOverlay.Storage.IBlockStorage,BAOverlay.Storage.IBlockStorage,BAOverlay.BCowOpenOptions,System.Boolean)~BAOverlay.BCowFile")]
[assembly: SuppressMessage("ApiDesign", "RS0026", Justification = "Told apart by the first, required parameter: a path or an IBlockStorage.", Scope = "member", Target = "~M:BAOverlay.Checking.BCowChecker.Check(System.String,System.Boolean,System.Boolean)~BAOverlay.Checking.BCowCheckResult")]
[assembly: SuppressMessage("ApiDesign", "RS0026", Justification = "Told apart by the first, required parameter: a path or an IBlockStorage.", Scope = "member", Target = "~M:BAOverlay.Checking.BCowChecker.Check(BAOverlay.Storage.IBlockStorage,System.Boolean)~BAOverlay.Checking.BCowCheckResult")]
