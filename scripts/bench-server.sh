# Sourced by the bench scripts: starts and watches a fluxo server in $DIR.
# Needs BIN and DIR; sets PID and ADDR (its Kafka address).

# start_server [KAFKA_ADDR] [EXTRA SERVE ARGS...]: a server on DIR/data,
# returning once it listens (KAFKA_ADDR defaults to a free port).
start_server() {
  local kafka=${1:-127.0.0.1:0}
  : >"$DIR/out"
  "$BIN" serve --data-dir "$DIR/data" --kafka-addr "$kafka" \
    --http-addr 127.0.0.1:0 --pg-addr 127.0.0.1:0 --mqtt-addr 127.0.0.1:0 --registry-addr 127.0.0.1:0 "${@:2}" >"$DIR/out" 2>"$DIR/err" &
  PID=$!
  for _ in $(seq 1 3000); do
    ADDR=$(sed -n 's/^fluxo: kafka listening on //p' "$DIR/out")
    [ -n "$ADDR" ] && return 0
    sleep 0.01
  done
  echo "the server did not start"; tail "$DIR/err"; exit 1
}

rss_mb() { awk '/VmRSS/ {printf "%.0f", $2/1024}' "/proc/$PID/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$PID/stat"; }
