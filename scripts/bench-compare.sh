#!/usr/bin/env bash
# ferry store against a real etcd 3.4 on this machine, in one run: every `ferry bench`
# workload alternating A/B (medians, ferry/etcd ratios, server CPU per operation),
# `etcdctl check perf --load=m|l|xl` on both, and resident memory at 1,000,000 keys, 10,000
# watches and 50,000 leases. Rewrites the generated section of docs/BENCHMARKS.md.
#
# Usage: scripts/bench-compare.sh [--rounds N] [--quick] [--no-perf] [--no-memory] [--only TEXT]
# (about 20 minutes on 2 cores; --quick --no-perf: about 1 minute, a smoke run)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
# The store's idle memory depends on the link order made for its code (crates/ferry/build.rs).
cargo build --locked --release -p ferry --bin ferry
scripts/symbol-order.py --check target/release/ferry crates/ferry/link/symbol-order.txt
cargo bench --locked -p ferry --bench compare -- --write "$PWD/docs/BENCHMARKS.md" "$@"
