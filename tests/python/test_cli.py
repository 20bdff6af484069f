"""The fluxo CLI client commands (secondary to the client-compatibility tests).

ASSUMED INTERFACE (adjust here if the CLI differs):
  fluxo topic create NAME --partitions N [--config k=v ...] --bootstrap HOST:PORT
  fluxo topic list --bootstrap HOST:PORT                -> topic names appear in stdout
  fluxo topic describe NAME --bootstrap HOST:PORT       -> output mentions NAME
  fluxo topic delete NAME --bootstrap HOST:PORT
  fluxo produce TOPIC --bootstrap HOST:PORT             <- one record value per stdin line
  fluxo consume TOPIC --from-beginning --max N --bootstrap HOST:PORT
                                                        -> one value per stdout line, exits after N
The state is always cross-checked with confluent-kafka, so only the flags
and the stdout format above are assumptions.
"""

from __future__ import annotations

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
def test_cli_produce_consume(broker, new_topic):
    topic = new_topic("clipc")
    boot = ["--bootstrap", broker.bootstrap]
    fluxo("topic", "create", topic, "--partitions", "1", *boot)
    lines = [f"line {i} \u00e9\u00e8" for i in range(100)]
    fluxo("produce", topic, *boot, stdin=("\n".join(lines) + "\n").encode())

    got = H.consume_all(broker.bootstrap, topic)[0]
    assert [r.value.decode() for r in got] == lines

    out = fluxo("consume", topic, "--from-beginning", "--max", "100", *boot)
    assert out.splitlines() == lines
    out = fluxo("consume", topic, "--from-beginning", "--max", "7", *boot)
    assert out.splitlines() == lines[:7]
