#!/usr/bin/env bash
# Measures FUSE over io_uring against read/writev on /dev/fuse with the uringbench prototype, side by side:
# each round mounts every variant in turn (the order alternates between rounds) and runs the same workloads on it;
# report.py prints medians, min-max and the ratios to classic. Needs root, fio, and enable_uring=Y for the io_uring
# variants: this script sets /sys/module/fuse/parameters/enable_uring to Y for the run and restores what it found.
#   bench/uring/run.sh [ROUNDS] [SECONDS] > results.tsv ; python3 bench/uring/report.py results.tsv
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
rounds=${1:-5}
seconds=${2:-8}
variants=(${VARIANTS:-classic uring uring-nopin})
work=$(mktemp -d)
mnt=$work/mnt
mkdir -p "$mnt"
param=/sys/module/fuse/parameters/enable_uring
found=$(cat "$param" 2>/dev/null || echo "")
cleanup() {
  mountpoint -q "$mnt" && umount "$mnt" || true
  [ -n "$found" ] && echo "$found" > "$param"
  rm -rf "$work"
}
trap cleanup EXIT
[ -n "$found" ] && echo Y > "$param"

dotnet build -c Release "$here/BAOverlay.UringBench.csproj" 2>&1 | grep -E " error |rror\(s\)" >&2 || true
bin=$here/bin/Release/net10.0/BAOverlay.UringBench

fio_json() { # name rw bs jobs
  fio --name="$1" --filename="$mnt/d0" --readonly --rw="$2" --bs="$3" --numjobs="$4" --group_reporting \
      --ioengine=psync --direct=1 --time_based --runtime="$seconds" --ramp_time=1 --output-format=json 2>/dev/null
}
fio_row() { # round variant workload json
  python3 -c '
import json, sys
j = json.load(sys.stdin)["jobs"][0]["read"]
p = j["clat_ns"].get("percentile", {})
print("\t".join([sys.argv[1], sys.argv[2], sys.argv[3], "%.0f" % j["iops"], "%.2f" % (j["clat_ns"]["mean"] / 1000),
                 "%.2f" % (p.get("99.000000", 0) / 1000), "%.1f" % (j["bw"] / 1024)]))' "$1" "$2" "$3"
}

printf 'round\tvariant\tworkload\tops_per_s\tmean_us\tp99_us\tMiB_per_s\n'
for ((r = 1; r <= rounds; r++)); do
  echo "# round $r load $(cut -d" " -f1-3 /proc/loadavg)" >&2
  order=("${variants[@]}")
  if ((r % 2 == 0)); then order=($(printf '%s\n' "${variants[@]}" | tac)); fi
  for v in "${order[@]}"; do
    case $v in
      classic) opts=(--transport classic) ;;
      uring) opts=(--transport uring) ;;
      uring-nopin) opts=(--transport uring --no-pin) ;;
    esac
    "$bin" serve "$mnt" "${opts[@]}" > "$work/out" 2> "$work/err" &
    pid=$!
    for _ in $(seq 100); do grep -q ready "$work/out" 2>/dev/null && break; sleep 0.1; done
    if [[ $v == uring* ]] && ! grep -q "transport Uring" "$work/err"; then
      echo "run.sh: $v did not get io_uring:" >&2; cat "$work/err" >&2; exit 1
    fi
    fio_json rand1 randread 4k 1 | fio_row "$r" "$v" randread-4k-1job
    fio_json rand2 randread 4k 2 | fio_row "$r" "$v" randread-4k-2jobs
    s=$("$bin" stat "$mnt" 10000 "$seconds")
    printf '%s\t%s\tstat\t%s\t%s\t\t\n' "$r" "$v" "$(awk '{print $2}' <<<"$s")" "$(awk '{print $4}' <<<"$s")"
    fio_json seq read 128k 1 | fio_row "$r" "$v" read-128k-1job
    umount "$mnt"
    wait "$pid" || true
    grep "served through" "$work/err" | sed "s/^/# $v round $r: /" >&2
  done
done
