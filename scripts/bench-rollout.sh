#!/usr/bin/env bash
# Time from an API call to a complete rollout for 10, 100 and 1,000 in-process agents, on the
# embedded store and on a real etcd 3.4 in the same run (p50/p99/max, Markdown table).
# Usage: scripts/bench-rollout.sh [AGENTS...]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo bench --locked -p ferry --bench rollout -- "$@"
