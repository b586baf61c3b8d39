#!/usr/bin/env bash
# Idle enqueue-to-start latency on release binaries: how long after POST /enqueue an idle
# worker starts the run, woken by D-Bus TasksQueued (mode signal, poll out of reach) or by
# its 150 ms poll (mode poll, the old design). Prints a markdown table on stdout.
# Usage: bench/wake.sh [wake-latency flags], e.g. --runs 500, --diagnose, --mode all
set -euo pipefail
cd "$(dirname "$0")/.."
export RUST_BACKTRACE=0
command -v dbus-daemon >/dev/null || { echo "wake.sh: dbus-daemon (package dbus) is needed" >&2; exit 1; }
cargo build --release -q --bin machina-api --bin machina-worker
cargo build --release -q -p machina-bench --bin wake-latency
BIN=${CARGO_TARGET_DIR:-$PWD/target}/release
echo "== $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
exec "$BIN/wake-latency" --bin-dir "$BIN" "$@"
