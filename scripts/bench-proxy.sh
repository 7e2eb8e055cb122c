#!/usr/bin/env bash
# Benchmarks the fault proxy (`bulwark chaos proxy`) in one run on this machine, with
# redis-benchmark against one redis-server reached three ways:
#
#   direct  redis-benchmark → redis-server
#   copy    redis-benchmark → copy_proxy (the crate's example: tokio's copy_bidirectional,
#           the smallest tokio proxy; the anchor for "what any proxy costs")
#   fault   redis-benchmark → bulwark chaos proxy, a proxy with no toxic
#
# 1. throughput: SET and GET per pipeline depth; each round runs direct, copy, fault one
#    after the other (never at the same time), ROUNDS rounds, medians reported, with the
#    fault proxy's ratio to direct and to copy;
# 2. CPU time per request of each proxy process (user + system, from /proc), which
#    depends less on what else the machine is doing than the ratios;
# 3. latency at moderate load (CLIENTS_LAT clients, no pipelining, --precision 3): p50 and
#    p99 for each path, and what the fault proxy adds to direct's p99;
# 4. accuracy of a `latency 100 ms` toxic: GET round trips with one client through the
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

echo "building the release binaries…" >&2
cargo build --release -q -p bulwark
cargo build --release -q -p bulwark-faultproxy --example copy_proxy
BULWARK=target/release/bulwark
COPY_PROXY=target/release/examples/copy_proxy

BENCH_NAME=bench-proxy
# shellcheck source=lib/bench-common.sh
source scripts/lib/bench-common.sh

# redis-server, in memory only: the benchmark is about the proxies, not fsync.
declare -A PORT PID
PORT[direct]=$(free_port)
redis-server --port "${PORT[direct]}" --bind 127.0.0.1 --save "" --appendonly no \
  --dir "$TMP" --daemonize no --logfile "$TMP/redis.log" &
PID[direct]=$!; PIDS+=("$!")
wait_ready "${PORT[direct]}"

PORT[copy]=$(free_port)
"$COPY_PROXY" "127.0.0.1:${PORT[copy]}" "127.0.0.1:${PORT[direct]}" &
PID[copy]=$!; PIDS+=("$!")
wait_ready "${PORT[copy]}"

API_PORT=$(free_port)
PORT[fault]=$(free_port)
LOG_LEVEL=WARN "$BULWARK" chaos proxy --listen "127.0.0.1:$API_PORT" --seed 1 >"$TMP/proxy.log" 2>&1 &
PID[fault]=$!; PIDS+=("$!")
for _ in $(seq 1 200); do
  curl -sf "http://127.0.0.1:$API_PORT/version" >/dev/null && break
  sleep 0.05
done
curl -sf -X POST "http://127.0.0.1:$API_PORT/proxies" \
  -d "{\"name\":\"redis\",\"listen\":\"127.0.0.1:${PORT[fault]}\",\"upstream\":\"127.0.0.1:${PORT[direct]}\"}" >/dev/null
wait_ready "${PORT[fault]}"

