#!/usr/bin/env bash
# What the security stack costs a gateway, measured in one run on this machine: two AP
# gateways over the same two `bulwark node` replicas, one open (protected mode: no
# credentials, no rate limit, no audit log — the anchor) and one secured (an API key
# checked on every request, a rate limit too high to refuse anything but counted for every
# request, and the audit log written for every write). `bulwark bench kv` drives both with
# the same key, `--api v1`, write then read, ROUNDS rounds alternating which goes first;
# medians are reported with the secured/open throughput ratio and the p50 difference.
#
#   scripts/bench-security.sh
#   DURATION=20 ROUNDS=5 CONCURRENCY=32 scripts/bench-security.sh
#
# Every server listens on a free loopback port and is stopped on exit.
set -euo pipefail

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CONCURRENCY=${CONCURRENCY:-16}

cd "$(dirname "$0")/.."
BENCH_NAME=bench-security
# shellcheck source=lib/bench-common.sh
source scripts/lib/bench-common.sh
bench_setup redis-cli curl python3

REPLICAS=""
for i in 1 2; do
  port=$(free_port)
  mkdir -p "$TMP/db_g$i"
  LOG_LEVEL=WARN "$BULWARK" node --name "db_g$i" --port "$port" --dir "$TMP/db_g$i" \
    >"$TMP/db_g$i.log" 2>&1 &
  PIDS+=("$!")
  wait_ready "$port"
  REPLICAS="${REPLICAS:+$REPLICAS,}db_g$i=127.0.0.1:$port"
done

"$BULWARK" auth new-key --id bench --role write --keys-file "$TMP/api-keys" \
  >"$TMP/bench.key" 2>/dev/null

start_gateway() { # name port extra-env…
  local name=$1 port=$2
  shift 2
  # A generous replica timeout: on two shared cores a replica call can take longer than
  # the default 0.2 s under this load, and breakers opening would measure that instead.
  env LOG_LEVEL=WARN MODE=ap PORT="$port" REPLICAS="$REPLICAS" BACKEND=bulwark NETWORK_TIMEOUT_SEC=2 \
    GATEWAY_NAME="$name" SECRET_KEY=bench-secret-key-of-some-length "$@" \
    "$BULWARK" gateway >"$TMP/$name.log" 2>&1 &
  PIDS+=("$!")
  for _ in $(seq 1 200); do
    curl -sf "http://127.0.0.1:$port/health/ready" >/dev/null && return 0
    sleep 0.05
  done
  echo "bench-security: gateway $name is not ready" >&2
  exit 1
}
OPEN_PORT=$(free_port)
SECURED_PORT=$(free_port)
start_gateway open "$OPEN_PORT" RATE_LIMIT=off AUDIT_LOG=off
start_gateway secured "$SECURED_PORT" API_KEYS_FILE="$TMP/api-keys" \
  RATE_LIMIT=100000000/s AUDIT_LOG="$TMP/audit.jsonl"

for round in $(seq 1 "$ROUNDS"); do
  if [ $((round % 2)) = 1 ]; then order="open secured"; else order="secured open"; fi
  for which in $order; do
    port=$OPEN_PORT; [ "$which" = secured ] && port=$SECURED_PORT
    echo "round $round/$ROUNDS: $which" >&2
    "$BULWARK" bench kv --target "$which=http://127.0.0.1:$port" --api v1 --op write --op read \
      --duration "$DURATION" --warmup 2 --concurrency "$CONCURRENCY" \
      --api-key-file "$TMP/bench.key" --json --output "$TMP/$which.$round.json" >/dev/null
  done
done

"$BULWARK" audit verify "$TMP/audit.jsonl" >&2

python3 scripts/lib/bench-ratio.py bench-security open secured "$TMP" "$ROUNDS" "$DURATION" "$CONCURRENCY" \
  "$(git rev-parse --short HEAD)"
