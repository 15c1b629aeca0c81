#!/usr/bin/env bash
# Metadata and first writes, side by side, for comparing builds: probe.py's metadata workload (N small files in a new
# directory: create, stat, one scandir, unlink), its listing probe (a lower directory of N files on a fresh mount:
# first scandir, second scandir, listdir + lstat) and its first-write probe (the mount's first write, into a 4 MiB
# lower file, then into a 64 MiB one: what run.sh reports as "cold" and "64M"), on each system in turn, rounds
# interleaved (the order rotates), medians.
# Usage (as root): bench/compare/meta.sh [--rounds R] [--files N] [SYSTEM...]
#   SYSTEM: kernel | fuse-overlayfs | baoverlayfs (resolved as run.sh does) | NAME=PATH (another baoverlayfs build,
#   e.g. main=/tmp/main/baoverlayfs). Default: kernel fuse-overlayfs baoverlayfs. 3 rounds of 10 000 files.
# Data in BAOVERLAY_COMPARE_DIR/meta (default /var/tmp/baoverlay-compare/meta), removed at the end.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
DATA="${BAOVERLAY_COMPARE_DIR:-/var/tmp/baoverlay-compare}/meta"
OUT="$HERE/out/meta-$(date -u +%Y%m%dT%H%M%SZ)"
ROUNDS=3 FILES=10000 SYSTEMS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --rounds) ROUNDS="$2"; shift ;;
    --files) FILES="$2"; shift ;;
    -h|--help) sed -n 2,10p "$0"; exit 0 ;;
    *) SYSTEMS+=("$1") ;;
  esac
  shift
done
[[ ${#SYSTEMS[@]} -gt 0 ]] || SYSTEMS=(kernel fuse-overlayfs baoverlayfs)
[[ $(id -u) == 0 ]] || { echo "meta.sh: run as root" >&2; exit 1; }

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { echo "meta.sh: $*" >&2; exit 1; }
# shellcheck source=bench/compare/baoverlayfs-cmd.sh
source "$HERE/baoverlayfs-cmd.sh"
BAO_CMD=()
mkdir -p "$OUT"
for s in "${SYSTEMS[@]}"; do [[ $s == baoverlayfs ]] && { resolve_baoverlayfs "$OUT/baoverlayfs"; break; }; done

MNT="$DATA/mnt" PID=""
cleanup() {
  local rc=$?
  if mountpoint -q "$MNT" 2>/dev/null; then fusermount3 -u -z "$MNT" 2>/dev/null || umount -l "$MNT" 2>/dev/null || true; fi
  [[ -n "$PID" ]] && kill "$PID" 2>/dev/null || true
  rm -rf "$DATA"
  exit $rc
}
trap cleanup EXIT INT TERM

mkdir -p "$DATA/lower/listing"
python3 -c '
import os, sys
for i in range(int(sys.argv[2])):
    with open(os.path.join(sys.argv[1], f"f{i:05d}"), "w") as f:
        f.write("x")' "$DATA/lower/listing" "$FILES"
head -c 4M /dev/urandom >"$DATA/lower/cold-4M"
head -c 64M /dev/urandom >"$DATA/lower/big-64M"

run() {  # $1 round, $2 system
  local name="${2%%=*}" opts="lowerdir=$DATA/lower,upperdir=$DATA/upper,workdir=$DATA/work" i
  rm -rf "$DATA/upper" "$DATA/work" && mkdir -p "$DATA/upper" "$DATA/work" "$MNT"
  PID=""
  case "$2" in
    kernel) mount -t overlay overlay -o "$opts" "$MNT" ;;
    fuse-overlayfs) fuse-overlayfs -f -o "$opts" "$MNT" >>"$OUT/$name.log" 2>&1 & PID=$! ;;
    baoverlayfs) "${BAO_CMD[@]}" -f -o "$opts" "$MNT" >>"$OUT/$name.log" 2>&1 & PID=$! ;;
    *=*) "${2#*=}" -f -o "$opts" "$MNT" >>"$OUT/$name.log" 2>&1 & PID=$! ;;
    *) die "unknown system $2" ;;
  esac
  for ((i = 0; i < 300; i++)); do mountpoint -q "$MNT" && break; sleep 0.1; done
  mountpoint -q "$MNT" || die "$2 did not mount"
  # First writes first: the cold one must be the mount's first write, as in run.sh.
  { python3 "$HERE/probe.py" first-write cold "$MNT/cold-4M"; python3 "$HERE/probe.py" first-write 64M "$MNT/big-64M"
    python3 "$HERE/probe.py" listing "$MNT/listing"; python3 "$HERE/probe.py" metadata "$MNT/meta" "$FILES"; } |
    python3 -c 'import json, sys
for line in sys.stdin:
    d = json.loads(line); d.update(round=int(sys.argv[1]), system=sys.argv[2]); print(json.dumps(d))' "$1" "$name" >>"$OUT/raw.jsonl"
  if [[ $2 == kernel ]]; then umount "$MNT"; else fusermount3 -u "$MNT"; wait "$PID" || true; fi
  PID=""
}

log "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
for ((round = 1; round <= ROUNDS; round++)); do
  for ((k = 0; k < ${#SYSTEMS[@]}; k++)); do
    s="${SYSTEMS[$(((round - 1 + k) % ${#SYSTEMS[@]}))]}"
    log "round $round: ${s%%=*}"
    run "$round" "$s"
  done
done
log "load average after: $(cut -d' ' -f1-3 /proc/loadavg); raw results: $OUT/raw.jsonl"
python3 - "$OUT/raw.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
systems = list(dict.fromkeys(r["system"] for r in rows))
metrics = list(dict.fromkeys(r["metric"] for r in rows))
print("| ms | " + " | ".join(systems) + " |")
print("|---|" + "---:|" * len(systems))
for m in metrics:
    cells = []
    for s in systems:
        v = [r["value"] for r in rows if r["system"] == s and r["metric"] == m]
        cells.append(f"{statistics.median(v):.3g} ({min(v):.3g}–{max(v):.3g})" if len(v) > 1 else f"{v[0]:.3g}")
    print(f"| {m} | " + " | ".join(cells) + " |")
PY
