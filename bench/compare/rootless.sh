#!/usr/bin/env bash
# Rootless mounts side by side: fuse-overlayfs and baoverlayfs run by an ordinary user inside a user and mount
# namespace of its own (unshare --user --map-root-user --mount), as rootless Podman runs its mount program. No FUSE
# passthrough there (the kernel lets only CAP_SYS_ADMIN of the initial namespace register backing files): the
# write-back cache path. Per round and system (the order rotates): the first 4 KiB write into a 256 MiB lower file,
# fio (psync, 64 MiB files) sequential (four passes) and random reads of an untouched lower file and random 4 KiB writes into a
# lower file (+ fsync). /dev/fuse is given mode 0666 inside a private mount namespace, as udev does on most systems.
# Usage (as root): bench/compare/rootless.sh BAOVERLAYFS_DIR [ROUNDS]   (BAOVERLAYFS_DIR holds a published baoverlayfs)
# Environment: ROOTLESS_UID (default 1000), BAOVERLAY_ROOTLESS_DIR (default /var/tmp/baoverlay-rootless).
# Prints "round system metric value unit" lines; the data folder is removed at the end.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
B=$1; ROUNDS=${2:-3}; U=${ROOTLESS_UID:-1000}; D=${BAOVERLAY_ROOTLESS_DIR:-/var/tmp/baoverlay-rootless}
[[ $(id -u) == 0 ]] || { echo "rootless.sh: run as root (it drops to uid $U itself)" >&2; exit 1; }
rm -rf "$D"; mkdir -p "$D/lower" "$D/dev" "$D/bin"
trap 'rm -rf "$D"' EXIT
head -c 64M /dev/urandom >"$D/lower/read"; head -c 64M /dev/urandom >"$D/lower/rw"; head -c 256M /dev/urandom >"$D/lower/big"
cp -r "$B"/. "$D/bin/"; cp "$HERE/probe.py" "$D/bin/"
cat >"$D/bin/inner.sh" <<'INNER'
# As root of the user namespace: mount, measure, unmount. $1 system, $2 round, $3 data folder.
set -eu
sys=$1 r=$2 D=$3
rm -rf "$D/$sys"; mkdir -p "$D/$sys/upper" "$D/$sys/work" "$D/$sys/mnt"
opts="lowerdir=$D/lower,upperdir=$D/$sys/upper,workdir=$D/$sys/work"
if [ "$sys" = fuse-overlayfs ]; then fuse-overlayfs -o "$opts" "$D/$sys/mnt"; else "$D/bin/baoverlayfs" -o "$opts" "$D/$sys/mnt"; fi
m="$D/$sys/mnt"
python3 "$D/bin/probe.py" first-write 256M "$m/big" | python3 -c '
import json, sys
for line in sys.stdin:
    d = json.loads(line)
    if d["metric"] == "first-write 256M": print(sys.argv[1], sys.argv[2], "first-write-256M", round(d["value"], 2), "ms")' "$r" "$sys"
job() {
  n=$1; shift
  fio --name="$n" --output-format=json --ioengine=psync --iodepth=1 --numjobs=1 --invalidate=0 --fallocate=none "$@" 2>/dev/null |
    python3 -c 'import json,sys; j=json.load(sys.stdin)["jobs"][0]; s=j["read"] if j["read"]["io_bytes"]>0 else j["write"]; print(sys.argv[1], sys.argv[2], sys.argv[3], round(s["iops"]), "IOPS", round(s["bw_bytes"]/2**20), "MiB/s")' "$r" "$sys" "$n"
}
# four passes, the FUSE inode's cached pages dropped before each (fio's invalidate; the lower file stays in the page
# cache): a single 64 MiB pass took ~40 ms, too short to tell the two apart on a shared machine
job seqread --filename="$m/read" --rw=read --bs=1M --size=64M --loops=4 --invalidate=1
job randread --filename="$m/read" --rw=randread --bs=4k --size=64M --time_based --runtime=4 --randrepeat=1
job randwrite --filename="$m/rw" --rw=randwrite --bs=4k --size=64M --time_based --runtime=4 --randrepeat=1 --end_fsync=1
umount "$m"
INNER
chown -R "$U:$U" "$D"
SYSTEMS=(fuse-overlayfs baoverlayfs)
for ((r = 1; r <= ROUNDS; r++)); do
  for ((k = 0; k < ${#SYSTEMS[@]}; k++)); do
    sys=${SYSTEMS[$(((r - 1 + k) % ${#SYSTEMS[@]}))]}
    unshare --mount --propagation private sh -c '
      mount -t tmpfs -o mode=755 rootless-dev "$1/dev"; mknod -m 666 "$1/dev/fuse" c 10 229; mount --bind "$1/dev/fuse" /dev/fuse
      exec setpriv --reuid="$2" --regid="$2" --clear-groups unshare --user --map-root-user --mount sh "$1/bin/inner.sh" "$3" "$4" "$1"' \
      sh "$D" "$U" "$sys" "$r"
  done
done
