#!/usr/bin/env bash
# make bench: machina vs effectum and apalis (SQLite), same workload and durability,
# then durable enqueue against concurrency (bench/sweep.sh), then machina's HTTP enqueue
# rate. BENCH_JOBS (default 100000) sets the job count; BENCH_SWEEP=0 skips the sweep.
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${BENCH_JOBS:-100000}
export RUST_BACKTRACE=0
cargo build --release -q -p machina-bench --bin machina-bench
cargo build --release -q --bin machina-api
RESULTS=$(mktemp)
trap 'rm -f "$RESULTS"' EXIT
echo "== machina (ledger, group commit) — $JOBS jobs" >&2
"${CARGO_TARGET_DIR:-target}/release/machina-bench" --jobs "$JOBS" --consumers 4 --submitters 64 >> "$RESULTS"
echo "== peers — $JOBS jobs" >&2
bench/peers/run-peers.sh --jobs "$JOBS" --consumers 4 --submitters 64 >> "$RESULTS"
if [[ "${BENCH_SWEEP:-1}" != 0 ]]; then
  bench/sweep.sh >> "$RESULTS"
fi
echo "== HTTP enqueue (wrk, concurrency 64, 10 s)" >&2
bench/http.sh 10 >> "$RESULTS"
python3 bench/table.py < "$RESULTS"
