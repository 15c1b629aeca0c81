#!/usr/bin/env bash
# The FUSE options of baoverlayfs, measured: the same fio workloads on baoverlayfs with its defaults and with one
# option changed at a time (write-back cache, keep_cache, readahead, max_write, threads), and on fuse-overlayfs for reference,
# interleaved per round, medians over rounds. Writes the part of docs/benchmarks.md between the
# "bench/compare/options" markers. Usage (as root):
#   bench/compare/options.sh [--rounds N] [--runtime S] [--no-docs] [--variant 'NAME|OPTIONS' ...]
# --variant (repeatable) replaces the list of changed options below; defaults and fuse-overlayfs are always run.
# Environment: BAOVERLAY_COMPARE_DIR (data folder, default /var/tmp/baoverlay-options), BAOVERLAYFS (the command).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
DATA="${BAOVERLAY_COMPARE_DIR:-/var/tmp/baoverlay-options}"
OUT="$HERE/out/options-$(date -u +%Y%m%dT%H%M%SZ)"
ROUNDS=3 RUNTIME=6 DOCS=1 SIZE=256M
CHOSEN=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --rounds) ROUNDS="$2"; shift ;;
    --runtime) RUNTIME="$2"; shift ;;
    --no-docs) DOCS=0 ;;
    --variant) CHOSEN+=("$2"); shift ;;
    -h|--help) sed -n 2,8p "$0"; exit 0 ;;
    *) echo "options.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

