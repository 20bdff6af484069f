"""Client compatibility: confluent-kafka (librdkafka) against fluxo.

Consumers use assign() with explicit offsets (no consumer groups in fluxo yet).
"""

from __future__ import annotations

import os
import time

import pytest
from confluent_kafka import (TIMESTAMP_CREATE_TIME, TIMESTAMP_LOG_APPEND_TIME, KafkaError,
                             KafkaException, TopicPartition)
from confluent_kafka.admin import (AlterConfigOpType, ConfigEntry, ConfigResource, ConfigSource,
                                   NewPartitions, OffsetSpec, ResourceType)

import fluxo_helpers as H

CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]
# Kafka's default for max.message.bytes is 1 MiB + 12 bytes (1048588), and fluxo
# reports the same default.
DEFAULT_MAX_MESSAGE_BYTES = "1048588"
N_RECORDS = 3000
N_KEYS = 97


def make_records(n: int, base_ts: int) -> list[dict]:
    """Records with keys, headers (incl. duplicate keys and a null value) and
    explicit, strictly increasing timestamps. Every record carries its index
    in the 'seq' header so it can be identified even with a null value."""
    recs = []
    for i in range(n):
        headers = [("seq", str(i).encode()), ("dup", b"first"), ("dup", b"second")]
        if i % 7 == 0:
            headers.append(("nullable", None))
        if i % 500 == 499:
            value = None                       # tombstone
        elif i % 333 == 0:
            value = b""                        # empty, not null
        else:
            value = (f"value-{i}-" + "abcdefghij" * (i % 13)).encode() + bytes([i % 256])
        recs.append(dict(key=f"key-{i % N_KEYS}".encode(), value=value, headers=headers,
                         timestamp=base_ts + 7 * i))
    return recs


def seq_of(headers) -> int:
    for k, v in headers or ():
        if k == "seq":
            return int(v)
    raise AssertionError(f"record without seq header: {headers!r}")


def expected_offset_for_time(recs: list[H.Rec], target: int) -> int:
    for r in recs:
        if r.ts >= target:
            return r.offset
    return -1


