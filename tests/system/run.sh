#!/usr/bin/env bash
# tests/system/run.sh — machina's system test: boots a real systemd (Debian 12) as PID 1 of a
# systemd-nspawn container, installs target/deb/machina_*.deb into it and exercises what a user
# does: enable the units, socket activation, D-Bus approval with its access policy, machinactl,
# the journal, a worker SIGKILLed mid-run, idle exit, the sandboxing score, and purge.
#
# Needs root on a Debian 12 host (PID 1 need not be systemd). Installs its host tools with apt
# when missing (systemd-container pinned to the host's systemd version, mmdebstrap, gpg, jq).
# Writes only under target/system-test/ and leaves nothing running or mounted.
#
# Usage: tests/system/run.sh            (after `make deb`)
# Env:   ST_REBUILD=1        rebuild the cached rootfs tarball
#        ST_DEB_DIR=DIR      where machina_*.deb is (default target/deb)
#        ST_SUBMIT_PATH=/enqueue   HTTP route that takes examples/intent.json
#        ST_KEEP_GOING=0     stop at the first failing step
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
ST_BUILD=$REPO/target/system-test
ST_LOGS=$ST_BUILD/logs
ST_RUN=$ST_BUILD/run.$$
ST_CGNAME=machina-system-test-$$
ST_DEB_DIR=${ST_DEB_DIR:-$REPO/target/deb}
ST_SUBMIT_PATH=${ST_SUBMIT_PATH:-/enqueue}
IDLE_EXIT_SECS=5
# shellcheck source=tests/system/lib.sh
. "$HERE/lib.sh"

[ "$(id -u)" = 0 ] || { echo "tests/system/run.sh must run as root" >&2; exit 1; }
mkdir -p "$ST_LOGS" "$ST_RUN/root"
: >"$ST_LOGS/timings.txt"
rm -f "$ST_LOGS/output-after-sigpipe.txt"
T_START=$(now_ms)

# ------------------------------------------------------------------------------ helpers
# api METHOD PATH [BODY_FILE_IN_CONTAINER] → API_CODE, API_BODY
api() {
    local out
    out=$(CT_TIMEOUT=30 ct /usr/local/bin/st-api "$@" 2>&1) || true
    API_CODE=$(head -n1 <<<"$out")
    API_BODY=$(tail -n +2 <<<"$out")
}
run_json() { api GET "/runs/$1"; [ "$API_CODE" = 200 ] && printf '%s\n' "$API_BODY"; }
run_field() { run_json "$1" | jq -r "$2"; }
unit_prop() { ct systemctl show -P "$2" "$1"; }
# Copy a host file into the container (through its root, seen from the host).
put() { install -m "${3:-0644}" "$1" "/proc/$LEADER/root$2"; }
# show COMMAND...: runs COMMAND, prints its output indented, returns its status.
show() {
    local out rc=0
    out=$("$@" 2>&1) || rc=$?
    [ -z "$out" ] || sed 's/^/    | /' <<<"$out"
    return $rc
}
quiet() { "$@" >/dev/null; }

status_is() { # RUN STATUS...: true when the run's status is one of STATUS; fails fast on terminal ones
    local s want
    s=$(run_field "$1" .status 2>/dev/null || true)
    shift
    for want in "$@"; do [ "$s" = "$want" ] && return 0; done
    case "$s" in failed | canceled | retries_exceeded | succeeded)
        info "run reached $s (waiting for $*)"
        ST_WAIT_ABORT=1
        return 0
        ;;
    esac
    return 1
}
wait_status() { # TIMEOUT RUN STATUS...
    local t=$1 run=$2; shift 2
    ST_WAIT_ABORT=0
    wait_until "$t" "run $run to be $*" status_is "$run" "$@" && [ "$ST_WAIT_ABORT" = 0 ] ||
        { info "run $run: $(run_json "$run" | jq -c '{status, errCode, errorMessage, nextAction}' 2>/dev/null)"; return 1; }
}

