#!/usr/bin/env bash
# HTTP enqueue rate: wrk at concurrency 64 against a release machina-api on loopback.
# Prints one JSON line. Usage: bench/http.sh [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
BIN=${CARGO_TARGET_DIR:-$PWD/target}/release
WORK=$(mktemp -d)
trap 'kill $API 2>/dev/null; wait $API 2>/dev/null; rm -rf "$WORK"' EXIT
mkdir -p "$WORK/config.d"
head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$WORK/token"
printf '[api]\ntoken_file = "%s/token"\n\n[bus]\naddress = "none"\n\n[ledger]\nsynchronous = "full"\n' "$WORK" > "$WORK/config.d/90-bench.toml"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
MACHINA_LOG=warn "$BIN/machina-api" --config-dir "$WORK/config.d" --state-dir "$WORK/state" --listen "127.0.0.1:$PORT" &
API=$!
for _ in $(seq 100); do curl -fsS "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break; sleep 0.1; done
OUT=$(MACHINA_BENCH_TOKEN=$(cat "$WORK/token") wrk -t2 -c64 -d"${SECS}s" --latency -s bench/enqueue.lua "http://127.0.0.1:$PORT/enqueue")
echo "$OUT" >&2
RUNS=$(python3 -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('select count(*) from runs').fetchone()[0])" "$WORK/state/ledger.db")
python3 - "$OUT" "$RUNS" <<'PY'
import json, re, sys
out, runs = sys.argv[1], int(sys.argv[2])
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
def lat(p):
    m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out)
    v, u = float(m.group(1)), m.group(2)
    return v * {"us": 1, "ms": 1e3, "s": 1e6}[u]
print(json.dumps({"system": "machina-http", "requests_per_s": rps, "non_2xx": int(bad.group(1)) if bad else 0,
                  "runs_created": runs, "latency_p50_us": lat(50), "latency_p99_us": lat(99), "concurrency": 64}))
PY
