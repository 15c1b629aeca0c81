#!/usr/bin/env bash
# Mount start-up and idle footprint, side by side: fuse-overlayfs, baoverlayfs published ReadyToRun
# (framework-dependent, the JIT runtime) and baoverlayfs published NativeAOT (the project's own `dotnet publish -r
# linux-x64`, as docs/baoverlayfs.md installs it). Per mount (start.py): start to visible in /proc/self/mountinfo, start
# to the command's return, and VmRSS and threads of the serving process once idle. Rounds interleaved (the order
# rotates), medians with min–max.
# Usage (as root): bench/compare/start.sh [--rounds N] [SYSTEM...]
#   SYSTEM: fuse-overlayfs | r2r | aot | NAME=COMMAND (another build, e.g. main=/tmp/main/baoverlayfs).
#   Default: fuse-overlayfs r2r aot, 15 rounds. Builds are published into bench/compare/out/start-DATE/.
# Data in BAOVERLAY_COMPARE_DIR/start (default /var/tmp/baoverlay-compare/start), removed at the end.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
DATA="${BAOVERLAY_COMPARE_DIR:-/var/tmp/baoverlay-compare}/start"
OUT="$HERE/out/start-$(date -u +%Y%m%dT%H%M%SZ)"
ROUNDS=15 SYSTEMS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --rounds) ROUNDS="$2"; shift ;;
    -h|--help) sed -n 2,10p "$0"; exit 0 ;;
    *) SYSTEMS+=("$1") ;;
  esac
  shift
done
[[ ${#SYSTEMS[@]} -gt 0 ]] || SYSTEMS=(fuse-overlayfs r2r aot)
[[ $(id -u) == 0 ]] || { echo "start.sh: run as root (the mounts need CAP_SYS_ADMIN)" >&2; exit 1; }

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { echo "start.sh: $*" >&2; exit 1; }
mkdir -p "$OUT"
cleanup() {
  local rc=$? m
  for m in "$DATA"/*/merged; do mountpoint -q "$m" 2>/dev/null && umount -l "$m"; done
  rm -rf "$DATA"
  exit $rc
}
trap cleanup EXIT INT TERM

publish() {  # $1 folder, then extra publish arguments
  local dir="$1"; shift
  log "publishing samples/BAOverlayFs to $dir ($*)"
  dotnet publish "$REPO/samples/BAOverlayFs" -c Release -r linux-x64 "$@" -v q -nologo -o "$dir" >&2 \
    || die "publish to $dir failed"
}
ARGS=()
for s in "${SYSTEMS[@]}"; do
  case "$s" in
    fuse-overlayfs) command -v fuse-overlayfs >/dev/null || die "fuse-overlayfs missing (apt-get install fuse-overlayfs)"
                    ARGS+=("fuse-overlayfs=fuse-overlayfs") ;;
    r2r) publish "$OUT/r2r" -p:PublishAot=false --self-contained false -p:PublishReadyToRun=true
         ARGS+=("baoverlayfs-r2r=$OUT/r2r/baoverlayfs") ;;
    aot) publish "$OUT/aot"; ARGS+=("baoverlayfs-aot=$OUT/aot/baoverlayfs") ;;
    *=*) ARGS+=("$s") ;;
    *) die "unknown system $s" ;;
  esac
done

# A small image: two lower layers of a few files, as a container's.
mkdir -p "$DATA/lower1/etc" "$DATA/lower2/etc" "$DATA/lower2/usr/bin"
echo start-bench >"$DATA/lower1/etc/hostname"
head -c 1M /dev/urandom >"$DATA/lower2/usr/bin/tool"
for i in $(seq 1 50); do echo "$i" >"$DATA/lower2/etc/file$i"; done

log "load average before: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) CPUs; $(uname -r)"
python3 "$HERE/start.py" "$ROUNDS" "$DATA" "${ARGS[@]}" >"$OUT/raw.jsonl"
log "load average after: $(cut -d' ' -f1-3 /proc/loadavg); raw results: $OUT/raw.jsonl"
python3 - "$OUT/raw.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
systems = list(dict.fromkeys(r["system"] for r in rows))
labels = {"visible": "start to mounted (ms)", "returned": "start to command returned (ms)",
          "rss": "idle RSS (MiB)", "threads": "idle threads"}
print("| | " + " | ".join(systems) + " |")
print("|---|" + "---:|" * len(systems))
for metric, label in labels.items():
    cells = []
    for s in systems:
        v = [r["value"] for r in rows if r["system"] == s and r["metric"] == metric and r["value"] is not None]
        cells.append("n/a" if not v else f"{statistics.median(v):.3g} ({min(v):.3g}–{max(v):.3g})" if len(v) > 1 else f"{v[0]:.3g}")
    print(f"| {label} | " + " | ".join(cells) + " |")
PY
