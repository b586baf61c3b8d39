#!/usr/bin/env bash
# Build (release) and run the peer job-queue benchmarks (effectum, apalis+SQLite).
# Arguments are passed to each binary: --jobs N --consumers C --submitters S;
# PEER_TIMEOUT_S (default 300) bounds each peer's run.
# (--db is chosen here, one fresh file per peer in a temp dir, unless you pass it).
# Prints one JSON line per peer on stdout; build output and progress go to stderr.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$here/../../target}/bench-peers"
# A peer that has not finished by then is reported as "did not finish" (apalis slows down
# as its backlog grows: at 100,000 jobs it takes over 15 minutes here).
PEER_TIMEOUT_S=${PEER_TIMEOUT_S:-300}

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

has_db=0
for a in "$@"; do [[ "$a" == "--db" ]] && has_db=1; done

for peer in effectum apalis; do
  cargo build --release --locked --manifest-path "$here/$peer/Cargo.toml" >&2
done
for peer in effectum apalis; do
  db_args=()
  [[ $has_db == 0 ]] && db_args=(--db "$tmp/$peer.sqlite")
  if ! timeout "$PEER_TIMEOUT_S" "$CARGO_TARGET_DIR/release/peer-$peer" "$@" "${db_args[@]}"; then
    printf '{"system":"%s","dnf":true,"timeout_s":%s}\n' "$peer" "$PEER_TIMEOUT_S"
  fi
done
