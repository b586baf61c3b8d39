#!/usr/bin/python3
"""Check the machina module inside a full policy built with it.

Usage: check-policy.py POLICY_DIR MODULE_FC

POLICY_DIR is the policy directory of a store that machina.pp was installed
into (check.sh builds one from a copy of Debian's selinux-policy-default):
POLICY_DIR/policy/policy.NN and POLICY_DIR/contexts/files/file_contexts.
MODULE_FC is the file-context file unpacked from machina.pp.

Checks, with the real libselinux matcher and setools:
  1. every installed path gets the machina type it should (and the base
     policy's own entries do not win over ours);
  2. every entry of the module's file contexts is exercised by (1);
  3. the rules each domain needs are in the policy;
  4. the rules the confinement forbids are not (task children cannot reach the
     ledger, the token, the bus or the network; only the API reads the token).
Runs with Debian's python3 (python3-selinux, python3-setools).
"""
import glob
import re
import stat
import sys

import selinux
import setools

REG, DIR, SOCK, LNK = stat.S_IFREG, stat.S_IFDIR, stat.S_IFSOCK, stat.S_IFLNK

# (path, file type, expected type)
PATHS = [
    ("/usr/libexec/machina/machina-api", REG, "machina_api_exec_t"),
    ("/usr/libexec/machina/machina-worker", REG, "machina_worker_exec_t"),
    ("/usr/libexec/machina/machina-snapshot", REG, "machina_snapshot_exec_t"),
    ("/usr/libexec/machina/machina-maintain", REG, "machina_maintain_exec_t"),
    ("/usr/libexec/machina", DIR, "bin_t"),
    ("/usr/bin/machinactl", REG, "bin_t"),
    ("/usr/libexec/machina/machina-task-exec", REG, "bin_t"),
    ("/var/lib/machina-snapshots", DIR, "machina_var_lib_t"),
    ("/var/lib/machina-snapshots/20261123T031500Z-scheduled.json", REG, "machina_var_lib_t"),
    ("/run/machina-snapshot-results", DIR, "machina_runtime_t"),
    ("/usr/lib/systemd/system/machina-api.socket", REG, "machina_unit_t"),
    ("/usr/lib/systemd/system/machina-api.service", REG, "machina_unit_t"),
    ("/usr/lib/systemd/system/machina-worker@.service", REG, "machina_unit_t"),
    ("/usr/lib/systemd/system/machina.target", REG, "machina_unit_t"),
    ("/lib/systemd/system/machina.target", REG, "machina_unit_t"),
    ("/etc/machina", DIR, "machina_conf_t"),
    ("/etc/machina/config.d", DIR, "machina_conf_t"),
    ("/etc/machina/config.d/50-local.toml", REG, "machina_conf_t"),
    ("/etc/machina/recipes.d/mine.toml", REG, "machina_conf_t"),
    ("/usr/lib/machina", DIR, "machina_conf_t"),
    ("/usr/lib/machina/config.d/00-machina.toml", REG, "machina_conf_t"),
    ("/usr/lib/machina/recipes.d/demo.toml", REG, "machina_conf_t"),
    ("/run/machina/config.d", DIR, "machina_conf_t"),
    ("/run/machina/config.d/90-runtime.toml", REG, "machina_conf_t"),
    ("/etc/machina/api-token", REG, "machina_cred_t"),
    ("/run/credentials/machina-api.service", DIR, "machina_cred_t"),
    ("/run/credentials/machina-api.service/api-token", REG, "machina_cred_t"),
    ("/etc/machina/credentials/machina-judge", REG, "machina_judge_cred_t"),
    ("/run/credentials/machina-worker@1.service/machina-judge", REG, "machina_judge_cred_t"),
    ("/var/lib/machina", DIR, "machina_var_lib_t"),
    ("/var/lib/machina/ledger.db", REG, "machina_var_lib_t"),
    ("/var/lib/machina/ledger.db-wal", REG, "machina_var_lib_t"),
    ("/var/lib/machina/ledger.db-shm", REG, "machina_var_lib_t"),
    ("/var/lib/machina/artifacts", DIR, "machina_var_lib_t"),
    ("/var/lib/machina/artifacts/ab/abcdef0123", REG, "machina_var_lib_t"),
    ("/var/lib/machina/tasks", DIR, "machina_task_data_t"),
    ("/var/lib/machina/tasks/demo.greet/1", DIR, "machina_task_data_t"),
    ("/var/lib/machina/tasks/demo.greet/1/out.txt", REG, "machina_task_data_t"),
    ("/run/machina", DIR, "machina_runtime_t"),
    ("/run/machina/api.sock", SOCK, "machina_runtime_t"),
    ("/var/run/machina/api.sock", SOCK, "machina_runtime_t"),
    ("/var/log/machina", DIR, "machina_log_t"),
    ("/var/log/machina/api.log", REG, "machina_log_t"),
]

