#!/usr/bin/env bash
# Installs the Debian packages ferry's build, demo and tests need, on Debian 12.
#
# Each need is checked by what the build or a test actually does with it (protoc compiling a
# file that imports descriptor.proto, nginx having the modules the agent's template uses, the
# server binaries at the paths the test harnesses start), never by a command name alone: a
# package that was once installed by hand, or a package whose *recommends* supplied a file,
# must not hide a missing install step. Idempotent: with every check passing it touches
# nothing; otherwise it runs apt-get update once and installs only the packages whose checks
# failed, then checks again and names what is still missing.
#
#   scripts/install-deps.sh            check, install what is missing, check again
#   scripts/install-deps.sh --check    check only; exit 1 naming what is missing
#   scripts/install-deps.sh --packages print every package this script manages
#   scripts/install-deps.sh --packages --purgeable
#                                      the same without the C toolchain, which a machine with
#                                      a Rust toolchain always has (what check-fresh.sh purges)
#   scripts/install-deps.sh --pip-packages
#                                      print the Python packages it installs with pip
#   scripts/install-deps.sh --venv-dir print where the test tools' Python virtual environment is
#
# Test tools from PyPI that are not system libraries (schemathesis, selenium) go into their own
# virtual environment, $FERRY_VENV or ~/.cache/ferry/venv, with pinned versions.
set -euo pipefail

# capability -> the Debian packages that provide it (the order is the order of the checks).
capabilities=(protoc cc etcd etcdctl nginx mariadb postgresql redis pip grpcio s3 chromium venv)
declare -A packages=(
  [protoc]="protobuf-compiler libprotobuf-dev"
  [cc]="gcc libc6-dev"
  [etcd]="etcd-server"
  [etcdctl]="etcd-client"
  [nginx]="nginx-light"
  [mariadb]="mariadb-server mariadb-client"
  [postgresql]="postgresql"
  [redis]="redis-server"
  [pip]="python3 python3-pip"
  [grpcio]=""
  [s3]=""
  [chromium]="chromium chromium-driver"
  [venv]="python3-venv"
)
venv_dir=${FERRY_VENV:-$HOME/.cache/ferry/venv}
venv_packages=("schemathesis==4.32.5" "selenium==4.51.0")
# capability -> the PyPI packages that provide it (installed with python3's pip).
declare -A pip_packages=(
  [grpcio]="grpcio grpcio-tools"
  [s3]="moto[server] flask flask-cors"
)
# Capabilities every machine of this kind already has and check-fresh must not purge: rustc
# links with cc, and the system depends on python3.
toolchain=(cc pip)
declare -A explain=(
  [protoc]="protoc compiles a .proto that imports google/protobuf/descriptor.proto (etcd-client's and ferry's build scripts)"
  [cc]="a C compiler links a program (ring and libsqlite3-sys build C code)"
  [etcd]="etcd 3.4 runs from PATH (the conformance and cluster tests start real etcd servers)"
  [etcdctl]="etcdctl runs from PATH (etcdctl compatibility tests)"
  [nginx]="nginx at /usr/sbin/nginx with the ssl, proxy and upstream modules validates a config (agents, demo)"
  [mariadb]="/usr/sbin/mariadbd, mariadb-install-db and the mariadb client (SQL tests)"
  [postgresql]="initdb and postgres under /usr/lib/postgresql/*/bin and a postgres user (SQL tests)"
  [redis]="redis-server and redis-cli run (the peer sync benchmark's Redis primary and replicas)"
  [pip]="python3 runs pip (the Python packages below)"
  [grpcio]="python3 imports grpc and generates a client with grpc_tools.protoc (the peer sync interoperability test)"
  [s3]="python3 loads moto's standalone S3 server (the operator's S3 backup tests)"
  [chromium]="/usr/bin/chromium and /usr/bin/chromedriver run (the dashboard's browser test)"
  [venv]="the test virtual environment has ${venv_packages[*]} (the API contract and dashboard tests)"
)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

