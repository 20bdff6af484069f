"""Benchmarks fluxo with a real client, confluent-kafka (librdkafka).

Usage: confluent_bench.py BOOTSTRAP {produce,e2e,txn} [options]
Prints one human line and one `BENCH {json}` line per measurement.
"""
import argparse
import json
import time
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


def report(line, data):
    print(line, flush=True)
    print("BENCH " + json.dumps(data), flush=True)


def fresh_topic(boot, partitions):
    name = f"cbench-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": boot})
    for f in admin.create_topics([NewTopic(name, partitions, 1)]).values():
        f.result()
    return name


def produce(boot, records, size, acks, partitions):
    topic = fresh_topic(boot, partitions)
    p = Producer({
        "bootstrap.servers": boot,
        "acks": acks,
        "linger.ms": 5,
        "batch.size": 1_000_000,
        "queue.buffering.max.messages": 1_000_000,
        "queue.buffering.max.kbytes": 2_000_000,
    })
    value = b"x" * size
    failed = []

    def on_delivery(err, _msg):
        if err is not None:
            failed.append(err)

    start = time.perf_counter()
    for i in range(records):
        while True:
            try:
                p.produce(topic, value, partition=i % partitions, on_delivery=on_delivery)
                break
            except BufferError:
                p.poll(0.001)
    p.flush(120)
    secs = time.perf_counter() - start
    assert not failed, failed[:3]
    rate = records / secs
    report(f"confluent-kafka produce: {records} x {size} B, acks={acks}, {partitions} partition(s): {rate:,.0f} records/s, {rate * size / 1e6:.1f} MB/s",
           {"bench": "confluent_produce", "records": records, "record_size": size, "acks": acks, "partitions": partitions,
            "records_per_sec": rate, "mb_per_sec": rate * size / 1e6})
    return topic


def consume(boot, topic, partitions, expected, isolation="read_committed"):
    c = Consumer({"bootstrap.servers": boot, "group.id": "bench", "enable.auto.commit": False,
                  "fetch.max.bytes": 50_000_000, "max.partition.fetch.bytes": 10_000_000,
                  "isolation.level": isolation})
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    got = 0
    start = time.perf_counter()
    while got < expected:
        msgs = c.consume(10000, 1.0)
        got += sum(1 for m in msgs if m.error() is None)
    secs = time.perf_counter() - start
    c.close()
    rate = got / secs
    report(f"confluent-kafka consume ({isolation}): {got} records: {rate:,.0f} records/s",
           {"bench": "confluent_consume", "isolation": isolation, "records": got, "records_per_sec": rate})
    return rate


def txn_produce(boot, records, size, partitions, per_txn):
    """Produces `records` with an idempotent producer (per_txn=0) or in
    transactions of `per_txn` records, acks=all either way."""
    topic = fresh_topic(boot, partitions)
    conf = {
        "bootstrap.servers": boot,
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": 5,
        "batch.size": 1_000_000,
        "queue.buffering.max.messages": 1_000_000,
        "queue.buffering.max.kbytes": 2_000_000,
    }
    if per_txn:
        conf["transactional.id"] = f"bench-{uuid.uuid4().hex[:8]}"
    p = Producer(conf)
    if per_txn:
        p.init_transactions(30)
    value = b"x" * size
    start = time.perf_counter()
    sent = 0
    while sent < records:
        n = min(per_txn or records, records - sent)
        if per_txn:
            p.begin_transaction()
        for i in range(sent, sent + n):
            while True:
                try:
                    p.produce(topic, value, partition=i % partitions)
                    break
                except BufferError:
                    p.poll(0.001)
        if per_txn:
            p.commit_transaction(120)
        sent += n
    p.flush(120)
    secs = time.perf_counter() - start
    rate = records / secs
    kind = f"transactions of {per_txn}" if per_txn else "idempotent"
    report(f"confluent-kafka produce {kind}: {records} x {size} B, {partitions} partition(s): {rate:,.0f} records/s",
           {"bench": "confluent_txn_produce", "per_txn": per_txn, "records": records, "record_size": size,
            "partitions": partitions, "records_per_sec": rate})
    return topic, rate


def txn(boot, records, size, partitions):
    """Transactional produce against idempotent produce, and read_committed
    consume against read_uncommitted, in one run."""
    # Idempotent before and after, so warm-up and drift show and the ratio
    # is against their mean.
    _, before = txn_produce(boot, records, size, partitions, 0)
    rates = {}
    for per_txn in (10_000, 100):
        n = records if per_txn >= 10_000 else min(records, 200_000)
        _, rates[per_txn] = txn_produce(boot, n, size, partitions, per_txn)
    _, after = txn_produce(boot, records, size, partitions, 0)
    base = (before + after) / 2
    for per_txn, rate in rates.items():
        print(f"  transactions of {per_txn}: {rate / base:.2f}x idempotent", flush=True)
    t2, _ = txn_produce(boot, records, size, partitions, 10_000)
    unc = consume(boot, t2, partitions, records, "read_uncommitted")
    com = consume(boot, t2, partitions, records, "read_committed")
    print(f"  read_committed / read_uncommitted: {com / unc:.2f}x", flush=True)


def e2e(boot, rate, seconds):
    topic = fresh_topic(boot, 1)
    p = Producer({"bootstrap.servers": boot, "acks": "1", "linger.ms": 0})
    c = Consumer({"bootstrap.servers": boot, "group.id": "bench", "enable.auto.commit": False,
                  "fetch.wait.max.ms": 100, "fetch.min.bytes": 1})
    c.assign([TopicPartition(topic, 0, 0)])
    total = rate * seconds
    lat = []
    interval = 1.0 / rate
    start = time.perf_counter()
    sent = 0
    while sent < total or len(lat) < total:
        now = time.perf_counter()
        while sent < total and start + sent * interval <= now:
            p.produce(topic, str(time.perf_counter()).encode())
            sent += 1
        p.poll(0)
        for m in c.consume(1000, 0.0005):
            if m.error() is None:
                lat.append(time.perf_counter() - float(m.value()))
        if time.perf_counter() - start > seconds + 30:
            break
    lat.sort()
    q = lambda f: lat[min(len(lat) - 1, int(f * len(lat)))] * 1000
    report(f"confluent-kafka e2e at {rate}/s: p50 {q(0.5):.3f} ms, p99 {q(0.99):.3f} ms, p99.9 {q(0.999):.3f} ms ({len(lat)} records)",
           {"bench": "confluent_e2e", "rate": rate, "p50_ms": q(0.5), "p99_ms": q(0.99), "p999_ms": q(0.999)})


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("bootstrap")
    ap.add_argument("what", choices=["produce", "e2e", "txn"])
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--acks", default="all")
    ap.add_argument("--partitions", type=int, default=1)
    ap.add_argument("--consume", action="store_true", help="also consume the produced topic")
    ap.add_argument("--rate", type=int, default=5000)
    ap.add_argument("--seconds", type=int, default=10)
    a = ap.parse_args()
    if a.what == "produce":
        t = produce(a.bootstrap, a.records, a.size, a.acks, a.partitions)
        if a.consume:
            consume(a.bootstrap, t, a.partitions, a.records)
    elif a.what == "txn":
        txn(a.bootstrap, a.records, a.size, a.partitions)
    else:
        e2e(a.bootstrap, a.rate, a.seconds)