diagnostics() {
    echo
    echo "=================== diagnostics ==================="
    CT_TIMEOUT=20 ct systemctl status --no-pager --full -n 0 'machina*' 2>&1 || true
    echo "--- systemctl list-units --all 'machina*'"
    CT_TIMEOUT=20 ct systemctl list-units --all --no-pager 'machina*' 2>&1 || true
    echo "--- journalctl -u 'machina*' -n 200"
    CT_TIMEOUT=20 ct journalctl -u 'machina*' --no-pager -n 200 2>&1 || true
    echo "--- systemctl --failed"
    CT_TIMEOUT=20 ct systemctl --failed --no-pager 2>&1 || true
    echo "==================================================="
}

finish() {
    local rc=$? left=0
    set +e
    trap - EXIT INT TERM HUP PIPE
    if [ -n "$ST_STEP_PID" ]; then
        echo "interrupted during step $ST_STEP_NAME"
        ST_RESULTS+=("FAIL $ST_STEP_NAME (interrupted)")
        ST_FAILED=$((ST_FAILED + 1))
        kill_tree "$ST_STEP_PID"
        wait "$ST_STEP_PID" 2>/dev/null
    fi
    if [ -n "$LEADER" ] && kill -0 "$LEADER" 2>/dev/null; then
        if [ "$ST_FAILED" -gt 0 ] || [ "$rc" != 0 ]; then diagnostics; fi
        CT_TIMEOUT=30 ct journalctl -b --no-pager -o short-monotonic >"$ST_LOGS/journal.txt" 2>&1
    fi
    log "teardown"
    shutdown_container || left=1
    rm -rf --one-file-system "$ST_RUN"
    [ "$left" = 0 ] && info "nothing left behind (processes, cgroups, mounts)"
    echo
    echo "=================== summary ==================="
    printf '%s\n' "${ST_RESULTS[@]}"
    echo "passed $ST_PASSED, failed $ST_FAILED, skipped $ST_SKIPPED; total $(($(now_ms) - T_START)) ms" \
        "(logs: ${ST_LOGS#"$REPO"/})"
    if [ "$rc" = 0 ] && { [ "$ST_FAILED" -gt 0 ] || [ "$left" = 1 ]; }; then rc=1; fi
    [ "$rc" != 0 ] && [ "$ST_FAILED" = 0 ] && [ "$left" = 0 ] && echo "harness error (rc=$rc)"
    exit "$rc"
}
trap finish EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP
# A closed stdout (e.g. `| head`) must not kill the script before its teardown ran: the rest
# of the output goes to the log dir instead.
trap 'exec >>"$ST_LOGS/output-after-sigpipe.txt" 2>&1; exit 141' PIPE

# ------------------------------------------------------------------------------ steps
step_install() {
    local deb
    deb=$(ls -t "$ST_DEB_DIR"/machina_*.deb 2>/dev/null | head -n1 || true)
    [ -n "$deb" ] || { info "no $ST_DEB_DIR/machina_*.deb (run make deb first)"; return 1; }
    info "package: ${deb#"$REPO"/}"
    dpkg-deb -f "$deb" Package Version Architecture Depends | sed 's/^/    /'
    put "$deb" "/root/$(basename "$deb")"
    CT_TIMEOUT=120 check "dpkg -i succeeded" show ct dpkg -i "/root/$(basename "$deb")"
    check "package is installed" test "$(ct dpkg-query -W -f='${Status}' machina)" = "install ok installed"
    check "user machina exists ($(ct id machina 2>&1))" quiet ct id -u machina
    check "group machina-admin exists ($(ct getent group machina-admin))" quiet ct getent group machina-admin
    keep INSTALLED 1
}

step_config() {
    need INSTALLED
    ct mkdir -p /etc/machina/config.d /etc/machina/recipes.d
    put "$HERE/fixtures/50-test.toml" /etc/machina/config.d/50-test.toml
    put "$HERE/fixtures/st-slow.toml" /etc/machina/recipes.d/st-slow.toml
    put "$HERE/fixtures/st-api" /usr/local/bin/st-api 0755
    put "$REPO/examples/intent.json" /root/intent.json
    put "$HERE/fixtures/st-slow-intent.json" /root/st-slow-intent.json
    ct cat /etc/machina/config.d/50-test.toml | sed 's/^/    | /'
    check "drop-in readable by the machina user" ct runuser -u machina -- test -r /etc/machina/config.d/50-test.toml
    keep CONFIGURED 1
}