@pytest.mark.timeout(240)
@pytest.mark.parametrize("codec", CODECS)
def test_roundtrip_codec(broker, new_topic, codec):
    topic = new_topic(codec)
    H.create_topic(broker.bootstrap, topic, partitions=3)

    base_ts = int(time.time() * 1000) - 3_600_000
    records = make_records(N_RECORDS, base_ts)
    p = H.producer(broker.bootstrap, **{"compression.type": codec, "linger.ms": 20,
                                        "enable.idempotence": False})
    reports = H.produce_all(p, topic, records)
    H.assert_all_delivered(reports)

    assert len(reports) == N_RECORDS

    got = H.consume_all(broker.bootstrap, topic)
    assert sorted(got) == [0, 1, 2]
    H.assert_dense(got)
    assert sum(len(v) for v in got.values()) == N_RECORDS
    assert sum(1 for v in got.values() if v) >= 2, "keys should spread over partitions"

    key_partition: dict[bytes, int] = {}
    for p_id, recs in got.items():
        last_seq = -1
        for r in recs:
            i = seq_of(r.headers)
            exp = records[i]
            rep = reports[i]
            assert r.key == exp["key"], (i, r)
            assert r.value == exp["value"], (i, r)
            assert list(r.headers) == exp["headers"], (i, r.headers)
            assert (r.ts_type, r.ts) == (TIMESTAMP_CREATE_TIME, exp["timestamp"]), (i, r)
            assert (r.partition, r.offset) == (rep.partition, rep.offset), \
                f"seq {i}: consumed at {r.partition}/{r.offset}, delivery report said {rep.partition}/{rep.offset}"
            assert key_partition.setdefault(r.key, p_id) == p_id, f"key {r.key!r} in two partitions"
            assert i > last_seq, f"partition {p_id}: seq {i} after {last_seq} (reordered)"
            last_seq = i
    assert len(key_partition) == N_KEYS

    # Watermarks.
    marks = H.watermarks(broker.bootstrap, topic, [0, 1, 2])
    for p_id in range(3):
        assert marks[p_id] == (0, len(got[p_id])), (p_id, marks[p_id])

    # ListOffsets by timestamp: first offset whose timestamp >= target.
    # (One query per partition per request: a request must not repeat a partition.)
    c = H.consumer(broker.bootstrap)
    try:
        def targets(recs):
            mid = recs[len(recs) // 2]
            return [0, recs[0].ts, mid.ts, mid.ts - 1, mid.ts + 1, recs[-1].ts, recs[-1].ts + 1]

        parts = [p_id for p_id, recs in got.items() if recs]
        for k in range(7):
            queries = [TopicPartition(topic, p_id, targets(got[p_id])[k]) for p_id in parts]
            res = c.offsets_for_times(queries, timeout=30)
            assert sorted(tp.partition for tp in res) == parts
            for tp in res:
                assert tp.error is None, tp
                t = targets(got[tp.partition])[k]
                want = expected_offset_for_time(got[tp.partition], t)
                assert tp.offset == want, \
                    f"partition {tp.partition} ts {t}: got offset {tp.offset}, want {want}"
    finally:
        c.close()

    # Fetch starting in the middle of a (possibly compressed) batch.
    p0 = max(got, key=lambda k: len(got[k]))
    start = len(got[p0]) // 2 + 1
    c = H.consumer(broker.bootstrap)
    try:
        c.assign([TopicPartition(topic, p0, start)])
        msgs = []
        deadline = time.monotonic() + 30
        while len(msgs) < 5 and time.monotonic() < deadline:
            for m in c.consume(10, timeout=0.5):
                assert m.error() is None, m.error()
                msgs.append(m)
        assert len(msgs) >= 5
        assert [m.offset() for m in msgs[:5]] == list(range(start, start + 5))
        assert msgs[0].value() == got[p0][start].value
    finally:
        c.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("acks", ["0", "1", "all"])
def test_acks_modes(broker, new_topic, acks):
    topic = new_topic("acks")
    H.create_topic(broker.bootstrap, topic, partitions=1)
    p = H.producer(broker.bootstrap, acks=acks, **{"linger.ms": 5})
    reports = H.produce_all(p, topic, [dict(value=f"v{i}".encode()) for i in range(300)])
    H.assert_all_delivered(reports)
    # A second batch on the same connection must still work (acks=0 responses
    # must not be sent, or the client's correlation ids get out of step).
    reports = H.produce_all(p, topic, [dict(value=f"w{i}".encode()) for i in range(300)])
    H.assert_all_delivered(reports)
    got = H.consume_all(broker.bootstrap, topic)[0]
    assert [r.value for r in got] == [f"v{i}".encode() for i in range(300)] + \
        [f"w{i}".encode() for i in range(300)]


@pytest.mark.timeout(120)
def test_oversized_record_rejected_by_broker(broker, new_topic):
    topic = new_topic("big")
    H.create_topic(broker.bootstrap, topic, partitions=1)
    cfg = H.describe_topic_configs(broker.bootstrap, topic)
    assert cfg["max.message.bytes"].value == DEFAULT_MAX_MESSAGE_BYTES

    # Raise the client-side limits so that librdkafka sends the record and the
    # *broker* has to reject it (server-side MESSAGE_TOO_LARGE = 10).
    p = H.producer(broker.bootstrap, **{"message.max.bytes": 10_000_000,
                                        "compression.type": "none",
                                        "message.send.max.retries": 0})
    big = os.urandom(2 * 1024 * 1024)
    reports = H.produce_all(p, topic, [dict(key=b"big", value=big)])
    assert len(reports) == 1
    err = reports[0].err
    assert err is not None, "2 MiB record was accepted by a topic with the default max.message.bytes"
    assert err.code() == KafkaError.MSG_SIZE_TOO_LARGE, \
        f"want broker error MSG_SIZE_TOO_LARGE (10), got {err.code()} {err.name()}: {err.str()}"
    # (librdkafka's own size check raises from produce() instead; getting here
    # as a delivery report means the broker answered.)

    # Nothing was appended, and the partition keeps working.
    assert H.watermarks(broker.bootstrap, topic, [0])[0] == (0, 0)
    almost = os.urandom(1_000_000)  # batch stays below the 1 MiB default
    reports = H.produce_all(p, topic, [dict(key=b"ok", value=almost)])
    H.assert_all_delivered(reports)
    assert reports[0].offset == 0
    got = H.consume_all(broker.bootstrap, topic)[0]
    assert len(got) == 1 and got[0].value == almost and got[0].key == b"ok"


@pytest.mark.timeout(120)
def test_max_message_bytes_topic_override(broker, new_topic):
    topic = new_topic("bigok")
    H.create_topic(broker.bootstrap, topic, partitions=1, config={"max.message.bytes": "4000000"})
    p = H.producer(broker.bootstrap, **{"message.max.bytes": 10_000_000, "compression.type": "none"})
    big = os.urandom(2 * 1024 * 1024)
    reports = H.produce_all(p, topic, [dict(key=b"big", value=big)])
    H.assert_all_delivered(reports)
    got = H.consume_all(broker.bootstrap, topic, **{"fetch.max.bytes": 20_000_000,
                                                    "receive.message.max.bytes": 30_000_000})[0]
    assert len(got) == 1 and got[0].value == big


@pytest.mark.timeout(120)
def test_log_append_time(broker, new_topic):
    topic = new_topic("lat")
    H.create_topic(broker.bootstrap, topic, partitions=1,
                   config={"message.timestamp.type": "LogAppendTime"})
    cfg = H.describe_topic_configs(broker.bootstrap, topic)
    assert cfg["message.timestamp.type"].value == "LogAppendTime"

    producer_ts = int(time.time() * 1000) - 86_400_000  # a day ago
    before = int(time.time() * 1000)
    p = H.producer(broker.bootstrap, **{"linger.ms": 5})
    reports = H.produce_all(p, topic, [dict(key=b"k%d" % i, value=b"v%d" % i, timestamp=producer_ts + i)
                                       for i in range(20)])
    after = int(time.time() * 1000)
    H.assert_all_delivered(reports)
    for r in reports:
        # ProduceResponse carries log_append_time_ms for LogAppendTime topics.
        ts_type, ts = r.timestamp
        assert ts_type == TIMESTAMP_LOG_APPEND_TIME, r.timestamp
        assert before - 5000 <= ts <= after + 5000, (ts, before, after)

    got = H.consume_all(broker.bootstrap, topic)[0]
    assert [r.value for r in got] == [b"v%d" % i for i in range(20)]
    for r in got:
        assert r.ts_type == TIMESTAMP_LOG_APPEND_TIME, r
        assert before - 5000 <= r.ts <= after + 5000, \
            f"timestamp {r.ts} is not broker time (window {before}..{after}); producer sent {producer_ts}"
        assert abs(r.ts - int(time.time() * 1000)) < 60_000


@pytest.mark.timeout(120)
def test_describe_and_incremental_alter_configs(broker, new_topic):
    topic = new_topic("cfg")
    H.create_topic(broker.bootstrap, topic, partitions=1, config={"cleanup.policy": "delete",
                                                                 "segment.bytes": "2097152"})
    cfg = H.describe_topic_configs(broker.bootstrap, topic)
    assert cfg["max.message.bytes"].value == DEFAULT_MAX_MESSAGE_BYTES
    assert cfg["message.timestamp.type"].value == "CreateTime"
    assert cfg["segment.bytes"].value == "2097152"
    assert cfg["segment.bytes"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    assert cfg["max.message.bytes"].source != ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    for k in ("retention.ms", "retention.bytes", "segment.ms", "cleanup.policy",
              "flush.messages", "flush.ms"):
        assert k in cfg, f"describe_configs lacks {k}: {sorted(cfg)}"

    a = H.admin(broker.bootstrap)
    res = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[
        ConfigEntry("retention.ms", "123456789", incremental_operation=AlterConfigOpType.SET)])
    a.incremental_alter_configs([res])[res].result(timeout=30)
    cfg = H.describe_topic_configs(broker.bootstrap, topic)
    assert cfg["retention.ms"].value == "123456789"
    assert cfg["retention.ms"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    assert cfg["segment.bytes"].value == "2097152", "incremental alter must keep other overrides"

    # DELETE reverts to the default.
    res = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[
        ConfigEntry("retention.ms", None, incremental_operation=AlterConfigOpType.DELETE)])
    a.incremental_alter_configs([res])[res].result(timeout=30)
    cfg = H.describe_topic_configs(broker.bootstrap, topic)
    assert cfg["retention.ms"].value != "123456789"
    assert cfg["retention.ms"].source != ConfigSource.DYNAMIC_TOPIC_CONFIG.value


@pytest.mark.timeout(60)
def test_alter_configs_rejects_invalid(broker, new_topic):
    topic = new_topic("badcfg")
    H.create_topic(broker.bootstrap, topic, partitions=1)
    a = H.admin(broker.bootstrap)
    for entry in (ConfigEntry("retention.ms", "not-a-number", incremental_operation=AlterConfigOpType.SET),
                  ConfigEntry("no.such.config", "1", incremental_operation=AlterConfigOpType.SET)):
        res = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[entry])
        with pytest.raises(KafkaException) as ei:
            a.incremental_alter_configs([res])[res].result(timeout=30)
        assert ei.value.args[0].code() == KafkaError.INVALID_CONFIG, (entry.name, ei.value)
    cfg = H.describe_topic_configs(broker.bootstrap, topic)
    assert "no.such.config" not in cfg
    assert cfg["retention.ms"].value != "not-a-number"


