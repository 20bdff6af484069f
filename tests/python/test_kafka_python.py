"""Client compatibility: kafka-python (pure-Python client) against fluxo.

Consumers use group_id=None + assign() (no consumer groups in fluxo yet).
"""

from __future__ import annotations

import time

import pytest
from confluent_kafka import KafkaError
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient
from kafka.errors import (InvalidPartitionsError, TopicAlreadyExistsError,
                          UnknownTopicOrPartitionError)

import fluxo_helpers as H

CODECS = [None, "gzip", "snappy", "lz4", "zstd"]


def kp_producer(bootstrap: str, **conf) -> KafkaProducer:
    conf = {"acks": "all", "linger_ms": 5, "request_timeout_ms": 30000, "max_block_ms": 30000, **conf}
    return KafkaProducer(bootstrap_servers=bootstrap, **conf)


def kp_consumer(bootstrap: str, **conf) -> KafkaConsumer:
    conf = {"group_id": None, "enable_auto_commit": False, "auto_offset_reset": "earliest",
            "request_timeout_ms": 30000, "check_crcs": True, **conf}
    return KafkaConsumer(bootstrap_servers=bootstrap, **conf)


def kp_admin(bootstrap: str) -> KafkaAdminClient:
    return KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30000)


def kp_consume_all(bootstrap: str, topic: str, timeout: float = 120.0) -> dict[int, list]:
    c = kp_consumer(bootstrap)
    try:
        parts = H.wait_for(lambda: c.partitions_for_topic(topic), timeout=30,
                           desc=f"partitions of {topic}")
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        ends = c.end_offsets(tps)
        c.assign(tps)
        for tp in tps:
            c.seek(tp, 0)
        out = {tp.partition: [] for tp in tps}
        pending = {tp for tp in tps if ends[tp] > 0}
        deadline = time.monotonic() + timeout
        while pending:
            assert time.monotonic() < deadline, \
                f"kafka-python consume timed out: {({p: len(v) for p, v in out.items()})} of {ends}"
            for tp, recs in c.poll(timeout_ms=500, max_records=2000).items():
                out[tp.partition].extend(recs)
                if recs and recs[-1].offset >= ends[tp] - 1:
                    pending.discard(tp)
        return out
    finally:
        c.close()


@pytest.mark.timeout(240)
@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c or "none")
def test_roundtrip_codec(broker, new_topic, codec):
    topic = new_topic(codec or "none")
    a = kp_admin(broker.bootstrap)
    try:
        a.create_topics({topic: {"num_partitions": 2, "replication_factor": 1}}, wait_for_metadata=True)
    finally:
        a.close()

    n = 1500
    base_ts = int(time.time() * 1000) - 7_200_000
    p = kp_producer(broker.bootstrap, compression_type=codec)
    sent = []
    futures = []
    for i in range(n):
        key = f"k{i % 31}".encode()
        value = None if i % 250 == 249 else (f"kp-{i}-" + "xyz" * (i % 17)).encode()
        headers = [("seq", str(i).encode()), ("h", b"\x00\xff")]
        ts = base_ts + 3 * i
        sent.append((key, value, headers, ts))
        futures.append(p.send(topic, key=key, value=value, headers=headers, timestamp_ms=ts))
    p.flush(timeout=60)
    metas = [f.get(timeout=60) for f in futures]
    p.close(timeout=10)

    got = kp_consume_all(broker.bootstrap, topic)
    assert sorted(got) == [0, 1]
    assert sum(len(v) for v in got.values()) == n
    key_part = {}
    seen = set()
    for part, recs in got.items():
        assert [r.offset for r in recs] == list(range(len(recs))), f"partition {part} offsets not dense"
        for r in recs:
            i = int(dict(r.headers)["seq"])
            key, value, headers, ts = sent[i]
            assert (r.key, r.value, list(r.headers), r.timestamp, r.timestamp_type) == \
                (key, value, headers, ts, 0), (i, r)
            assert (metas[i].partition, metas[i].offset) == (part, r.offset)
            assert key_part.setdefault(key, part) == part
            seen.add(i)
    assert seen == set(range(n))

    # Cross-client: confluent-kafka reads the same data identically.
    ck = H.consume_all(broker.bootstrap, topic)
    for part, recs in got.items():
        assert [(r.offset, r.key, r.value, r.timestamp) for r in recs] == \
            [(r.offset, r.key, r.value, r.ts) for r in ck[part]]


@pytest.mark.timeout(120)
def test_non_idempotent_producer_and_offsets_for_times(broker, new_topic):
    topic = new_topic("kpts")
    H.create_topic(broker.bootstrap, topic, partitions=1)
    base = int(time.time() * 1000) - 100_000
    p = kp_producer(broker.bootstrap, enable_idempotence=False, acks=1)
    for i in range(100):
        p.send(topic, value=b"%d" % i, timestamp_ms=base + 10 * i, partition=0)
    p.flush(timeout=60)
    p.close(timeout=10)

    c = kp_consumer(broker.bootstrap)
    try:
        tp = TopicPartition(topic, 0)
        assert c.beginning_offsets([tp])[tp] == 0
        assert c.end_offsets([tp])[tp] == 100
        res = c.offsets_for_times({tp: base + 255})[tp]
        assert res.offset == 26 and res.timestamp == base + 260
        assert c.offsets_for_times({tp: base + 10_000})[tp] is None
    finally:
        c.close()


