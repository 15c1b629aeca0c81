#!/usr/bin/env bash
# Direct writes from 1 and 2 writers into one file through a baoverlayfs mount (fio randwrite 4k, O_DIRECT, 6 s).
# Usage (as root): bench/compare/direct-writers.sh BAOVERLAYFS_DIR LABEL   (BAOVERLAYFS_DIR holds a published baoverlayfs)
# Data in /var/tmp/fw (a 256 MiB lower file, kept for the next run). Prints "LABEL jobs N IOPS".
set -u
B=$1; D=${BAOVERLAY_DIRECT_DIR:-/var/tmp/fw}; mkdir -p $D/lower; rm -rf $D/u $D/w; mkdir -p $D/u $D/w $D/m
[ -f $D/lower/dio-256M ] || head -c 256M /dev/urandom > $D/lower/dio-256M
$B/baoverlayfs -f -o lowerdir=$D/lower,upperdir=$D/u,workdir=$D/w $D/m > /dev/null 2>&1 &
pid=$!
for i in $(seq 300); do mountpoint -q $D/m && break; sleep 0.01; done
dd if=/dev/zero of=$D/m/dio-256M bs=4k count=1 conv=notrunc oflag=direct status=none  # copy-up before timing
for jobs in 1 2; do
  fio --name=dio --filename=$D/m/dio-256M --rw=randwrite --bs=4k --direct=1 --ioengine=psync --numjobs=$jobs --size=256M --time_based --runtime=6 --group_reporting --output-format=json 2>/dev/null | python3 -c "import json,sys; j=json.load(sys.stdin); print('$2', 'jobs $jobs', round(j['jobs'][0]['write']['iops']))"
done
fusermount3 -u $D/m; wait $pid