@pytest.mark.timeout(120)
def test_create_partitions(broker, new_topic):
    topic = new_topic("parts")
    H.create_topic(broker.bootstrap, topic, partitions=2)
    a = H.admin(broker.bootstrap)
    a.create_partitions([NewPartitions(topic, 4)])[topic].result(timeout=30)
    H.wait_for(lambda: H.topic_partition_count(broker.bootstrap, topic) == 4, timeout=30,
               desc="4 partitions in metadata")

    p = H.producer(broker.bootstrap)
    reports = H.produce_all(p, topic, [dict(value=b"p%d-%d" % (i % 4, i), partition=i % 4)
                                       for i in range(40)])
    H.assert_all_delivered(reports)
    got = H.consume_all(broker.bootstrap, topic)
    assert sorted(got) == [0, 1, 2, 3]
    for p_id in range(4):
        assert [r.value for r in got[p_id]] == [b"p%d-%d" % (p_id, i) for i in range(p_id, 40, 4)]

    # Shrinking is invalid.
    with pytest.raises(KafkaException) as ei:
        a.create_partitions([NewPartitions(topic, 2)])[topic].result(timeout=30)
    assert ei.value.args[0].code() == KafkaError.INVALID_PARTITIONS
    assert H.topic_partition_count(broker.bootstrap, topic) == 4


