#!/usr/bin/env bash
# Restart after a crash with a big log (VISION: 10 GB serving again within
# 5 s). Fills PARTITIONS partitions with GB gigabytes of 1 KiB records
# (`fluxo bench produce`, acks=all), then measures, from the new process's
# start to a produce acknowledged and the last record of a partition
# fetched:
#   1. kill -9 right after the last write (the tails since the last recovery
#      checkpoint are scanned), and again with the page cache dropped;
#   2. kill -9 after a recovery checkpoint has passed (nothing to scan);
#   3. a clean shutdown (SIGTERM) and start.
# Usage: scripts/bench-restart.sh [GB] [PARTITIONS]   (default 10 16)
# FLUXO_BIN picks the binary (default target/release/fluxo). Needs GB+1 GB
# free under TMPDIR.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${FLUXO_BIN:-target/release/fluxo}
GB=${1:-10}
PARTS=${2:-16}
DIR=$(mktemp -d "${TMPDIR:-/tmp}/fluxo-bench-restart.XXXXXX")
PID=
set +m
trap 'kill -9 $PID 2>/dev/null || true; rm -rf "$DIR"' EXIT

source scripts/bench-server.sh
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

# Time from start to serving: a produce acknowledged (acks=all) and a fetch
# of the newest record of partition 0.
restart_and_time() {
  local how=$1
  local t0; t0=$(now_ms)
  start_server "$ADDR"
  local listening; listening=$(now_ms)
  until echo '{"probe":1}' | "$BIN" produce bench-restart --bootstrap "$ADDR" >/dev/null 2>&1; do sleep 0.01; done
  local produced; produced=$(now_ms)
  "$BIN" consume bench-restart --bootstrap "$ADDR" --partition 0 --offset "$LAST0" --max 1 >/dev/null
  local fetched; fetched=$(now_ms)
  local scanned; scanned=$(sed -n 's/.*scanning \([0-9]*\) bytes past.*/\1/p' "$DIR/err" | tail -1)
  echo "$how: listening after $((listening - t0)) ms, produce acknowledged after $((produced - t0)) ms, fetch answered after $((fetched - t0)) ms; scanned $((${scanned:-0} / 1048576)) MiB of tails; RSS $(rss_mb) MB"
}

start_server
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f", $2/1048576}' /proc/meminfo) GiB"
RECORDS=$(( GB * 1024 * 1024 ))
"$BIN" bench produce --bootstrap "$ADDR" --topic bench-restart --partitions "$PARTS" \
  --records "$RECORDS" --record-size 1024 --acks all 2>/dev/null | tail -1
LAST0=$("$BIN" topic describe bench-restart --bootstrap "$ADDR" | awk '$1 == "0" && NF == 4 {print $3 - 1}')
echo "log: $(du -sm "$DIR/data" | cut -f1) MiB on disk over $PARTS partitions"

kill -9 "$PID"; wait "$PID" 2>/dev/null || true
restart_and_time "kill -9 right after writing"

# As after a power loss: nothing of the log in the page cache (needs root).
if [ -w /proc/sys/vm/drop_caches ]; then
  "$BIN" bench produce --bootstrap "$ADDR" --topic bench-restart-more --partitions "$PARTS" \
    --records $(( RECORDS / 10 )) --record-size 1024 --acks all >/dev/null 2>&1
  kill -9 "$PID"; wait "$PID" 2>/dev/null || true
  sync; echo 3 >/proc/sys/vm/drop_caches
  restart_and_time "kill -9 right after writing, page cache dropped"
fi

sleep 12   # past the 10 s recovery checkpoint
kill -9 "$PID"; wait "$PID" 2>/dev/null || true
restart_and_time "kill -9 after a recovery checkpoint"

kill -TERM "$PID"; wait "$PID" 2>/dev/null || true
restart_and_time "clean shutdown"