# Paths that must keep the base policy's labels.
NOT_OURS = [
    ("/usr/lib/systemd/system/ssh.service", REG),
    ("/usr/lib/systemd/system/multi-user.target", REG),
    ("/run/credentials/other.service/api-token", REG),
    ("/usr/bin/printf", REG),
]

DAEMONS = ["machina_api_t", "machina_worker_t", "machina_snapshot_t", "machina_maintain_t"]
ALL_DOMAINS = DAEMONS + ["machina_task_t"]

# (source, target, class, perms) that must be allowed.
ALLOW = [
    # started by systemd in their own domains
    *[("init_t", d.replace("_t", "_exec_t"), "file", {"execute"}) for d in DAEMONS],
    *[("init_t", d, "process", {"transition"}) for d in DAEMONS],
    # config, state, journald, sd_notify for every daemon
    *[(d, "machina_conf_t", "file", {"read", "open"}) for d in DAEMONS],
    *[(d, "machina_var_lib_t", "file", {"read", "write", "create", "map", "lock"}) for d in DAEMONS],
    *[(d, "machina_var_lib_t", "dir", {"add_name", "remove_name", "create"}) for d in DAEMONS],
    *[(d, "devlog_t", "sock_file", {"write"}) for d in DAEMONS],
    *[(d, "syslogd_t", "unix_dgram_socket", {"sendto"}) for d in DAEMONS],
    *[(d, "init_runtime_t", "sock_file", {"write"}) for d in DAEMONS],
    *[(d, "init_t", "unix_dgram_socket", {"sendto"}) for d in DAEMONS],
    *[(d, "system_dbusd_t", "dbus", {"send_msg"}) for d in DAEMONS],
    *[(d, "system_dbusd_runtime_t", "sock_file", {"write"}) for d in DAEMONS],
    # API: name on the bus, socket activation, own port, token
    ("machina_api_t", "system_dbusd_t", "dbus", {"acquire_svc"}),
    ("machina_api_t", "machina_worker_t", "dbus", {"send_msg"}),
    ("machina_worker_t", "machina_api_t", "dbus", {"send_msg"}),
    ("machina_api_t", "init_t", "tcp_socket", {"accept", "read", "write"}),
    ("machina_api_t", "init_t", "unix_stream_socket", {"accept", "read", "write"}),
    ("machina_api_t", "machina_port_t", "tcp_socket", {"name_bind"}),
    ("machina_api_t", "machina_cred_t", "file", {"read", "open"}),
    ("init_t", "machina_cred_t", "file", {"read", "open"}),
    ("init_t", "machina_runtime_t", "sock_file", {"create"}),
    # machinactl from the admin domains
    ("unconfined_t", "machina_api_t", "dbus", {"send_msg"}),
    ("machina_api_t", "unconfined_t", "dbus", {"send_msg"}),
    ("sysadm_t", "machina_api_t", "dbus", {"send_msg"}),
    ("machina_api_t", "sysadm_t", "dbus", {"send_msg"}),
    # worker -> task children
    ("machina_worker_t", "bin_t", "file", {"execute"}),
    ("machina_worker_t", "machina_task_t", "process", {"transition", "rlimitinh", "sigkill"}),
    ("machina_task_t", "bin_t", "file", {"entrypoint"}),
    ("machina_task_t", "shell_exec_t", "file", {"entrypoint"}),
    ("machina_task_t", "machina_worker_t", "fd", {"use"}),
    ("machina_task_t", "machina_worker_t", "fifo_file", {"write"}),
    ("machina_task_t", "machina_worker_t", "process", {"sigchld"}),
    ("machina_worker_t", "machina_task_data_t", "dir", {"create", "rmdir"}),
    ("machina_task_t", "machina_task_data_t", "file", {"create", "write", "read"}),
    ("machina_task_t", "bin_t", "file", {"execute", "execute_no_trans"}),
    ("machina_task_t", "ld_so_t", "file", {"execute"}),
    ("machina_task_t", "lib_t", "file", {"map"}),
    ("machina_task_t", "null_device_t", "chr_file", {"read", "write"}),
    ("machina_task_t", "machina_var_lib_t", "dir", {"search"}),
    # the task spawner: the worker's socketpair end, forking and reaping tasks
    ("machina_task_t", "machina_worker_t", "unix_stream_socket", {"read", "write"}),
    ("machina_task_t", "self", "process", {"fork", "sigkill", "sigchld"}),
    # http tool and LLM providers: outbound TCP, DNS, TLS roots; judge credentials
    ("machina_worker_t", "self", "tcp_socket", {"create", "connect"}),
    ("machina_worker_t", "http_port_t", "tcp_socket", {"name_connect"}),
    ("machina_worker_t", "machina_judge_cred_t", "file", {"read", "open"}),
    # snapshot: btrfs ioctls on the state dirs, statfs
    ("machina_snapshot_t", "machina_var_lib_t", "dir", {"ioctl", "create"}),
    ("machina_snapshot_t", "machina_task_data_t", "file", {"read"}),
    # maintenance prunes task directories
    ("machina_maintain_t", "machina_task_data_t", "dir", {"rmdir"}),
]