@pytest.mark.timeout(120)
def test_create_topic_errors(broker, new_topic):
    topic = new_topic("dupe")
    H.create_topic(broker.bootstrap, topic, partitions=2)
    a = H.admin(broker.bootstrap)
    from confluent_kafka.admin import NewTopic
    with pytest.raises(KafkaException) as ei:
        a.create_topics([NewTopic(topic, num_partitions=5, replication_factor=1)])[topic].result(timeout=30)
    assert ei.value.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS
    assert H.topic_partition_count(broker.bootstrap, topic) == 2


@pytest.mark.timeout(120)
def test_delete_topics(broker, new_topic):
    keep, victim = new_topic("keep"), new_topic("victim")
    H.create_topic(broker.bootstrap, keep, partitions=1)
    H.create_topic(broker.bootstrap, victim, partitions=3)
    H.assert_all_delivered(H.produce_all(H.producer(broker.bootstrap), victim,
                                         [dict(value=b"x%d" % i) for i in range(30)]))
    assert {keep, victim} <= H.all_topics(broker.bootstrap)

    a = H.admin(broker.bootstrap)
    a.delete_topics([victim], operation_timeout=30)[victim].result(timeout=30)
    H.wait_for(lambda: victim not in H.all_topics(broker.bootstrap), timeout=30,
               desc=f"{victim} gone from list_topics")
    assert keep in H.all_topics(broker.bootstrap)

    with pytest.raises(KafkaException) as ei:
        a.delete_topics([victim], operation_timeout=30)[victim].result(timeout=30)
    assert ei.value.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART


@pytest.mark.timeout(120)
def test_recreate_deleted_topic_starts_empty(broker, new_topic):
    topic = new_topic("again")
    H.create_topic(broker.bootstrap, topic, partitions=1)
    H.assert_all_delivered(H.produce_all(H.producer(broker.bootstrap), topic,
                                         [dict(value=b"old%d" % i) for i in range(10)]))
    a = H.admin(broker.bootstrap)
    a.delete_topics([topic], operation_timeout=30)[topic].result(timeout=30)
    H.wait_for(lambda: topic not in H.all_topics(broker.bootstrap), timeout=30, desc="topic deleted")
    H.create_topic(broker.bootstrap, topic, partitions=2)
    assert H.watermarks(broker.bootstrap, topic, [0, 1]) == {0: (0, 0), 1: (0, 0)}
    reports = H.produce_all(H.producer(broker.bootstrap), topic, [dict(value=b"new", partition=0)])
    H.assert_all_delivered(reports)
    assert reports[0].offset == 0
    assert [r.value for r in H.consume_all(broker.bootstrap, topic)[0]] == [b"new"]