# Prints "TEST rps avg min p50 p95 p99 max" (latencies in ms) for one run.
bench() { # port clients pipeline n tests
  redis-benchmark -h 127.0.0.1 -p "$1" -c "$2" -P "$3" -n "$4" -t "$5" --precision 3 -q --csv \
    | awk -F',' 'NR > 1 { gsub(/"/, ""); print $1, $2, $3, $4, $5, $6, $7, $8 }'
}
median() { sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
calc() { python3 -c "print($1)"; }
TICKS=$(getconf CLK_TCK)
cpu_of() { awk -v t="$TICKS" '{ print ($14 + $15) / t }' "/proc/$1/stat"; }
PATHS="direct copy fault"

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
declare -A RPS CPU OPS
for path in $PATHS; do CPU[$path]=0; OPS[$path]=0; done
for p in $PIPELINES; do
  for round in $(seq 1 "$ROUNDS"); do
    for path in $PATHS; do
      before=$(cpu_of "${PID[$path]}")
      while read -r t rps _; do RPS["$p,$t,$path,$round"]=$rps; done \
        < <(bench "${PORT[$path]}" "$CLIENTS" "$p" "$N" set,get)
      CPU[$path]=$(calc "${CPU[$path]} + $(cpu_of "${PID[$path]}") - $before")
      OPS[$path]=$((OPS[$path] + 2 * N))
    done
  done
done

echo "## throughput (redis-benchmark -n $N -c $CLIENTS, median of $ROUNDS rounds)"
echo
echo "| test | pipeline | direct ops/s | copy_bidirectional proxy ops/s | fault proxy ops/s | fault / direct | fault / copy |"
echo "|---|---|---|---|---|---|---|"
for p in $PIPELINES; do
  for t in SET GET; do
    declare -A M=()
    for path in $PATHS; do
      M[$path]=$(for r in $(seq 1 "$ROUNDS"); do echo "${RPS[$p,$t,$path,$r]}"; done | median)
    done
    to_direct=$(for r in $(seq 1 "$ROUNDS"); do calc "${RPS[$p,$t,fault,$r]} / ${RPS[$p,$t,direct,$r]}"; done | median)
    to_copy=$(for r in $(seq 1 "$ROUNDS"); do calc "${RPS[$p,$t,fault,$r]} / ${RPS[$p,$t,copy,$r]}"; done | median)
    printf '| %s | %s | %.0f | %.0f | %.0f | %.0f %% | %.0f %% |\n' "$t" "$p" "${M[direct]}" \
      "${M[copy]}" "${M[fault]}" "$(calc "$to_direct * 100")" "$(calc "$to_copy * 100")"
  done
done
echo
echo "CPU per request (user + system over all throughput runs): redis-server $(calc "round(${CPU[direct]} / ${OPS[direct]} * 1e6, 1)") µs, copy_bidirectional proxy $(calc "round(${CPU[copy]} / ${OPS[copy]} * 1e6, 1)") µs, fault proxy $(calc "round(${CPU[fault]} / ${OPS[fault]} * 1e6, 1)") µs"
echo

echo "## latency at moderate load (redis-benchmark -n $N_LAT -c $CLIENTS_LAT -P 1 --precision 3, GET, median of $ROUNDS rounds)"
echo
declare -A L=()
for round in $(seq 1 "$ROUNDS"); do
  for path in $PATHS; do
    read -r _ rps _ _ p50 _ p99 _ < <(bench "${PORT[$path]}" "$CLIENTS_LAT" 1 "$N_LAT" get)
    L["$path,p50,$round"]=$p50; L["$path,p99,$round"]=$p99; L["$path,rps,$round"]=$rps
  done
done
echo "| path | p50 µs | p99 µs | ops/s |"
echo "|---|---|---|---|"
for path in $PATHS; do
  p50=$(for r in $(seq 1 "$ROUNDS"); do echo "${L[$path,p50,$r]}"; done | median)
  p99=$(for r in $(seq 1 "$ROUNDS"); do echo "${L[$path,p99,$r]}"; done | median)
  rps=$(for r in $(seq 1 "$ROUNDS"); do echo "${L[$path,rps,$r]}"; done | median)
  printf '| %s | %.0f | %.0f | %.0f |\n' "$path" "$(calc "$p50 * 1000")" "$(calc "$p99 * 1000")" "$rps"
done
for path in copy fault; do
  added=$(for r in $(seq 1 "$ROUNDS"); do calc "(${L[$path,p99,$r]} - ${L[direct,p99,$r]}) * 1000"; done | median)
  printf '\n%s adds to p99 (median of rounds): %.0f µs' "$path" "$added"
done
printf '\n\n'

echo "## latency toxic accuracy (latency 100 ms downstream, GET, -c 1 -n $N_TOXIC)"
echo
read -r _ _ _ dmin dp50 _ dp99 dmax < <(bench "${PORT[direct]}" 1 1 "$N_TOXIC" get)
curl -sf -X POST "http://127.0.0.1:$API_PORT/proxies/redis/toxics" \
  -d '{"type":"latency","attributes":{"latency":100}}' >/dev/null
read -r _ _ _ tmin tp50 _ tp99 tmax < <(bench "${PORT[fault]}" 1 1 "$N_TOXIC" get)
curl -sf -X DELETE "http://127.0.0.1:$API_PORT/proxies/redis/toxics/latency_downstream" >/dev/null
echo "| | min ms | p50 ms | p99 ms | max ms |"
echo "|---|---|---|---|---|"
echo "| direct | $dmin | $dp50 | $dp99 | $dmax |"
echo "| through latency 100 ms | $tmin | $tp50 | $tp99 | $tmax |"
echo
calc "'added by the toxic (through minus direct p50): min %.3f ms, p50 %.3f ms, p99 %.3f ms, max %.3f ms' % ($tmin - $dp50, $tp50 - $dp50, $tp99 - $dp50, $tmax - $dp50)"
echo
echo "load average: $LOAD_START at start, $(cut -d' ' -f1-3 /proc/loadavg) at end ($(nproc) CPUs)"
