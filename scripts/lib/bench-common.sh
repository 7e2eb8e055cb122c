# Shared by scripts/bench-*.sh (sourced, not run): a temporary directory and the child
# processes in PIDS, both cleaned up on exit; the tools check and the release build
# (bench_setup); a free port; waiting for a RESP server. The sourcing script sets
# BENCH_NAME (used in messages and the directory name).

TMP=$(mktemp -d -t "$BENCH_NAME.XXXXXX")
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
  echo "$BENCH_NAME: nothing answers PING on port $1" >&2
  exit 1
}

bench_setup() { # tool… — each must be on PATH; then builds and sets BULWARK
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "$BENCH_NAME: $tool is required" >&2; exit 1; }
  done
  echo "building the release binary…" >&2
  cargo build --release -q -p bulwark
  BULWARK=target/release/bulwark
}
