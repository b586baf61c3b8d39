# shellcheck shell=bash
# tests/system/lib.sh — host side of the system test: host tools, the cached Debian rootfs,
# booting systemd as PID 1 of a systemd-nspawn container, running commands in it, the step
# framework, and teardown. Sourced by run.sh; not meant to be run on its own.
#
# Layout (everything under the repo's build dir, nothing else on the host is written):
#   target/system-test/rootfs-<suite>-<hash>.tar   cached rootfs (hash of suite + package list)
#   target/system-test/logs/                       console, journal, apt/bootstrap logs (last run)
#   target/system-test/run.<pid>/                  scratch for one run, removed at teardown; its
#                                                  root/ is the mount point of the rootfs tmpfs,
#                                                  mounted only inside the container's private
#                                                  mount namespace (so it vanishes with it)

ST_SUITE=${ST_SUITE:-bookworm}
# Bump when the way the image is built changes (part of the cache key).
ST_ROOTFS_FORMAT=1
ST_PACKAGES=(systemd systemd-sysv dbus libc6 libbtrfsutil1 curl jq ca-certificates procps sqlite3)
ST_MACHINE=machina-st
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH LC_ALL=C.UTF-8 DEBIAN_FRONTEND=noninteractive SYSTEMD_PAGER='' SYSTEMD_COLORS=0

CT_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
NSPAWN_PID=""
LEADER=""
ST_STEP_PID=""
CG_DIRS=()

now_ms() { echo $(($(date +%s%N) / 1000000)); }
log() { printf '\n=== %s\n' "$*"; }
info() { printf '    %s\n' "$*"; }
timing() { printf 'TIME %-44s %6d ms\n' "$1" "$2" | tee -a "$ST_LOGS/timings.txt"; }

