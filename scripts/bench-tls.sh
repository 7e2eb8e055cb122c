#!/usr/bin/env bash
# What TLS costs the CAP service, measured in one run on this machine: two AP gateways,
# each over its own two `bulwark node` replicas. The anchor runs all plaintext; the other
# runs TLS end to end — HTTPS to the gateway and mutual TLS from the gateway to each
# replica — with certificates from a throwaway CA (P-256, as `bulwark up --tls` issues).
# Neither has credentials or rate limits, so only TLS differs. `bulwark bench kv` drives
# both with keep-alive connections (the handshake is paid once per connection), `--api
# v1`, write then read, ROUNDS rounds alternating which goes first; medians are reported
# with the TLS/plaintext throughput ratio and the p50 difference.
#
#   scripts/bench-tls.sh
#   DURATION=20 ROUNDS=5 CONCURRENCY=32 scripts/bench-tls.sh
#
# Every server listens on a free loopback port and is stopped on exit.
set -euo pipefail

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CONCURRENCY=${CONCURRENCY:-16}

cd "$(dirname "$0")/.."
BENCH_NAME=bench-tls
# shellcheck source=lib/bench-common.sh
source scripts/lib/bench-common.sh
bench_setup redis-cli curl python3 openssl

# A CA and one certificate for every server and client (server and client use).
openssl ecparam -name prime256v1 -genkey -noout -out "$TMP/ca-key.pem" 2>/dev/null
openssl req -x509 -new -key "$TMP/ca-key.pem" -subj "/CN=bench CA" -days 2 \
  -out "$TMP/ca.pem" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n' \
  >"$TMP/ext.cnf"
openssl ecparam -name prime256v1 -genkey -noout -out "$TMP/leaf-key.pem" 2>/dev/null
openssl req -new -key "$TMP/leaf-key.pem" -subj "/CN=bench" -out "$TMP/leaf.csr" 2>/dev/null
openssl x509 -req -in "$TMP/leaf.csr" -CA "$TMP/ca.pem" -CAkey "$TMP/ca-key.pem" \
  -CAcreateserial -days 2 -extfile "$TMP/ext.cnf" -out "$TMP/leaf.pem" 2>/dev/null
TLS_FLAGS=(--tls-cert-file "$TMP/leaf.pem" --tls-key-file "$TMP/leaf-key.pem"
  --tls-ca-cert-file "$TMP/ca.pem")

replicas() { # which → REPLICAS list
  local which=$1 list="" port
  for i in 1 2; do
    port=$(free_port)
    mkdir -p "$TMP/$which-db_g$i"
    if [ "$which" = tls ]; then
      LOG_LEVEL=WARN "$BULWARK" node --name "db_g$i" --port "$port" --dir "$TMP/$which-db_g$i" \
        "${TLS_FLAGS[@]}" >"$TMP/$which-db_g$i.log" 2>&1 &
      PIDS+=("$!")
      for _ in $(seq 1 200); do
        [ "$(redis-cli --tls --cacert "$TMP/ca.pem" --cert "$TMP/leaf.pem" --key "$TMP/leaf-key.pem" \
          -h 127.0.0.1 -p "$port" PING 2>/dev/null)" = PONG ] && break
        sleep 0.05
      done
    else
      LOG_LEVEL=WARN "$BULWARK" node --name "db_g$i" --port "$port" --dir "$TMP/$which-db_g$i" \
        >"$TMP/$which-db_g$i.log" 2>&1 &
      PIDS+=("$!")
      wait_ready "$port"
    fi
    list="${list:+$list,}db_g$i=127.0.0.1:$port"
  done
  echo "$list"
}

start_gateway() { # name port scheme replicas extra-env…
  local name=$1 port=$2 scheme=$3 list=$4
  shift 4
  # A generous replica timeout: on two shared cores a replica call can take longer than
  # the default 0.2 s under this load, and breakers opening would measure that instead.
  env LOG_LEVEL=WARN MODE=ap PORT="$port" REPLICAS="$list" BACKEND=bulwark NETWORK_TIMEOUT_SEC=2 \
    GATEWAY_NAME="$name" SECRET_KEY=bench-secret-key-of-some-length RATE_LIMIT=off AUDIT_LOG=off \
    "$@" "$BULWARK" gateway >"$TMP/$name.log" 2>&1 &
  PIDS+=("$!")
  for _ in $(seq 1 200); do
    curl -sf --cacert "$TMP/ca.pem" "$scheme://127.0.0.1:$port/health/ready" >/dev/null && return 0
    sleep 0.05
  done
  echo "bench-tls: gateway $name is not ready" >&2
  exit 1
}
PLAIN_PORT=$(free_port)
TLS_PORT=$(free_port)
start_gateway plain "$PLAIN_PORT" http "$(replicas plain)"
start_gateway tls "$TLS_PORT" https "$(replicas tls)" \
  TLS_CERT_FILE="$TMP/leaf.pem" TLS_KEY_FILE="$TMP/leaf-key.pem" \
  REPLICA_TLS_CA_FILE="$TMP/ca.pem" REPLICA_TLS_CERT_FILE="$TMP/leaf.pem" \
  REPLICA_TLS_KEY_FILE="$TMP/leaf-key.pem"

for round in $(seq 1 "$ROUNDS"); do
  if [ $((round % 2)) = 1 ]; then order="plain tls"; else order="tls plain"; fi
  for which in $order; do
    url="http://127.0.0.1:$PLAIN_PORT"
    [ "$which" = tls ] && url="https://127.0.0.1:$TLS_PORT"
    echo "round $round/$ROUNDS: $which" >&2
    "$BULWARK" bench kv --target "$which=$url" --api v1 --op write --op read \
      --duration "$DURATION" --warmup 2 --concurrency "$CONCURRENCY" \
      --cacert "$TMP/ca.pem" --json --output "$TMP/$which.$round.json" >/dev/null
  done
done

python3 scripts/lib/bench-ratio.py bench-tls plain tls "$TMP" "$ROUNDS" "$DURATION" "$CONCURRENCY" \
  "$(git rev-parse --short HEAD)"
