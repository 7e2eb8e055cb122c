#!/usr/bin/env bash
# Benchmarks `bulwark node` against redis-server at the same fsync policy, with
# redis-benchmark, in one run on this machine, and prints a Markdown table.
#
#   scripts/bench-node.sh                  # policies "everysec always", pipelines "1 16"
#   POLICIES=everysec PIPELINES=16 N=500000 scripts/bench-node.sh
#
# redis-server runs with --appendonly yes --appendfsync <policy> --save "" (AOF only, like
# the node's journal); both servers listen on free ports on 127.0.0.1 (never 6379) and
# keep their data in a temporary directory removed on exit. The two servers are measured
# one after the other, never at the same time, so they do not compete for the CPUs.
set -euo pipefail

POLICIES=${POLICIES:-"everysec always"}
PIPELINES=${PIPELINES:-"1 16"}
N=${N:-200000}
CLIENTS=${CLIENTS:-50}
TESTS=${TESTS:-set,get}

cd "$(dirname "$0")/.."
for tool in redis-server redis-benchmark redis-cli python3; do
  command -v "$tool" >/dev/null || { echo "bench-node: $tool is required" >&2; exit 1; }
done

echo "building release binaries…" >&2
cargo build --release -q -p bulwark
NODE_CMD=(target/release/bulwark node)

BENCH_NAME=bench-node
# shellcheck source=lib/bench-common.sh
source scripts/lib/bench-common.sh

stop() { # pid
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

# Prints "TEST rps" lines for one redis-benchmark run.
bench() { # port pipeline
  redis-benchmark -h 127.0.0.1 -p "$1" -t "$TESTS" -n "$N" -c "$CLIENTS" -P "$2" -q --csv \
    | awk -F'"' 'NR > 1 && $2 != "" { print $2, $4 }'
}

declare -A RESULT
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo "?")
for policy in $POLICIES; do
  # redis-server
  port=$(free_port)
  mkdir -p "$TMP/redis-$policy"
  redis-server --port "$port" --bind 127.0.0.1 --appendonly yes --appendfsync "$policy" \
    --save "" --dir "$TMP/redis-$policy" --daemonize no --logfile "$TMP/redis-$policy.log" &
  pid=$!; PIDS+=("$pid")
  wait_ready "$port"
  for p in $PIPELINES; do
    while read -r test rps; do RESULT["redis,$policy,$p,$test"]=$rps; done < <(bench "$port" "$p")
  done
  stop "$pid"

  # bulwark node
  port=$(free_port)
  LOG_LEVEL=WARN "${NODE_CMD[@]}" --name bench --port "$port" --dir "$TMP/node-$policy" \
    --appendfsync "$policy" >"$TMP/node-$policy.log" 2>&1 &
  pid=$!; PIDS+=("$pid")
  wait_ready "$port"
  for p in $PIPELINES; do
    while read -r test rps; do RESULT["node,$policy,$p,$test"]=$rps; done < <(bench "$port" "$p")
  done
  stop "$pid"
done

echo
echo "redis-benchmark -t $TESTS -n $N -c $CLIENTS -P <pipeline> -q, $(date -u +%Y-%m-%d), $(nproc) cores, $(redis-server --version | awk '{print $3}')"
# Other work on the machine moves the figures a lot; the load average says how much there was.
echo "load average at start: $LOAD_START, at end: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo "?")"
echo
echo "| appendfsync | pipeline | test | redis-server ops/s | bulwark node ops/s | node / redis |"
echo "|---|---|---|---|---|---|"
for policy in $POLICIES; do
  for p in $PIPELINES; do
    for test in $(echo "$TESTS" | tr 'a-z,' 'A-Z '); do
      r=${RESULT["redis,$policy,$p,$test"]:-0}
      n=${RESULT["node,$policy,$p,$test"]:-0}
      ratio=$(awk -v r="$r" -v n="$n" 'BEGIN { if (r > 0) printf "%.0f%%", 100 * n / r; else print "n/a" }')
      printf '| %s | %s | %s | %.0f | %.0f | %s |\n' "$policy" "$p" "$test" "$r" "$n" "$ratio"
    done
  done
done