step_enable() {
    need CONFIGURED
    CT_TIMEOUT=60 check "systemctl enable --now succeeded" \
        show ct systemctl enable --now machina.target machina-worker@1 machina-worker@2
    keep ENABLED 1
    workers_active() { ct systemctl is-active -q machina-worker@1 machina-worker@2; }
    check "machina-worker@1 and @2 active" wait_until 20 "workers active" workers_active
    check "machina-api.socket listening ($(unit_prop machina-api.socket SubState))" \
        test "$(unit_prop machina-api.socket SubState)" = listening
    ct systemctl show -P Listen machina-api.socket | sed 's/^/    listen: /'
    local st; st=$(unit_prop machina-api.service ActiveState)
    check "machina-api.service not started before the first request ($st)" test "$st" = inactive
}

step_submit() {
    need ENABLED
    api POST "$ST_SUBMIT_PATH" /root/intent.json
    if grep -qx '20[0-9]' <<<"$API_CODE"; then
        info "POST $ST_SUBMIT_PATH → $API_CODE $(jq -c '{run: (.run // .) | {id, status, recipe}}' <<<"$API_BODY" 2>/dev/null || echo "$API_BODY")"
    else
        info "POST $ST_SUBMIT_PATH → $API_CODE ${API_BODY:0:500}"
    fi
    check "HTTP 201/202" grep -qx '20[12]' <<<"$API_CODE"
    local run; run=$(jq -r '.run.id // .run_id // .runId // empty' <<<"$API_BODY")
    check "response has a run id ($run)" test -n "$run"
    keep RUN1 "$run"
    check "machina-api.service active after the request" ct systemctl is-active -q machina-api.service
}

step_approve() {
    need RUN1
    ct useradd -G machina-admin alice
    ct useradd bob
    check "run reaches waiting_input" wait_status 30 "$RUN1" waiting_input
    local sha out rc
    sha=$(run_field "$RUN1" .planSha256)
    check "run has planSha256 ($sha)" grep -Eqx '[0-9a-f]{64}' <<<"$sha"
    rc=0; out=$(ct runuser -u bob -- busctl call org.machina.Manager1 /org/machina/Manager1 \
        org.machina.Manager1 ApprovePlan ss "$RUN1" "$sha" 2>&1) || rc=$?
    info "bob: rc=$rc: ${out:0:300}"
    check "ApprovePlan as bob (not in machina-admin) is refused" test "$rc" != 0
    check "bob's refusal is an access denial" grep -Eqi 'access denied|accessdenied|rejected send message|permission denied|not permitted' <<<"$out"
    check "run still waiting_input after bob's call" test "$(run_field "$RUN1" .status)" = waiting_input
    rc=0; out=$(ct runuser -u alice -- busctl call org.machina.Manager1 /org/machina/Manager1 \
        org.machina.Manager1 ApprovePlan ss "$RUN1" "$sha" 2>&1) || rc=$?
    info "alice: rc=$rc: ${out:0:300}"
    check "ApprovePlan as alice (machina-admin) succeeds" test "$rc" = 0
    local by; by=$(run_field "$RUN1" .approvedBy)
    check "run approved by alice (approvedBy=$by)" test "$by" = alice
}

step_watch() {
    need RUN1
    CT_TIMEOUT=60 check "machinactl watch exits 0" show ct runuser -u alice -- machinactl watch "$RUN1"
    check "run succeeded ($(run_field "$RUN1" .status))" test "$(run_field "$RUN1" .status)" = succeeded
}

