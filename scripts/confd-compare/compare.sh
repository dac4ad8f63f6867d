#!/usr/bin/env bash
# Renders the same template resources with a real confd binary and with `ferry render`,
# both reading the same `ferry store` (confd through its etcdv3 backend), and diffs the
# output byte for byte. confd is not a Debian package: build it yourself and pass its path.
# Usage: scripts/confd-compare/compare.sh /path/to/confd
set -euo pipefail
confd=${1:?usage: compare.sh /path/to/confd}
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/../.."
cargo build --release --locked --bin ferry
ferry=target/release/ferry
work=$(mktemp -d -t ferry-confd-XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$ferry" store --data-dir "$work/data" --listen-client-urls "http://127.0.0.1:$port" 2>"$work/store.log" &
store=$!
trap 'kill $store 2>/dev/null; wait $store 2>/dev/null; rm -rf "$work"' EXIT
export ETCDCTL_API=3
ctl() { etcdctl --endpoints="127.0.0.1:$port" "$@" >/dev/null; }
for _ in $(seq 50); do ctl endpoint health 2>/dev/null && break; sleep 0.1; done
ctl put /myapp/subdomain myapp
ctl put /myapp/upstream/app2 10.0.1.11:80
ctl put /myapp/upstream/app1 10.0.1.10:80
ctl put /app/name ferry
ctl put /app/upstream/a 10.0.0.1:80
ctl put /app/upstream/bb 10.0.0.22:80
ctl put /app/db/host db1
ctl put /app/json '{"name":"svc","ports":[80,443],"ratio":1.5}'
ctl put /app/list '["x","y","z"]'
for tool in confd ferry; do
  dir="$work/$tool"
  mkdir -p "$dir/conf.d" "$dir/out"
  cp -r "$here/templates" "$dir/templates"
  for t in nginx:nginx.tmpl:/myapp:'"/subdomain", "/upstream"' haproxy:haproxy.cfg.tmpl:/myapp:'"/subdomain", "/upstream"' every:every-function.tmpl:/:'"/app"'; do
    IFS=: read -r name src prefix keys <<<"$t"
    printf '[template]\nprefix = "%s"\nsrc = "%s"\ndest = "%s"\nkeys = [%s]\n' "$prefix" "$src" "$dir/out/$name" "$keys" >"$dir/conf.d/$name.toml"
  done
done
export FERRY_CMP_ENV=from-env
"$confd" -onetime -backend etcdv3 -node "http://127.0.0.1:$port" -confdir "$work/confd" -log-level error
"$ferry" render -onetime -backend etcdv3 -node "127.0.0.1:$port" -confdir "$work/ferry" -log-level error
cat "$work/ferry/out/every"
if diff -r "$work/confd/out" "$work/ferry/out"; then
  echo "identical: $(ls "$work/ferry/out" | tr '\n' ' ')"
else
  exit 1
fi
