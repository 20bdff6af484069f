#!/usr/bin/env bash
# Runs the broker benchmarks against a fresh release build and prints every
# figure; BENCHMARKS.md records the medians of several runs of this script.
# Usage: scripts/bench.sh [RUNS]   (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
. scripts/bench-server.sh

for run in $(seq "$runs"); do
  echo "== run $run"
  "$bin" bench baseline --dir "$data" --megabytes 256 2>/dev/null
  for size in 100 1024; do
    for acks in 1 all; do
      for parts in 1 8; do
        n=$(( size == 100 ? 2000000 : 500000 ))
        "$bin" bench produce -b "$boot" --records $n --record-size $size --acks $acks --partitions $parts --topic bench-$size-$acks-$parts 2>/dev/null
      done
    done
  done
  "$bin" bench consume -b "$boot" --topic bench-100-1-8 2>/dev/null
  "$bin" bench e2e -b "$boot" --rate 5000 --seconds 10 2>/dev/null
  "$bin" bench first-round-trip -b "$boot" 2>/dev/null
  "$py" bench/confluent_bench.py "$boot" produce --records 1000000 --size 100 --acks all --partitions 1 --consume
  "$py" bench/confluent_bench.py "$boot" produce --records 1000000 --size 100 --acks all --partitions 8
  "$py" bench/confluent_bench.py "$boot" produce --records 300000 --size 1024 --acks all --partitions 8
  "$py" bench/confluent_bench.py "$boot" e2e --rate 5000 --seconds 10
  # Keep the disk from filling between runs.
  for t in $("$bin" topic list -b "$boot" | awk 'NR>1 {print $1}'); do "$bin" topic delete "$t" -b "$boot" >/dev/null; done
done
