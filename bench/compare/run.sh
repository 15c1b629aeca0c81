#!/usr/bin/env bash
# Side-by-side benchmark of kernel overlayfs, fuse-overlayfs and baoverlayfs (defaults, and with passthrough=all):
# the same workloads on the same lower files, interleaved per round, medians over rounds. Writes docs/benchmarks.md's "Mounts side by side" section and
# docs/benchmarks-mounts.svg. Usage (from anywhere, as root):
#   bench/compare/run.sh [--quick] [--rounds N] [--keep-data] [--no-docs]
# Environment: BAOVERLAY_COMPARE_DIR (data folder, default /var/tmp/baoverlay-compare; use a disk, not tmpfs),
#              BAOVERLAYFS (the baoverlayfs command; see baoverlayfs_cmd below).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
DATA="${BAOVERLAY_COMPARE_DIR:-/var/tmp/baoverlay-compare}"
OUT="$HERE/out/$(date -u +%Y%m%dT%H%M%SZ)"  # one folder per run: a later run never mixes into an earlier one's results
QUICK=0 ROUNDS="" KEEP=0 DOCS=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --rounds) ROUNDS="$2"; shift ;;
    --keep-data) KEEP=1 ;;
    --no-docs) DOCS=0 ;;
    -h|--help) sed -n 2,8p "$0"; exit 0 ;;
    *) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

if [[ $QUICK == 1 ]]; then
  SIZES=(8M 16M 64M)          # first-write lower files
  DATA_SIZE=32M               # fio files
  RUNTIME=2                   # seconds per random fio job
  META_FILES=1000
  ROOTFS_DIRS=(etc)
  ROUNDS="${ROUNDS:-1}"
else
  SIZES=(64M 256M 1G)
  DATA_SIZE=256M
  RUNTIME=8
  META_FILES=10000
  ROOTFS_DIRS=(etc usr/lib/python3.11 usr/share/perl)
  ROUNDS="${ROUNDS:-3}"
fi
# baoverlayfs-pt: baoverlayfs with writeback=0,passthrough=all (the kernel reads untouched lower files and whole upper
# files itself; docs/baoverlayfs.md, "Passthrough or write-back").
SYSTEMS=(kernel fuse-overlayfs baoverlayfs baoverlayfs-pt)
PT_OPTS="writeback=0,passthrough=all"

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { echo "run.sh: $*" >&2; exit 1; }

# ---------------------------------------------------------------- prerequisites
check_prerequisites() {
  local missing=()
  [[ $(id -u) == 0 ]] || die "run as root: kernel overlayfs and the FUSE mounts need CAP_SYS_ADMIN"
  command -v fio >/dev/null || missing+=("fio (apt-get install fio)")
  command -v fuse-overlayfs >/dev/null || missing+=("fuse-overlayfs (apt-get install fuse-overlayfs)")
  command -v fusermount3 >/dev/null || missing+=("fusermount3 (apt-get install fuse3)")
  command -v python3 >/dev/null || missing+=("python3 (apt-get install python3)")
  command -v tar >/dev/null || missing+=("tar (apt-get install tar)")
  [[ -e /dev/fuse ]] || missing+=("/dev/fuse (modprobe fuse; apt-get install fuse3)")
  ldconfig -p | grep -q 'libfuse3\.so' || missing+=("libfuse3 (apt-get install libfuse3-3)")
  grep -qw overlay /proc/filesystems || modprobe overlay 2>/dev/null || missing+=("kernel overlayfs (modprobe overlay)")
  if [[ -z "${BAOVERLAYFS:-}" ]] && ! command -v baoverlayfs >/dev/null && [[ ! -d "$REPO/samples/BAOverlayFs" ]]; then
    command -v dotnet >/dev/null || missing+=("dotnet SDK 10 (to build samples/BAOverlayFs)")
  fi
  if [[ ${#missing[@]} -gt 0 ]]; then
    printf 'run.sh: missing prerequisites:\n' >&2; printf '  - %s\n' "${missing[@]}" >&2; exit 1
  fi
}

# ---------------------------------------------------------------- the mounts
# The baoverlayfs command: see baoverlayfs-cmd.sh (BAOVERLAYFS, else baoverlayfs on PATH, else published here).
# shellcheck source=bench/compare/baoverlayfs-cmd.sh
source "$HERE/baoverlayfs-cmd.sh"
BAO_CMD=()

MOUNTED=()  # mount points to clean up
PIDS=()     # FUSE daemons started here
CURRENT_PID=""

wait_mounted() {  # $1 mount point, $2 pid (or empty)
  local i
  for ((i = 0; i < 300; i++)); do
    mountpoint -q "$1" && return 0
    if [[ -n "$2" ]] && ! kill -0 "$2" 2>/dev/null; then die "the daemon for $1 exited before mounting"; fi
    sleep 0.1
  done
  die "$1 was not mounted after 30 s"
}

mount_system() {  # $1 system, $2 lower, $3 upper, $4 work, $5 mount point
  local opts="lowerdir=$2,upperdir=$3,workdir=$4"
  CURRENT_PID=""
  MOUNTED+=("$5")
  case "$1" in
    kernel) mount -t overlay overlay -o "$opts" "$5" ;;
    fuse-overlayfs) fuse-overlayfs -f -o "$opts" "$5" >>"$OUT/fuse-overlayfs.log" 2>&1 & CURRENT_PID=$! ;;
    baoverlayfs) "${BAO_CMD[@]}" -f -o "$opts" "$5" >>"$OUT/baoverlayfs.log" 2>&1 & CURRENT_PID=$! ;;
    baoverlayfs-pt) "${BAO_CMD[@]}" -f -o "$opts,$PT_OPTS" "$5" >>"$OUT/baoverlayfs.log" 2>&1 & CURRENT_PID=$! ;;
  esac
  [[ -n "$CURRENT_PID" ]] && PIDS+=("$CURRENT_PID")
  wait_mounted "$5" "$CURRENT_PID"
}

