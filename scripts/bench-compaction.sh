#!/usr/bin/env bash
# Log compaction under load (VISION: keeps up with 50 MB/s of updates
# without slowing produce by more than 10%). On a fresh server whose cleaner
# wakes every second (--log-cleaner-backoff-ms 1000):
#   1. produce at full speed, 100,000 keys, 1,000 B values, into a
#      cleanup.policy=delete topic, then into a compacted one (64 MiB
#      segments): the ratio is what the cleaner costs producers;
#   2. 50 MB/s of updates into a compacted topic for SECONDS: the topic's
#      size on disk, sampled every 5 s, stays bounded if the cleaner keeps
#      up (it would grow by 250 MB per sample if it did not).
# Usage: scripts/bench-compaction.sh [SECONDS] [RECORDS]   (default 60 4000000)
# FLUXO_BIN picks the binary (default target/release/fluxo).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${FLUXO_BIN:-target/release/fluxo}
SECONDS_AT_RATE=${1:-60}
RECORDS=${2:-4000000}
DIR=$(mktemp -d "${TMPDIR:-/tmp}/fluxo-bench-compaction.XXXXXX")
PID=
set +m
trap 'kill -9 $PID 2>/dev/null || true; rm -rf "$DIR"' EXIT

source scripts/bench-server.sh
start_server 127.0.0.1:0 --log-cleaner-backoff-ms 1000
echo "machine: $(nproc) cores"

run() {
  "$BIN" bench produce --bootstrap "$ADDR" --topic bench-compaction --partitions 4 \
    --records "$1" --record-size 1000 --keys 100000 --acks all "${@:2}" 2>/dev/null | tail -1
}
rate_of() { sed -n 's/.*: \([0-9]*\) records\/s.*/\1/p'; }

PLAIN=$(run "$RECORDS" --topic-config cleanup.policy=delete)
echo "delete topic:    $PLAIN"
COMPACT=$(run "$RECORDS" --topic-config cleanup.policy=compact --topic-config segment.bytes=67108864)
echo "compacted topic: $COMPACT"
echo "compacted / delete: $(awk -v a="$(echo "$COMPACT" | rate_of)" -v b="$(echo "$PLAIN" | rate_of)" 'BEGIN {printf "%.2f", a / b}')"

RATE_RECORDS=$(( SECONDS_AT_RATE * 50000 ))
run "$RATE_RECORDS" --rate-mb 50 --topic-config cleanup.policy=compact \
  --topic-config segment.bytes=67108864 >"$DIR/rate" &
RUN=$!
SIZES=""
while kill -0 "$RUN" 2>/dev/null; do
  sleep 5
  SIZES="$SIZES $( (du -sm "$DIR/data/log/bench-compaction" 2>/dev/null || echo "0 -") | cut -f1)"
done
echo "50 MB/s of updates for ${SECONDS_AT_RATE} s: $(cat "$DIR/rate")"
echo "topic size on disk every 5 s (MiB):$SIZES; $(( RATE_RECORDS / 1000 )) MB written, 100 MB live"
