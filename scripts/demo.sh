#!/usr/bin/env bash
# machina's main job, in the foreground and without systemd: start the API and
# two workers on a local state directory, submit the bundled example intent
# through the HTTP API, approve its plan, watch the tasks run, print the result,
# and stop everything that was started.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DEMO=$ROOT/.demo
BIN=${MACHINA_BIN:-$ROOT/target/debug}
PIDS=()

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
cleanup() {
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

rm -rf "$DEMO" && mkdir -p "$DEMO/config.d" "$DEMO/state"
umask 077
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$DEMO/token"
# The token goes to curl through a file, never on a command line other users can read.
printf 'Authorization: Bearer %s\n' "$(cat "$DEMO/token")" > "$DEMO/auth-header"
echo "[api]" > "$DEMO/config.d/90-demo.toml"
echo "token_file = \"$DEMO/token\"" >> "$DEMO/config.d/90-demo.toml"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
API="http://127.0.0.1:$PORT"
AUTH=(-H "@$DEMO/auth-header")
CONF=(--config-dir "$ROOT/dev/config.d" --config-dir "$DEMO/config.d" --state-dir "$DEMO/state")

say "starting machina-api on $API and two workers (logs in .demo/*.log)"
"$BIN/machina-api" "${CONF[@]}" --listen "127.0.0.1:$PORT" 2>"$DEMO/api.log" & PIDS+=($!)
for i in 1 2; do "$BIN/machina-worker" "${CONF[@]}" --id "demo-$i" 2>"$DEMO/worker-$i.log" & PIDS+=($!); done
for _ in $(seq 100); do curl -fsS "$API/health" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fsS "$API/health" | jq -c .

say "submitting examples/intent.json (POST /enqueue)"
RESP=$(curl -fsS "${AUTH[@]}" -H 'Content-Type: application/json' -H "X-Request-Id: demo-$(date +%s)" \
    --data @examples/intent.json "$API/enqueue")
RUN=$(jq -r .run.id <<<"$RESP")
echo "intent $(jq -r .intent.id <<<"$RESP")  run $RUN  status $(jq -r .run.status <<<"$RESP")"

say "waiting for the plan (CompileST → DecideST)"
for _ in $(seq 200); do
    STATUS=$(curl -fsS "${AUTH[@]}" "$API/runs/$RUN" | jq -r .status)
    [ "$STATUS" = waiting_input ] && break
    case $STATUS in failed|canceled|retries_exceeded) echo "run ended early: $STATUS"; exit 1;; esac
    sleep 0.1
done
PLAN=$(curl -fsS "${AUTH[@]}" "$API/runs/$RUN" | jq -r .planSha256)
echo "status $STATUS; plan sha256 $PLAN:"
curl -fsS "${AUTH[@]}" "$API/artifacts/$PLAN" | jq -c '.tasks[] | {name, argv}'

say "approving the plan as ${USER:-operator}"
curl -fsS "${AUTH[@]}" -H 'Content-Type: application/json' \
    --data "{\"approvedBy\": \"${USER:-operator}\", \"planSha256\": \"$PLAN\"}" \
    "$API/runs/$RUN/approve-plan" | jq -c '{status, approvedBy, approvedPlanSha256}'

say "watching the run (GET /runs/$RUN/events as Server-Sent Events)"
curl -fsSN --max-time 120 "${AUTH[@]}" -H 'Accept: text/event-stream' "$API/runs/$RUN/events" \
    | sed -n 's/^data: //p' | jq -r '"#\(.seq) \(.kind) \(.data | tostring)"'

say "final state"
DETAIL=$(curl -fsS "${AUTH[@]}" "$API/runs/$RUN")
jq -r '"run \(.id): \(.status)  (recipe \(.recipe), partition \(.queuePartitionKey), approved by \(.approvedBy))"' <<<"$DETAIL"
echo "steps:"
jq -r '.steps[] | "  \(.step) \(.outcome)\(if .detail then "  — " + .detail else "" end)"' <<<"$DETAIL"
echo "tasks:"
jq -r '.tasks[] | "  \(.spec.name): \(.status) exit=\(.exitStatus) attempt=\(.attempt)\n    key    \(.taskKey)\n    stdout \(.stdoutSha256)\n    stderr \(.stderrSha256)"' <<<"$DETAIL"
echo "task output (fetched by sha256, verified by the server):"
for sha in $(jq -r '.tasks[].stdoutSha256' <<<"$DETAIL"); do
    printf '  %s… %s\n' "${sha:0:12}" "$(curl -fsS "${AUTH[@]}" "$API/artifacts/$sha" | tr -d '\n')"
done
FINAL=$(jq -r .status <<<"$DETAIL")
say "done: run $FINAL"
[ "$FINAL" = succeeded ]
