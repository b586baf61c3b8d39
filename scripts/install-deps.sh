#!/usr/bin/env bash
# Install what building, the demo and the tests need on Debian 12 (idempotent).
# Rust itself comes from the machine's toolchain (rustup); everything else from apt.
set -euo pipefail
PACKAGES=(
    curl jq pkg-config ca-certificates python3 wrk
    # tests: a private dbus-daemon, setpriv (another uid), systemd-socket-activate
    dbus util-linux systemd
    # snapshots: libbtrfsutil (bindings generated with libclang), btrfs-progs for the loop-device tests
    libbtrfsutil-dev libclang-dev btrfs-progs
    # make deb
    debhelper dpkg-dev fakeroot lintian libxml2-utils
    # make selinux: compile the module and check it against Debian's reference policy
    selinux-policy-dev selinux-policy-default selint python3-selinux python3-setools
    semodule-utils policycoreutils checkpolicy
)
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "install-deps: installing ${missing[*]}"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "install-deps: cargo not found; install the Rust toolchain (rustup)" >&2; exit 1; }