# (source, target, class, perms) that must NOT be allowed (any of the perms).
DENY = [
    ("machina_task_t", "machina_var_lib_t", "file", {"read", "write", "open"}),
    ("machina_task_t", "machina_cred_t", "file", {"read", "open"}),
    ("machina_task_t", "machina_judge_cred_t", "file", {"read", "open"}),
    ("machina_api_t", "machina_judge_cred_t", "file", {"read", "open"}),
    ("machina_task_t", "machina_conf_t", "file", {"read", "open"}),
    ("machina_task_t", "machina_runtime_t", "sock_file", {"write"}),
    ("machina_task_t", "system_dbusd_t", "dbus", {"send_msg"}),
    ("machina_task_t", "system_dbusd_runtime_t", "sock_file", {"write"}),
    ("machina_task_t", "devlog_t", "sock_file", {"write"}),
    ("machina_task_t", "self", "tcp_socket", {"create"}),
    ("machina_task_t", "self", "udp_socket", {"create"}),
    ("machina_task_t", "machina_worker_t", "process", {"signal", "sigkill", "ptrace"}),
    ("machina_task_t", "etc_t", "file", {"read"}),
    ("machina_task_t", "machina_task_data_t", "file", {"execute"}),
    ("machina_task_t", "user_home_t", "file", {"read"}),
    ("machina_worker_t", "machina_cred_t", "file", {"read", "open"}),
    ("machina_snapshot_t", "machina_cred_t", "file", {"read", "open"}),
    ("machina_maintain_t", "machina_cred_t", "file", {"read", "open"}),
    ("machina_api_t", "bin_t", "file", {"execute"}),
    ("machina_api_t", "shell_exec_t", "file", {"execute"}),
    ("machina_api_t", "machina_task_data_t", "file", {"read", "write"}),
    *[(d, "self", "capability", {"sys_admin", "dac_override"}) for d in ALL_DOMAINS],
    *[(d, "shadow_t", "file", {"read"}) for d in ALL_DOMAINS],
]

# Rules that the tunables (booleans; off by default) turn on.
BOOLEAN_ALLOW = [
    ("machina_snapshot_sys_admin", ("machina_snapshot_t", "self", "capability", {"sys_admin"})),
    ("machina_task_connect_any", ("machina_task_t", "self", "tcp_socket", {"create", "connect"})),
    ("machina_task_connect_any", ("machina_task_t", "http_port_t", "tcp_socket", {"name_connect"})),
]

# type_transition rules: (source, target, class, default, filename or None)
TRANSITIONS = [
    *[("init_t", d.replace("_t", "_exec_t"), "process", d, None) for d in DAEMONS],
    ("machina_worker_t", "bin_t", "process", "machina_task_t", None),
    ("machina_worker_t", "shell_exec_t", "process", "machina_task_t", None),
    ("machina_worker_t", "machina_var_lib_t", "dir", "machina_task_data_t", "tasks"),
    ("init_t", "var_lib_t", "dir", "machina_var_lib_t", "machina"),
    *[(d, "tmp_t", "file", "machina_tmp_t", None) for d in DAEMONS],
    ("init_t", "var_run_t", "dir", "machina_runtime_t", "machina"),
]


def label(path, mode):
    """The type libselinux gives path, or "<none>" when no entry matches."""
    try:
        rc, ctx = selinux.matchpathcon(path, mode)
    except OSError:
        return "<none>"
    return ctx.split(":")[2] if rc == 0 else "<none>"