@pytest.mark.timeout(120)
def test_admin_create_list_delete(broker, new_topic):
    t1, t2 = new_topic("a"), new_topic("b")
    a = kp_admin(broker.bootstrap)
    try:
        a.create_topics({t1: {"num_partitions": 3, "replication_factor": 1},
                         t2: {"num_partitions": 1, "replication_factor": 1,
                              "configs": {"retention.ms": "3600000"}}},
                        wait_for_metadata=True)
        assert {t1, t2} <= set(a.list_topics())
        desc = {t["name"]: t for t in a.describe_topics([t1, t2])}
        assert len(desc[t1]["partitions"]) == 3
        assert len(desc[t2]["partitions"]) == 1

        with pytest.raises(TopicAlreadyExistsError):
            a.create_topics({t1: {"num_partitions": 3, "replication_factor": 1}})

        a.create_partitions({t2: 3})
        H.wait_for(lambda: H.topic_partition_count(broker.bootstrap, t2) == 3, desc="t2 has 3 partitions")
        with pytest.raises(InvalidPartitionsError):
            a.create_partitions({t2: 1})

        a.delete_topics([t1])
        H.wait_for(lambda: t1 not in a.list_topics(), timeout=30, desc="t1 deleted")
        assert t2 in a.list_topics()
        with pytest.raises(UnknownTopicOrPartitionError):
            a.delete_topics([t1])
    finally:
        a.close()


@pytest.mark.timeout(120)
def test_admin_configs(broker, new_topic):
    topic = new_topic("cfg")
    a = kp_admin(broker.bootstrap)
    try:
        a.create_topics({topic: {"num_partitions": 1, "replication_factor": 1,
                                 "configs": {"retention.ms": "3600000"}}}, wait_for_metadata=True)
        def cfgs(filt):
            return a.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)],
                                      config_filter=filt)["topic"][topic]

        all_cfg = cfgs("all")
        assert all_cfg["max.message.bytes"]["value"] == "1048588"  # Kafka's default
        assert all_cfg["retention.ms"]["value"] == "3600000"
        assert set(cfgs("modified")) == {"retention.ms"}

        # Legacy AlterConfigs (non-incremental): replaces the whole override set.
        a.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic,
                                        {"retention.ms": "7200000", "segment.ms": "600000"})],
                        incremental=False)
        m = cfgs("modified")
        assert {k: v["value"] for k, v in m.items()} == {"retention.ms": "7200000", "segment.ms": "600000"}

        # IncrementalAlterConfigs.
        a.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, {"retention.bytes": "1000000"})],
                        incremental=True)
        m = cfgs("modified")
        assert {k: v["value"] for k, v in m.items()} == \
            {"retention.ms": "7200000", "segment.ms": "600000", "retention.bytes": "1000000"}
    finally:
        a.close()


@pytest.mark.timeout(120)
def test_unknown_topic_with_auto_create_disabled(broker_factory, new_topic):
    b = broker_factory(["--auto-create-topics", "false"], name="noauto")
    topic = new_topic("missing")

    # Metadata for a missing topic: UNKNOWN_TOPIC_OR_PARTITION.
    md = H.admin(b.bootstrap).list_topics(topic=topic, timeout=10)
    assert topic in md.topics
    assert md.topics[topic].error is not None
    assert md.topics[topic].error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART

    # confluent-kafka producer: delivery fails (never succeeds).
    p = H.producer(b.bootstrap, **{"message.timeout.ms": 5000,
                                   "topic.metadata.propagation.max.ms": 1000})
    reports = H.produce_all(p, topic, [dict(value=b"nope")], flush_timeout=30)
    err = reports[0].err
    assert err is not None, "produce to a missing topic succeeded with auto-create disabled"
    assert err.code() in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC,
                          KafkaError._MSG_TIMED_OUT), err

    # kafka-python sees no partitions for it (metadata request with allow_auto_topic_creation=True).
    c = kp_consumer(b.bootstrap)
    try:
        assert not c.partitions_for_topic(topic)
    finally:
        c.close()
    kp = kp_producer(b.bootstrap, max_block_ms=3000)
    try:
        with pytest.raises(Exception) as ei:
            kp.send(topic, value=b"nope").get(timeout=10)
        assert "timeout" in type(ei.value).__name__.lower() or \
            isinstance(ei.value, UnknownTopicOrPartitionError), repr(ei.value)
    finally:
        kp.close(timeout=5)

    # And it was not created as a side effect.
    assert topic not in H.all_topics(b.bootstrap)
    md = H.admin(b.bootstrap).list_topics(topic=topic, timeout=10)
    assert md.topics[topic].error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART

    # Explicit creation still works on that broker.
    H.create_topic(b.bootstrap, topic, partitions=1)
    H.assert_all_delivered(H.produce_all(H.producer(b.bootstrap), topic, [dict(value=b"yes")]))
    assert [r.value for r in H.consume_all(b.bootstrap, topic)[0]] == [b"yes"]
