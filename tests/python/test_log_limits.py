"""The log's limits as real clients meet them (defects found with
librdkafka and fixed): a fetch never grows past the response-wide
`fetch.max.bytes` by more than its first batch, a compacted topic refuses
records without a key, every topic config Kafka knows is accepted and
described, and fluxo's own writers (a sink writing a big view) split their
batches under the topic's `max.message.bytes`."""

from __future__ import annotations

import http.client
import json
import time

import pytest
from confluent_kafka import KafkaError, Producer, TopicPartition

import fluxo_helpers as H


@pytest.mark.timeout(120)
def test_a_fetch_stays_within_fetch_max_bytes(broker, new_topic):
    """librdkafka refuses a response larger than receive.message.max.bytes
    ("Invalid response size") and marks the broker down; with batches near
    1 MB on several partitions, fluxo used to answer 1.8 MB to a consumer
    with fetch.max.bytes=1000000."""
    topic = new_topic("bigfetch")
    H.create_topic(broker.bootstrap, topic, partitions=4)
    p = H.producer(broker.bootstrap, **{"linger.ms": 200, "batch.size": 1_000_000,
                                        "batch.num.messages": 100_000})
    value = b"x" * 9_000
    n = 400
    reports = H.produce_all(p, topic, [dict(value=value, partition=i % 4) for i in range(n)])
    H.assert_all_delivered(reports)
    c = H.consumer(broker.bootstrap, **{"fetch.max.bytes": 1_000_000,
                                        "receive.message.max.bytes": 1_000_512,
                                        "max.partition.fetch.bytes": 1_048_576})
    c.assign([TopicPartition(topic, part, 0) for part in range(4)])
    got = 0
    errors = []
    deadline = time.monotonic() + 60
    while got < n and time.monotonic() < deadline:
        for m in c.consume(num_messages=1000, timeout=0.5):
            if m.error() is None:
                got += 1
            else:
                errors.append(m.error())
    c.close()
    assert errors == []
    assert got == n


@pytest.mark.timeout(60)
def test_a_compacted_topic_refuses_records_without_a_key(broker, new_topic):
    topic = new_topic("compact")
    H.create_topic(broker.bootstrap, topic, config={"cleanup.policy": "compact"})
    p = Producer({**H.BASE_CONF, "bootstrap.servers": broker.bootstrap, "acks": "all"})
    outcomes = []
    p.produce(topic, b"no key", on_delivery=lambda err, msg: outcomes.append(("unkeyed", err)))
    p.flush(30)
    p.produce(topic, b"v", key=b"k", on_delivery=lambda err, msg: outcomes.append(("keyed", err)))
    p.flush(30)
    assert outcomes[0][0] == "unkeyed" and outcomes[0][1] is not None
    assert outcomes[0][1].code() == KafkaError.INVALID_RECORD, outcomes[0][1]
    assert outcomes[1] == ("keyed", None)
    recs = H.consume_all(broker.bootstrap, topic)[0]
    assert [(r.key, r.value) for r in recs] == [(b"k", b"v")]


@pytest.mark.timeout(60)
def test_every_kafka_topic_config_is_accepted_and_described(broker, new_topic):
    """Kafka Connect, Debezium and admin tools set compaction and format
    configs when they create topics; fluxo accepts them all, and describes
    every config with its source."""
    topic = new_topic("configs")
    given = {"cleanup.policy": "compact,delete", "delete.retention.ms": "1000",
             "message.format.version": "3.0-IV1", "min.cleanable.dirty.ratio": "0.2",
             "min.compaction.lag.ms": "5", "segment.jitter.ms": "7"}
    H.create_topic(broker.bootstrap, topic, config=given)
    described = H.describe_topic_configs(broker.bootstrap, topic)
    for k, v in given.items():
        assert described[k].value == v, k
        assert not described[k].is_default, k
    assert described["max.compaction.lag.ms"].is_default
    assert described["max.compaction.lag.ms"].value == "9223372036854775807"
    # A bad value is still refused, naming the key.
    with pytest.raises(Exception, match="min.cleanable.dirty.ratio"):
        H.create_topic(broker.bootstrap, new_topic("badcfg"), config={"min.cleanable.dirty.ratio": "3"})


def sql(broker, statement: str) -> dict:
    host, port = broker.http_addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("POST", "/api/v1/sql", body=json.dumps({"sql": statement}),
                 headers={"content-type": "application/json"})
    resp = conn.getresponse()
    body = json.loads(resp.read())
    assert resp.status == 200, f"{statement}: {resp.status} {body}"
    return body


@pytest.mark.timeout(120)
def test_a_sink_writes_a_view_larger_than_max_message_bytes(broker, new_topic):
    """A new sink's first write is the whole view: over 1 MiB here, which
    the log used to refuse as one batch."""
    src, out = new_topic("bigview"), new_topic("bigsink")
    H.create_topic(broker.bootstrap, src)
    pad = "p" * 1000
    rows = [{"id": i, "pad": pad} for i in range(3000)]
    H.assert_all_delivered(H.produce_all(H.producer(broker.bootstrap), src,
                                         [dict(value=json.dumps(r).encode()) for r in rows]))
    sql(broker, f"CREATE SOURCE big (id BIGINT, pad TEXT) WITH (connector = 'topic', topic = '{src}', format = 'json')")
    sql(broker, "CREATE MATERIALIZED VIEW big_rows WITH (checkpoint_interval = '300ms') AS SELECT id, pad FROM big")
    H.wait_for(lambda: sql(broker, "SELECT count(*) FROM big_rows")["rows"] == [[3000]],
               timeout=60, desc="the view holds every row")
    sql(broker, f"CREATE SINK big_out FROM big_rows WITH (connector = 'topic', topic = '{out}')")

    def written():
        recs = H.consume_all(broker.bootstrap, out)
        return recs if sum(len(v) for v in recs.values()) >= 3000 else None
    recs = H.wait_for(written, timeout=60, desc="the whole view in the sink topic")
    ids = sorted(json.loads(r.value)["id"] for part in recs.values() for r in part)
    assert ids == list(range(3000))
