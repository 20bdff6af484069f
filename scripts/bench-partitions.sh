#!/usr/bin/env bash
# Many partitions on one node (VISION: 100,000): a fresh server, then
# `fluxo bench partitions` (create, Metadata, one produce to each), the
# server's RSS and open file descriptors, and the time from a kill -9 to
# answering Metadata again. Usage:
#   scripts/bench-partitions.sh [TOPICS] [PARTITIONS_PER_TOPIC]   (default 100 1000)
# FLUXO_BIN picks the binary (default target/release/fluxo).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${FLUXO_BIN:-target/release/fluxo}
TOPICS=${1:-100}
PARTS=${2:-1000}
DIR=$(mktemp -d /tmp/fluxo-bench-partitions.XXXXXX)
trap 'kill -9 $PID 2>/dev/null || true; rm -rf "$DIR"' EXIT

source scripts/bench-server.sh

start_server
echo "machine: $(nproc) cores; idle RSS $(rss_mb) MB"
"$BIN" bench partitions --bootstrap "$ADDR" --topics "$TOPICS" --partitions "$PARTS" 2>/dev/null
echo "after: RSS $(rss_mb) MB, $(ls /proc/$PID/fd | wc -l) open file descriptors, $(du -sm "$DIR/data" | cut -f1) MB on disk"
C0=$(cpu_ticks); sleep 5; C1=$(cpu_ticks)
echo "right after: $(( (C1 - C0) * 100 / $(getconf CLK_TCK) / 5 ))% of a core over 5 s (the recovery checkpoint of every partition written to)"
sleep 10
C0=$(cpu_ticks); sleep 10; C1=$(cpu_ticks)
echo "idle: $(( (C1 - C0) * 100 / $(getconf CLK_TCK) / 10 ))% of a core over 10 s (background flush, retention and cleaner checks)"

kill -9 "$PID"; wait "$PID" 2>/dev/null || true
T0=$(date +%s%N)
start_server "$ADDR"
until "$BIN" topic list --bootstrap "$ADDR" >/dev/null 2>&1; do sleep 0.05; done
T1=$(date +%s%N)
echo "restart after kill -9: serving Metadata in $(( (T1 - T0) / 1000000 )) ms; RSS $(rss_mb) MB"