# ------------------------------------------------------------------------------ host tools
# Installs what is missing. systemd-container is pinned to the host's systemd version and
# installed without recommends: unpinned, apt would upgrade the host's systemd with it, and
# the recommended libnss-mymachines would edit /etc/nsswitch.conf.
ensure_host_tools() {
    local need=() v
    command -v systemd-nspawn >/dev/null || {
        v=$(dpkg-query -W -f='${Version}' systemd 2>/dev/null || true)
        if [ -z "$v" ]; then
            echo "the host has no systemd package; cannot pin systemd-container" >&2
            return 1
        fi
        need+=("systemd-container=$v")
    }
    command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
    # mmdebstrap uses gpg to match the mirror's keyring (a Recommends of it)
    command -v gpg >/dev/null || need+=(gpg)
    command -v jq >/dev/null || need+=(jq)
    command -v nsenter >/dev/null && command -v unshare >/dev/null || need+=(util-linux)
    ((${#need[@]})) || return 0
    info "apt-get install --no-install-recommends ${need[*]}"
    local t0; t0=$(now_ms)
    if ! apt-get install -y -qq --no-install-recommends "${need[@]}" >"$ST_LOGS/apt.log" 2>&1; then
        apt-get update -qq >>"$ST_LOGS/apt.log" 2>&1 || true
        if ! apt-get install -y -qq --no-install-recommends "${need[@]}" >>"$ST_LOGS/apt.log" 2>&1; then
            tail -20 "$ST_LOGS/apt.log" >&2
            echo "could not install ${need[*]} (systemd-container must match the host's systemd" \
                "version exactly; the host's systemd is never upgraded by this script)" >&2
            return 1
        fi
    fi
    timing "apt-get install host tools" $(($(now_ms) - t0))
}

# ------------------------------------------------------------------------------ rootfs
# The Debian mirrors the host's apt already uses, as one-line sources for the suite, its
# -updates and -security suites (main only). Read from deb822 *.sources and one-line *.list.
apt_mirror_lines() {
    local f files=()
    for f in /etc/apt/sources.list.d/*.sources; do [ -f "$f" ] && files+=("$f"); done
    if ((${#files[@]})); then
        awk -v want="$ST_SUITE" '
            function flush(   n, m, i, j, U, S) {
                if (types ~ /(^|[ \t])deb([ \t]|$)/ && tolower(enabled) != "no" && comps ~ /(^|[ \t])main([ \t]|$)/) {
                    n = split(uris, U, /[ \t]+/); m = split(suites, S, /[ \t]+/)
                    for (i = 1; i <= n; i++) for (j = 1; j <= m; j++)
                        if (U[i] != "" && (S[j] == want || S[j] == want "-updates" || S[j] == want "-security"))
                            print "deb " U[i] " " S[j] " main"
                }
                types = uris = suites = comps = enabled = ""; last = ""
            }
            /^[ \t]*#/ { next }
            /^[ \t]*$/ { flush(); next }
            /^[ \t]/ {                                   # continuation of a multi-line field
                v = $0; sub(/^[ \t]+/, "", v)
                if (last == "uris") uris = uris " " v; else if (last == "suites") suites = suites " " v
                else if (last == "components") comps = comps " " v; else if (last == "types") types = types " " v
                next
            }
            {
                k = tolower(substr($0, 1, index($0, ":") - 1)); v = substr($0, index($0, ":") + 1)
                gsub(/^[ \t]+|[ \t]+$/, "", v); last = k
                if (k == "types") types = v; else if (k == "uris") uris = v; else if (k == "suites") suites = v
                else if (k == "components") comps = v; else if (k == "enabled") enabled = v
            }
            END { flush() }' "${files[@]}"
    fi
    files=()
    [ -f /etc/apt/sources.list ] && files+=(/etc/apt/sources.list)
    for f in /etc/apt/sources.list.d/*.list; do [ -f "$f" ] && files+=("$f"); done
    if ((${#files[@]})); then
        awk -v want="$ST_SUITE" '
            $1 == "deb" {
                i = 2
                if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
                uri = $(i); suite = $(i + 1); main = 0
                for (j = i + 2; j <= NF; j++) if ($j == "main") main = 1
                if (main && (suite == want || suite == want "-updates" || suite == want "-security"))
                    print "deb " uri " " suite " main"
            }' "${files[@]}"
    fi
}

rootfs_tarball() {
    local key
    key=$(printf '%s\n' "format=$ST_ROOTFS_FORMAT" "suite=$ST_SUITE" "variant=minbase" \
        "$(printf '%s\n' "${ST_PACKAGES[@]}" | sort -u)" | sha256sum | cut -c1-16)
    echo "$ST_BUILD/rootfs-$ST_SUITE-$key.tar"
}

# Builds the rootfs on a tmpfs inside a private mount namespace (nothing mounted on the
# host survives it), then tars it to $1. Serialised with flock so parallel runs share it.
build_rootfs() {
    local out=$1 mirrors t0
    mapfile -t mirrors < <(apt_mirror_lines | awk '!seen[$0]++')
    if ! printf '%s\n' "${mirrors[@]}" | awk -v s="$ST_SUITE" '$3 == s {f = 1} END {exit !f}'; then
        echo "no '$ST_SUITE main' entry found in the host's apt sources (/etc/apt/sources.list*)" >&2
        return 1
    fi
    info "building the rootfs with mmdebstrap from: $(printf '%s; ' "${mirrors[@]}")"
    local include; include=$(IFS=,; echo "${ST_PACKAGES[*]}")
    t0=$(now_ms)
    mkdir -p "$ST_BUILD/tmp"
    # shellcheck disable=SC2016
    if ! TMPDIR=$ST_BUILD/tmp unshare --mount --propagation private bash -euo pipefail -c '
        root=$1 out=$2 suite=$3 include=$4 machine=$5; shift 5
        mount -t tmpfs -o mode=0755 st-build "$root"
        mmdebstrap --variant=minbase --include="$include" "$suite" "$root" "$@"
        # neutral image: fixed hostname, a fresh machine-id every boot, no caches
        echo "$machine" > "$root/etc/hostname"
        : > "$root/etc/machine-id"
        rm -f "$root/var/lib/dbus/machine-id"
        rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/var/log/journal/* \
               "$root"/tmp/* "$root"/var/tmp/*
        tar --numeric-owner --xattrs --xattrs-include="*" --acls -cf "$out.tmp" -C "$root" .
        mv "$out.tmp" "$out"
    ' bash "$ST_RUN/root" "$out" "$ST_SUITE" "$include" "$ST_MACHINE" "${mirrors[@]}" \
        >"$ST_LOGS/bootstrap.log" 2>&1; then
        tail -30 "$ST_LOGS/bootstrap.log" >&2
        rm -rf "$out.tmp" "$ST_BUILD/tmp"
        return 1
    fi
    rm -rf "$ST_BUILD/tmp"
    timing "rootfs build (mmdebstrap) + tar" $(($(now_ms) - t0))
}

# Makes sure the cached tarball exists; prints its path. Old tarballs (other keys) are removed.
ensure_rootfs() {
    local tar; tar=$(rootfs_tarball)
    exec 9>"$ST_BUILD/rootfs.lock"
    flock 9
    if [ ! -s "$tar" ] || [ "${ST_REBUILD:-0}" = 1 ]; then
        rm -f "$tar"
        build_rootfs "$tar" >&2 || { flock -u 9; return 1; }
        local old
        for old in "$ST_BUILD"/rootfs-*.tar; do [ "$old" = "$tar" ] || rm -f "$old"; done
    fi
    flock -u 9
    exec 9>&-
    echo "$tar"
}

# ------------------------------------------------------------------------------ cgroups
# nspawn runs in a dedicated cgroup (in the name=systemd and unified hierarchies of a hybrid
# host, or the root of a pure cgroup2 host), so everything it leaves can be found and removed.
cgroup_setup() {
    local h
    CG_DIRS=()
    for h in /sys/fs/cgroup/systemd /sys/fs/cgroup/unified; do
        [ -d "$h" ] && [ -e "$h/cgroup.procs" ] && CG_DIRS+=("$h/$ST_CGNAME")
    done
    if [ ${#CG_DIRS[@]} = 0 ] && [ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ]; then
        CG_DIRS+=("/sys/fs/cgroup/$ST_CGNAME")
    fi
    [ ${#CG_DIRS[@]} -gt 0 ] || { echo "no usable cgroup hierarchy under /sys/fs/cgroup" >&2; return 1; }
    for h in "${CG_DIRS[@]}"; do mkdir -p "$h"; done
}

cgroup_pids() {
    local d
    for d in "${CG_DIRS[@]}"; do
        [ -d "$d" ] && find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null
    done | sort -un
}

cgroup_remove() {
    local d
    for d in "${CG_DIRS[@]}"; do
        [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} + 2>/dev/null
    done
    for d in "${CG_DIRS[@]}"; do [ -d "$d" ] && return 1; done
    return 0
}

# ------------------------------------------------------------------------------ container
# Run a command inside the container: all namespaces of its PID 1, a clean environment, and a
# timeout (run inside, so it reaches the command itself): CT_TIMEOUT seconds, default 60.
ct() {
    nsenter -t "$LEADER" -a env -i PATH="$CT_PATH" HOME=/root TERM=dumb LANG=C.UTF-8 \
        SYSTEMD_PAGER='' SYSTEMD_COLORS=0 timeout -k 5 "${CT_TIMEOUT:-60}" "$@"
}

boot_container() {
    local tar=$1 t0 pidfile=$ST_RUN/nspawn.pid state="" c
    local args=(-b -D "$ST_RUN/root" -M "$ST_MACHINE"
        --register=no            # no machined / host bus to register with
        --keep-unit              # no host systemd to create a scope unit
        --link-journal=no        # the host's /var/log/journal is not touched
        --system-call-filter=bpf # else IPAddressDeny=/DevicePolicy= are silently not enforced
        # nspawn 252's own seccomp allow-list predates landlock: without these the tasks'
        # landlock sandbox cannot be set up inside the container (a real host has no such filter).
        --system-call-filter='landlock_create_ruleset landlock_add_rule landlock_restrict_self'
        --private-network        # the container has only its own lo
    )
    export SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 # a clean cgroup2 container like a real Debian 12
    cgroup_setup
    t0=$(now_ms)
    # setsid: own session, no controlling tty (nspawn logs the console to the file).
    # The shell moves itself into the dedicated cgroup, then unshare gives it a private mount
    # namespace where a tmpfs covers /run/systemd (nspawn's lock dirs land there, not on the
    # host's /run) and another holds the rootfs; then it execs nspawn, so the PID written to
    # the pid file is nspawn's.
    # shellcheck disable=SC2016
    ST_CG_LIST="${CG_DIRS[*]}" setsid bash -c '
        pidfile=$1 tar=$2 root=$3; shift 3
        echo $$ > "$pidfile.tmp"
        for cg in $ST_CG_LIST; do echo $$ > "$cg/cgroup.procs"; done
        mv "$pidfile.tmp" "$pidfile"
        exec unshare --mount --propagation private sh -c "
            set -e
            mount -t tmpfs -o mode=0755 st-run /run/systemd
            mount -t tmpfs -o mode=0755 st-root \"\$2\"
            a=\$(date +%s%N)
            tar --numeric-owner --xattrs --xattrs-include=\"*\" --acls -xpf \"\$1\" -C \"\$2\"
            echo \$(( (\$(date +%s%N) - a) / 1000000 )) > \"\$3\"
            shift 3
            exec systemd-nspawn \"\$@\"" sh "$tar" "$root" "$pidfile.extract-ms" "$@"
    ' bash "$pidfile" "$tar" "$ST_RUN/root" "${args[@]}" \
        </dev/null >"$ST_LOGS/console.log" 2>&1 &
    for _ in $(seq 1 100); do [ -s "$pidfile" ] && break; sleep 0.05; done
    NSPAWN_PID=$(cat "$pidfile" 2>/dev/null || true)
    [ -n "$NSPAWN_PID" ] || { echo "nspawn did not start" >&2; return 1; }
    local deadline=$(($(now_ms) + ${ST_BOOT_TIMEOUT:-60} * 1000))
    while [ "$(now_ms)" -lt "$deadline" ]; do
        if ! kill -0 "$NSPAWN_PID" 2>/dev/null; then
            echo "systemd-nspawn exited during boot; console:" >&2
            tail -40 "$ST_LOGS/console.log" >&2
            return 1
        fi
        # The container's PID 1 is the child of nspawn whose comm is "systemd" ($! and
        # nspawn's own PID are not; nsenter into a wrong PID silently runs on the host).
        LEADER=""
        for c in $(cat "/proc/$NSPAWN_PID/task/$NSPAWN_PID/children" 2>/dev/null); do
            [ "$(cat "/proc/$c/comm" 2>/dev/null)" = systemd ] && LEADER=$c
        done
        if [ -n "$LEADER" ]; then
            state=$(CT_TIMEOUT=10 ct systemctl is-system-running 2>/dev/null || true)
            case "$state" in running | degraded) break ;; esac
        fi
        sleep 0.1
    done
    [ -f "$pidfile.extract-ms" ] && timing "extract cached rootfs onto tmpfs" "$(cat "$pidfile.extract-ms")"
    timing "boot to is-system-running=${state:-timeout}" $(($(now_ms) - t0))
    case "$state" in
        running) ;;
        degraded)
            info "container is degraded; failed units:"
            ct systemctl --failed --no-legend --no-pager | sed 's/^/    /' || true
            ;;
        *)
            echo "container did not reach running/degraded within ${ST_BOOT_TIMEOUT:-60}s (state: ${state:-?})" >&2
            return 1
            ;;
    esac
    # Never run the test on the host by accident.
    [ "$(ct cat /proc/1/comm)" = systemd ] && [ "$(ct cat /etc/hostname)" = "$ST_MACHINE" ] || {
        echo "nsenter -t $LEADER does not reach the container" >&2
        return 1
    }
    info "nspawn pid $NSPAWN_PID, container PID 1 = host pid $LEADER"
}

# Stops the container (its own systemd first, then nspawn, then SIGKILL to whatever is left in
# the cgroup), removes the cgroups, and reports anything left behind. Returns 1 if anything is.
shutdown_container() {
    local t0 left=0 p
    t0=$(now_ms)
    if [ -n "$NSPAWN_PID" ] && kill -0 "$NSPAWN_PID" 2>/dev/null; then
        if [ -n "$LEADER" ]; then CT_TIMEOUT=10 ct systemctl poweroff --no-block >/dev/null 2>&1 || true; fi
        wait_pid_gone "$NSPAWN_PID" 150 || { kill -TERM "$NSPAWN_PID" 2>/dev/null; wait_pid_gone "$NSPAWN_PID" 50; } || {
            echo "container did not stop; SIGKILL" >&2
            kill -KILL "$NSPAWN_PID" 2>/dev/null || true
        }
    fi
    # Anything still in the dedicated cgroup (container processes nspawn did not reap).
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        p=$(cgroup_pids)
        [ -z "$p" ] && break
        # shellcheck disable=SC2086
        kill -KILL $p 2>/dev/null || true
        sleep 0.1
    done
    [ -n "$NSPAWN_PID" ] && wait_pid_gone "$NSPAWN_PID" 20
    # The bash job that started nspawn (same PID) is our child: reap it (once it is gone).
    if [ -n "$NSPAWN_PID" ] && ! kill -0 "$NSPAWN_PID" 2>/dev/null; then wait "$NSPAWN_PID" 2>/dev/null || true; fi
    timing "container shutdown" $(($(now_ms) - t0))
    if [ ${#CG_DIRS[@]} -gt 0 ]; then cgroup_remove || { echo "left over: cgroup ${CG_DIRS[*]}" >&2; left=1; }; fi
    if [ -n "$NSPAWN_PID" ] && kill -0 "$NSPAWN_PID" 2>/dev/null; then echo "left over: nspawn pid $NSPAWN_PID" >&2; left=1; fi
    if [ -n "$(cgroup_pids)" ]; then echo "left over: processes $(cgroup_pids | tr '\n' ' ')" >&2; left=1; fi
    if mountpoint -q "$ST_RUN/root"; then echo "left over: a mount on $ST_RUN/root" >&2; left=1; fi
    if grep -q " $ST_BUILD/" /proc/self/mountinfo; then echo "left over: mounts under $ST_BUILD" >&2; left=1; fi
    return $left
}

# Removes what an earlier run killed without its teardown (SIGKILL, power loss) left: its
# container's processes, its cgroups and scratch dir. Only runs whose script PID is gone.
cleanup_stale() {
    local d pid cg p
    for d in /sys/fs/cgroup/systemd/machina-system-test-* /sys/fs/cgroup/unified/machina-system-test-* \
        /sys/fs/cgroup/machina-system-test-* "$ST_BUILD"/run.*; do
        [ -d "$d" ] || continue
        pid=${d##*[.-]}
        [ "$pid" != "$$" ] && ! kill -0 "$pid" 2>/dev/null || continue
        case $d in
            /sys/fs/cgroup/*)
                cg=$d
                for _ in 1 2 3 4 5 6 7 8 9 10; do
                    p=$(find "$cg" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -un)
                    [ -z "$p" ] && break
                    # shellcheck disable=SC2086
                    kill -KILL $p 2>/dev/null || true
                    sleep 0.2
                done
                find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null || true
                info "removed stale $cg"
                ;;
            *) rm -rf "$d" && info "removed stale ${d#"$ST_BUILD"/}" ;;
        esac
    done
}

# kill_tree PID: SIGTERM to PID and all its descendants (children first listed, then PID).
kill_tree() {
    local c
    for c in $(cat "/proc/$1/task/"*/children 2>/dev/null); do kill_tree "$c"; done
    kill -TERM "$1" 2>/dev/null || true
}

wait_pid_gone() { # PID TENTHS_OF_SECONDS
    local i
    for ((i = 0; i < $2; i++)); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
    ! kill -0 "$1" 2>/dev/null
}

# ------------------------------------------------------------------------------ steps
# step NAME FUNCTION [ARGS...]: runs FUNCTION in a subshell with errexit in effect (so any
# failing command fails the step), prints PASS|FAIL NAME (MS ms). A step that returns 77
# is SKIP (a prerequisite failed). Variables a step wants to hand on go through `keep`.
ST_PASSED=0 ST_FAILED=0 ST_SKIPPED=0
ST_RESULTS=()
step() {
    local name=$1 rc t0 ms; shift
    printf -- '--- %s\n' "$name"
    t0=$(now_ms)
    set +e
    # In the background + wait, so a signal to the script is handled at once (its trap ends
    # the step's processes) instead of after the step.
    (
        set -eEuo pipefail
        trap '[ "$BASH_COMMAND" = "return 1" ] || echo "    [failed: line $LINENO: $BASH_COMMAND]"' ERR
        "$@"
    ) &
    ST_STEP_PID=$! ST_STEP_NAME=$name
    wait "$ST_STEP_PID"
    rc=$?
    ST_STEP_PID=""
    set -e
    ms=$(($(now_ms) - t0))
    # shellcheck disable=SC1090
    [ -f "$ST_RUN/keep.sh" ] && . "$ST_RUN/keep.sh"
    case $rc in
        0) ST_PASSED=$((ST_PASSED + 1)); ST_RESULTS+=("PASS $name ($ms ms)") ;;
        77) ST_SKIPPED=$((ST_SKIPPED + 1)); ST_RESULTS+=("SKIP $name ($ms ms)") ;;
        *) ST_FAILED=$((ST_FAILED + 1)); ST_RESULTS+=("FAIL $name ($ms ms)") ;;
    esac
    echo "${ST_RESULTS[-1]}"
}

# keep VAR VALUE: make VAR available to later steps (steps run in subshells).
keep() { printf '%s=%q\n' "$1" "$2" >>"$ST_RUN/keep.sh"; printf -v "$1" '%s' "$2"; }

# need VAR...: skip the step (rc 77) unless every VAR is set by an earlier step.
need() {
    local v
    for v in "$@"; do
        [ -n "${!v:-}" ] || { info "skipped: $v not available (an earlier step failed)"; exit 77; }
    done
}

# check DESCRIPTION COMMAND...: runs COMMAND; on failure prints DESCRIPTION and fails the step.
check() {
    local d=$1; shift
    if "$@"; then info "ok: $d"; else info "NOT OK: $d"; return 1; fi
}

# wait_until TIMEOUT_S DESCRIPTION COMMAND...: polls COMMAND every 0.2 s.
wait_until() {
    local t=$1 d=$2 deadline; shift 2
    deadline=$(($(now_ms) + t * 1000))
    while :; do
        if "$@"; then return 0; fi
        if [ "$(now_ms)" -ge "$deadline" ]; then info "timed out after ${t}s waiting for: $d"; return 1; fi
        sleep 0.2
    done
}
