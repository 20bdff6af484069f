"""Shared helpers for the fluxo client-compatibility tests (confluent-kafka)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Callable, Iterable

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType

# librdkafka: keep clients quiet-ish but let real errors show up in captured stderr.
BASE_CONF = {
    "broker.address.family": "v4",
    "log_level": 4,
}


def wait_for(pred: Callable[[], object], timeout: float = 30.0, interval: float = 0.1,
             desc: str = "condition"):
    """Poll `pred` until it returns a truthy value; return that value."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            v = pred()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - reported on timeout
            last_exc = e
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {desc}"
                                 + (f" (last error: {last_exc!r})" if last_exc else ""))
        time.sleep(interval)


# -- admin ------------------------------------------------------------------

def admin(bootstrap: str, **conf) -> AdminClient:
    return AdminClient({**BASE_CONF, "bootstrap.servers": bootstrap, **conf})


def topic_partition_count(bootstrap: str, topic: str, timeout: float = 10.0) -> int | None:
    """Partition count from Metadata, or None if the broker says the topic is unknown."""
    md = admin(bootstrap).list_topics(topic=topic, timeout=timeout)
    t = md.topics.get(topic)
    if t is None or t.error is not None:
        return None
    return len(t.partitions)


def all_topics(bootstrap: str, timeout: float = 10.0) -> set[str]:
    return set(admin(bootstrap).list_topics(timeout=timeout).topics)


def create_topic(bootstrap: str, name: str, partitions: int = 1,
                 config: dict[str, str] | None = None, timeout: float = 30.0) -> None:
    """CreateTopics via AdminClient, then wait until Metadata shows every partition with a leader."""
    a = admin(bootstrap)
    fs = a.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1,
                                   config=dict(config or {}))],
                         operation_timeout=timeout, request_timeout=timeout)
    fs[name].result(timeout=timeout)

    def ready():
        md = a.list_topics(topic=name, timeout=5)
        t = md.topics.get(name)
        if t is None or t.error is not None or len(t.partitions) != partitions:
            return False
        return all(p.leader >= 0 and p.error is None for p in t.partitions.values())

    wait_for(ready, timeout=timeout, desc=f"topic {name} with {partitions} partitions in metadata")


def describe_topic_configs(bootstrap: str, topic: str, timeout: float = 30.0) -> dict:
    """name -> ConfigEntry for a topic."""
    res = ConfigResource(ResourceType.TOPIC, topic)
    fs = admin(bootstrap).describe_configs([res], request_timeout=timeout)
    return fs[res].result(timeout=timeout)


# -- produce ----------------------------------------------------------------

@dataclass
class Delivery:
    err: KafkaError | None
    topic: str | None
    partition: int | None
    offset: int | None
    key: bytes | None
    value: bytes | None
    headers: list | None
    timestamp: tuple


def producer(bootstrap: str, **conf) -> Producer:
    return Producer({**BASE_CONF, "bootstrap.servers": bootstrap, "acks": "all", **conf})


def produce_all(p: Producer, topic: str, records: Iterable[dict], flush_timeout: float = 120.0) -> list[Delivery]:
    """Produce records (dicts of Producer.produce kwargs: value, key, headers,
    timestamp, partition) and return the delivery reports in completion order."""
    reports: list[Delivery] = []

    def cb(err, msg):
        reports.append(Delivery(err, msg.topic(), msg.partition(), msg.offset(), msg.key(),
                                msg.value(), msg.headers(), msg.timestamp()))

    n = 0
    for r in records:
        while True:
            try:
                p.produce(topic, on_delivery=cb, **r)
                break
            except BufferError:
                p.poll(0.05)
        n += 1
        if n % 1000 == 0:
            p.poll(0)
    left = p.flush(flush_timeout)
    assert left == 0, f"{left} messages still undelivered after flush({flush_timeout})"
    assert len(reports) == n, f"{len(reports)} delivery reports for {n} messages"
    return reports


def assert_all_delivered(reports: list[Delivery]) -> None:
    errs = [r for r in reports if r.err is not None]
    assert not errs, f"{len(errs)} of {len(reports)} deliveries failed, first: {errs[0].err!r}"


# -- consume ----------------------------------------------------------------

@dataclass(frozen=True)
class Rec:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple | None
    ts_type: int
    ts: int


def consumer(bootstrap: str, **conf) -> Consumer:
    # No consumer groups in fluxo yet: a group.id is set (librdkafka wants
    # one) but only assign() is used, never subscribe(), and nothing is committed.
    return Consumer({
        **BASE_CONF,
        "bootstrap.servers": bootstrap,
        "group.id": f"fluxo-test-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "error",
        "check.crcs": True,
        **conf,
    })


def watermarks(bootstrap: str, topic: str, partitions: Iterable[int], timeout: float = 10.0) -> dict[int, tuple[int, int]]:
    c = consumer(bootstrap)
    try:
        return {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout, cached=False)
                for p in partitions}
    finally:
        c.close()


def consume_all(bootstrap: str, topic: str, timeout: float = 120.0, **conf) -> dict[int, list[Rec]]:
    """Read every partition of `topic` from offset 0 up to its current high
    watermark with assign(). Returns partition -> records in offset order."""
    c = consumer(bootstrap, **conf)
    try:
        md = c.list_topics(topic=topic, timeout=10)
        t = md.topics[topic]
        assert t.error is None, f"metadata error for {topic}: {t.error}"
        parts = sorted(t.partitions)
        highs = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)[1]
                 for p in parts}
        out: dict[int, list[Rec]] = {p: [] for p in parts}
        pending = {p for p in parts if highs[p] > 0}
        if pending:
            c.assign([TopicPartition(topic, p, 0) for p in sorted(pending)])
        deadline = time.monotonic() + timeout
        while pending:
            if time.monotonic() > deadline:
                got = {p: len(out[p]) for p in parts}
                raise AssertionError(f"consume_all({topic}) timed out: got {got}, high watermarks {highs}")
            for m in c.consume(num_messages=2000, timeout=0.5):
                err = m.error()
                if err is not None:
                    raise AssertionError(f"consumer error on {topic}: {err!r}")
                p = m.partition()
                hdrs = m.headers()
                out[p].append(Rec(p, m.offset(), m.key(), m.value(),
                                  tuple(hdrs) if hdrs is not None else None, *m.timestamp()))
                if m.offset() >= highs[p] - 1:
                    pending.discard(p)
        return out
    finally:
        c.close()


def assert_dense(recs_by_part: dict[int, list[Rec]]) -> None:
    for p, recs in recs_by_part.items():
        offs = [r.offset for r in recs]
        assert offs == list(range(len(offs))), \
            f"partition {p}: offsets not dense from 0 (first few: {offs[:10]}, n={len(offs)})"