check_protoc() {
  command -v protoc >/dev/null 2>&1 || return 1
  mkdir -p "$work/proto"
  cat >"$work/proto/probe.proto" <<'EOF'
syntax = "proto3";
package probe;
import "google/protobuf/descriptor.proto";
extend google.protobuf.FieldOptions { string probe_option = 50000; }
message Probe { string name = 1 [(probe_option) = "x"]; }
EOF
  protoc -I "$work/proto" --descriptor_set_out="$work/proto/probe.pb" "$work/proto/probe.proto" >/dev/null 2>&1
}

check_cc() {
  command -v cc >/dev/null 2>&1 || return 1
  printf '#include <stdio.h>\nint main(void){puts("ok");return 0;}\n' >"$work/probe.c"
  cc -o "$work/probe" "$work/probe.c" >/dev/null 2>&1 && [ "$("$work/probe")" = ok ]
}

# `grep >/dev/null`, not `grep -q`: -q exits at the first match, the producer then dies of
# SIGPIPE, and pipefail turns a passing check into a failing one.
check_etcd() {
  command -v etcd >/dev/null 2>&1 || return 1
  etcd --version 2>/dev/null | grep '^etcd Version: 3\.' >/dev/null
}

check_etcdctl() {
  command -v etcdctl >/dev/null 2>&1 || return 1
  ETCDCTL_API=3 etcdctl version 2>/dev/null | grep '^etcdctl version: 3\.' >/dev/null
}