step_journal() {
    need RUN1
    local n1 n2 lines
    journal_has_lines() {
        lines=$(ct journalctl --no-pager -o json -u machina-worker@1 -u machina-worker@2 "RUN_ID=$RUN1")
        [ -n "$lines" ]
    }
    check "journalctl -u machina-worker@{1,2} RUN_ID=$RUN1 finds lines" wait_until 10 "journal lines" journal_has_lines
    n1=$(ct journalctl --no-pager -q -o cat -u machina-worker@1 "RUN_ID=$RUN1" | wc -l)
    n2=$(ct journalctl --no-pager -q -o cat -u machina-worker@2 "RUN_ID=$RUN1" | wc -l)
    info "lines: machina-worker@1 $n1, machina-worker@2 $n2"
    jq -r '"\(._SYSTEMD_UNIT) RUN_ID=\(.RUN_ID) TASK_KEY=\(.TASK_KEY // "-" | .[0:12]) \(.MESSAGE)"' <<<"$lines" | head -n 8 | sed 's/^/    | /'
    check "every line carries RUN_ID=$RUN1" test "$(jq -r .RUN_ID <<<"$lines" | sort -u)" = "$RUN1"
    check "lines come from the worker units" test -z "$(jq -r ._SYSTEMD_UNIT <<<"$lines" | grep -v '^machina-worker@[12]\.service$' || true)"
}

step_kill() {
    need ENABLED
    api POST "$ST_SUBMIT_PATH" /root/st-slow-intent.json
    local run victim before after detail n
    run=$(jq -r '.run.id // .run_id // .runId // empty' <<<"$API_BODY")
    [ -n "$run" ] || info "POST $ST_SUBMIT_PATH → $API_CODE ${API_BODY:0:500}"
    check "slow run submitted (HTTP $API_CODE, run ${run:-none})" test -n "$run"
    keep RUN2 "$run"
    leased_by() { run_json "$run" | jq -e --arg w "$1" '[.tasks[] | select(.status == "leased" and .leaseOwner == $w)] | length > 0' >/dev/null; }
    if wait_until 30 "worker 1 to hold a lease" leased_by 1; then victim=1
    elif leased_by 2; then victim=2
    else info "no worker holds a lease: $(run_json "$run" | jq -c '{status, tasks: [.tasks[] | .status]}')"; return 1
    fi
    before=$(unit_prop "machina-worker@$victim" NRestarts)
    info "tasks: $(run_json "$run" | jq -c '[.tasks[] | "\(.spec.name):\(.status)@\(.leaseOwner // "-")"]')"
    info "systemctl kill -s KILL machina-worker@$victim (NRestarts=$before)"
    ct systemctl kill -s KILL "machina-worker@$victim"
    restarted() { [ "$(unit_prop "machina-worker@$victim" NRestarts)" -gt "$before" ] && ct systemctl is-active -q "machina-worker@$victim"; }
    check "machina-worker@$victim restarted (Restart=on-failure)" wait_until 20 "worker restart" restarted
    check "run succeeds after the kill" wait_status 90 "$run" succeeded
    detail=$(run_json "$run")
    n=$(jq '.tasks | length' <<<"$detail")
    jq -r '.tasks[] | "\(.spec.name) \(.status) attempt=\(.attempt) exit=\(.exitStatus)"' <<<"$detail" | sed 's/^/    | /'
    check "6 tasks in the plan ($n)" test "$n" = 6
    check "every task succeeded" test "$(jq '[.tasks[] | select(.status == "succeeded")] | length' <<<"$detail")" = "$n"
    check "the killed worker's task was run again (some attempt ≥ 2)" \
        test "$(jq '[.tasks[] | select(.attempt >= 2)] | length' <<<"$detail")" -ge 1
    local db=/var/lib/machina/ledger.db dups count
    dups=$(ct sqlite3 "$db" "SELECT effect_key, COUNT(*), SUM(seen) FROM receipts GROUP BY effect_key HAVING COUNT(*) > 1 OR SUM(seen) > 1")
    check "no effect committed twice (receipts: ${dups:-none duplicated})" test -z "$dups"
    count=$(ct sqlite3 "$db" "SELECT COUNT(*) FROM receipts r JOIN task_list t ON t.id = r.task_id WHERE t.run_id = '$run'")
    check "one receipt per task ($count receipts for $n tasks)" test "$count" = "$n"
    api GET /metrics
    local m; m=$(grep -E '^[a-z_]*duplicate_receipts' <<<"$API_BODY" || true)
    check "/metrics duplicate_receipts is 0 (${m:-missing})" test -n "$m" -a "$(awk '{print $NF}' <<<"$m" | sort -u)" = 0
    after=$(ct journalctl --no-pager -q -o cat MESSAGE_ID=4fa72630e8ca42bea58d8cc81a7b74d8 | wc -l)
    info "journal: $after 'lease reclaimed' message(s)"
}

step_idle_exit() {
    need ENABLED
    api_stopped() { case "$(unit_prop machina-api.service ActiveState)" in inactive | failed) return 0 ;; esac; return 1; }
    check "machina-api.service stops by itself (idle_exit_secs=$IDLE_EXIT_SECS)" \
        wait_until $((IDLE_EXIT_SECS + 25)) "idle exit" api_stopped
    local state result code status
    state=$(unit_prop machina-api.service ActiveState)
    result=$(unit_prop machina-api.service Result)
    code=$(unit_prop machina-api.service ExecMainCode)
    status=$(unit_prop machina-api.service ExecMainStatus)
    check "it exited cleanly (ActiveState=$state Result=$result ExecMainCode=$code ExecMainStatus=$status)" \
        test "$state" = inactive -a "$result" = success -a "$status" = 0
    check "machina-api.socket still listening" test "$(unit_prop machina-api.socket SubState)" = listening
    api GET /health
    check "GET /health brings it back (HTTP $API_CODE)" test "$API_CODE" = 200
    check "machina-api.service active again" ct systemctl is-active -q machina-api.service
    # Idle again; this time a D-Bus call is what brings it back (bus activation).
    check "it stops again when idle" wait_until $((IDLE_EXIT_SECS + 25)) "idle exit" api_stopped
    CT_TIMEOUT=30 check "machinactl info (D-Bus) activates it" show ct runuser -u alice -- machinactl info
    check "machina-api.service active after the D-Bus call" ct systemctl is-active -q machina-api.service
}

