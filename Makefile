# machina — the two commands (see README.md) and helpers.
CARGO ?= cargo

.PHONY: demo test deps build lint bench deb selinux system-test unit-test attack-test

deps:
	scripts/install-deps.sh

build: deps
	$(CARGO) build --bins

## The main job: API + 2 workers in the foreground, submit, approve, watch, report.
demo: build
	scripts/demo.sh

## The whole test suite: unit and integration tests, the SELinux module's checks, and the
## system test (the .deb in a booted systemd).
test: deps unit-test selinux system-test

## Unit and integration tests (real processes, private dbus-daemon, loop-mounted btrfs as root).
unit-test: deps
	$(CARGO) test --workspace --all-targets --no-fail-fast

## The attack suites on their own (also part of unit-test); ends with the counts.
ATTACK_SUITES := --test attack_sandbox --test attack_auth --test attack_allowlist --test attack_plugins --test attack_leases
attack-test: deps
	{ $(CARGO) test $(ATTACK_SUITES) -- --nocapture; \
	  $(CARGO) test -p machina-tools --test attack_ssrf --test attack_file -- --nocapture; } 2>&1 \
	  | tee target/attack-test.log | grep -E '^test |attack-suite|test result'
	@! grep -qE 'test result: FAILED|^error(\[|:)' target/attack-test.log
	@grep -h '^attack-suite' target/attack-test.log | awk '{t+=$$3; b+=$$5} END {print "attack-suites total: " t " tried, " b " blocked"}'

## Debian packages into target/deb/ (lintian-checked).
deb: deps
	scripts/build-deb.sh

## Compile the SELinux policy module and check it against Debian's reference policy.
selinux: deps
	$(MAKE) -C selinux check

## Boot systemd in nspawn and walk the operator journey against the packages.
system-test: deb
	tests/system/run.sh

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## Benchmarks: machina vs effectum and apalis (SQLite), and the HTTP enqueue rate.
bench: deps
	bench/run.sh
