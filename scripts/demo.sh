#!/usr/bin/env bash
# The demo: builds ferry, starts the embedded store in a temp dir and drives it with the real
# etcdctl. The store keeps running until Ctrl-C (or exits right away with DEMO_EXIT=1).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
cargo build --release --locked --bin ferry
ferry=target/release/ferry

data_dir=$(mktemp -d -t ferry-demo-XXXXXX)
port=${FERRY_DEMO_PORT:-23790}
"$ferry" store --data-dir "$data_dir/data" --listen-client-urls "http://127.0.0.1:$port" &
store_pid=$!
cleanup() { kill "$store_pid" 2>/dev/null || true; wait "$store_pid" 2>/dev/null || true; rm -rf "$data_dir"; }
trap cleanup EXIT

export ETCDCTL_API=3
ctl() { echo "\$ etcdctl $*"; etcdctl --endpoints="127.0.0.1:$port" "$@"; }
for _ in $(seq 50); do etcdctl --endpoints="127.0.0.1:$port" endpoint health >/dev/null 2>&1 && break; sleep 0.1; done

ctl put /services/web/1 '{"addr":"127.0.0.1:8081"}'
ctl put /services/web/2 '{"addr":"127.0.0.1:8082"}'
ctl get /services/ --prefix
ctl get /services/ --prefix --rev=2
printf 'value("/services/web/1") = "{\\"addr\\":\\"127.0.0.1:8081\\"}"\n\nput /services/web/1 {"addr":"127.0.0.1:9091"}\n\n\n' \
  | ctl txn
ctl del /services/web/2 --prev-kv
ctl compact 3
ctl endpoint status -w table
ctl member list -w table
ctl snapshot save "$data_dir/snapshot.db" 2>/dev/null

echo
echo "ferry store is serving the etcd v3 API on 127.0.0.1:$port (data in $data_dir)."
if [ "${DEMO_EXIT:-0}" = 1 ] || [ ! -t 0 ]; then
  exit 0
fi
echo "Try: ETCDCTL_API=3 etcdctl --endpoints=127.0.0.1:$port get / --prefix   (Ctrl-C stops the store)"
wait "$store_pid"
