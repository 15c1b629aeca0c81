# Sourced by run.sh and options.sh: sets BAO_CMD to the baoverlayfs command, one place for both.
# BAOVERLAYFS if set (a command line); else `baoverlayfs` on PATH; else samples/BAOverlayFs published here the way
# docs/baoverlayfs.md installs it (Release, NativeAOT: the project's own publish settings) into $1, a folder of the run.
resolve_baoverlayfs() {  # $1 folder for a build
  if [[ -n "${BAOVERLAYFS:-}" ]]; then read -r -a BAO_CMD <<<"$BAOVERLAYFS"; return; fi
  if command -v baoverlayfs >/dev/null; then BAO_CMD=("$(command -v baoverlayfs)"); return; fi
  local project="$REPO/samples/BAOverlayFs"
  log "publishing $project (Release, NativeAOT) to $1"
  dotnet publish -c Release -r linux-x64 -v q -nologo -o "$1" "$project" >&2 \
    || die "publish of $project failed"
  [[ -x "$1/baoverlayfs" ]] || die "no executable baoverlayfs in $1"
  BAO_CMD=("$1/baoverlayfs")
}
