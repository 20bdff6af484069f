"""A full disk, for real: the data directory on a small tmpfs. A produce
that cannot be written is refused with KAFKA_STORAGE_ERROR and writes
nothing half; everything acknowledged before stays readable; the server
stays up, and takes writes again once space returns, without a restart. A
pipeline whose sink cannot write says so in its status, starts again from
its checkpoint once space returns, and its output stays exactly once."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, KafkaError, Producer, TopicPartition

import fluxo_helpers as H
from conftest import Broker


@pytest.fixture
def small_fs(tmp_path):
    mount = tmp_path / "fs"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def produce(bootstrap: str, topic: str, values: list[bytes]) -> tuple[list[tuple[int, bytes]], list[KafkaError]]:
    acked, errors = [], []

    def report(err, msg):
        if err is None:
            acked.append((msg.offset(), msg.value()))
        else:
            errors.append(err)

    # No retries: each refusal reaches the application as the broker said it.
    p = Producer({**H.BASE_CONF, "bootstrap.servers": bootstrap, "acks": "all",
                  "enable.idempotence": False, "retries": 0, "linger.ms": 2})
    for v in values:
        p.produce(topic, v, partition=0, on_delivery=report)
        p.poll(0)
    p.flush(60)
    return acked, errors


def read_back(bootstrap: str, topic: str, isolation: str = "read_uncommitted") -> list[tuple[int, bytes]]:
    c = H.consumer(bootstrap, **{"enable.partition.eof": True, "isolation.level": isolation})
    c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    out = []
    while True:
        m = c.poll(10)
        assert m is not None
        if m.error():
            assert m.error().code() == KafkaError._PARTITION_EOF, m.error()
            break
        out.append((m.offset(), m.value()))
    c.close()
    return out


@pytest.mark.timeout(180)
def test_a_full_disk_refuses_writes_loses_nothing_and_recovers(small_fs, tmp_path):
    ballast = small_fs / "ballast"
    ballast.write_bytes(b"\0" * (6 << 20))
    broker = Broker(tmp_path / "broker")
    broker.data_dir = small_fs / "data"
    broker.data_dir.mkdir()
    broker.start()
    try:
        topic = "filling"
        H.create_topic(broker.bootstrap, topic, partitions=1)
        acked, errors = [], []
        for round_ in range(40):
            values = [f"{round_:03}-{i:04}-".encode() + os.urandom(4_000).hex().encode()[:8_000]
                      for i in range(200)]
            a, e = produce(broker.bootstrap, topic, values)
            acked += a
            errors += e
            if e:
                break
        assert errors, "the disk never filled up"
        assert acked, "nothing was written before the disk filled up"
        assert {e.code() for e in errors} == {KafkaError.KAFKA_STORAGE_ERROR}, errors[:3]
        assert broker.is_alive()
        # Everything acknowledged is there, nothing else, nothing torn.
        assert read_back(broker.bootstrap, topic) == sorted(acked)

        # Space comes back: writes are taken again, no restart.
        ballast.unlink()
        more, errors = produce(broker.bootstrap, topic, [f"after-{i}".encode() for i in range(50)])
        assert errors == [] and len(more) == 50
        assert read_back(broker.bootstrap, topic) == sorted(acked + more)
        assert broker.stop() == 0
    finally:
        broker.close()


@pytest.mark.timeout(240)
def test_a_pipeline_waits_out_a_full_disk_and_resumes_exactly_once(small_fs, tmp_path):
    from test_sql import get, sql

    broker = Broker(tmp_path / "broker")
    broker.data_dir = small_fs / "data"
    broker.data_dir.mkdir()
    broker.start()
    try:
        H.create_topic(broker.bootstrap, "readings", partitions=1)
        sql(broker, "CREATE SOURCE readings (id BIGINT, pad TEXT) "
                    "WITH (connector = 'topic', topic = 'readings', format = 'json')")
        sql(broker, "CREATE SINK copy FROM readings WITH (connector = 'topic', topic = 'readings_copy', format = 'json')")
        first, errors = produce(broker.bootstrap, "readings",
                                [f'{{"id": {i}, "pad": "{"x" * 900}"}}'.encode() for i in range(100)])
        assert errors == []
        H.wait_for(lambda: len(read_back(broker.bootstrap, "readings_copy", "read_committed")) == 100,
                   timeout=60, desc="the sink copies the first readings")

        # Fill the disk, then give back about 1.5 MB: the readings take it,
        # their copy finds none.
        ballast = [small_fs / f"ballast-{i}" for i in range(64)]
        for path in ballast:
            try:
                path.write_bytes(b"\0" * (512 << 10))
            except OSError:
                path.unlink(missing_ok=True)
                break
        for path in ballast[:3]:
            path.unlink(missing_ok=True)
        more, _ = produce(broker.bootstrap, "readings",
                          [f'{{"id": {100 + i}, "pad": "{"y" * 900}"}}'.encode() for i in range(2_000)])
        assert len(more) > 100, "the readings found no room at all"

        def stalled() -> dict | None:
            p = get(broker, "/api/v1/pipelines/copy")["body"]
            error = p.get("last_error") or ""
            return p if "No space left" in error or "storage" in error.lower() else None
        status = H.wait_for(stalled, timeout=60, desc="the sink's pipeline reports the full disk")
        assert status["status"] in ("restarting", "running"), status
        assert broker.is_alive()

        # Space comes back: the pipeline resumes from its checkpoint without
        # a restart, and every acknowledged reading is copied exactly once.
        for path in ballast:
            path.unlink(missing_ok=True)
        want = [v for _, v in sorted(first + more)]
        H.wait_for(lambda: len(read_back(broker.bootstrap, "readings_copy", "read_committed")) >= len(want),
                   timeout=120, desc="the copy catches up once space returns")
        copied = read_back(broker.bootstrap, "readings_copy", "read_committed")
        ids = [json.loads(v)["id"] for _, v in copied]
        assert ids == [json.loads(v)["id"] for v in want], "each reading once, in order"
        p = get(broker, "/api/v1/pipelines/copy")["body"]
        assert p["status"] == "running" and p["restarts"] >= 1, p
        assert broker.stop() == 0
    finally:
        broker.close()
