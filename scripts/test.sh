#!/usr/bin/env bash
# The whole test suite: installs what it needs, checks formatting and lints, then runs every
# test (the conformance suite starts real etcd 3.4 servers on loopback).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

# Doc examples first (nextest does not run them), then every other test.
cargo test --workspace --locked --doc
if cargo nextest --version >/dev/null 2>&1; then
  status=0
  cargo nextest run --workspace --locked --no-fail-fast || status=$?
  if [ "$status" -ne 0 ]; then
    python3 scripts/failure-summary.py "${CARGO_TARGET_DIR:-target}/nextest/default/junit.xml" || true
    exit "$status"
  fi
else
  cargo test --workspace --locked --no-fail-fast
fi
