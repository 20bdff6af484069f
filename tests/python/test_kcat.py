"""Client compatibility: Debian's kcat (built on an old librdkafka, 2.0.2)."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

import fluxo_helpers as H

KCAT = shutil.which("kcat")
pytestmark = pytest.mark.skipif(KCAT is None, reason="kcat not installed (run scripts/setup-tests.sh)")


def kcat(bootstrap: str, *args: str, stdin: bytes | None = None, timeout: float = 60.0) -> bytes:
    cmd = [KCAT, "-b", bootstrap, "-X", "broker.address.family=v4", *args]
    proc = subprocess.run(cmd, input=stdin, capture_output=True, timeout=timeout)
    assert proc.returncode == 0, \
        f"{' '.join(cmd)} exited {proc.returncode}\nstderr:\n{proc.stderr.decode(errors='replace')}"
    assert b"ERROR" not in proc.stderr, proc.stderr.decode(errors="replace")
    return proc.stdout


def kcat_consume_json(bootstrap: str, topic: str) -> list[dict]:
    out = kcat(bootstrap, "-C", "-t", topic, "-o", "beginning", "-e", "-q", "-J")
    return [json.loads(line) for line in out.decode().splitlines() if line.strip()]


@pytest.mark.timeout(120)
def test_produce_keyed_lines_and_format(broker, new_topic):
    topic = new_topic("kc")
    H.create_topic(broker.bootstrap, topic, partitions=1)
    lines = [f"key{i}:value {i} with spaces" for i in range(200)]
    kcat(broker.bootstrap, "-P", "-t", topic, "-K:", stdin=("\n".join(lines) + "\n").encode())

    out = kcat(broker.bootstrap, "-C", "-t", topic, "-o", "beginning", "-e", "-q", "-f", "%k=%s\n")
    assert out.decode().splitlines() == [f"key{i}=value {i} with spaces" for i in range(200)]

    # The same data through librdkafka 2.16 (confluent-kafka).
    recs = H.consume_all(broker.bootstrap, topic)[0]
    assert [(r.key, r.value) for r in recs] == \
        [(f"key{i}".encode(), f"value {i} with spaces".encode()) for i in range(200)]


@pytest.mark.timeout(120)
def test_list_metadata(broker, new_topic):
    t1, t2 = new_topic("l1"), new_topic("l2")
    H.create_topic(broker.bootstrap, t1, partitions=1)
    H.create_topic(broker.bootstrap, t2, partitions=5)
    md = json.loads(kcat(broker.bootstrap, "-L", "-J"))
    topics = {t["topic"]: t for t in md["topics"]}
    assert t1 in topics and t2 in topics
    assert sorted(p["partition"] for p in topics[t2]["partitions"]) == [0, 1, 2, 3, 4]
    assert len(md["brokers"]) == 1
    assert md["brokers"][0]["name"] == broker.bootstrap
    assert all(p["leader"] == md["brokers"][0]["id"] for p in topics[t2]["partitions"])

    text = kcat(broker.bootstrap, "-L", "-t", t2).decode()
    assert f'topic "{t2}" with 5 partitions' in text


@pytest.mark.timeout(120)
@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_compressed_produce(broker, new_topic, codec):
    topic = new_topic(codec)
    H.create_topic(broker.bootstrap, topic, partitions=3)
    n = 1000
    lines = [f"k{i % 10}:{codec}-payload-{i}-" + "z" * (i % 50) for i in range(n)]
    kcat(broker.bootstrap, "-P", "-t", topic, "-K:", "-z", codec, "-H", "origin=kcat",
         "-X", "linger.ms=50", stdin=("\n".join(lines) + "\n").encode())

    msgs = kcat_consume_json(broker.bootstrap, topic)
    assert len(msgs) == n
    expected = {(l.split(":", 1)[0], l.split(":", 1)[1]) for l in lines}
    assert {(m["key"], m["payload"]) for m in msgs} == expected
    by_part: dict[int, list[int]] = {}
    key_part: dict[str, int] = {}
    for m in msgs:
        by_part.setdefault(m["partition"], []).append(m["offset"])
        assert key_part.setdefault(m["key"], m["partition"]) == m["partition"]
        assert m.get("headers") == ["origin", "kcat"], m
    for part, offs in by_part.items():
        assert offs == list(range(len(offs))), f"partition {part} offsets not dense"

    # Per-key order is preserved, also when read by the new librdkafka.
    ck = H.consume_all(broker.bootstrap, topic)
    assert sum(len(v) for v in ck.values()) == n
    for recs in ck.values():
        per_key: dict[bytes, list[int]] = {}
        for r in recs:
            per_key.setdefault(r.key, []).append(int(r.value.split(b"-")[2]))
            assert r.headers == (("origin", b"kcat"),)
        for seqs in per_key.values():
            assert seqs == sorted(seqs)


@pytest.mark.timeout(120)
def test_kcat_reads_confluent_produced(broker, new_topic):
    topic = new_topic("x")
    H.create_topic(broker.bootstrap, topic, partitions=1)
    recs = [dict(key=b"k%d" % i, value=b"v%d" % i, headers=[("h", b"%d" % i)], timestamp=1_600_000_000_000 + i)
            for i in range(50)]
    H.assert_all_delivered(H.produce_all(H.producer(broker.bootstrap, **{"compression.type": "zstd"}),
                                         topic, recs))
    msgs = kcat_consume_json(broker.bootstrap, topic)
    assert [(m["offset"], m["key"], m["payload"], m["ts"], m["headers"]) for m in msgs] == \
        [(i, f"k{i}", f"v{i}", 1_600_000_000_000 + i, ["h", str(i)]) for i in range(50)]

    # Start in the middle with -o and stop after -c messages.
    out = kcat(broker.bootstrap, "-C", "-t", topic, "-p", "0", "-o", "20", "-c", "5", "-q", "-f", "%o:%s\n")
    assert out.decode().splitlines() == [f"{i}:v{i}" for i in range(20, 25)]