check_nginx() {
  [ -x /usr/sbin/nginx ] || return 1
  mkdir -p "$work/nginx/logs"
  # The directives the agent's built-in template relies on; `nginx -t` fails on an unknown one.
  cat >"$work/nginx/nginx.conf" <<EOF
pid $work/nginx/nginx.pid;
error_log $work/nginx/logs/error.log;
events {}
http {
  access_log off;
  client_body_temp_path $work/nginx/body;
  proxy_temp_path $work/nginx/proxy;
  fastcgi_temp_path $work/nginx/fastcgi;
  uwsgi_temp_path $work/nginx/uwsgi;
  scgi_temp_path $work/nginx/scgi;
  upstream probe { server 127.0.0.1:9; keepalive 2; }
  server {
    listen 127.0.0.1:9;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / { proxy_pass http://probe; proxy_read_timeout 5s; }
  }
}
EOF
  /usr/sbin/nginx -t -q -p "$work/nginx" -c "$work/nginx/nginx.conf" >/dev/null 2>&1
}

check_mariadb() {
  [ -x /usr/sbin/mariadbd ] || return 1
  [ -x /usr/bin/mariadb ] || return 1
  [ -x /usr/bin/mariadb-install-db ] || [ -x /usr/bin/mysql_install_db ] || return 1
  /usr/sbin/mariadbd --version >/dev/null 2>&1
}

check_postgresql() {
  local bin
  for bin in /usr/lib/postgresql/*/bin; do
    if [ -x "$bin/initdb" ] && [ -x "$bin/postgres" ] && "$bin/postgres" --version >/dev/null 2>&1; then
      # PostgreSQL refuses to run as root; the test harness runs it as `postgres` via runuser.
      if [ "$(id -u)" -ne 0 ] || { getent passwd postgres >/dev/null && command -v runuser >/dev/null; }; then
        return 0
      fi
    fi
  done
  return 1
}

check_redis() {
  redis-server --version >/dev/null 2>&1 && redis-cli --version >/dev/null 2>&1
}

check_pip() {
  python3 -m pip --version >/dev/null 2>&1
}

check_grpcio() {
  mkdir -p "$work/grpc"
  cat >"$work/grpc/probe.proto" <<'EOF'
syntax = "proto3";
package probe;
service Probe { rpc Ping(Empty) returns (Empty); }
message Empty {}
EOF
  python3 -m grpc_tools.protoc -I "$work/grpc" --python_out="$work/grpc" --grpc_python_out="$work/grpc" \
    "$work/grpc/probe.proto" >/dev/null 2>&1 &&
    (cd "$work/grpc" && python3 -c "import grpc, probe_pb2, probe_pb2_grpc") >/dev/null 2>&1
}

check_s3() {
  python3 -c "import moto.moto_server.werkzeug_app, moto.s3.models" >/dev/null 2>&1
}

check_chromium() {
  /usr/bin/chromium --version >/dev/null 2>&1 && /usr/bin/chromedriver --version >/dev/null 2>&1
}

check_venv() {
  [ -x "$venv_dir/bin/python" ] || return 1
  # Each pinned package at its pinned version, and importable.
  "$venv_dir/bin/python" - "${venv_packages[@]}" >/dev/null 2>&1 <<'EOF'
import importlib, importlib.metadata, sys
for pin in sys.argv[1:]:
    name, version = pin.split("==")
    assert importlib.metadata.version(name) == version, pin
    importlib.import_module(name)
EOF
}

failing() {
  local cap
  for cap in "${capabilities[@]}"; do
    "check_$cap" || echo "$cap"
  done
}

case "${1:-}" in
  --pip-packages)
    for cap in "${!pip_packages[@]}"; do
      echo "${pip_packages[$cap]}"
    done | tr ' ' '\n'
    exit 0
    ;;
  --venv-dir)
    echo "$venv_dir"
    exit 0
    ;;
  --packages)
    for cap in "${capabilities[@]}"; do
      if [ "${2:-}" = --purgeable ] && [[ " ${toolchain[*]} " == *" $cap "* ]]; then
        continue
      fi
      if [ -n "${packages[$cap]}" ]; then echo "${packages[$cap]}"; fi
    done | tr ' ' '\n'
    exit 0
    ;;
  --check | "") ;;
  *)
    echo "usage: $0 [--check | --packages]" >&2
    exit 2
    ;;
esac

mapfile -t missing < <(failing)
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

report() {
  local cap
  for cap in "$@"; do
    echo "install-deps: missing: ${explain[$cap]}; package(s): ${packages[$cap]}${pip_packages[$cap]:+(pip) ${pip_packages[$cap]}}" >&2
  done
}

if [ "${1:-}" = --check ]; then
  report "${missing[@]}"
  exit 1
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  if ! command -v sudo >/dev/null 2>&1; then
    report "${missing[@]}"
    echo "install-deps: need root or sudo to apt-get install them" >&2
    exit 1
  fi
  sudo="sudo"
fi

to_install=()
to_pip=()
for cap in "${missing[@]}"; do
  read -r -a pkgs <<<"${packages[$cap]}"
  to_install+=("${pkgs[@]}")
  read -r -a pkgs <<<"${pip_packages[$cap]:-}"
  to_pip+=("${pkgs[@]}")
done
if [ ${#to_install[@]} -ne 0 ]; then
  echo "install-deps: installing ${to_install[*]}" >&2
  $sudo apt-get update -qq
  # Recommends are off so that what the checks need is exactly what is listed above.
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${to_install[@]}" >/dev/null
  # The packages may start their system services; ferry's tests start their own servers.
fi
if [ ${#to_pip[@]} -ne 0 ]; then
  echo "install-deps: installing with pip: ${to_pip[*]}" >&2
  pip_flags=(--quiet --disable-pip-version-check)
  # Debian's own python3 refuses pip installs outside a virtualenv (PEP 668) unless told.
  stdlib=$(python3 -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')
  if [ -e "$stdlib/EXTERNALLY-MANAGED" ]; then
    pip_flags+=(--break-system-packages)
  fi
  python3 -m pip install "${pip_flags[@]}" "${to_pip[@]}" >/dev/null
fi

if [[ " ${missing[*]} " == *" venv "* ]]; then
  echo "install-deps: creating $venv_dir with ${venv_packages[*]}" >&2
  # Debian's interpreter, not whatever python3 comes first on PATH: the venv must outlive
  # any user-level Python installation.
  rm -rf "$venv_dir"
  mkdir -p "$(dirname "$venv_dir")"
  /usr/bin/python3 -m venv "$venv_dir"
  "$venv_dir/bin/python" -m pip install --quiet --disable-pip-version-check "${venv_packages[@]}" >/dev/null
fi

mapfile -t still < <(failing)
if [ ${#still[@]} -ne 0 ]; then
  report "${still[@]}"
  echo "install-deps: the checks above still fail after installing; see the package names" >&2
  exit 1
fi
