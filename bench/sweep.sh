#!/usr/bin/env bash
# Durable enqueue against concurrency: machina, effectum and apalis (SQLite) each add
# BENCH_JOBS (default 100000) no-op jobs with S concurrent submitters, one job per call,
# for S in SWEEP_SUBMITTERS; SWEEP_REPS (default 3) runs per point, a fresh database each.
# apalis runs only at SWEEP_APALIS_SUBMITTERS (it takes ~45 s a point at any S).
# Prints one JSON line per run (phase "enqueue"); bench/table.py takes each point's median.
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${BENCH_JOBS:-100000}
REPS=${SWEEP_REPS:-3}
read -r -a SUBMITTERS <<< "${SWEEP_SUBMITTERS:-16 64 256 1024 4096}"
read -r -a APALIS_SUBMITTERS <<< "${SWEEP_APALIS_SUBMITTERS:-64 1024}"
target="${CARGO_TARGET_DIR:-target}"
cargo build --release -q -p machina-bench --bin machina-bench
for peer in effectum apalis; do
  CARGO_TARGET_DIR="$target/bench-peers" cargo build --release -q --locked --manifest-path "bench/peers/$peer/Cargo.toml" >&2
done
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

for s in "${SUBMITTERS[@]}"; do
  for ((rep = 1; rep <= REPS; rep++)); do
    echo "== enqueue sweep: $s submitters, run $rep of $REPS" >&2
    # Alternated, so that a slow moment of the host falls on both.
    "$target/release/machina-bench" --jobs "$JOBS" --submitters "$s" --enqueue-only
    rm -f "$tmp"/e.sqlite*
    "$target/bench-peers/release/peer-effectum" --jobs "$JOBS" --submitters "$s" --enqueue-only --db "$tmp/e.sqlite"
  done
done
for s in "${APALIS_SUBMITTERS[@]}"; do
  echo "== enqueue sweep: apalis, $s submitters" >&2
  rm -f "$tmp"/a.sqlite*
  "$target/bench-peers/release/peer-apalis" --jobs "$JOBS" --submitters "$s" --enqueue-only --db "$tmp/a.sqlite"
done
