"""The fluxo CLI client commands (secondary to the client-compatibility tests).

ASSUMED INTERFACE (adjust here if the CLI differs):
  fluxo topic create NAME --partitions N [--config k=v ...] --bootstrap HOST:PORT
  fluxo topic list --bootstrap HOST:PORT                -> topic names appear in stdout
  fluxo topic describe NAME --bootstrap HOST:PORT       -> output mentions NAME
  fluxo topic delete NAME --bootstrap HOST:PORT
  fluxo produce TOPIC --bootstrap HOST:PORT             <- one record value per stdin line
  fluxo produce TOPIC --compression C --bootstrap HOST:PORT
  fluxo consume TOPIC --from-beginning --max N [--format raw|json] --bootstrap HOST:PORT
      json (default): one object per line with partition, offset, timestamp, key, value, headers
      raw: one value per line; both exit after N records
The state is always cross-checked with confluent-kafka, so only the flags
and the stdout format above are assumptions.
"""

from __future__ import annotations

import json
import subprocess

import pytest

import fluxo_helpers as H


def fluxo(*args: str, stdin: bytes | None = None, timeout: float = 60.0) -> str:
    cmd = [H.fluxo_bin(), *args]
    proc = subprocess.run(cmd, input=stdin, capture_output=True, timeout=timeout)
    assert proc.returncode == 0, (f"{' '.join(cmd)} exited {proc.returncode}\n"
                                  f"stdout:\n{proc.stdout.decode(errors='replace')}\n"
                                  f"stderr:\n{proc.stderr.decode(errors='replace')}")
    return proc.stdout.decode()


@pytest.mark.timeout(120)
def test_cli_topic_lifecycle(broker, new_topic):
    topic = new_topic("cli")
    boot = ["--bootstrap", broker.bootstrap]
    fluxo("topic", "create", topic, "--partitions", "3", "--config", "retention.ms=3600000",
          "--config", "cleanup.policy=delete", *boot)
    assert H.topic_partition_count(broker.bootstrap, topic) == 3
    cfg = H.describe_topic_configs(broker.bootstrap, topic)
    assert cfg["retention.ms"].value == "3600000"

    assert topic in fluxo("topic", "list", *boot).split()
    desc = fluxo("topic", "describe", topic, *boot)
    assert topic in desc

    fluxo("topic", "delete", topic, *boot)
    H.wait_for(lambda: topic not in H.all_topics(broker.bootstrap), desc="topic deleted via CLI")
    assert topic not in fluxo("topic", "list", *boot).split()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_cli_produce_consume(broker, new_topic, compression):
    topic = new_topic("clipc")
    boot = ["--bootstrap", broker.bootstrap]
    fluxo("topic", "create", topic, "--partitions", "1", *boot)
    lines = [f"line {i} \u00e9\u00e8" for i in range(100)]
    fluxo("produce", topic, "--compression", compression, *boot,
          stdin=("\n".join(lines) + "\n").encode())

    got = H.consume_all(broker.bootstrap, topic)[0]
    assert [r.value.decode() for r in got] == lines

    out = fluxo("consume", topic, "--from-beginning", "--max", "100", "--format", "raw", *boot)
    assert out.splitlines() == lines
    out = fluxo("consume", topic, "--from-beginning", "--max", "7", "--format", "raw", *boot)
    assert out.splitlines() == lines[:7]

    recs = [json.loads(l) for l in fluxo("consume", topic, "--from-beginning", "--max", "5", *boot).splitlines()]
    assert [(r["partition"], r["offset"], r["value"], r["key"]) for r in recs] == \
        [(0, i, lines[i], None) for i in range(5)]
    assert [r["timestamp"] for r in recs] == [r.ts for r in got[:5]]


@pytest.mark.timeout(120)
def test_cli_consume_shows_committed_transactions_unless_asked_for_everything(broker, new_topic):
    """`fluxo consume` reads as read_committed by default: an aborted
    transaction's records never show, an open one's only once committed;
    `--isolation read_uncommitted` shows everything; `--exit-at-end` stops
    at the last stable offset instead of waiting on an open transaction."""
    from confluent_kafka import Producer
    topic = new_topic("clitxn")
    boot = ["--bootstrap", broker.bootstrap]
    fluxo("topic", "create", topic, "--partitions", "1", *boot)
    p = Producer({"bootstrap.servers": broker.bootstrap, "transactional.id": f"cli-{topic}"})
    p.init_transactions(30)
    for tag, commit in (("c1", True), ("a1", False), ("c2", True)):
        p.begin_transaction()
        for i in range(3):
            p.produce(topic, f"{tag}-{i}".encode(), partition=0)
        p.flush(30)
        p.commit_transaction(30) if commit else p.abort_transaction(30)
    # One more left open: nothing of it, nor anything after it, is committed yet.
    p.begin_transaction()
    p.produce(topic, b"open-0", partition=0)
    p.flush(30)

    committed_only = fluxo("consume", topic, "--from-beginning", "--exit-at-end", "--format", "raw", *boot)
    assert committed_only.splitlines() == [f"c{r}-{i}" for r in (1, 2) for i in range(3)]
    everything = fluxo("consume", topic, "--from-beginning", "--exit-at-end", "--format", "raw",
                       "--isolation", "read_uncommitted", *boot)
    assert everything.splitlines() == [f"{t}-{i}" for t in ("c1", "a1", "c2") for i in range(3)] + ["open-0"]
    p.commit_transaction(30)
    after = fluxo("consume", topic, "--from-beginning", "--exit-at-end", "--format", "raw", *boot)
    assert after.splitlines()[-1] == "open-0"


