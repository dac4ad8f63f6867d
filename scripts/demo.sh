#!/usr/bin/env bash
# The demo: `ferry up` — the embedded store, a controller on SQLite, two environments with
# three agents each driving their own nginx, demo backends in the registry, an example
# configuration and a live rollout table. Runs until Ctrl-C; without a terminal (or with
# DEMO_EXIT=1) it exits once every rollout is complete.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
cargo build --release --locked --bin ferry

args=(up --log-level warn)
if [ "${DEMO_EXIT:-0}" = 1 ] || [ ! -t 0 ]; then
  args+=(--exit-when-complete --api-port 0)
fi
exec "${CARGO_TARGET_DIR:-target}/release/ferry" "${args[@]}"
