#!/usr/bin/env bash
# What sharding buys in write throughput, measured in one run on this machine: six
# `bulwark node` replicas, and over the same six, gateways with N = 6 (every node holds
# every key: the anchor, the cluster as it was before sharding) and with N = 3 (each key on
# its preference list of 3). `bulwark bench kv --op write` drives each with the same keys,
# AP and CP, ROUNDS rounds alternating which goes first; medians are reported with the
# N=3 / N=6 throughput ratio.
#
#   scripts/bench-sharding.sh
#   DURATION=20 ROUNDS=5 CONCURRENCY=32 scripts/bench-sharding.sh
#
# Every server listens on a free loopback port and is stopped on exit.
set -euo pipefail

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CONCURRENCY=${CONCURRENCY:-16}
NODES=6

cd "$(dirname "$0")/.."
for tool in redis-cli curl python3; do
  command -v "$tool" >/dev/null || { echo "bench-sharding: $tool is required" >&2; exit 1; }
done

echo "building the release binary…" >&2
cargo build --release -q -p bulwark
BULWARK=target/release/bulwark

BENCH_NAME=bench-sharding
# shellcheck source=lib/bench-common.sh
source scripts/lib/bench-common.sh

REPLICAS=""
for i in $(seq 1 "$NODES"); do
  port=$(free_port)
  mkdir -p "$TMP/db_g$i"
  LOG_LEVEL=WARN "$BULWARK" node --name "db_g$i" --port "$port" --dir "$TMP/db_g$i" \
    >"$TMP/db_g$i.log" 2>&1 &
  PIDS+=("$!")
  wait_ready "$port"
  REPLICAS="${REPLICAS:+$REPLICAS,}db_g$i=127.0.0.1:$port"
done

declare -A PORT
start_gateway() { # name mode n
  local name=$1 mode=$2 n=$3 port
  port=$(free_port)
  PORT[$name]=$port
  # A generous replica timeout: on two shared cores a replica call can take longer than
  # the default 0.2 s under this load, and breakers opening would measure that instead.
  env LOG_LEVEL=WARN MODE="$mode" PORT="$port" REPLICAS="$REPLICAS" BACKEND=bulwark \
    NETWORK_TIMEOUT_SEC=2 GATEWAY_NAME="$name" REPLICATION_FACTOR="$n" \
    SECRET_KEY=bench-secret-key-of-some-length ANTI_ENTROPY_INTERVAL_SEC=0 \
    "$BULWARK" gateway >"$TMP/$name.log" 2>&1 &
  PIDS+=("$!")
  for _ in $(seq 1 200); do
    curl -sf "http://127.0.0.1:$port/health/ready" >/dev/null && return 0
    sleep 0.05
  done
  echo "bench-sharding: gateway $name is not ready" >&2
  exit 1
}
for mode in ap cp; do
  start_gateway "${mode}_n6" "$mode" 6
  start_gateway "${mode}_n3" "$mode" 3
done

for mode in ap cp; do
  for round in $(seq 1 "$ROUNDS"); do
    if [ $((round % 2)) = 1 ]; then order="${mode}_n6 ${mode}_n3"; else order="${mode}_n3 ${mode}_n6"; fi
    for which in $order; do
      echo "round $round/$ROUNDS: $which" >&2
      "$BULWARK" bench kv --target "$which=http://127.0.0.1:${PORT[$which]}" --api v1 \
        --op write --duration "$DURATION" --warmup 2 --concurrency "$CONCURRENCY" \
        --json --output "$TMP/$which.$round.json" >/dev/null
    done
  done
done

for mode in ap cp; do
  python3 scripts/lib/bench-ratio.py "bench-sharding ${mode^^}" "${mode}_n6" "${mode}_n3" "$TMP" \
    "$ROUNDS" "$DURATION" "$CONCURRENCY" "$(git rev-parse --short HEAD)"
done
