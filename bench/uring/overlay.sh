#!/usr/bin/env bash
# FUSE over io_uring against read/writev behind the real overlay: baoverlayfs mounted with -o io_uring=1 (the ring,
# which the kernel offers while enable_uring is Y) and with -o io_uring=0, the fio workloads of bench/compare/run.sh's section 2
# on each in turn, rounds interleaved (the order alternates), medians and per-round ratios.
# Usage (as root): bench/uring/overlay.sh BAOVERLAYFS [ROUNDS] [SECONDS]   (defaults: 5 rounds, 5 s per fio job)
#   BAOVERLAYFS: a baoverlayfs executable (e.g. published by `dotnet publish -c Release -r linux-x64 samples/BAOverlayFs`).
# Sets /sys/module/fuse/parameters/enable_uring to Y for the run and restores it. Data in
# BAOVERLAY_COMPARE_DIR/uring (default /var/tmp/baoverlay-compare/uring), removed at the end. For metadata (stat,
# create), run bench/compare/meta.sh ring=bench/uring/ring.sh classic=bench/uring/classic.sh with BAOVERLAYFS exported.
set -euo pipefail
BAO="${1:?usage: overlay.sh BAOVERLAYFS [ROUNDS] [SECONDS]}" ROUNDS="${2:-5}" SECS="${3:-5}"
DATA="${BAOVERLAY_COMPARE_DIR:-/var/tmp/baoverlay-compare}/uring"
PARAM=/sys/module/fuse/parameters/enable_uring
[[ $(id -u) == 0 ]] || { echo "overlay.sh: run as root" >&2; exit 1; }
[[ -e $PARAM ]] || { echo "overlay.sh: $PARAM missing (Linux 6.14+ with CONFIG_FUSE_IO_URING)" >&2; exit 1; }
OLD=$(cat $PARAM) MNT="$DATA/mnt" PID=""
cleanup() {
  mountpoint -q "$MNT" 2>/dev/null && { fusermount3 -u -z "$MNT" 2>/dev/null || umount -l "$MNT"; }
  [[ -n "$PID" ]] && kill "$PID" 2>/dev/null || true
  echo "$OLD" >$PARAM; rm -rf "$DATA"
}
trap cleanup EXIT INT TERM
echo Y >$PARAM
mkdir -p "$DATA/lower" "$MNT"
head -c 64M /dev/urandom >"$DATA/lower/read-64M"
head -c 32M /dev/urandom >"$DATA/lower/rw-32M"

fio_job() {  # $1 transport, $2 round, $3 name, fio arguments
  local t=$1 r=$2 name=$3; shift 3
  fio --name="$name" --output-format=json --ioengine=psync --iodepth=1 --numjobs=1 --fallocate=none \
    --time_based --runtime="$SECS" "$@" | python3 -c '
import json, sys
j = json.load(sys.stdin)["jobs"][0]; side = j["read"] if j["read"]["io_bytes"] else j["write"]
p99 = side["clat_ns"]["percentile"]["99.000000"] / 1000
print("\t".join(sys.argv[1:4] + ["%.1f" % side["iops"], "%.2f" % (side["bw_bytes"] / 2**20), "%.1f" % p99]))' "$t" "$r" "$name"
}

run() {  # $1 round, $2 transport
  local extra=",io_uring=1"; [[ $2 == classic ]] && extra=",io_uring=0"
  rm -rf "$DATA/upper" "$DATA/work" && mkdir -p "$DATA/upper" "$DATA/work"
  "$BAO" -f -o "lowerdir=$DATA/lower,upperdir=$DATA/upper,workdir=$DATA/work$extra" "$MNT" 2>>"$DATA/../uring-$2.log" & PID=$!
  for ((i = 0; i < 300; i++)); do mountpoint -q "$MNT" && break; sleep 0.1; done
  mountpoint -q "$MNT" || { echo "overlay.sh: $2 did not mount" >&2; exit 1; }
  fio_job "$2" "$1" randread-4k-direct --filename="$MNT/read-64M" --rw=randread --bs=4k --size=64M --direct=1
  fio_job "$2" "$1" seqread-1M-direct --filename="$MNT/read-64M" --rw=read --bs=1M --size=64M --direct=1
  fio_job "$2" "$1" seqread-128k-buffered --filename="$MNT/read-64M" --rw=read --bs=128k --size=64M --invalidate=1
  fio_job "$2" "$1" randwrite-4k-direct --filename="$MNT/rw-32M" --rw=randwrite --bs=4k --size=32M --direct=1
  fusermount3 -u "$MNT"; wait "$PID" || true; PID=""
}

echo "# $(date -u +%FT%TZ) $(uname -r) load $(cut -d' ' -f1-3 /proc/loadavg) bao=$BAO rounds=$ROUNDS secs=$SECS" >&2
printf 'transport\tround\tjob\tiops\tMiBps\tp99us\n'
for ((r = 1; r <= ROUNDS; r++)); do
  if ((r % 2)); then run "$r" ring; run "$r" classic; else run "$r" classic; run "$r" ring; fi
done
echo "# load after $(cut -d' ' -f1-3 /proc/loadavg)" >&2