unmount_system() {  # $1 system, $2 mount point
  sync -f "$2" 2>/dev/null || true
  if [[ $1 == kernel ]]; then umount "$2" || umount -l "$2"; else fusermount3 -u "$2" || fusermount3 -u -z "$2"; fi
  if [[ -n "$CURRENT_PID" ]]; then
    local i
    for ((i = 0; i < 300 && $(kill -0 "$CURRENT_PID" 2>/dev/null && echo 1 || echo 0) == 1; i++)); do sleep 0.1; done
    kill -0 "$CURRENT_PID" 2>/dev/null && { log "daemon $CURRENT_PID still running after unmount; killing it"; kill "$CURRENT_PID"; }
    wait "$CURRENT_PID" 2>/dev/null || true
    CURRENT_PID=""
  fi
}

cleanup() {
  local rc=$? m p
  for m in "${MOUNTED[@]}"; do
    if mountpoint -q "$m" 2>/dev/null; then
      fusermount3 -u -z "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    fi
  done
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  if [[ $KEEP == 0 && -d "$DATA" ]]; then rm -rf "$DATA"; fi
  exit $rc
}

# ---------------------------------------------------------------- data
record() {  # stdin: JSON lines from probe.py; $1 round, $2 system
  python3 -c '
import json, sys
r, s = int(sys.argv[1]), sys.argv[2]
for line in sys.stdin:
    if line.strip():
        d = json.loads(line); d.update(round=r, system=s); print(json.dumps(d))
' "$1" "$2" >>"$OUT/raw.jsonl"
}

