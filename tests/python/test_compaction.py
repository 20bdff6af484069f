"""Log compaction as Kafka clients see it: a `cleanup.policy=compact` topic
written with confluent-kafka (keyed updates, tombstones, an aborted
transaction) is compacted by the log cleaner in the background, and a
consumer reading it from the beginning gets the newest value of every key
(tombstones kept for delete.retention.ms), at their original offsets, also
after a kill -9."""

from __future__ import annotations

import http.client
import random
import subprocess

import pytest
from confluent_kafka import Producer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

import fluxo_helpers as H
from test_sql import get


def read_all(bootstrap: str, topic: str, isolation: str = "read_committed") -> list[tuple[int, bytes, bytes | None]]:
    c = H.consumer(bootstrap, **{"isolation.level": isolation, "enable.partition.eof": True})
    c.assign([TopicPartition(topic, 0, 0)])
    out = []
    while True:
        m = c.poll(10)
        assert m is not None, "the consumer got nothing for 10 s"
        if m.error():
            assert m.error().code() == -191, m.error()  # _PARTITION_EOF
            break
        out.append((m.offset(), m.key(), m.value()))
    c.close()
    return out


def newest(records) -> dict[bytes, bytes | None]:
    return {key: value for _, key, value in records}


def cleaner(broker, topic: str) -> dict:
    return get(broker, f"/api/v1/topics/{topic}")["body"]["partitions"][0]["cleaner"]


@pytest.mark.timeout(180)
def test_a_compacted_topic_keeps_the_newest_value_of_each_key(broker_factory, new_topic):
    broker = broker_factory(extra_args=["--log-cleaner-backoff-ms", "200"])
    topic = new_topic("compacted")
    H.create_topic(broker.bootstrap, topic, partitions=1, config={
        "cleanup.policy": "compact", "segment.bytes": "4096", "min.cleanable.dirty.ratio": "0.01"})
    rng = random.Random(5)
    written: list[tuple[int, bytes, bytes | None]] = []

    def delivered(err, msg):
        assert err is None, err
        written.append((msg.offset(), msg.key(), msg.value()))

    p = Producer({**H.BASE_CONF, "bootstrap.servers": broker.bootstrap, "acks": "all",
                  "enable.idempotence": True, "linger.ms": 5})

    def produce(n: int, prefix: str) -> None:
        for i in range(n):
            value = None if rng.random() < 0.05 else f"{prefix}{i}".encode()
            p.produce(topic, value, key=f"user-{rng.randrange(60)}".encode(), on_delivery=delivered)
            if i % 300 == 299:
                p.flush(30)
        p.flush(30)

    produce(3_000, "v")
    # An aborted transaction: no read_committed consumer sees it, and the
    # cleaner drops it for everyone.
    t = Producer({**H.BASE_CONF, "bootstrap.servers": broker.bootstrap, "transactional.id": f"{topic}-tx"})
    t.init_transactions(30)
    t.begin_transaction()
    for k in range(60):
        t.produce(topic, b"aborted", key=f"user-{k}".encode())
    t.flush(30)
    t.abort_transaction(30)
    first_after_abort = max(o for o, _, _ in written) + 1
    produce(1_500, "tail")
    written.sort()
    want = newest(written)

    H.wait_for(lambda: cleaner(broker, topic)["cleaned_up_to"] > first_after_abort + 100,
               timeout=60, desc="the log cleaner compacts past the aborted transaction")
    stats = cleaner(broker, topic)
    assert stats["records_removed"] > 2_000, stats
    after = read_all(broker.bootstrap, topic)
    assert len(after) < len(written) // 2, (len(after), len(written))
    assert newest(after) == want
    by_offset = {o: (k, v) for o, k, v in written}
    assert all(by_offset.get(o) == (k, v) for o, k, v in after), "records keep their offsets and values"
    assert any(v is None for _, _, v in after), "tombstones stay for delete.retention.ms"
    raw = read_all(broker.bootstrap, topic, isolation="read_uncommitted")
    assert all(v != b"aborted" for o, _, v in raw if o < stats["cleaned_up_to"]), "aborted data is dropped"

    # What the cleaner did is in /metrics and `fluxo topic describe`.
    host, port = broker.http_addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("GET", "/metrics")
    families = {f.name: f for f in text_string_to_metric_families(conn.getresponse().read().decode())}
    removed = [s.value for s in families["fluxo_log_cleaner_records_removed"].samples
               if s.labels["topic"] == topic and s.name.endswith("_total")]
    assert removed and removed[0] >= stats["records_removed"], removed
    described = subprocess.run([H.fluxo_bin(), "topic", "describe", topic, "--bootstrap", broker.bootstrap,
                                "--http-addr", broker.http_addr], capture_output=True, text=True, timeout=30)
    assert described.returncode == 0, described.stderr
    lines = described.stdout.splitlines()
    row = lines[lines.index("log cleaner:") + 2].split()
    assert row[0] == "0" and int(row[1]) >= 1 and int(row[5]) >= stats["records_removed"], described.stdout

    # After a kill -9 the compacted log holds the same newest values (the
    # cleaner may have gone on meanwhile: only fewer old records, never
    # other ones).
    broker.kill9()
    broker.start(port=broker.port)
    restarted = read_all(broker.bootstrap, topic)
    assert newest(restarted) == want
    assert all(by_offset.get(o) == (k, v) for o, k, v in restarted)
    assert len(restarted) <= len(after)
