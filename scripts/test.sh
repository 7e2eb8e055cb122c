#!/usr/bin/env bash
# The whole test suite in one command. It first provisions what the tests need when it is
# missing (redis-server >= 7 from Debian's packages, cargo-nextest from crates.io,
# toxiproxy-python from PyPI), so it works on a fresh Debian machine as root (or with
# sudo) as well as on a prepared one.
#
#   scripts/test.sh            # everything
#   scripts/test.sh -E 'test(cap)'   # extra arguments go to cargo nextest run
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

packages=()
command -v redis-server >/dev/null 2>&1 || packages+=(redis-server)
command -v redis-benchmark >/dev/null 2>&1 || packages+=(redis-tools)
if [ ${#packages[@]} -gt 0 ]; then
  echo "test.sh: installing ${packages[*]}" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}"
fi
redis_major=$(redis-server --version | sed -E 's/.*v=([0-9]+).*/\1/')
if [ "${redis_major:-0}" -lt 7 ]; then
  echo "test.sh: redis-server >= 7 is required (Redis Functions); found $(redis-server --version)" >&2
  exit 1
fi
# The tests start their own redis-server processes on free ports; the system service
# (port 6379) is neither needed nor touched.

# The fault proxy's compatibility test drives it with a real Toxiproxy client from PyPI.
if ! python3 -c 'import toxiproxy' >/dev/null 2>&1; then
  echo "test.sh: installing toxiproxy-python" >&2
  if ! command -v python3 >/dev/null 2>&1 || ! python3 -m pip --version >/dev/null 2>&1; then
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-pip
  fi
  # Debian's python refuses user-level pip installs (PEP 668) unless told otherwise.
  python3 -m pip install --quiet toxiproxy-python 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages toxiproxy-python
fi

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "test.sh: installing cargo-nextest" >&2
  cargo install cargo-nextest --locked
fi

cargo build --workspace --all-targets --quiet
exec cargo nextest run --workspace --no-fail-fast "$@"
