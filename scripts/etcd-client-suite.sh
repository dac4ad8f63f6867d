#!/usr/bin/env bash
# Runs the `etcd-client` crate's own test suite (its `tests/`, written by its authors against
# a real etcd) against `ferry store`, and the same suite against etcd 3.4, side by side.
#
# The suite expects a server on localhost:2379 with a user root/rootpwd holding the root role
# and an auth token TTL of 2 s (its docker-compose setup); this script starts each server that
# way in a temp dir, runs `cargo test` in a copy of the crate's published source (the version
# ferry builds with), stops the server by its PID and prints each test's result on both.
#
# Usage: scripts/etcd-client-suite.sh        (on demand; port 2379 must be free; ~5 minutes)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
scripts/install-deps.sh >&2

version=$(awk '/^name = "etcd-client"$/{getline; gsub(/"/, "", $3); print $3}' Cargo.lock)
cargo fetch --locked >/dev/null
source_dir=$(find "${CARGO_HOME:-$HOME/.cargo}/registry/src" -maxdepth 1 -mindepth 1 -type d \
  -exec test -d "{}/etcd-client-$version" \; -print -quit)
if [ -z "$source_dir" ]; then
  echo "etcd-client-suite: the source of etcd-client $version is not in cargo's registry" >&2
  exit 1
fi
if (exec 3<>/dev/tcp/127.0.0.1/2379) 2>/dev/null; then
  echo "etcd-client-suite: something already listens on 127.0.0.1:2379; stop it first" >&2
  exit 1
fi

work=$(mktemp -d)
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

cp -r "$source_dir/etcd-client-$version" "$work/etcd-client"
cargo build --locked --release -p ferry --bin ferry >&2

wait_ready() {
  for _ in $(seq 100); do
    ETCDCTL_API=3 etcdctl --endpoints=127.0.0.1:2379 endpoint health >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "etcd-client-suite: the server never answered" >&2
  return 1
}

# run NAME COMMAND...: starts the server, prepares root, runs the suite, prints results.
run() {
  local name=$1
  shift
  rm -rf "$work/data"
  "$@" --data-dir "$work/data" --listen-client-urls http://127.0.0.1:2379 \
    --advertise-client-urls http://localhost:2379 --auth-token-ttl 2 --bcrypt-cost 4 \
    >"$work/$name.server.log" 2>&1 &
  server_pid=$!
  wait_ready
  ETCDCTL_API=3 etcdctl --endpoints=127.0.0.1:2379 user add root --new-user-password=rootpwd >/dev/null
  ETCDCTL_API=3 etcdctl --endpoints=127.0.0.1:2379 user grant-role root root >/dev/null
  (cd "$work/etcd-client" && CARGO_TARGET_DIR="$repo/target/etcd-client-suite" cargo test --tests -- --test-threads=1 2>&1) >"$work/$name.log" || true
  kill "$server_pid"
  wait "$server_pid" 2>/dev/null || true
  server_pid=""
  grep -E '^test .* \.\.\. (ok|FAILED|ignored)' "$work/$name.log" | sed -E 's/^test (.*) \.\.\. (.*)$/\1 \2/' | sort >"$work/$name.results"
}

run etcd etcd
run ferry "$repo/target/release/ferry" store

echo "etcd-client $version's own tests: etcd 3.4 | ferry store"
join -a1 -a2 -e missing -o 0,1.2,2.2 "$work/etcd.results" "$work/ferry.results" | column -t
passed_etcd=$(grep -c ' ok$' "$work/etcd.results" || true)
passed_ferry=$(grep -c ' ok$' "$work/ferry.results" || true)
echo "passed: etcd $passed_etcd, ferry $passed_ferry"
worse=$(join "$work/etcd.results" "$work/ferry.results" | awk '$2 == "ok" && $3 != "ok" {print $1}')
if [ -n "$worse" ]; then
  echo "passes on etcd but not on ferry:" $worse
  grep -A20 -E "^---- ($(echo "$worse" | paste -sd'|')) " "$work/ferry.log" || true
  exit 1
fi
