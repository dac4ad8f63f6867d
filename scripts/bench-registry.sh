#!/usr/bin/env bash
# Heartbeat write load of 1,000 registered instances: ferry's one-lease keep-alive scheme
# against grant-and-put every 2 s, on ferry store and on a real etcd 3.4, in one run.
# Usage: scripts/bench-registry.sh [instances] [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
instances=${1:-1000}
seconds=${2:-10}

scripts/install-deps.sh
cargo build --release --locked --bin ferry --example heartbeat_writes -p ferry -p ferry-registry
tmp=$(mktemp -d -t ferry-bench-XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ferry_port=$(port); etcd_port=$(port); peer_port=$(port)
target/release/ferry store --data-dir "$tmp/ferry" --listen-client-urls "http://127.0.0.1:$ferry_port" 2>"$tmp/ferry.log" &
pids+=($!)
etcd --data-dir "$tmp/etcd" --listen-client-urls "http://127.0.0.1:$etcd_port" \
  --advertise-client-urls "http://127.0.0.1:$etcd_port" --listen-peer-urls "http://127.0.0.1:$peer_port" \
  --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" --initial-cluster "default=http://127.0.0.1:$peer_port" \
  --log-level error --logger zap 2>"$tmp/etcd.log" &
pids+=($!)
for p in $ferry_port $etcd_port; do
  for _ in $(seq 100); do ETCDCTL_API=3 etcdctl --endpoints="127.0.0.1:$p" endpoint health >/dev/null 2>&1 && break; sleep 0.1; done
done
echo "# $(date -u +%FT%TZ) $(nproc) cores, $(etcd --version | head -1), ferry $(target/release/ferry --version)"
for target in "ferry:$ferry_port" "etcd:$etcd_port"; do
  name=${target%%:*}; p=${target##*:}
  target/release/examples/heartbeat_writes "127.0.0.1:$p" "$instances" "$seconds" | sed "s/^{/{\"store\":\"$name\",/"
done
