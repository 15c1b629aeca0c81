#!/usr/bin/env bash
# FUSE passthrough or the write-back cache, side by side in one run (the kernel does not combine them on one mount),
# with kernel overlayfs as the bar.
# Usage (as root): bench/compare/passthrough.sh BAOVERLAYFS [ROUNDS]
#   BAOVERLAYFS: the baoverlayfs program (a published build, or "dotnet path/baoverlayfs.dll").
# For each round and each mode (baoverlayfs writeback=1; writeback=0, where passthrough of whole upper files is
# granted; writeback=0,passthrough=all, where untouched lower files pass through too; kernel overlayfs), fio with
# psync, 32 MiB files:
# sequential and random reads of an untouched lower file, a sequential write of a new file (a whole upper file), random
# reads and writes of that new file, and random 4 KiB writes into a lower file (a B-CoW file once written).
# Prints "round mode job MiB/s IOPS" lines. Data in ${BAOVERLAY_PT_DIR:-/var/tmp/ptb}, removed at the end.
set -u
B=$1; ROUNDS=${2:-3}; D=${BAOVERLAY_PT_DIR:-/var/tmp/ptb}
rm -rf "$D"; mkdir -p "$D/lower"
head -c 32M /dev/urandom >"$D/lower/read"; head -c 32M /dev/urandom >"$D/lower/rw"
cat "$D"/lower/* >/dev/null # lower files from memory for every mode
job() {  # $1 round, $2 mode, $3 name, then fio arguments
  local r=$1 m=$2 n=$3; shift 3
  fio --name="$n" --output-format=json --ioengine=psync --iodepth=1 --numjobs=1 --invalidate=0 --fallocate=none "$@" 2>/dev/null |
    python3 -c "import json,sys; j=json.load(sys.stdin)['jobs'][0]; s=j['read'] if j['read']['io_bytes']>0 else j['write']; print('$r $m $n %.1f MiB/s %.0f IOPS'%(s['bw_bytes']/2**20, s['iops']))"
}
for ((r = 1; r <= ROUNDS; r++)); do
  for mode in writeback=1 writeback=0 writeback=0,passthrough=all kernel; do
    rm -rf "$D/u" "$D/w" "$D/m"; mkdir -p "$D/u" "$D/w" "$D/m"
    if [ $mode = kernel ]; then
      mount -t overlay overlay -o "lowerdir=$D/lower,upperdir=$D/u,workdir=$D/w" "$D/m" || exit 1
    else
      $B -o "lowerdir=$D/lower,upperdir=$D/u,workdir=$D/w,$mode" "$D/m" || exit 1
    fi
    for i in $(seq 300); do mountpoint -q "$D/m" && break; sleep 0.01; done
    job $r $mode lower-seqread --filename="$D/m/read" --rw=read --bs=1M --size=32M
    job $r $mode lower-randread --filename="$D/m/read" --rw=randread --bs=4k --size=32M --time_based --runtime=3 --randrepeat=1
    job $r $mode new-seqwrite --filename="$D/m/new" --rw=write --bs=1M --size=32M --end_fsync=1
    job $r $mode upper-randread --filename="$D/m/new" --rw=randread --bs=4k --size=32M --time_based --runtime=3 --randrepeat=1
    job $r $mode upper-randwrite --filename="$D/m/new" --rw=randwrite --bs=4k --size=32M --time_based --runtime=3 --randrepeat=1 --end_fsync=1
    job $r $mode bcow-randwrite --filename="$D/m/rw" --rw=randwrite --bs=4k --size=32M --time_based --runtime=3 --randrepeat=1 --end_fsync=1
    umount "$D/m"; sleep 1
  done
done
rm -rf "$D"