step_security() {
    need INSTALLED
    local units=() u line score worst=0 bad=0
    mapfile -t units < <(ct systemctl list-unit-files --no-legend --no-pager --type=service 'machina*' |
        awk '{print $1}' | sed 's/@\.service$/@1.service/' | sort -u)
    check "machina service units found (${units[*]})" test "${#units[@]}" -gt 0
    for u in "${units[@]}"; do
        line=$(ct systemd-analyze security --no-pager "$u" 2>&1 | grep 'Overall exposure level' || true)
        score=$(grep -Eo ': [0-9]+\.[0-9]+' <<<"$line" | tr -d ': ' || true)
        if [ -z "$score" ]; then info "NOT OK: no score for $u"; bad=1; continue; fi
        if awk -v s="$score" 'BEGIN {exit !(s > 3.0)}'; then
            info "NOT OK: $u exposure $score > 3.0"; bad=1
            ct systemd-analyze security --no-pager "$u" 2>&1 | grep -E '^✗' | head -n 25 | sed 's/^/    | /'
        elif awk -v s="$score" 'BEGIN {exit !(s > 2.0)}'; then
            info "WARN: $u exposure $score > 2.0"
        else
            info "ok: $u exposure $score"
        fi
    done
    return $bad
}

step_catalog() {
    need RUN1
    local text
    # The finished-run message, explained by the catalog the package installed.
    text=$(ct journalctl --no-pager -x -n 1 MESSAGE_ID=a3950e52e2074e65a57b809c16e74372 "RUN_ID=$RUN1" 2>&1 || true)
    sed 's/^/    | /' <<<"$text" | head -n 12
    check "journalctl -x explains the run-finished message" grep -q "Defined-By: machina\|Subject: machina run" <<<"$text"
    check "approval-required message logged for $RUN1" \
        test -n "$(ct journalctl --no-pager -q -o cat MESSAGE_ID=bfddc75ee33648fbb2975d11f721883b "RUN_ID=$RUN1")"
}

step_maintenance() {
    need INSTALLED
    local timers
    timers=$(ct systemctl list-timers --all --no-pager --no-legend 'machina*' 2>&1 || true)
    sed 's/^/    | /' <<<"$timers"
    check "machina-maintain.timer is scheduled" grep -q 'machina-maintain.timer' <<<"$timers"
    check "machina-maintain.timer is active" ct systemctl is-active --quiet machina-maintain.timer
    CT_TIMEOUT=120 check "systemctl start machina-maintain.service succeeds" show ct systemctl start machina-maintain.service
    check "maintenance logged its summary" \
        test -n "$(ct journalctl --no-pager -q -o cat -u machina-maintain.service MESSAGE_ID=2fec123bbd9c41ae98a22191ab306471)"
    CT_TIMEOUT=60 check "machinactl verify --full exits 0 (alice)" show ct runuser -u alice -- machinactl verify --full
}

