"""Consumer-group scale with a real client (confluent-kafka / librdkafka).

N consumers join one group subscribed to a topic of P partitions; the
script measures the time from the last consumer's subscribe() until the
assignment is stable: every partition owned by exactly one consumer and
each consumer holding P/N (or P/N + 1) partitions.

    python bench/group_scale.py --bootstrap 127.0.0.1:9092 \
        --consumers 50 --partitions 500 --protocol classic|consumer

Prints one line and a machine-readable `BENCH {...}` line on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid

from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient, NewTopic


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", default="127.0.0.1:9092")
    ap.add_argument("--consumers", type=int, default=50)
    ap.add_argument("--partitions", type=int, default=500)
    ap.add_argument("--protocol", choices=["classic", "consumer"], default="classic")
    ap.add_argument("--timeout", type=float, default=120.0)
    args = ap.parse_args()

    topic = f"scale-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": args.bootstrap})
    for f in admin.create_topics([NewTopic(topic, args.partitions, 1)]).values():
        f.result(60)
    group = f"scale-{uuid.uuid4().hex[:8]}"
    conf = {
        "bootstrap.servers": args.bootstrap,
        "group.id": group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
    }
    if args.protocol == "consumer":
        conf["group.protocol"] = "consumer"
    else:
        conf["partition.assignment.strategy"] = "cooperative-sticky"
        conf["session.timeout.ms"] = 30000
        conf["heartbeat.interval.ms"] = 1000

    consumers = []
    for _ in range(args.consumers):
        c = Consumer(conf)
        c.subscribe([topic])
        consumers.append(c)
        c.poll(0)
    last_join = time.monotonic()
    low = args.partitions // args.consumers
    high = low + (1 if args.partitions % args.consumers else 0)
    stable_at = None
    deadline = last_join + args.timeout
    while time.monotonic() < deadline:
        for c in consumers:
            c.poll(0.01)
        owned = [c.assignment() for c in consumers]
        sizes = [len(a) for a in owned]
        everything = {(tp.topic, tp.partition) for a in owned for tp in a}
        if (sum(sizes) == args.partitions and len(everything) == args.partitions
                and all(low <= s <= high for s in sizes)):
            stable_at = time.monotonic()
            break
    for c in consumers:
        c.close()
    if stable_at is None:
        print(f"group-scale: no stable assignment within {args.timeout} s", file=sys.stderr)
        return 1
    secs = stable_at - last_join
    print(f"group-scale ({args.protocol}): {args.consumers} consumers, {args.partitions} partitions: "
          f"stable {secs:.2f} s after the last join")
    print("BENCH " + json.dumps({"bench": "group-scale", "protocol": args.protocol,
                                 "consumers": args.consumers, "partitions": args.partitions,
                                 "seconds_to_stable": secs}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
