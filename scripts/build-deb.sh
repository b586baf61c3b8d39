#!/usr/bin/env bash
# Build machina's Debian packages (`make deb`): dpkg-buildpackage at the
# repository root, the results moved from the parent directory into
# target/deb/, then checked with lintian (errors fail the build, warnings are
# printed). Leaves nothing behind in the parent directory or under debian/.
#
# Needs: debhelper, dpkg-dev, lintian, selinux-policy-dev (apt) and
# cargo (rustup). The cargo build reuses target/release.
set -euo pipefail

cd "$(dirname "$0")/.."
root=$PWD
parent=$(dirname "$root")
out=$root/target/deb

source=$(dpkg-parsechangelog -SSource)
version=$(dpkg-parsechangelog -SVersion)
arch=$(dpkg-architecture -qDEB_HOST_ARCH)
changes=${source}_${version}_${arch}.changes
buildinfo=${source}_${version}_${arch}.buildinfo

# What dpkg-buildpackage wrote to the parent directory: the files listed in
# debian/files (packages and .buildinfo) and the .changes.
built_files() {
    if [ -f debian/files ]; then awk '{print $1}' debian/files; fi
    echo "$changes"
    echo "$buildinfo"
}

cleanup() {
    local f
    for f in $(built_files | sort -u); do
        rm -f -- "${parent:?}/$f"
    done
    debian/rules clean >/dev/null 2>&1 || echo "build-deb: 'debian/rules clean' failed" >&2
}
trap cleanup EXIT

# cargo comes from rustup: make sure dpkg-buildpackage's environment finds it.
case ":$PATH:" in
    *":$HOME/.cargo/bin:"*) ;;
    *) [ -d "$HOME/.cargo/bin" ] && export PATH="$PATH:$HOME/.cargo/bin" ;;
esac

dpkg-buildpackage -us -uc -b

mkdir -p "$out"
results=()
for f in $(built_files | sort -u); do
    if [ -e "$parent/$f" ]; then
        mv -f -- "$parent/$f" "$out/$f"
        results+=("$out/$f")
    fi
done

echo
echo "build-deb: lintian"
lintian --fail-on error --display-level '>=warning' --tag-display-limit 0 "$out/$changes"

echo
echo "build-deb: built"
printf '  %s\n' "${results[@]}"
