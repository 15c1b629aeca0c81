#!/usr/bin/env bash
# Mount start-up and idle footprint, side by side: fuse-overlayfs, baoverlayfs published ReadyToRun
# (framework-dependent, the JIT runtime) and baoverlayfs published NativeAOT (the project's own `dotnet publish -r
# linux-x64`, as docs/baoverlayfs.md installs it). Per mount (start.py): start to visible in /proc/self/mountinfo, start
# to the command's return, and VmRSS and threads of the serving process once idle. Rounds interleaved (the order
# rotates), medians with min–max.
# Usage (as root): bench/compare/start.sh [--rounds N] [--container] [SYSTEM...]
#   SYSTEM: fuse-overlayfs | r2r | aot | kernel | NAME=COMMAND (another build, e.g. main=/tmp/main/baoverlayfs).
#   Default: fuse-overlayfs r2r aot, 15 rounds. Builds are published into bench/compare/out/start-DATE/.
#   --container: then, the same rounds of run.sh's "container start" (startup.py: mount, stat and read the files a
#   shell and a Python start read on this machine, unmount), without the rest of run.sh; kernel = kernel overlayfs
#   (this part only).
# Data in BAOVERLAY_COMPARE_DIR/start (default /var/tmp/baoverlay-compare/start), removed at the end.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
DATA="${BAOVERLAY_COMPARE_DIR:-/var/tmp/baoverlay-compare}/start"
OUT="$HERE/out/start-$(date -u +%Y%m%dT%H%M%SZ)"
ROUNDS=15 SYSTEMS=() CONTAINER=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --rounds) ROUNDS="$2"; shift ;;
    --container) CONTAINER=1 ;;
    -h|--help) sed -n 2,13p "$0"; exit 0 ;;
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
  for m in "$DATA"/*/merged "$DATA"/*/mnt; do mountpoint -q "$m" 2>/dev/null && umount -l "$m"; done
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
    kernel) [[ $CONTAINER == 1 ]] || die "kernel overlayfs is measured with --container only"
            ARGS+=("kernel=mount -t overlay overlay") ;;
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
FUSE_ARGS=()
for a in "${ARGS[@]}"; do [[ $a == kernel=* ]] || FUSE_ARGS+=("$a"); done
python3 "$HERE/start.py" "$ROUNDS" "$DATA" "${FUSE_ARGS[@]}" >"$OUT/raw.jsonl"
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

[[ $CONTAINER == 1 ]] || exit 0

# The container start of run.sh (its phase 0), alone: the files a shell and a Python start read, in the lower layer
# under the same paths; per round, every system in turn (the order rotates), on fresh upper and work folders.
python3 "$HERE/probe.py" start-files "$DATA/start-files"
mkdir -p "$DATA/lower"
xargs -a "$DATA/start-files" -d '\n' cp --parents -t "$DATA/lower"
cat $(cat "$DATA/start-files") >/dev/null 2>&1 || true
log "container start: $ROUNDS rounds; load average $(cut -d' ' -f1-3 /proc/loadavg)"
for ((r = 1; r <= ROUNDS; r++)); do
  for ((k = 0; k < ${#ARGS[@]}; k++)); do
    entry="${ARGS[$(((r - 1 + k) % ${#ARGS[@]}))]}"
    name="${entry%%=*}" command="${entry#*=}"
    root="$DATA/c-$name"
    rm -rf "$root"; mkdir -p "$root/upper" "$root/work" "$root/mnt"
    # shellcheck disable=SC2086
    python3 "$HERE/startup.py" "$DATA/start-files" "$root/mnt" -- $command \
      -o "lowerdir=$DATA/lower,upperdir=$root/upper,workdir=$root/work" "$root/mnt" \
      | python3 -c 'import json, sys
for line in sys.stdin:
    d = json.loads(line); d.update(round=int(sys.argv[1]), system=sys.argv[2]); print(json.dumps(d))' "$r" "$name" \
      >>"$OUT/container.jsonl"
  done
done
log "load average after: $(cut -d' ' -f1-3 /proc/loadavg); raw results: $OUT/container.jsonl"
python3 - "$OUT/container.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
systems = list(dict.fromkeys(r["system"] for r in rows))
print()
print("| container start (ms) | " + " | ".join(systems) + " |")
print("|---|" + "---:|" * len(systems))
for metric in ("mount", "container start", "container start reads"):
    cells = []
    for s in systems:
        v = [r["value"] for r in rows if r["system"] == s and r["metric"] == metric]
        cells.append("n/a" if not v else f"{statistics.median(v):.3g} ({min(v):.3g}–{max(v):.3g})")
    print(f"| {metric} | " + " | ".join(cells) + " |")
PY
