# machina — the two commands (see README.md) and helpers.
CARGO ?= cargo

.PHONY: demo test deps build lint bench

deps:
	scripts/install-deps.sh

build: deps
	$(CARGO) build --bins

## The main job: API + 2 workers in the foreground, submit, approve, watch, report.
demo: build
	scripts/demo.sh

## The whole test suite.
test: deps
	$(CARGO) test --workspace --all-targets

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## Benchmarks: machina vs effectum and apalis (SQLite), and the HTTP enqueue rate.
bench: deps
	bench/run.sh
