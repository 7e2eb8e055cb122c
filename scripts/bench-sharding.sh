#!/usr/bin/env bash
# What sharding buys in write throughput, measured in one run on this machine: six
# `bulwark node` replicas, and over the same six, gateways with N = 6 (every node holds
# every key: the anchor, the cluster as it was before sharding) and with N = 3 (each key on
# its preference list of 3). `bulwark bench kv --op write` drives each with the same keys,
# AP and CP, ROUNDS rounds alternating which goes first; medians are reported with the
# N=3 / N=6 throughput ratio, and the nodes' CPU time per write (user + system, from
# /proc, summed over the six node processes): what each write costs the storage tier, so
# what the same nodes can carry when they are the bottleneck (here the gateway and the load
# generator share their two cores).
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
BENCH_NAME=bench-sharding
# shellcheck source=lib/bench-common.sh
source scripts/lib/bench-common.sh
bench_setup redis-cli curl python3

REPLICAS=""
NODE_PIDS=()
for i in $(seq 1 "$NODES"); do
  port=$(free_port)
  mkdir -p "$TMP/db_g$i"
  LOG_LEVEL=WARN "$BULWARK" node --name "db_g$i" --port "$port" --dir "$TMP/db_g$i" \
    >"$TMP/db_g$i.log" 2>&1 &
  PIDS+=("$!")
  NODE_PIDS+=("$!")
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
# utime + stime of every node process, in clock ticks.
node_cpu_ticks() {
  local total=0 pid f
  for pid in "${NODE_PIDS[@]}"; do
    read -ra f <"/proc/$pid/stat"
    total=$((total + f[13] + f[14]))
  done
  echo "$total"
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
      node_cpu_ticks >"$TMP/$which.$round.cpu0"
      "$BULWARK" bench kv --target "$which=http://127.0.0.1:${PORT[$which]}" --api v1 \
        --op write --duration "$DURATION" --warmup 2 --concurrency "$CONCURRENCY" \
        --json --output "$TMP/$which.$round.json" >/dev/null
      node_cpu_ticks >"$TMP/$which.$round.cpu1"
    done
  done
done

for mode in ap cp; do
  python3 scripts/lib/bench-ratio.py "bench-sharding ${mode^^}" "${mode}_n6" "${mode}_n3" "$TMP" \
    "$ROUNDS" "$DURATION" "$CONCURRENCY" "$(git rev-parse --short HEAD)"
done

# Node CPU per write: the ticks cover the warm-up (2 s) and the measured phase, so they are
# divided by the measured requests scaled to both (the same estimate for N = 6 and N = 3,
# so their ratio does not depend on it).
python3 - "$TMP" "$ROUNDS" "$(getconf CLK_TCK)" "$DURATION" <<'PY'
import json, statistics, sys
tmp, rounds, hz, duration = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
warmup = 2.0
print("node CPU per write (all six nodes, user + system), medians")
print(f"{'mode':6} {'N=6 µs':>8} {'N=3 µs':>8} {'N3/N6':>6}")
for mode in ("ap", "cp"):
    per = {}
    for n in ("n6", "n3"):
        vals = []
        for r in range(1, rounds + 1):
            w = f"{tmp}/{mode}_{n}.{r}"
            ticks = int(open(w + ".cpu1").read()) - int(open(w + ".cpu0").read())
            res = json.load(open(w + ".json"))["results"][0]
            sent = res["requests"] * (duration + warmup) / duration
            vals.append(ticks / hz * 1e6 / max(sent, 1))
        per[n] = statistics.median(vals)
    print(f"{mode.upper():6} {per['n6']:8.1f} {per['n3']:8.1f} {per['n3'] / per['n6']:6.3f}")
PY
