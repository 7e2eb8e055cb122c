#!/usr/bin/env bash
# Benchmarks the fault proxy (`bulwark chaos proxy`) against going direct, in one run on
# this machine, with redis-benchmark against a redis-server, and prints Markdown tables:
#
# 1. throughput: redis-benchmark SET/GET directly and through a proxy with no toxic,
#    alternated ROUNDS times (direct, proxy, direct, proxy, …) so drift hits both alike;
#    the ratio is proxy / direct per round, and the median round is reported;
# 2. latency at moderate load (CLIENTS_LAT clients, no pipelining): p50/p99 directly and
#    through the proxy, with redis-benchmark --precision 3 (microseconds);
# 3. accuracy of a `latency 100ms` toxic: GET round trips with one client, through the
#    proxy with the toxic, minus the direct round trip.
#
#   scripts/bench-proxy.sh
#   N=500000 ROUNDS=5 scripts/bench-proxy.sh
#
# Every server listens on a free loopback port (never 6379) and is stopped on exit.
set -euo pipefail

N=${N:-200000}
CLIENTS=${CLIENTS:-50}
CLIENTS_LAT=${CLIENTS_LAT:-10}
N_LAT=${N_LAT:-100000}
ROUNDS=${ROUNDS:-3}
PIPELINES=${PIPELINES:-"1 16"}
N_TOXIC=${N_TOXIC:-100}

cd "$(dirname "$0")/.."
for tool in redis-server redis-benchmark redis-cli curl python3; do
  command -v "$tool" >/dev/null || { echo "bench-proxy: $tool is required" >&2; exit 1; }
done

echo "building the release binary…" >&2
cargo build --release -q -p bulwark
BULWARK=target/release/bulwark

TMP=$(mktemp -d -t bench-proxy.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$TMP"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_ready() { # port
  for _ in $(seq 1 200); do
    if [ "$(redis-cli -h 127.0.0.1 -p "$1" PING 2>/dev/null)" = "PONG" ]; then return 0; fi
    sleep 0.05
  done
  echo "bench-proxy: nothing answers PING on port $1" >&2
  exit 1
}

# redis-server, in memory only: the benchmark is about the proxy, not fsync.
REDIS_PORT=$(free_port)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
  --dir "$TMP" --daemonize no --logfile "$TMP/redis.log" &
PIDS+=("$!")
wait_ready "$REDIS_PORT"

API_PORT=$(free_port)
PROXY_PORT=$(free_port)
LOG_LEVEL=WARN "$BULWARK" chaos proxy --listen "127.0.0.1:$API_PORT" --seed 1 >"$TMP/proxy.log" 2>&1 &
PIDS+=("$!")
for _ in $(seq 1 200); do
  curl -sf "http://127.0.0.1:$API_PORT/version" >/dev/null && break
  sleep 0.05
done
curl -sf -X POST "http://127.0.0.1:$API_PORT/proxies" \
  -d "{\"name\":\"redis\",\"listen\":\"127.0.0.1:$PROXY_PORT\",\"upstream\":\"127.0.0.1:$REDIS_PORT\"}" >/dev/null
wait_ready "$PROXY_PORT"

# Prints "TEST rps avg min p50 p95 p99 max" (latencies in ms) for one run.
bench() { # port clients pipeline n tests
  redis-benchmark -h 127.0.0.1 -p "$1" -c "$2" -P "$3" -n "$4" -t "$5" --precision 3 -q --csv \
    | awk -F'","' 'NR > 1 { gsub(/"/, ""); print $1, $2, $3, $4, $5, $6, $7, $8 }'
}

median() { sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
echo "## throughput (redis-benchmark -n $N -c $CLIENTS, median of $ROUNDS alternated rounds)"
echo
echo "| test | pipeline | direct ops/s | proxy ops/s | proxy / direct |"
echo "|---|---|---|---|---|"
for p in $PIPELINES; do
  declare -A D=() P=() R=()
  for round in $(seq 1 "$ROUNDS"); do
    while read -r t rps _; do D["$t,$round"]=$rps; done < <(bench "$REDIS_PORT" "$CLIENTS" "$p" "$N" set,get)
    while read -r t rps _; do P["$t,$round"]=$rps; done < <(bench "$PROXY_PORT" "$CLIENTS" "$p" "$N" set,get)
  done
  for t in SET GET; do
    ratios=$(for r in $(seq 1 "$ROUNDS"); do
      python3 -c "print(${P[$t,$r]} / ${D[$t,$r]})"
    done | median)
    d=$(for r in $(seq 1 "$ROUNDS"); do echo "${D[$t,$r]}"; done | median)
    q=$(for r in $(seq 1 "$ROUNDS"); do echo "${P[$t,$r]}"; done | median)
    printf '| %s | %s | %.0f | %.0f | %.0f %% |\n' "$t" "$p" "$d" "$q" "$(python3 -c "print($ratios * 100)")"
  done
done
echo

echo "## latency at moderate load (redis-benchmark -n $N_LAT -c $CLIENTS_LAT -P 1 --precision 3, GET)"
echo
echo "| path | p50 µs | p99 µs | ops/s |"
echo "|---|---|---|---|"
declare -A L=()
for round in $(seq 1 "$ROUNDS"); do
  read -r _ rps _ _ p50 _ p99 _ < <(bench "$REDIS_PORT" "$CLIENTS_LAT" 1 "$N_LAT" get)
  L["direct,p50,$round"]=$p50; L["direct,p99,$round"]=$p99; L["direct,rps,$round"]=$rps
  read -r _ rps _ _ p50 _ p99 _ < <(bench "$PROXY_PORT" "$CLIENTS_LAT" 1 "$N_LAT" get)
  L["proxy,p50,$round"]=$p50; L["proxy,p99,$round"]=$p99; L["proxy,rps,$round"]=$rps
done
for path in direct proxy; do
  p50=$(for r in $(seq 1 "$ROUNDS"); do echo "${L[$path,p50,$r]}"; done | median)
  p99=$(for r in $(seq 1 "$ROUNDS"); do echo "${L[$path,p99,$r]}"; done | median)
  rps=$(for r in $(seq 1 "$ROUNDS"); do echo "${L[$path,rps,$r]}"; done | median)
  printf '| %s | %.0f | %.0f | %.0f |\n' "$path" "$(python3 -c "print($p50 * 1000)")" \
    "$(python3 -c "print($p99 * 1000)")" "$rps"
  declare "LAT_${path}_p99=$p99"
done
added=$(for r in $(seq 1 "$ROUNDS"); do
  python3 -c "print((${L[proxy,p99,$r]} - ${L[direct,p99,$r]}) * 1000)"
done | median)
printf '\nadded p99 (median of rounds): %.0f µs\n\n' "$added"

echo "## latency toxic accuracy (latency 100 ms downstream, GET, -c 1 -n $N_TOXIC)"
echo
read -r _ _ davg dmin dp50 _ dp99 dmax < <(bench "$REDIS_PORT" 1 1 "$N_TOXIC" get)
curl -sf -X POST "http://127.0.0.1:$API_PORT/proxies/redis/toxics" \
  -d '{"type":"latency","attributes":{"latency":100}}' >/dev/null
read -r _ _ tavg tmin tp50 _ tp99 tmax < <(bench "$PROXY_PORT" 1 1 "$N_TOXIC" get)
curl -sf -X DELETE "http://127.0.0.1:$API_PORT/proxies/redis/toxics/latency_downstream" >/dev/null
echo "| | min ms | p50 ms | p99 ms | max ms |"
echo "|---|---|---|---|---|"
echo "| direct | $dmin | $dp50 | $dp99 | $dmax |"
echo "| through latency 100 ms | $tmin | $tp50 | $tp99 | $tmax |"
python3 -c "
d=$dp50
print()
print('added by the toxic (through - direct p50): min %.3f ms, p50 %.3f ms, p99 %.3f ms, max %.3f ms' % ($tmin - d, $tp50 - d, $tp99 - d, $tmax - d))"
echo
echo "load average: $LOAD_START at start, $(cut -d' ' -f1-3 /proc/loadavg) at end ($(nproc) CPUs)"