prepare_lower() {
  local lower="$DATA/lower" s
  mkdir -p "$lower/image/var/lib"
  # Real data, never sparse: random bytes from /dev/urandom (a copy-up really copies, compression cannot help).
  for s in "${SIZES[@]}"; do head -c "$s" /dev/urandom >"$lower/big-$s"; done
  head -c 4M /dev/urandom >"$lower/cold-4M"
  head -c "$DATA_SIZE" /dev/urandom >"$lower/read-$DATA_SIZE"
  head -c "$DATA_SIZE" /dev/urandom >"$lower/rw-$DATA_SIZE"
  head -c "$DATA_SIZE" /dev/urandom >"$lower/image/var/lib/db.img"
  # A container start: the files a shell and a Python start read on this machine, copied into the lower layer under
  # the same paths (probe.py start-files), and a lower directory of META_FILES small files for the listing probe.
  python3 "$HERE/probe.py" start-files "$DATA/start-files"
  xargs -a "$DATA/start-files" -d '\n' cp --parents -t "$lower"
  mkdir -p "$lower/listing"
  python3 -c 'import os, sys
for i in range(int(sys.argv[2])):
    open(os.path.join(sys.argv[1], f"file-{i:06d}"), "w").write("x")' "$lower/listing" "$META_FILES"
  # The container's root file system tree: a slice of this machine's own (directories listed in ROOTFS_DIRS).
  tar -C / -cf "$DATA/rootfs.tar" "${ROOTFS_DIRS[@]}" 2>/dev/null || true
  sync -f "$lower"
  # Warm the page cache with the lower files: every system then reads them from memory, not from the disk.
  cat "$lower"/* "$lower/image/var/lib/db.img" "$DATA/rootfs.tar" >/dev/null 2>&1 || true
  ROOTFS_FILES=$(tar -tf "$DATA/rootfs.tar" | wc -l)
  ROOTFS_BYTES=$(stat -c %s "$DATA/rootfs.tar")
}

fio_job() {  # $1 name, $2 round, $3 system, then fio arguments
  local name=$1 round=$2 system=$3; shift 3
  fio --name="$name" --output-format=json --ioengine=psync --iodepth=1 --numjobs=1 --invalidate=0 \
    --fallocate=none "$@" >"$OUT/fio-$name-$system-$round.json" 2>>"$OUT/fio.log" \
    || die "fio $name on $system failed (see $OUT/fio.log)"
  python3 - "$OUT/fio-$name-$system-$round.json" "$name" <<'PY' | record "$round" "$system"
import json, sys
job = json.load(open(sys.argv[1]))["jobs"][0]
name = sys.argv[2]
side = job["write"] if job["write"]["io_bytes"] > 0 else job["read"]
print(json.dumps({"metric": f"fio {name}", "value": side["bw_bytes"] / 2**20, "unit": "MiB/s", "better": "higher"}))
print(json.dumps({"metric": f"fio {name} iops", "value": side["iops"], "unit": "IOPS", "better": "higher"}))
p = side["clat_ns"].get("percentile", {})
if "99.000000" in p:
    print(json.dumps({"metric": f"fio {name} p99", "value": p["99.000000"] / 1000, "unit": "µs", "better": "lower"}))
PY
}

space() {  # $1 round, $2 system, $3 metric, $4 path (in upper)
  local apparent allocated
  apparent=$(du -s -B1 --apparent-size "$4" | cut -f1)
  allocated=$(du -s -B1 "$4" | cut -f1)
  printf '{"metric":"%s apparent","value":%s,"unit":"B","better":"lower"}\n{"metric":"%s allocated","value":%s,"unit":"B","better":"lower"}\n' \
    "$3" "$apparent" "$3" "$allocated" | record "$1" "$2"
}

mount_command() {  # $1 system, $2 lower, $3 upper, $4 work, $5 mount point: a command that mounts and returns
  local opts="lowerdir=$2,upperdir=$3,workdir=$4"
  case "$1" in
    kernel) echo mount -t overlay overlay -o "$opts" "$5" ;;
    fuse-overlayfs) echo fuse-overlayfs -o "$opts" "$5" ;;
    baoverlayfs) echo "${BAO_CMD[@]}" -o "$opts" "$5" ;;
    baoverlayfs-pt) echo "${BAO_CMD[@]}" -o "$opts,$PT_OPTS" "$5" ;;
  esac
}

run_system() {  # $1 round, $2 system
  local r=$1 sys=$2 lower="$DATA/lower" upper="$DATA/$2/upper" work="$DATA/$2/work" mnt="$DATA/$2/mnt" s t0 t1
  rm -rf "${DATA:?}/$sys"; mkdir -p "$upper" "$work" "$mnt"
  log "round $r: $sys"

  # 0. A container's start on a fresh mount: mount, stat and read what a shell and a Python start read, unmount;
  #    the mount time, and the daemon's memory and threads once idle (startup.py). Then fresh folders again.
  # shellcheck disable=SC2046
  python3 "$HERE/startup.py" "$DATA/start-files" "$mnt" -- $(mount_command "$sys" "$lower" "$upper" "$work" "$mnt") \
    | record "$r" "$sys"
  rm -rf "$upper" "$work"; mkdir -p "$upper" "$work"
  mount_system "$sys" "$lower" "$upper" "$work" "$mnt"

  # 1. First write into each lower file of a fresh mount, then the upper space it took. The mount's very first write
  #    goes to a 4 MiB file of its own ("cold"): it also pays the daemon's one-time start-up (for baoverlayfs, the
  #    .NET JIT of the write path), reported apart so that the sized files show the copy-up cost itself.
  python3 "$HERE/probe.py" first-write cold "$mnt/cold-4M" | record "$r" "$sys"
  for s in "${SIZES[@]}"; do python3 "$HERE/probe.py" first-write "$s" "$mnt/big-$s" | record "$r" "$sys"; done
  sync -f "$upper"
  for s in "${SIZES[@]}"; do space "$r" "$sys" "upper after first write $s" "$upper/big-$s"; done

  # 2. fio: sequential 1 MiB and random 4 KiB reads of an untouched lower file; sequential writes of a new file;
  #    random 4 KiB writes over a lower file (its copy-up happens when fio opens it, before the timed part).
  fio_job seqread "$r" "$sys" --filename="$mnt/read-$DATA_SIZE" --rw=read --bs=1M --size="$DATA_SIZE"
  fio_job randread "$r" "$sys" --filename="$mnt/read-$DATA_SIZE" --rw=randread --bs=4k --size="$DATA_SIZE" \
    --time_based --runtime="$RUNTIME" --randrepeat=1
  fio_job seqwrite "$r" "$sys" --filename="$mnt/new-$DATA_SIZE" --rw=write --bs=1M --size="$DATA_SIZE" --end_fsync=1
  rm -f "$mnt/new-$DATA_SIZE"
  fio_job randwrite "$r" "$sys" --filename="$mnt/rw-$DATA_SIZE" --rw=randwrite --bs=4k --size="$DATA_SIZE" \
    --time_based --runtime="$RUNTIME" --randrepeat=1 --end_fsync=1

  # 3. Metadata: create, stat, readdir, unlink of META_FILES small files; listings of a lower directory of as many.
  python3 "$HERE/probe.py" metadata "$mnt/meta" "$META_FILES" | record "$r" "$sys"
  python3 "$HERE/probe.py" listing "$mnt/listing" | record "$r" "$sys"

  # 4. Container-like: unpack a root file system tree into the image, then change its large db file (16 x 4 KiB).
  t0=$(date +%s%N)
  tar -C "$mnt/image" -xf "$DATA/rootfs.tar"
  sync -f "$mnt"
  t1=$(date +%s%N)
  printf '{"metric":"container unpack","value":%s,"unit":"ms","better":"lower"}\n' "$(((t1 - t0) / 1000000))" | record "$r" "$sys"
  python3 "$HERE/probe.py" modify db "$mnt/image/var/lib/db.img" 16 "$r" | record "$r" "$sys"
  sync -f "$upper"
  space "$r" "$sys" "upper after container db" "$upper/image/var/lib/db.img"

  unmount_system "$sys" "$mnt"
  rm -rf "${DATA:?}/$sys"
  sync # the deletion and the write-back it causes settle here, not in the next system's measurements
}

# ---------------------------------------------------------------- main
check_prerequisites
mkdir -p "$OUT"
ln -sfn "$(basename "$OUT")" "$HERE/out/last"
trap cleanup EXIT
trap 'exit 130' INT TERM
[[ -e "$DATA" ]] && { log "removing the previous $DATA"; rm -rf "$DATA"; }
mkdir -p "$DATA"
: >"$OUT/raw.jsonl"; : >"$OUT/fio.log"; : >"$OUT/fuse-overlayfs.log"; : >"$OUT/baoverlayfs.log"
resolve_baoverlayfs "$OUT/baoverlayfs"
log "baoverlayfs command: ${BAO_CMD[*]}"
STARTED=$(date -u +%Y-%m-%dT%H:%M:%SZ)
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
log "writing lower files to $DATA/lower"
prepare_lower
for ((round = 1; round <= ROUNDS; round++)); do
  # Interleave: each round runs every system, starting with a different one.
  for ((k = 0; k < ${#SYSTEMS[@]}; k++)); do
    run_system "$round" "${SYSTEMS[$(((round - 1 + k) % ${#SYSTEMS[@]}))]}"
  done
done
FINISHED=$(date -u +%Y-%m-%dT%H:%M:%SZ)
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
cat >"$OUT/run.json" <<JSON
{"started": "$STARTED", "finished": "$FINISHED", "load_before": "$LOAD_BEFORE", "load_after": "$LOAD_AFTER",
 "quick": $QUICK, "rounds": $ROUNDS, "sizes": "$(IFS=,; echo "${SIZES[*]}")", "data_size": "$DATA_SIZE",
 "runtime_s": $RUNTIME, "meta_files": $META_FILES, "rootfs_files": $ROOTFS_FILES, "rootfs_bytes": $ROOTFS_BYTES,
 "rootfs_dirs": "$(IFS=' '; echo "${ROOTFS_DIRS[*]}")", "baoverlayfs": "${BAO_CMD[*]#"$REPO/"}",
 "kernel": "$(uname -r)", "fio": "$(fio --version)", "fuse_overlayfs": "$(dpkg-query -W -f='${Version}' fuse-overlayfs 2>/dev/null || echo unknown)",
 "command": "bench/compare/run.sh$([[ $QUICK == 1 ]] && echo ' --quick') --rounds $ROUNDS"}
JSON
log "results: $OUT/raw.jsonl (tables again: python3 bench/compare/report.py $OUT docs/benchmarks.md docs/benchmarks-mounts.svg)"
if [[ $DOCS == 1 ]]; then
  python3 "$HERE/report.py" "$OUT" "$REPO/docs/benchmarks.md" "$REPO/docs/benchmarks-mounts.svg"
else
  python3 "$HERE/report.py" "$OUT" "$OUT/benchmarks.md" "$OUT/benchmarks-mounts.svg"
fi
