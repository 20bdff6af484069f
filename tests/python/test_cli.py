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
