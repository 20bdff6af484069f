"""DeleteRecords as Kafka's AdminClient and `fluxo topic trim` use it: the
partition's log start offset moves up for good (also across a restart),
consumers from the beginning start there, ListOffsets answers it as the
earliest offset, and an offset past the high watermark is refused with
OFFSET_OUT_OF_RANGE."""

from __future__ import annotations

import subprocess

import pytest
from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition
from confluent_kafka.admin import AdminClient

import fluxo_helpers as H


def first_offset(bootstrap: str, topic: str, partition: int) -> int:
    c = H.consumer(bootstrap)
    c.assign([TopicPartition(topic, partition, OFFSET_BEGINNING)])
    low, _ = c.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
    m = None
    while m is None:
        m = c.poll(10)
    c.close()
    assert m.error() is None, m.error()
    assert m.offset() == low
    return m.offset()


@pytest.mark.timeout(120)
def test_delete_records_moves_the_log_start_for_good(broker, new_topic):
    topic = new_topic("trim")
    H.create_topic(broker.bootstrap, topic, partitions=2)
    p = H.producer(broker.bootstrap)
    H.assert_all_delivered(H.produce_all(p, topic, [dict(value=f"v{i}".encode(), partition=i % 2)
                                                    for i in range(200)]))
    admin = AdminClient({**H.BASE_CONF, "bootstrap.servers": broker.bootstrap})
    futures = admin.delete_records([TopicPartition(topic, 0, 40), TopicPartition(topic, 1, 1_000)])
    deleted = futures[TopicPartition(topic, 0, 40)].result(30)
    assert deleted.low_watermark == 40
    with pytest.raises(Exception) as refused:
        futures[TopicPartition(topic, 1, 1_000)].result(30)
    assert refused.value.args[0].code() == KafkaError.OFFSET_OUT_OF_RANGE, refused.value
    assert first_offset(broker.bootstrap, topic, 0) == 40

    proc = subprocess.run([H.fluxo_bin(), "topic", "trim", f"{topic}:1", "--before", "75",
                           "--bootstrap", broker.bootstrap], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert f"{topic}:1 now starts at offset 75" in proc.stdout
    bad = subprocess.run([H.fluxo_bin(), "topic", "trim", f"{topic}:1", "--before", "5000",
                          "--bootstrap", broker.bootstrap], capture_output=True, text=True, timeout=30)
    assert bad.returncode != 0 and "out of range" in bad.stderr.lower(), bad.stderr

    broker.restart()
    assert first_offset(broker.bootstrap, topic, 0) == 40
    assert first_offset(broker.bootstrap, topic, 1) == 75
