#!/usr/bin/env bash
# Regenerate crates/ferry/link/symbol-order.txt: the functions a release `ferry store` runs
# from start-up through etcd's workloads to idling, hottest first, which the linker lays out
# side by side (crates/ferry/build.rs). Run it after a change moves much code around; names
# that no longer exist are only skipped, so a stale list costs memory, never correctness.
# Needs valgrind (apt-get install valgrind) and a release build (made here). Takes ~5 min.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "symbol-order: needs valgrind (apt-get install valgrind)" >&2; exit 1; }
cargo build --locked --release -p ferry --bin ferry
bin="$PWD/target/release/ferry"
work="$(mktemp -d)"
store_pid=""
cleanup() {
    if [[ -n "$store_pid" ]]; then kill "$store_pid" 2>/dev/null || true; wait "$store_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
client="http://127.0.0.1:$(free_port)"
peer="http://127.0.0.1:$(free_port)"
valgrind --tool=callgrind --dump-instr=yes --compress-pos=no --compress-strings=no \
    --callgrind-out-file="$work/store.callgrind" \
    "$bin" store --data-dir "$work/data" --listen-client-urls "$client" \
    --advertise-client-urls "$client" --initial-advertise-peer-urls "$peer" \
    >"$work/store.log" 2>&1 &
store_pid=$!
for _ in $(seq 600); do
    grep -q "ready to serve" "$work/store.log" && break
    kill -0 "$store_pid" 2>/dev/null || { cat "$work/store.log" >&2; exit 1; }
    sleep 0.2
done
grep -q "ready to serve" "$work/store.log" || { echo "symbol-order: the store did not start" >&2; exit 1; }
for workload in put range txn-put txn-mixed watch lease-keepalive; do
    "$bin" bench --endpoints "$client" --total 500 --clients 4 --key-space-size 100 "$workload" >/dev/null
done
sleep 5 # timers of an idle store: lease checks, log checkpoints
kill -INT "$store_pid"
wait "$store_pid" || true
store_pid=""
scripts/symbol-order.py "$bin" "$work/store.callgrind" >crates/ferry/link/symbol-order.txt