step_snapshot() {
    need RUN1
    local timers out id
    timers=$(ct systemctl list-timers --all --no-pager --no-legend 'machina*' 2>&1 || true)
    check "machina-snapshot.timer is scheduled" grep -q 'machina-snapshot.timer' <<<"$timers"
    check "both timers are active" ct systemctl is-active --quiet machina-snapshot.timer machina-maintain.timer
    CT_TIMEOUT=120 check "systemctl start machina-snapshot.service succeeds" show ct systemctl start machina-snapshot.service
    check "the snapshot was logged (MESSAGE_ID created)" \
        test -n "$(ct journalctl --no-pager -q -o cat -u machina-snapshot.service MESSAGE_ID=9417ff7a8d284f84be4399e425e66997)"
    out=$(CT_TIMEOUT=60 ct machinactl --output json snapshot list 2>&1) || true
    id=$(jq -r '[.[] | select(.kind == "scheduled")][0].id // empty' <<<"$out" 2>/dev/null || true)
    check "machinactl snapshot list shows the scheduled snapshot ($id)" test -n "$id"
    CT_TIMEOUT=60 check "a second run the same day creates nothing and exits 0" \
        show ct systemctl start machina-snapshot.service
    check "still one scheduled snapshot" \
        test "$(ct machinactl --output json snapshot list | jq '[.[] | select(.kind == "scheduled")] | length')" = 1
    # The D-Bus method, as an admin-group user: the API queues it, the path unit's root service answers.
    out=$(CT_TIMEOUT=60 ct runuser -u alice -- busctl --json=short call org.machina.Manager1 /org/machina/Manager1 \
        org.machina.Manager1 CreateSnapshot s "over dbus" 2>&1) || true
    info "CreateSnapshot: $(head -c 300 <<<"$out")"
    check "CreateSnapshot over D-Bus (alice) creates a manual snapshot" \
        test "$(jq -r '.data[0] | fromjson | .outcome' <<<"$out" 2>/dev/null)" = created
    labelled() { ct machinactl snapshot list | grep -q 'over dbus'; }
    check "machinactl snapshot list shows its label" labelled
    # Restore refuses while machina runs, then with --stop swaps the state and starts machina again.
    refused_while_running() {
        local msg
        if msg=$(ct machinactl snapshot restore "$id" 2>&1); then return 1; fi
        info "refused: $msg"
        grep -q -- '--stop' <<<"$msg"
    }
    check "restore without --stop is refused while machina runs" refused_while_running
    CT_TIMEOUT=120 check "machinactl snapshot restore --stop succeeds" show ct machinactl snapshot restore "$id" --stop
    check "workers run again after the restore" ct systemctl is-active --quiet machina-worker@1 machina-worker@2
    api GET "/runs/$RUN1"
    check "the snapshotted run is there after the restore (HTTP $API_CODE)" test "$API_CODE" = 200
}

step_sandbox() {
    need INSTALLED
    local outside inside
    outside=$(ct /usr/libexec/machina/machina-task-exec --preflight 2>&1 || true)
    inside=$(CT_TIMEOUT=30 ct systemd-run --quiet --wait --pipe --collect -p User=machina \
        -p SystemCallFilter=@system-service -p "SystemCallFilter=landlock_create_ruleset landlock_add_rule landlock_restrict_self" \
        -p SystemCallErrorNumber=EPERM -p NoNewPrivileges=yes /usr/libexec/machina/machina-task-exec --preflight 2>&1 || true)
    info "preflight in the container: $outside"
    info "preflight with the worker's syscall filter: $inside"
    local logged
    logged=$(ct journalctl --no-pager -q -o cat -u machina-worker@1 --grep 'tasks are sandboxed' | tail -n 1)
    info "worker: $logged"
    check "the worker logged its sandbox preflight" test -n "$logged"
    check "landlock is in force under the worker unit's syscall filter" \
        test "$(jq -r .landlock_abi <<<"$inside" 2>/dev/null || echo 0)" -ge 1
}

