#!/bin/sh
# Static checks of machina.pp (run by `make -C selinux check`).
#  0. selint, the refpolicy-style linter, finds nothing;
#  1. the package is non-empty and unpacks (semodule_unpackage); a test
#     module calling every interface of machina.if compiles;
#  2. it installs into a throw-away copy of Debian's policy store
#     (selinux-policy-default) with `semodule -p ROOT -n -i`: this links it
#     against the whole distribution policy, expands it, checks neverallow
#     rules and validates every file context, exactly as `semodule -i` does
#     on a SELinux machine, without touching the real store;
#  3. check-policy.py looks up the file contexts with libselinux and queries
#     the built policy with setools (rules that must and must not be there).
# Nothing is loaded into a kernel (SELinux is not enabled on the build machines).
set -eu
cd "$(dirname "$0")"

POLICY_NAME=${POLICY_NAME:-default}
PYTHON=${PYTHON:-/usr/bin/python3}
DEVEL_MAKEFILE=${DEVEL_MAKEFILE:-/usr/share/selinux/devel/Makefile}
out=$(pwd)/tmp/check
root=$out/root

die() { echo "selinux check: $*" >&2; exit 1; }

[ -s machina.pp ] || die "machina.pp is missing or empty (run make -C selinux)"
rm -rf "$out"
mkdir -p "$out"

# 0. lint (selint, refpolicy conventions). S-001 (require block in a .te) is
# off: the socket-activation and credentials rules name init_t and ramfs_t,
# for which the base policy has no interface; E-005 is off: the development
# headers carry no .te files, so every base type (bin_t) looks undeclared to
# it -- step 2 validates the file-context types against the real policy.
if ! selint -F -S -l C -d S-001 -d E-005 --context=/usr/share/selinux/devel/include \
	machina.te machina.if machina.fc >"$out/selint.log" 2>&1; then
	cat "$out/selint.log" >&2
	die "selint found issues"
fi
echo "selinux check: selint clean"

# 1. unpack
semodule_unpackage machina.pp "$out/machina.mod" "$out/machina.fc"
[ -s "$out/machina.mod" ] || die "machina.pp holds no policy module"
[ -s "$out/machina.fc" ] || die "machina.pp holds no file contexts"
echo "selinux check: machina.pp $(wc -c <machina.pp) bytes," \
	"$(grep -c '^/' "$out/machina.fc") file-context entries"

# 1b. an interface-test module that calls every interface of machina.if on a
# test domain, built the same way (its own tmp dir), so that every interface
# expands, compiles and (step 2) links.
ift=$out/iftest
mkdir -p "$ift"
cp machina.te machina.if machina.fc "$ift/"
{
	echo 'policy_module(machinaiftest, 1.0.0)'
	echo 'type machinaiftest_t;'
	echo 'domain_type(machinaiftest_t)'
	echo "gen_require(\`"
	echo '	role system_r;'
	echo "')"
	# name and whether it takes a role, for each interface
	awk '/<param name="role">/ { role = 1 }
	     /^interface\(`/ { n = $0; sub(/^interface\(`/, "", n); sub(/\x27.*/, "", n)
	                       print n "(machinaiftest_t" (role ? ", system_r" : "") ")"; role = 0 }' machina.if
} >"$ift/machinaiftest.te"
: >"$ift/machinaiftest.fc"
ninterfaces=$(grep -c '^machina_' "$ift/machinaiftest.te")
[ "$ninterfaces" -eq "$(grep -c '^interface(' machina.if)" ] || die "interface test: $ninterfaces calls"
make -s -C "$ift" -f "$DEVEL_MAKEFILE" NAME="$POLICY_NAME" machinaiftest.pp >"$out/iftest.log" 2>&1 || {
	cat "$out/iftest.log" >&2
	die "the interface-test module does not compile"
}
echo "selinux check: $ninterfaces interfaces of machina.if compile"

# 2. install into a copy of the distribution policy store
[ -d "/var/lib/selinux/$POLICY_NAME" ] && [ -d "/etc/selinux/$POLICY_NAME" ] ||
	die "no '$POLICY_NAME' policy store: install selinux-policy-default"
mkdir -p "$root/etc" "$root/var/lib"
cp -a /etc/selinux "$root/etc/"
cp -a /var/lib/selinux "$root/var/lib/"
# libsemanage warns about users of the distribution policy that this machine
# lacks ("user sddm not in password file"); that is not about machina.
semodule -p "$root" -s "$POLICY_NAME" -n -X 400 -i machina.pp -i "$ift/machinaiftest.pp" 2>"$out/semodule.err" || {
	cat "$out/semodule.err" >&2
	die "semodule could not build the policy with machina.pp"
}
grep -v 'not in password file' "$out/semodule.err" >&2 || true
semodule -p "$root" -s "$POLICY_NAME" -l 2>/dev/null | grep -qx machina ||
	die "machina is not listed in the test store"
echo "selinux check: machina.pp (and the interface test) installed into a copy of the '$POLICY_NAME' policy"

# 3. labels and rules
"$PYTHON" check-policy.py "$root/etc/selinux/$POLICY_NAME" "$out/machina.fc"