def committed(boot: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import AdminClient
    from confluent_kafka import ConsumerGroupTopicPartitions
    a = AdminClient({"bootstrap.servers": boot})
    req = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in range(partitions)])
    res = a.list_consumer_group_offsets([req])[group].result(30)
    return {tp.partition: tp.offset for tp in res.topic_partitions}


@pytest.mark.timeout(120)
def test_cli_group_consume_resumes_and_reset_offsets_rewinds(broker, new_topic):
    topic = new_topic("cligrp")
    boot = ["--bootstrap", broker.bootstrap]
    fluxo("topic", "create", topic, "--partitions", "3", *boot)
    lines = [f"r{i}" for i in range(300)]
    fluxo("produce", topic, *boot, stdin=("\n".join(lines) + "\n").encode())

    # A group member reads part, commits and leaves; the next one reads the rest.
    first = fluxo("consume", topic, "--group", "cli-g", "--from-beginning", "--max", "120",
                  "--format", "raw", *boot).splitlines()
    assert len(first) == 120
    assert sum(committed(broker.bootstrap, "cli-g", topic, 3).values()) == 120
    rest = fluxo("consume", topic, "--group", "cli-g", "--exit-at-end", "--format", "raw",
                 *boot).splitlines()
    assert sorted(first + rest) == sorted(lines), "every record exactly once across the two runs"
    assert committed(broker.bootstrap, "cli-g", topic, 3) == {0: 100, 1: 100, 2: 100}
    assert "cli-g" in fluxo("group", "list", *boot)

    # A dry run changes nothing; --execute moves the offsets.
    plan = fluxo("group", "reset-offsets", "cli-g", "--topic", f"{topic}:0,2", "--shift-by", "-10", *boot)
    assert "dry run" in plan
    assert committed(broker.bootstrap, "cli-g", topic, 3) == {0: 100, 1: 100, 2: 100}
    fluxo("group", "reset-offsets", "cli-g", "--topic", f"{topic}:0,2", "--shift-by", "-10", "--execute", *boot)
    assert committed(broker.bootstrap, "cli-g", topic, 3) == {0: 90, 1: 100, 2: 90}
    again = fluxo("consume", topic, "--group", "cli-g", "--exit-at-end", "--format", "raw", *boot).splitlines()
    assert len(again) == 20
    fluxo("group", "reset-offsets", "cli-g", "--topic", topic, "--to-earliest", "--execute", *boot)
    assert committed(broker.bootstrap, "cli-g", topic, 3) == {0: 0, 1: 0, 2: 0}
    desc = fluxo("group", "describe", "cli-g", *boot)
    assert "100" in desc and topic in desc


@pytest.mark.timeout(60)
def test_cli_reset_offsets_refuses_an_active_group_and_bad_partitions(broker, new_topic):
    from confluent_kafka import Consumer
    topic = new_topic("clirst")
    boot = ["--bootstrap", broker.bootstrap]
    fluxo("topic", "create", topic, "--partitions", "2", *boot)
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "busy", "session.timeout.ms": 6000})
    c.subscribe([topic])
    H.wait_for(lambda: c.poll(0.2) is None and len(c.assignment()) == 2, desc="consumer assigned")
    try:
        proc = subprocess.run([H.fluxo_bin(), "group", "reset-offsets", "busy", "--topic", topic,
                               "--to-earliest", "--execute", *boot], capture_output=True, text=True, timeout=30)
        assert proc.returncode != 0
        assert "active member" in proc.stderr
    finally:
        c.close()
    proc = subprocess.run([H.fluxo_bin(), "group", "reset-offsets", "busy", "--topic", f"{topic}:7",
                           "--to-latest", *boot], capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0 and "7 is not one of them" in proc.stderr