step_profile() {
    need INSTALLED
    local conf token out rc
    conf=$(ct runuser -u alice -- machinactl config 2>&1 || true)
    check "the package runs profile prod" grep -q '^profile = "prod"' <<<"$conf"
    check "prod requires every task protection" grep -q '^required = true' <<<"$conf"
    out=$(ct runuser -u alice -- machinactl lease issue --tool http --tier 2 --ttl-secs 60 2>&1 || true)
    token=$(tail -n 1 <<<"$out")
    info "lease: ${out%%$'\n'*}"
    check "machinactl lease issue prints a token" grep -Eqx 'mpl_[0-9a-f]{64}' <<<"$token"
    check "the lease is listed (without its token)" \
        bash -c '[ "$(grep -c "tool=http tier=2" <<<"$1")" = 1 ] && ! grep -q "$2" <<<"$1"' _ \
        "$(ct runuser -u alice -- machinactl lease list 2>&1)" "$token"
    rc=0; out=$(ct runuser -u bob -- machinactl lease issue --tool http --tier 2 2>&1) || rc=$?
    info "bob: rc=$rc: ${out:0:300}"
    check "bob (not in machina-admin) cannot issue a lease (rc=$rc)" test "$rc" = 5
}

step_purge() {
    need INSTALLED
    local uid; uid=$(ct id -u machina)
    CT_TIMEOUT=120 check "dpkg --purge machina succeeded" show ct dpkg --purge machina
    no_machina_procs() { [ -z "$(ct ps -eo pid=,uid=,comm= | awk -v u="$uid" '$2 == u || $3 ~ /^machina/')" ]; }
    check "no machina processes remain" wait_until 15 "machina processes to exit" no_machina_procs ||
        { ct ps -eo pid,uid,comm | awk -v u="$uid" 'NR == 1 || $2 == u || $3 ~ /^machina/' | sed 's/^/    | /'; return 1; }
    local files; files=$(ct systemctl list-unit-files --no-legend --no-pager 'machina*' || true)
    [ -z "$files" ] || { sed 's/^/    | /' <<<"$files"; ct sh -c 'ls -l /etc/systemd/system/*/machina* /usr/lib/systemd/system/machina* 2>/dev/null' | sed 's/^/    | /' || true; }
    check "no machina unit files remain" test -z "$files"
    no_units() { [ -z "$(ct systemctl list-units --all --no-legend --no-pager 'machina*')" ]; }
    check "no machina units loaded" wait_until 10 "units to be unloaded" no_units ||
        { ct systemctl list-units --all --no-legend --no-pager 'machina*' | sed 's/^/    | /'; return 1; }
    check "/var/lib/machina removed" ct test ! -e /var/lib/machina
    check "/etc/machina/api-token removed" ct test ! -e /etc/machina/api-token
    port_closed() { ! ct curl -s -o /dev/null --max-time 3 http://127.0.0.1:8080/health; }
    check "port 8080 closed" port_closed
}

# ------------------------------------------------------------------------------ main
log "host tools"
cleanup_stale
ensure_host_tools
log "rootfs"
TARBALL=$(ensure_rootfs)
info "${TARBALL#"$REPO"/} ($(du -h "$TARBALL" | cut -f1))"
log "boot"
boot_container "$TARBALL"

log "steps"
STEPS=(
    "install|step_install" "config|step_config" "enable|step_enable" "submit|step_submit"
    "approve-dbus|step_approve" "machinactl-watch|step_watch" "journal|step_journal"
    "catalog|step_catalog" "kill-worker|step_kill" "maintenance|step_maintenance" "snapshot|step_snapshot" "idle-exit|step_idle_exit"
    "security|step_security" "sandbox|step_sandbox" "profile|step_profile" "purge|step_purge"
)
i=0
for s in "${STEPS[@]}"; do
    i=$((i + 1))
    step "$i-${s%%|*}" "${s#*|}"
    if [ "${ST_KEEP_GOING:-1}" = 0 ] && [ "$ST_FAILED" -gt 0 ]; then break; fi
done
