#!/usr/bin/env bash
# Runs the pytest suite (integration excepted) and the CPython test_asyncio conformance check
# (tests/conformance/floors-3.X.json) on CPython 3.14 and 3.15, which neither Debian stable nor
# pyenv has here: Debian unstable's python3.14/python3.15 packages (with their `test` package,
# libpython3.X-testsuite) in a chroot made by debootstrap.
#
#   scripts/test-new-pythons.sh            # both versions
#   FERROLOOP_NEW_PYTHONS=3.15 scripts/test-new-pythons.sh
#   FERROLOOP_SID_REFRESH=1 ...            # rebuild the chroot (newer sid packages)
#   FERROLOOP_SKIP_CONFORMANCE=1 ...       # pytest only
#   scripts/test-new-pythons.sh --run 3.15 python -m pytest tests/test_udp.py -x
#                                          # one command in that version's venv (after a build)
#   scripts/test-new-pythons.sh --clean-room DIST
#                                          # no build: scripts/clean-room-one.sh with each
#                                          # version's wheel from DIST (inside the checkout)
#
# Needs root (debootstrap, chroot, mounts); debootstrap is installed with apt-get if missing.
# Without root it says so and exits 0, as test-more-pythons.sh does for a missing interpreter.
#
# The chroot is cached outside the repository, in $FERROLOOP_SID_CACHE (/var/cache/ferroloop-sid):
# root/ is the chroot (rebuilt when the package list below changes, or on request), with a
# venv and a Cargo target directory per version in root/opt/ferroloop/. ferroloop is built
# inside the chroot, by the host's Rust toolchain (~/.rustup and ~/.cargo bind-mounted at the
# same paths) with the chroot's gcc as linker, against the chroot's interpreter; the checkout is
# bind-mounted at its own path, so `maturin develop` installs it editable as on the host
# (python/ferroloop/_ferroloop.cpython-31X-*.so). /proc, /dev and /dev/shm are bind-mounted
# (process pools need them) inside a private mount namespace (unshare), and unmounted by a trap:
# nothing stays mounted even if the run is killed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${FERROLOOP_SID_CACHE:-/var/cache/ferroloop-sid}"
VERSIONS="${FERROLOOP_NEW_PYTHONS:-3.14 3.15}"
MIRROR="${FERROLOOP_SID_MIRROR:-http://deb.debian.org/debian}"
CHROOT="$CACHE/root"
source "$ROOT/scripts/pythons.sh"
CARGO_HOME="${CARGO_HOME:-$HOME/.cargo}"
RUSTUP_HOME="${RUSTUP_HOME:-$HOME/.rustup}"

packages() {
  local v list="gcc,libc6-dev,ca-certificates,openssl"
  for v in 3.14 3.15; do
    list="$list,python$v,python$v-dev,python$v-venv,libpython$v-testsuite"
  done
  echo "$list"
}

if [ "$(id -u)" != 0 ]; then
  echo "== python $VERSIONS (Debian sid chroot): needs root (debootstrap, chroot, mounts), skipped"
  exit 0
fi
if ! command -v debootstrap >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    echo "== installing debootstrap"
    apt-get update -qq >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null 2>&1 || true
  fi
  if ! command -v debootstrap >/dev/null 2>&1; then
    echo "== python $VERSIONS (Debian sid chroot): debootstrap not available, skipped"
    exit 0
  fi
fi
if [ ! -x "$CARGO_HOME/bin/cargo" ] || [ ! -d "$RUSTUP_HOME" ]; then
  echo "test-new-pythons: needs the host's Rust under $CARGO_HOME and $RUSTUP_HOME (rustup)" >&2
  exit 1
fi

# Everything below runs in a private mount namespace: its mounts are invisible outside and
# vanish with it, whatever happens to this script.
if [ "${FERROLOOP_SID_IN_NS:-0}" != "1" ]; then
  FERROLOOP_SID_IN_NS=1 exec unshare --mount --propagation private "$0" "$@"
fi

mkdir -p "$CACHE"
# One run at a time per cache (the chroot, its venvs and target directories are shared).
exec 9>"$CACHE/lock"
flock 9

# --- the chroot (cached) ----------------------------------------------------------------
want="$(packages) $MIRROR"
if [ "${FERROLOOP_SID_REFRESH:-0}" = "1" ] || [ ! -f "$CHROOT/.ferroloop-ok" ] \
  || [ "$(cat "$CHROOT/.ferroloop-ok")" != "$want" ]; then
  echo "== debootstrap Debian sid into $CHROOT ($(packages))"
  started=$SECONDS
  rm -rf "$CACHE/root.new"
  if debootstrap --variant=minbase --include="$(packages)" sid "$CACHE/root.new" "$MIRROR" \
    >"$CACHE/debootstrap.log" 2>&1; then
    rm -rf "$CHROOT"
    mv "$CACHE/root.new" "$CHROOT"
    echo "$want" >"$CHROOT/.ferroloop-ok"
    echo "   done in $((SECONDS - started)) s"
  elif [ -f "$CHROOT/.ferroloop-ok" ]; then
    echo "   debootstrap failed (see $CACHE/debootstrap.log): keeping the previous chroot" >&2
    rm -rf "$CACHE/root.new"
  else
    tail -20 "$CACHE/debootstrap.log" >&2
    echo "test-new-pythons: debootstrap failed (full log: $CACHE/debootstrap.log)" >&2
    exit 1
  fi