# name|options: "fuse-overlayfs" is the reference; the others are baoverlayfs with these -o options added.
VARIANTS=(
  "defaults|"
  "writeback=0|writeback=0"
  "keep_cache=0|keep_cache=0"
  "max_readahead=1M|max_readahead=1048576"
  "max_write=1M|max_write=1048576"
  "max_threads=2|max_threads=2"
  "fuse-overlayfs|"
)
if [[ ${#CHOSEN[@]} -gt 0 ]]; then VARIANTS=("defaults|" "${CHOSEN[@]}" "fuse-overlayfs|"); fi

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { echo "options.sh: $*" >&2; exit 1; }

[[ $(id -u) == 0 ]] || die "run as root (the FUSE mounts are made with mount(2))"
for c in fio fuse-overlayfs fusermount3 python3; do command -v "$c" >/dev/null || die "$c is missing (apt-get install fio fuse-overlayfs fuse3 python3)"; done

# shellcheck source=bench/compare/baoverlayfs-cmd.sh
source "$HERE/baoverlayfs-cmd.sh"
BAO_CMD=()
mkdir -p "$OUT"
resolve_baoverlayfs "$OUT/baoverlayfs"
log "baoverlayfs command: ${BAO_CMD[*]}"

MNT="$DATA/mnt" PID=""
cleanup() {
  local rc=$?
  mountpoint -q "$MNT" 2>/dev/null && { fusermount3 -u -z "$MNT" 2>/dev/null || umount -l "$MNT" 2>/dev/null || true; }
  [[ -n "$PID" ]] && kill "$PID" 2>/dev/null || true
  rm -rf "$DATA"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$OUT" "$DATA/lower"
: >"$OUT/raw.jsonl"
log "writing two $SIZE lower files to $DATA/lower"
head -c "$SIZE" /dev/urandom >"$DATA/lower/read"
head -c "$SIZE" /dev/urandom >"$DATA/lower/rw"
cat "$DATA/lower/read" "$DATA/lower/rw" >/dev/null

fio_job() {  # $1 variant, $2 round, $3 name, then fio arguments
  local variant=$1 round=$2 name=$3; shift 3
  fio --name="$name" --output-format=json --ioengine=psync --iodepth=1 --numjobs=1 --invalidate=0 --fallocate=none "$@" \
    >"$OUT/fio.json" 2>>"$OUT/fio.log" || die "fio $name on $variant failed (see $OUT/fio.log)"
  python3 - "$OUT/fio.json" "$variant" "$round" "$name" >>"$OUT/raw.jsonl" <<'PY'
import json, sys
job = json.load(open(sys.argv[1]))["jobs"][0]
side = job["write"] if job["write"]["io_bytes"] > 0 else job["read"]
value = side["iops"] if sys.argv[4].startswith("rand") else side["bw_bytes"] / 2**20
print(json.dumps({"variant": sys.argv[2], "round": int(sys.argv[3]), "job": sys.argv[4], "value": value}))
PY
}

run_variant() {  # $1 round, $2 "name|options"
  local round=$1 name=${2%%|*} options=${2#*|} i
  # the previous variant's upper is deleted and the disk settled before this one starts: its write-back and the
  # deletion would otherwise land on whichever variant comes next
  rm -rf "$DATA/upper" "$DATA/work" "$MNT"; sync; mkdir -p "$DATA/upper" "$DATA/work" "$MNT"
  local o="lowerdir=$DATA/lower,upperdir=$DATA/upper,workdir=$DATA/work${options:+,$options}"
  log "round $round: $name"
  if [[ $name == fuse-overlayfs ]]; then fuse-overlayfs -f -o "$o" "$MNT" >>"$OUT/daemon.log" 2>&1 & PID=$!
  else "${BAO_CMD[@]}" -f -o "$o" "$MNT" >>"$OUT/daemon.log" 2>&1 & PID=$!; fi
  for ((i = 0; i < 300; i++)); do mountpoint -q "$MNT" && break; kill -0 "$PID" 2>/dev/null || die "$name exited before mounting"; sleep 0.1; done
  fio_job "$name" "$round" seqread --filename="$MNT/read" --rw=read --bs=1M --size="$SIZE"
  fio_job "$name" "$round" randread --filename="$MNT/read" --rw=randread --bs=4k --size="$SIZE" --time_based --runtime="$RUNTIME" --randrepeat=1
  fio_job "$name" "$round" seqwrite --filename="$MNT/new" --rw=write --bs=1M --size="$SIZE" --end_fsync=1
  fio_job "$name" "$round" randwrite --filename="$MNT/rw" --rw=randwrite --bs=4k --size="$SIZE" --time_based --runtime="$RUNTIME" --randrepeat=1 --end_fsync=1
  fusermount3 -u "$MNT" || fusermount3 -u -z "$MNT"
  wait "$PID" 2>/dev/null || true
  PID=""
}

STARTED=$(date -u +%Y-%m-%dT%H:%M:%SZ)
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
for ((round = 1; round <= ROUNDS; round++)); do
  for ((k = 0; k < ${#VARIANTS[@]}; k++)); do run_variant "$round" "${VARIANTS[$(((round - 1 + k) % ${#VARIANTS[@]}))]}"; done
done
FINISHED=$(date -u +%Y-%m-%dT%H:%M:%SZ)
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

TARGET="$REPO/docs/benchmarks.md"; [[ $DOCS == 1 ]] || TARGET="$OUT/benchmarks.md"
[[ -f "$TARGET" ]] || printf '<!-- bench/compare/options:begin -->\n<!-- bench/compare/options:end -->\n' >"$TARGET"
python3 - "$OUT/raw.jsonl" "$TARGET" "$STARTED" "$FINISHED" "$LOAD_BEFORE" "$LOAD_AFTER" "$ROUNDS" "$RUNTIME" "$SIZE" <<'PY'
import json, statistics, sys
raw, target, started, finished, load_before, load_after, rounds, runtime, size = sys.argv[1:]
rows = [json.loads(l) for l in open(raw) if l.strip()]
variants = list(dict.fromkeys(r["variant"] for r in rows))
jobs = [("seqread", "sequential read 1 MiB, MiB/s"), ("randread", "random read 4 KiB, IOPS"),
        ("seqwrite", "sequential write 1 MiB + fsync, MiB/s"), ("randwrite", "random write 4 KiB + fsync, IOPS")]
def med(v, j):
    xs = [r["value"] for r in rows if r["variant"] == v and r["job"] == j]
    return statistics.median(xs) if xs else None
def fmt(x):
    return "–" if x is None else (f"{x:,.0f}" if x >= 100 else f"{x:.1f}")
lines = [f"Run: {started} – {finished} (UTC), `bench/compare/options.sh --rounds {rounds} --runtime {runtime}`, "
         f"{size} files, {rounds} round(s) with the variants interleaved; load average {load_before} before, {load_after} after. "
         "Medians; in brackets the ratio to baoverlayfs's defaults.", "",
         "| Workload | " + " | ".join(("baoverlayfs " + v if v != "fuse-overlayfs" else v) for v in variants) + " |",
         "|---|" + "---:|" * len(variants)]
for j, title in jobs:
    base = med("defaults", j)
    cells = []
    for v in variants:
        x = med(v, j)
        cells.append(fmt(x) + ("" if v == "defaults" or x is None or not base else f" ({x / base:.2f})"))
    lines.append(f"| {title} | " + " | ".join(cells) + " |")
text = open(target).read()
begin, end = "<!-- bench/compare/options:begin -->", "<!-- bench/compare/options:end -->"
a, b = text.index(begin) + len(begin), text.index(end)
open(target, "w").write(text[:a] + "\n" + "\n".join(lines) + "\n" + text[b:])
print("\n".join(lines))
PY
log "raw results: $OUT/raw.jsonl; table written to $TARGET"
