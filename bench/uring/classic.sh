#!/usr/bin/env bash
# baoverlayfs with FUSE over io_uring off (or on, when run as ring.sh): $BAOVERLAYFS with -o io_uring=0 (=1) added,
# for bench/compare/meta.sh ring=bench/uring/ring.sh classic=bench/uring/classic.sh (which passes -f -o OPTIONS MOUNTPOINT).
set -euo pipefail
value=0; [[ $(basename "$0") == ring.sh ]] && value=1
args=()
while [[ $# -gt 0 ]]; do
  if [[ $1 == -o ]]; then args+=(-o "$2,io_uring=$value"); shift 2; else args+=("$1"); shift; fi
done
exec "${BAOVERLAYFS:?set BAOVERLAYFS to the baoverlayfs executable}" "${args[@]}"