def main():
    policy_dir, module_fc = sys.argv[1], sys.argv[2]
    failures = []
    passed = 0

    def ok(cond, what):
        nonlocal passed
        if cond:
            passed += 1
        else:
            failures.append(what)
            print("FAIL:", what)

    # 1. file contexts, looked up in the file_contexts of the built policy
    fc = f"{policy_dir}/contexts/files/file_contexts"
    if selinux.matchpathcon_init(fc) != 0:
        sys.exit(f"cannot load {fc}")
    for path, mode, want in PATHS:
        got = label(path, mode)
        ok(got == want, f"label of {path}: {got}, want {want}")
    for path, mode in NOT_OURS:
        got = label(path, mode)
        ok(not got.startswith("machina_"), f"label of {path}: {got}, want the base policy's")

    # 2. every entry of the module's file contexts is exercised
    specs = []
    for line in open(module_fc):
        line = line.strip()
        if line and not line.startswith("#"):
            specs.append(line.split()[0])
    ok(len(specs) >= 15, f"module file contexts: {len(specs)} entries")
    for spec in specs:
        hit = any(re.fullmatch(spec, p) for p, _, _ in PATHS)
        ok(hit, f"file-context entry {spec} is not exercised by a checked path")

    # 3./4. rules
    policies = sorted(glob.glob(f"{policy_dir}/policy/policy.*"))
    if not policies:
        sys.exit(f"no policy in {policy_dir}/policy")
    p = setools.SELinuxPolicy(policies[-1])

    def active(rule, bools=None):
        """Unconditional, or in the branch its booleans select (by default,
        or with the booleans given turned on)."""
        try:
            cond = rule.conditional
        except setools.exception.RuleNotConditional:
            return True
        state = {str(b): b.state for b in cond.booleans}
        state.update({b: True for b in (bools or ()) if b in state})
        return cond.evaluate(**state) == rule.conditional_block

    # One pass over the rules (a query per check takes minutes): index the
    # allow and type_transition rules whose source and target, attributes
    # expanded, include a type the checks name.
    checks = [(s, t) for s, t, _, _ in ALLOW + DENY] + \
        [(s, t) for _, (s, t, _, _) in BOOLEAN_ALLOW] + [(s, t) for s, t, _, _, _ in TRANSITIONS]
    names = {s for s, _ in checks} | {t for _, t in checks if t != "self"}
    holders = {}  # type or attribute name -> the checked types it stands for
    for t in p.types():
        if str(t) in names:
            for a in [str(t)] + [str(a) for a in t.attributes()]:
                holders.setdefault(a, set()).add(str(t))
    av = {}     # (source, target, class) -> [rule]
    trans = {}  # (source, target, class) -> [rule]
    for r in p.terules():
        kind = str(r.ruletype)
        if kind not in ("allow", "type_transition"):
            continue
        srcs, tgts = holders.get(str(r.source), ()), holders.get(str(r.target), ())
        for src in srcs:
            for tgt in tgts:
                (av if kind == "allow" else trans).setdefault((src, tgt, str(r.tclass)), []).append(r)

    def allowed(src, tgt, cls, perms, bools=None):
        tgt = src if tgt == "self" else tgt
        got = set()
        for r in av.get((src, tgt, cls), []):
            if active(r, bools):
                got |= set(r.perms)
        return got & perms

    for src, tgt, cls, perms in ALLOW:
        got = allowed(src, tgt, cls, perms)
        ok(got == perms, f"allow {src} {tgt}:{cls} {sorted(perms)} (missing {sorted(perms - got)})")
    for src, tgt, cls, perms in DENY:
        got = allowed(src, tgt, cls, perms)
        ok(not got, f"must not allow {src} {tgt}:{cls} {sorted(got)}")
    for boolean, (src, tgt, cls, perms) in BOOLEAN_ALLOW:
        got = allowed(src, tgt, cls, perms, {boolean})
        ok(got == perms, f"with {boolean} on: allow {src} {tgt}:{cls} {sorted(perms)} "
           f"(missing {sorted(perms - got)})")
    for src, tgt, cls, default, name in TRANSITIONS:
        rules = [r for r in trans.get((src, tgt, cls), []) if active(r)
                 and str(r.default) == default
                 and (name is None or getattr(r, "filename", None) == name)]
        ok(rules, f"type_transition {src} {tgt}:{cls} {default}" + (f' "{name}"' if name else ""))

    # The tunables are off by default (compiled out, or present and false).
    bools = {str(b): b.state for b in p.bools()}
    for name in ("machina_snapshot_sys_admin", "machina_task_connect_any"):
        ok(not bools.get(name, False), f"tunable {name} is off by default")

    print(f"selinux: {passed} passed, {len(failures)} failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
