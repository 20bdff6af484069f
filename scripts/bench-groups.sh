#!/usr/bin/env bash
# Consumer-group scale benchmarks against a fresh release build:
#  - 50 confluent-kafka consumers over 500 partitions: seconds from the last
#    join to a stable assignment, classic and KIP-848 protocols;
#  - produce throughput alone, then while 1,000 groups commit offsets.
# Usage: scripts/bench-groups.sh [RUNS]   (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
cargo build --release -p fluxo >/dev/null
./scripts/setup-tests.sh >/dev/null
bin=$PWD/target/release/fluxo
py=$PWD/.venv/bin/python
data=$(mktemp -d "$PWD/.bench-data.XXXX")
log=$(mktemp)
trap 'kill $(cat "$data.pid" 2>/dev/null) 2>/dev/null || true; rm -rf "$data" "$data.pid"' EXIT

FLUXO_LOG=warn "$bin" serve --data-dir "$data" --kafka-addr 127.0.0.1:0 >"$log" 2>&1 &
echo $! >"$data.pid"
for _ in $(seq 100); do grep -q "kafka listening" "$log" && break; sleep 0.1; done
boot=$(sed -n 's/^fluxo: kafka listening on //p' "$log")
echo "machine: $(nproc) cores, $(uname -r); server at $boot"

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
