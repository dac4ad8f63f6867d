#!/usr/bin/env bash
# Reproduces a fresh Debian 12 machine as closely as this one allows, then runs both README
# commands as a new user would:
#
#   1. purges every Debian package that scripts/install-deps.sh manages, and whatever apt
#      installed only for them (autoremove), so no earlier hand install can hide a missing
#      install step, and the Python packages it installs with pip. The C toolchain and
#      python3 stay: every machine of this kind has them.
#   2. clones the committed HEAD into a temp dir and builds with an empty cargo target dir;
#   3. runs `scripts/demo.sh` (non-interactive: it exits once every rollout is complete) and
#      `scripts/test.sh` from that clone.
#
# Run it (as root or with sudo) before resolving any issue that adds or changes a dependency.
# Uncommitted changes are not part of the clone: commit first. Set KEEP=1 to keep the clone.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "check-fresh: needs root or sudo to purge packages" >&2; exit 1; }
  sudo="sudo"
fi

if [ -n "$(git -C "$repo" status --porcelain --untracked-files=no)" ]; then
  echo "check-fresh: note: uncommitted changes in $repo are not tested (the clone is of HEAD)" >&2
fi

mapfile -t managed < <("$repo/scripts/install-deps.sh" --packages --purgeable)
installed=()
for pkg in "${managed[@]}"; do
  if dpkg-query -W -f='${Status}\n' "$pkg" 2>/dev/null | grep -q '^install ok installed$'; then
    installed+=("$pkg")
  fi
done
echo "check-fresh: purging ${installed[*]:-nothing}" >&2
if [ ${#installed[@]} -gt 0 ]; then
  DEBIAN_FRONTEND=noninteractive $sudo apt-get purge -y -qq "${installed[@]}" >/dev/null
fi
DEBIAN_FRONTEND=noninteractive $sudo apt-get autoremove --purge -y -qq >/dev/null
mapfile -t pip_managed < <("$repo/scripts/install-deps.sh" --pip-packages)
echo "check-fresh: uninstalling with pip: ${pip_managed[*]}" >&2
python3 -m pip uninstall --quiet --yes "${pip_managed[@]}" >/dev/null 2>&1 || true
venv_dir=$("$repo/scripts/install-deps.sh" --venv-dir)
echo "check-fresh: removing the test virtual environment $venv_dir" >&2
rm -rf "$venv_dir"

# A dependency that was once installed by hand (postgresql-15 beside the postgresql
# metapackage, say) is not auto-removed: purge whatever still owns a file the checks use.
shopt -s nullglob
provided=(/usr/bin/protoc /usr/include/google/protobuf/descriptor.proto /usr/bin/etcd
  /usr/bin/etcdctl /usr/sbin/nginx /usr/sbin/mariadbd /usr/bin/mariadb
  /usr/bin/mariadb-install-db /usr/lib/postgresql/*/bin/postgres /usr/lib/postgresql/*/bin/initdb
  /usr/bin/chromium /usr/bin/chromedriver)
shopt -u nullglob
owners=()
for file in "${provided[@]}"; do
  [ -e "$file" ] || continue
  owner=$(dpkg-query -S "$file" 2>/dev/null | head -n1 | cut -d: -f1) || true
  [ -n "$owner" ] && owners+=("$owner")
done
if [ ${#owners[@]} -gt 0 ]; then
  echo "check-fresh: purging what still provides them: ${owners[*]}" >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get purge -y -qq "${owners[@]}" >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get autoremove --purge -y -qq >/dev/null
fi

echo "check-fresh: what a fresh machine lacks now:" >&2
"$repo/scripts/install-deps.sh" --check || true

work=$(mktemp -d /tmp/ferry-fresh.XXXXXX)
cleanup() {
  if [ "${KEEP:-0}" = 1 ]; then
    echo "check-fresh: kept $work" >&2
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT

git clone -q "$repo" "$work/ferry"
cd "$work/ferry"
export CARGO_TARGET_DIR="$work/target"

echo "check-fresh: scripts/demo.sh (non-interactive)" >&2
DEMO_EXIT=1 scripts/demo.sh </dev/null

echo "check-fresh: scripts/test.sh" >&2
CI=true scripts/test.sh </dev/null

echo "check-fresh: both README commands passed on a fresh clone after the purge" >&2
