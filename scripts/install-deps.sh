#!/usr/bin/env bash
# Installs the Debian packages ferry's build, demo and tests need. Idempotent: installs only
# what is missing, and runs apt-get update only when something is.
set -euo pipefail

# command -> package
declare -A wanted=(
  [protoc]=protobuf-compiler
  [etcd]=etcd-server
  [etcdctl]=etcd-client
  [nginx]=nginx-light
)

missing=()
for cmd in "${!wanted[@]}"; do
  # nginx lives in /usr/sbin, which is not on every user's PATH.
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || missing+=("${wanted[$cmd]}")
done

# Servers whose binaries are not on PATH.
[ -x /usr/sbin/mariadbd ] || missing+=(mariadb-server)
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "install-deps: need root or sudo to apt-get install ${missing[*]}" >&2; exit 1; }
  sudo="sudo"
fi
echo "install-deps: installing ${missing[*]}" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The packages may start their system services; ferry's tests start their own servers.