@pytest.mark.timeout(120)
def test_idempotent_producer(broker, new_topic):
    topic = new_topic("idem")
    H.create_topic(broker.bootstrap, topic, partitions=1)
    p = H.producer(broker.bootstrap, **{"enable.idempotence": True, "linger.ms": 5,
                                        "compression.type": "lz4"})
    reports = H.produce_all(p, topic, [dict(key=b"k", value=b"%06d" % i) for i in range(1000)])
    H.assert_all_delivered(reports)
    assert sorted(r.offset for r in reports) == list(range(1000))
    got = H.consume_all(broker.bootstrap, topic)[0]
    assert [r.value for r in got] == [b"%06d" % i for i in range(1000)]
    H.assert_dense({0: got})


@pytest.mark.timeout(120)
def test_describe_cluster_and_metadata(broker, new_topic):
    a = H.admin(broker.bootstrap)
    desc = a.describe_cluster(request_timeout=30).result(timeout=30)
    assert len(desc.nodes) == 1
    node = desc.nodes[0]
    assert (node.host, node.port) == ("127.0.0.1", broker.port), node
    assert desc.controller is not None and desc.controller.id == node.id
    assert desc.cluster_id

    md = a.list_topics(timeout=10)
    assert list(md.brokers) == [node.id]
    b = md.brokers[node.id]
    assert (b.host, b.port) == ("127.0.0.1", broker.port)
    assert md.cluster_id == desc.cluster_id

    topic = new_topic("md")
    H.create_topic(broker.bootstrap, topic, partitions=3)
    t = a.list_topics(topic=topic, timeout=10).topics[topic]
    for pid, pm in t.partitions.items():
        assert pm.leader == node.id
        assert pm.replicas == [node.id] and pm.isrs == [node.id]


@pytest.mark.timeout(120)
def test_admin_list_offsets(broker, new_topic):
    topic = new_topic("lo")
    H.create_topic(broker.bootstrap, topic, partitions=1)
    base = int(time.time() * 1000) - 10_000
    # Timestamps deliberately not monotonic: max timestamp is at offset 3.
    ts = [base + 10, base + 20, base + 5, base + 90, base + 30]
    H.assert_all_delivered(H.produce_all(H.producer(broker.bootstrap), topic,
                                         [dict(value=b"%d" % i, timestamp=t) for i, t in enumerate(ts)]))
    a = H.admin(broker.bootstrap)
    tp = TopicPartition(topic, 0)

    def one(spec):
        return a.list_offsets({tp: spec}, request_timeout=30)[tp].result(timeout=30)

    assert one(OffsetSpec.earliest()).offset == 0
    assert one(OffsetSpec.latest()).offset == 5
    r = one(OffsetSpec.for_timestamp(base + 15))
    assert r.offset == 1  # first offset with ts >= target
    r = one(OffsetSpec.for_timestamp(base + 91))
    assert r.offset == -1


@pytest.mark.timeout(60)
def test_admin_list_offsets_max_timestamp(broker, new_topic):
    versions = H.api_versions(broker.bootstrap)
    if versions.get(2, (0, 0))[1] < 7:
        pytest.skip(f"broker advertises ListOffsets v{versions.get(2)} (< v7, no MAX_TIMESTAMP)")
    topic = new_topic("lomax")
    H.create_topic(broker.bootstrap, topic, partitions=1)
    base = int(time.time() * 1000) - 10_000
    ts = [base + 10, base + 20, base + 5, base + 90, base + 30]
    H.assert_all_delivered(H.produce_all(H.producer(broker.bootstrap, **{"linger.ms": 50}), topic,
                                         [dict(value=b"%d" % i, timestamp=t) for i, t in enumerate(ts)]))
    a = H.admin(broker.bootstrap)
    tp = TopicPartition(topic, 0)
    r = a.list_offsets({tp: OffsetSpec.max_timestamp()}, request_timeout=30)[tp].result(timeout=30)
    assert (r.offset, r.timestamp) == (3, base + 90)


@pytest.mark.timeout(120)
def test_auto_create_topic_on_produce(broker_factory, new_topic):
    b = broker_factory(["--num-partitions", "3"], name="autocreate")
    topic = new_topic("auto")
    assert topic not in H.all_topics(b.bootstrap)
    reports = H.produce_all(H.producer(b.bootstrap), topic, [dict(key=b"k%d" % i, value=b"v%d" % i)
                                                             for i in range(30)])
    H.assert_all_delivered(reports)
    assert H.topic_partition_count(b.bootstrap, topic) == 3
    got = H.consume_all(b.bootstrap, topic)
    assert sorted(r.value for recs in got.values() for r in recs) == sorted(b"v%d" % i for i in range(30))
