#!/usr/bin/env bash
# Consumer-group scale benchmarks against a fresh release build:
#  - 50 confluent-kafka consumers over 500 partitions: seconds from the last
#    join to a stable assignment, classic and KIP-848 protocols;
#  - produce throughput alone, then while 1,000 groups commit offsets.
# Usage: scripts/bench-groups.sh [RUNS]   (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
. scripts/bench-server.sh

for run in $(seq "$runs"); do
  echo "== run $run"
  "$py" bench/group_scale.py --bootstrap "$boot" --consumers 50 --partitions 500 --protocol classic 2>/dev/null
  "$py" bench/group_scale.py --bootstrap "$boot" --consumers 50 --partitions 500 --protocol consumer 2>/dev/null
  echo -n "alone:        "
  "$bin" bench produce -b "$boot" --records 4000000 --record-size 100 --acks all --partitions 8 --topic bench-groups-alone 2>/dev/null
  "$bin" bench commits -b "$boot" --groups 1000 --seconds 25 --interval-ms 1000 2>/dev/null >"$data/commits.out" &
  commits=$!
  sleep 3
  echo -n "with commits: "
  "$bin" bench produce -b "$boot" --records 4000000 --record-size 100 --acks all --partitions 8 --topic bench-groups-busy 2>/dev/null
  wait $commits
  cat "$data/commits.out"
  for t in $("$bin" topic list -b "$boot" | awk 'NR>1 {print $1}' | grep -v '^__'); do "$bin" topic delete "$t" -b "$boot" >/dev/null; done
done
