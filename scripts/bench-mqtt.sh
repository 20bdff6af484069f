#!/usr/bin/env bash
# QoS 1 publishes per second with many devices, fluxo's MQTT front against
# mosquitto on the same machine, in the same run: the median of RUNS runs
# of crates/fluxo-mqtt/examples/mqtt_bench.rs against each.
#
#   scripts/bench-mqtt.sh [RUNS] [DEVICES] [MESSAGES_PER_DEVICE] [SIZE]
#
# fluxo acknowledges a QoS 1 PUBLISH once the record is fsynced; mosquitto
# (Debian's, default config: no persistence) once it has the message in
# memory. The ratio is what durability costs here, not a like-for-like race.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
DEVICES=${2:-100}
MESSAGES=${3:-1000}
SIZE=${4:-100}
BIN=${BIN:-target/release/fluxo}
BENCH=${BENCH:-target/release/examples/mqtt_bench}
DIR=$(mktemp -d)
PID=
MOSQ=
trap 'kill $PID $MOSQ 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$DIR"' EXIT

# SKIP_BUILD=1 with BIN and BENCH set runs other builds (a quick check).
if [ -z "${SKIP_BUILD:-}" ]; then
  cargo build --release -p fluxo -q
  cargo build --release -p fluxo-mqtt --example mqtt_bench -q
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
rate() { sed -n 's/.*: \([0-9]*\) msg\/s.*/\1/p'; }

. scripts/bench-server.sh
fluxo=()
mosq=()
for run in $(seq 1 "$RUNS"); do
  rm -rf "$DIR/data"
  start_server
  mqtt=""
  for _ in $(seq 1 1000); do
    mqtt=$(sed -n 's/^fluxo: mqtt listening on //p' "$DIR/out")
    [ -n "$mqtt" ] && break
    sleep 0.01
  done
  fluxo+=("$("$BENCH" "$mqtt" --devices "$DEVICES" --messages "$MESSAGES" --size "$SIZE" | rate)")
  kill "$PID"; wait "$PID" || true

  port=$(free_port)
  printf 'listener %s 127.0.0.1\nallow_anonymous true\n' "$port" >"$DIR/mosquitto.conf"
  /usr/sbin/mosquitto -c "$DIR/mosquitto.conf" >"$DIR/mosq.log" 2>&1 &
  MOSQ=$!
  sleep 0.5
  mosq+=("$("$BENCH" "127.0.0.1:$port" --devices "$DEVICES" --messages "$MESSAGES" --size "$SIZE" | rate)")
  kill "$MOSQ"; wait "$MOSQ" || true
  echo "run $run: fluxo ${fluxo[-1]} msg/s, mosquitto ${mosq[-1]} msg/s"
done
f=$(printf '%s\n' "${fluxo[@]}" | median)
m=$(printf '%s\n' "${mosq[@]}" | median)
echo "median of $RUNS: fluxo $f msg/s, mosquitto $m msg/s, ratio $(awk -v f="$f" -v m="$m" 'BEGIN {printf "%.2f", f/m}')"
