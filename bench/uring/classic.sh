#!/usr/bin/env bash
# baoverlayfs with FUSE over io_uring turned off: $BAOVERLAYFS with -o io_uring=0 added, for
# bench/compare/meta.sh ring=$BAOVERLAYFS classic=bench/uring/classic.sh (which passes -f -o OPTIONS MOUNTPOINT).
set -euo pipefail
args=()
while [[ $# -gt 0 ]]; do
  if [[ $1 == -o ]]; then args+=(-o "$2,io_uring=0"); shift 2; else args+=("$1"); shift; fi
done
exec "${BAOVERLAYFS:?set BAOVERLAYFS to the baoverlayfs executable}" "${args[@]}"