fi
# Name resolution and pip's configuration (the host's CA bundle, which the registry's
# certificate chains to here), refreshed every run.
cp /etc/resolv.conf "$CHROOT/etc/resolv.conf"
cp /etc/hosts "$CHROOT/etc/hosts"
cp /etc/ssl/certs/ca-certificates.crt "$CHROOT/etc/ssl/certs/ca-certificates.crt"
if [ -f /etc/pip.conf ]; then
  cp /etc/pip.conf "$CHROOT/etc/pip.conf"
fi

# --- mounts ------------------------------------------------------------------------------
mounted=()
cleanup() {
  local i
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
    umount "${mounted[$i]}" 2>/dev/null || umount -l "${mounted[$i]}" 2>/dev/null || true
  done
}
trap cleanup EXIT
bind() { # bind SOURCE TARGET-INSIDE-CHROOT
  mkdir -p "$CHROOT$2"
  mount --bind "$1" "$CHROOT$2"
  mounted+=("$CHROOT$2")
}
mkdir -p "$CHROOT/proc"
mount -t proc proc "$CHROOT/proc"
mounted+=("$CHROOT/proc")
bind /dev /dev
bind /dev/pts /dev/pts
bind /dev/shm /dev/shm
bind "$ROOT" "$ROOT"
bind "$CARGO_HOME" "$CARGO_HOME"
bind "$RUSTUP_HOME" "$RUSTUP_HOME"

in_chroot() {
  chroot "$CHROOT" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM="${TERM:-dumb}" \
    PATH="/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin" \
    CARGO_HOME="$CARGO_HOME" RUSTUP_HOME="$RUSTUP_HOME" \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_DEFAULT_TIMEOUT="${PIP_DEFAULT_TIMEOUT:-60}" "$@"
}

command=()
clean_room=""
if [ "${1:-}" = "--run" ]; then
  VERSIONS="$2"
  shift 2
  command=("$@")
elif [ "${1:-}" = "--clean-room" ]; then
  clean_room="$(cd "$2" && pwd)"
fi

status=0
for minor in $VERSIONS; do
  if [ ! -x "$CHROOT/usr/bin/python$minor" ]; then
    echo "== python $minor: not in the chroot's packages, skipped"
    continue
  fi
  if [ -n "$clean_room" ]; then
    wheel="$(wheel_for "$clean_room" "$minor")"
    if [ -z "$wheel" ]; then
      echo "== clean room $minor: no wheel for it in $clean_room (scripts/wheels.sh)" >&2
      status=1
      continue
    fi
    in_chroot env FERROLOOP_SKIP_CONFORMANCE="${FERROLOOP_SKIP_CONFORMANCE:-0}" \
      "$ROOT/scripts/clean-room-one.sh" "/usr/bin/python$minor" "$wheel" || status=1
    continue
  fi
  venv="/opt/ferroloop/venv-$minor"
  target="/opt/ferroloop/target-$minor"
  if [ ! -x "$CHROOT$venv/bin/python" ]; then
    in_chroot "python$minor" -m venv "$venv"
  fi
  # The same packages as test-more-pythons.sh's venvs; reinstalled when the list changes.
  stamp="$(cat "$ROOT/scripts/requirements-more-pythons.txt")"
  if [ ! -f "$CHROOT$venv/.deps-ok" ] || [ "$(cat "$CHROOT$venv/.deps-ok")" != "$stamp" ]; then
    in_chroot "$venv/bin/python" -m pip install -q -r "$ROOT/scripts/requirements-more-pythons.txt"
    echo "$stamp" >"$CHROOT$venv/.deps-ok"
  fi
  run() {
    in_chroot /bin/sh -c 'cd "$1" && shift && exec "$@"' sh "$ROOT" \
      env VIRTUAL_ENV="$venv" PATH="$venv/bin:$CARGO_HOME/bin:/usr/local/bin:/usr/bin:/bin" \
      CARGO_TARGET_DIR="$target" "$@"
  }
  echo "== build (debug) for $(in_chroot "$venv/bin/python" -V) (Debian sid chroot)"
  run maturin develop -q
  if [ ${#command[@]} -gt 0 ]; then
    run "${command[@]}" || status=$?
    continue
  fi
  echo "== pytest on python $minor"
  run python -m pytest tests -q -p no:cacheprovider --ignore=tests/integration || status=1
  if [ "${FERROLOOP_SKIP_CONFORMANCE:-0}" != "1" ] && [ -f "$ROOT/tests/conformance/floors-$minor.json" ]; then
    echo "== CPython $minor test_asyncio conformance (ferroloop swapped in)"
    run python tests/conformance/run_conformance.py --loop ferroloop --check -j 3 --budget 600 \
      || status=1
  fi
done
exit $status
