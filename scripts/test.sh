#!/usr/bin/env bash
# The whole test suite in one command. It first provisions what the tests need when it is
# missing (redis-server >= 7, PostgreSQL, MariaDB and NATS from Debian's packages, started
# when they do not run; cargo-nextest from crates.io; toxiproxy-python from PyPI), so it works on a fresh Debian machine as root (or with
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

# The OpenAPI tests run schemathesis (PyPI) against live services.
if ! command -v schemathesis >/dev/null 2>&1; then
  echo "test.sh: installing schemathesis" >&2
  python3 -m pip install --quiet schemathesis 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages schemathesis
fi

# The commerce service's tests (crates/bulwark-shop, the shop crash test) run on
# PostgreSQL, MariaDB and NATS JetStream servers: each test creates its own uniquely
# named database or stream and drops it. Install and start them when missing; leave
# them alone when they already run. Connection URLs: SHOP_TEST_POSTGRES_URL,
# SHOP_TEST_MYSQL_URL, SHOP_TEST_NATS_URL (defaults: the local servers below).
packages=()
[ -x /usr/lib/postgresql/15/bin/postgres ] || packages+=(postgresql postgresql-client)
command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ] || packages+=(mariadb-server mariadb-client)
[ -x /usr/sbin/nats-server ] || packages+=(nats-server)
if [ ${#packages[@]} -gt 0 ]; then
  echo "test.sh: installing ${packages[*]}" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}"
fi
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() {
  for _ in $(seq 1 60); do listening "$1" && return 0; sleep 0.5; done
  echo "test.sh: nothing listens on port $1 after 30 s ($2)" >&2
  exit 1
}
if ! listening 5432; then
  echo "test.sh: starting PostgreSQL" >&2
  as_root pg_ctlcluster --skip-systemctl-redirect 15 main start
  wait_port 5432 postgresql
fi
# The tests connect over TCP as the postgres user without a password (trust on
# loopback, as on the prepared machines).
hba=/etc/postgresql/15/main/pg_hba.conf
if [ -f "$hba" ] && ! as_root grep -qE '^host\s+all\s+all\s+127\.0\.0\.1/32\s+trust' "$hba"; then
  as_root sed -i '1i host all all 127.0.0.1/32 trust' "$hba"
  as_root pg_ctlcluster --skip-systemctl-redirect 15 main reload
fi
if ! listening 3306; then
  echo "test.sh: starting MariaDB" >&2
  as_root mkdir -p /run/mysqld
  as_root chown mysql:mysql /run/mysqld 2>/dev/null || true
  as_root start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd -- --user=mysql
  wait_port 3306 mariadb
fi
# root over TCP with an empty password (Debian's default is unix_socket only).
mysql -h127.0.0.1 -uroot -e 'SELECT 1' >/dev/null 2>&1 ||
  as_root mysql -uroot -e "ALTER USER 'root'@'localhost' IDENTIFIED VIA mysql_native_password USING PASSWORD('') OR unix_socket" 2>/dev/null || true
if ! listening 4222; then
  echo "test.sh: starting NATS with JetStream" >&2
  as_root mkdir -p /var/lib/nats-server
  as_root start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server
  wait_port 4222 nats-server
fi

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "test.sh: installing cargo-nextest" >&2
  cargo install cargo-nextest --locked
fi

cargo build --workspace --all-targets --quiet
exec cargo nextest run --workspace --no-fail-fast "$@"
