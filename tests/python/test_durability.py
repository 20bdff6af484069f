"""Durability and robustness: restarts, kill -9 crash cycles, garbage input."""

from __future__ import annotations

import collections
import os
import random
import signal
import socket
import struct
import threading
import time

import pytest
from confluent_kafka import TIMESTAMP_LOG_APPEND_TIME, TopicPartition
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, NewPartitions, ResourceType

import fluxo_helpers as H

WATCHED_CONFIGS = ("max.message.bytes", "message.timestamp.type", "retention.ms", "retention.bytes",
                   "segment.bytes", "segment.ms", "cleanup.policy", "flush.messages", "flush.ms")


def snapshot(bootstrap: str, topics: list[str]) -> dict:
    """Everything a restart must preserve for these topics."""
    snap = {}
    for t in topics:
        recs = H.consume_all(bootstrap, t)
        cfg = H.describe_topic_configs(bootstrap, t)
        snap[t] = {
            "partitions": H.topic_partition_count(bootstrap, t),
            "configs": {k: (cfg[k].value, cfg[k].source) for k in WATCHED_CONFIGS if k in cfg},
            "records": recs,
            "watermarks": H.watermarks(bootstrap, t, sorted(recs)),
        }
    return snap


def assert_same_snapshot(before: dict, after: dict) -> None:
    for t, b in before.items():
        a = after[t]
        assert a["partitions"] == b["partitions"], (t, "partitions", b["partitions"], a["partitions"])
        assert a["configs"] == b["configs"], (t, "configs", b["configs"], a["configs"])
        assert a["watermarks"] == b["watermarks"], (t, "watermarks", b["watermarks"], a["watermarks"])
        for p, recs in b["records"].items():
            assert a["records"][p] == recs, f"{t}/{p}: records differ after restart"


def populate(bootstrap: str, new_topic) -> tuple[list[str], str]:
    """Topics with varied partition counts/configs/data; returns (live topics, deleted topic)."""
    t_multi, t_lat, t_grown, t_altered, t_seg, t_deleted = (
        new_topic("multi"), new_topic("lat"), new_topic("grown"), new_topic("altered"),
        new_topic("seg"), new_topic("deleted"))
    H.create_topic(bootstrap, t_multi, 3, {"retention.ms": "3600000", "max.message.bytes": "2000000"})
    H.create_topic(bootstrap, t_lat, 1, {"message.timestamp.type": "LogAppendTime"})
    H.create_topic(bootstrap, t_grown, 2)
    H.create_topic(bootstrap, t_altered, 1)
    H.create_topic(bootstrap, t_seg, 2, {"segment.bytes": "1048576"})
    H.create_topic(bootstrap, t_deleted, 1)

    a = H.admin(bootstrap)
    a.create_partitions([NewPartitions(t_grown, 4)])[t_grown].result(timeout=30)
    H.wait_for(lambda: H.topic_partition_count(bootstrap, t_grown) == 4, desc="grown to 4")
    res = ConfigResource(ResourceType.TOPIC, t_altered, incremental_configs=[
        ConfigEntry("retention.ms", "98765432", incremental_operation=AlterConfigOpType.SET),
        ConfigEntry("cleanup.policy", "delete", incremental_operation=AlterConfigOpType.SET)])
    a.incremental_alter_configs([res])[res].result(timeout=30)

    p = H.producer(bootstrap, **{"compression.type": "gzip", "linger.ms": 10})
    ts0 = int(time.time() * 1000) - 50_000
    for t in (t_multi, t_lat, t_grown, t_altered, t_deleted):
        H.assert_all_delivered(H.produce_all(p, t, [
            dict(key=b"k%d" % (i % 11), value=b"%s-%d" % (t.encode(), i), headers=[("i", b"%d" % i)],
                 timestamp=ts0 + i) for i in range(500)]))
    # ~3 MB of incompressible data in 1 MiB segments: several segments per partition.
    p_raw = H.producer(bootstrap, **{"compression.type": "none", "linger.ms": 10})
    H.assert_all_delivered(H.produce_all(p_raw, t_seg, [
        dict(key=b"s%d" % i, value=os.urandom(1000), partition=i % 2) for i in range(3000)]))

    a.delete_topics([t_deleted], operation_timeout=30)[t_deleted].result(timeout=30)
    H.wait_for(lambda: t_deleted not in H.all_topics(bootstrap), desc="deleted topic gone")
    return [t_multi, t_lat, t_grown, t_altered, t_seg], t_deleted


@pytest.mark.timeout(300)
def test_clean_restart_keeps_everything(broker, new_topic):
    topics, deleted = populate(broker.bootstrap, new_topic)
    before = snapshot(broker.bootstrap, topics)
    lat = before[topics[1]]["records"][0]
    assert all(r.ts_type == TIMESTAMP_LOG_APPEND_TIME for r in lat)
    port = broker.port

    broker.restart()
    assert broker.port == port
    after = snapshot(broker.bootstrap, topics)
    assert_same_snapshot(before, after)
    assert deleted not in H.all_topics(broker.bootstrap), "deleted topic came back after restart"

    # Appends continue at the old high watermark.
    t = topics[0]
    p = H.producer(broker.bootstrap)
    reports = H.produce_all(p, t, [dict(value=b"after-restart", partition=1)])
    H.assert_all_delivered(reports)
    assert reports[0].offset == before[t]["watermarks"][1][1]

    # A second restart, this time with -9 while idle: nothing acknowledged is lost.
    before2 = snapshot(broker.bootstrap, topics)
    broker.kill9()
    broker.start()
    assert broker.port == port
    assert_same_snapshot(before2, snapshot(broker.bootstrap, topics))
    assert deleted not in H.all_topics(broker.bootstrap)


@pytest.mark.timeout(60)
def test_topic_created_right_before_kill9_survives(broker, new_topic):
    topic = new_topic("fresh")
    H.create_topic(broker.bootstrap, topic, 3, {"retention.ms": "1234567"})
    broker.kill9()
    broker.start()
    assert H.topic_partition_count(broker.bootstrap, topic) == 3
    assert H.describe_topic_configs(broker.bootstrap, topic)["retention.ms"].value == "1234567"


@pytest.mark.timeout(120)
def test_sigint_with_open_connections_shuts_down_cleanly(broker, new_topic):
    topic = new_topic("sigint")
    H.create_topic(broker.bootstrap, topic, 2)
    p = H.producer(broker.bootstrap, **{"linger.ms": 5})
    H.assert_all_delivered(H.produce_all(p, topic, [dict(value=b"v%d" % i, partition=i % 2) for i in range(200)]))
    # Idle-but-connected clients and a half-sent request must not hold up shutdown.
    c = H.consumer(broker.bootstrap)
    c.assign([TopicPartition(topic, 0, 0), TopicPartition(topic, 1, 0)])
    assert c.consume(10, timeout=10), "consumer got nothing before shutdown"
    raw = H.raw_connect(broker.bootstrap)
    raw.sendall(struct.pack(">i", 100) + b"\x00\x12")
    try:
        rc = broker.stop(sig=signal.SIGINT)
        assert rc == 0, f"exit code {rc} after SIGINT"
    finally:
        raw.close()
        c.close()
    broker.start()
    got = H.consume_all(broker.bootstrap, topic)
    assert sorted(r.value for recs in got.values() for r in recs) == sorted(b"v%d" % i for i in range(200))


class CrashCycleProducer(threading.Thread):
    """Produces numbered values until stopped; records the acknowledged ones."""

    def __init__(self, bootstrap: str, topic: str, cycle: int, partitions: int):
        super().__init__(daemon=True, name=f"producer-cycle-{cycle}")
        self.bootstrap, self.topic, self.cycle, self.partitions = bootstrap, topic, cycle, partitions
        self.acked: set[bytes] = set()
        self.failed = 0
        self.sent = 0
        self.stop_evt = threading.Event()
        self.error: BaseException | None = None

    def _cb(self, err, msg):
        if err is None:
            self.acked.add(msg.value())
        else:
            self.failed += 1

    def run(self):
        try:
            p = H.producer(self.bootstrap, **{
                "enable.idempotence": False,
                "linger.ms": 2,
                # Never resend: a resent request may duplicate a record the
                # broker had written before it died, and the test forbids
                # duplicates. Messages sent once are either acked or not.
                "message.send.max.retries": 0,
                "message.timeout.ms": 5000,
                "queue.buffering.max.messages": 20000,
                "reconnect.backoff.ms": 50,
            })
            n = 0
            while not self.stop_evt.is_set():
                value = b"c%d-%08d" % (self.cycle, n)
                try:
                    p.produce(self.topic, value=value, partition=n % self.partitions, on_delivery=self._cb)
                    n += 1
                    if n % 50 == 0:
                        p.poll(0)
                        time.sleep(0.001)  # at most ~50k records/s: keeps the final check quick
                except BufferError:
                    p.poll(0.01)
            self.sent = n
            # The broker is dead: fail whatever is left (in-flight ones may or
            # may not have been written; they are not counted as acked).
            p.flush(0.5)
            p.purge(in_queue=True, in_flight=True, blocking=True)
            left = p.flush(15)
            assert left == 0, f"{left} messages still pending after purge"
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e


@pytest.mark.timeout(600)
def test_kill9_cycles_lose_no_acknowledged_record(broker, new_topic):
    seed = int(os.environ.get("FLUXO_TEST_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)
    print(f"seed={seed} (set FLUXO_TEST_SEED to reproduce)")
    topic = new_topic("crash")
    partitions = 4
    H.create_topic(broker.bootstrap, topic, partitions=partitions)
    port = broker.port

    all_acked: set[bytes] = set()
    cycles = 4
    for cycle in range(cycles):
        prod = CrashCycleProducer(broker.bootstrap, topic, cycle, partitions)
        prod.start()
        # Make sure this cycle really produces something before the crash.
        H.wait_for(lambda: len(prod.acked) > 0 or prod.error, timeout=30,
                   desc=f"first ack in cycle {cycle}")
        time.sleep(rng.uniform(0.5, 1.5))
        broker.note(f"cycle {cycle}: kill -9 with {len(prod.acked)} acked so far")
        broker.kill9()
        prod.stop_evt.set()
        prod.join(timeout=60)
        assert not prod.is_alive(), "producer thread hung after the broker was killed"
        assert prod.error is None, f"producer thread failed: {prod.error!r}"
        print(f"cycle {cycle}: sent={prod.sent} acked={len(prod.acked)} failed={prod.failed}")
        assert len(prod.acked) > 0
        all_acked |= prod.acked
        broker.start()
        assert broker.port == port
        assert H.topic_partition_count(broker.bootstrap, topic) == partitions

    # The restarted broker still takes writes.
    final = [b"final-%d" % i for i in range(20)]
    H.assert_all_delivered(H.produce_all(H.producer(broker.bootstrap), topic,
                                         [dict(value=v, partition=i % partitions) for i, v in enumerate(final)]))
    all_acked |= set(final)

    got = H.consume_all(broker.bootstrap, topic, timeout=300)
    H.assert_dense(got)
    values = [r.value for recs in got.values() for r in recs]
    counts = collections.Counter(values)
    dups = [v for v, c in counts.items() if c > 1]
    assert not dups, f"{len(dups)} duplicated values, e.g. {dups[:5]}"
    missing = all_acked - set(counts)
    assert not missing, f"{len(missing)} acknowledged values lost, e.g. {sorted(missing)[:5]} (seed {seed})"
    # Values land on the partition they were sent to, in order.
    for p_id, recs in got.items():
        seqs = [r.value for r in recs if not r.value.startswith(b"final-")]
        assert seqs == sorted(seqs), f"partition {p_id}: values out of order"
        for v in seqs:
            assert int(v.split(b"-")[1]) % partitions == p_id


# -- garbage on the wire -------------------------------------------------------

def _send_and_close(bootstrap: str, data: bytes) -> None:
    with H.raw_connect(bootstrap) as s:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.mark.timeout(180)
def test_garbage_on_socket(broker, new_topic):
    rng = random.Random(1234)
    pid = broker.pid
    rss0 = H.rss_bytes(pid)

    # Sanity check of the raw encoder: a well-formed ApiVersions v0.
    versions = H.api_versions(broker.bootstrap)
    for key in (0, 1, 2, 3, 18, 19, 20, 22, 32, 33, 37, 44, 60):
        assert key in versions, f"ApiVersions does not list api key {key}: {sorted(versions)}"

    # 1. Random bytes, several sizes; the server may close or wait.
    for n in (1, 3, 7, 64, 4096, 100_000):
        _send_and_close(broker.bootstrap, rng.randbytes(n))

    # 2. Frame claiming 0x7fffffff bytes: must be refused (connection closed)
    #    without trying to allocate 2 GiB.
    with H.raw_connect(broker.bootstrap) as s:
        s.sendall(struct.pack(">i", 0x7FFFFFFF) + b"\x00" * 100)
        assert H.wait_closed(s, 10), "server kept a connection announcing a 2 GiB frame"

    # 3. Negative size.
    with H.raw_connect(broker.bootstrap) as s:
        s.sendall(struct.pack(">i", -1) + b"\x00" * 16)
        assert H.wait_closed(s, 10), "server kept a connection with a negative frame size"

    # 4. Valid size, junk payload (unknown api key / undecodable header).
    for _ in range(10):
        payload = struct.pack(">hh", rng.randrange(1000, 32767), rng.randrange(0, 100)) + rng.randbytes(60)
        with H.raw_connect(broker.bootstrap) as s:
            s.sendall(H.frame(payload))
            H.wait_closed(s, 1)  # either answer or close; it must not crash the server
    #    Known api key, junk body (Produce v9 with garbage after the header).
    with H.raw_connect(broker.bootstrap) as s:
        s.sendall(H.frame(H.request_header_v1(0, 9, 7) + rng.randbytes(200)))
        H.wait_closed(s, 1)
    #    Truncated frame, then hang up.
    with H.raw_connect(broker.bootstrap) as s:
        s.sendall(struct.pack(">i", 1000) + b"\x00\x12\x00\x00")

    # 5. ApiVersions v99: UNSUPPORTED_VERSION (35) in a v0-format response that
    #    still lists ApiVersions' own range (KIP-511), and the connection stays usable.
    with H.raw_connect(broker.bootstrap) as s:
        s.settimeout(10)
        s.sendall(H.api_versions_flexible_request(99, 777))
        payload = H.recv_frame(s)
        assert payload is not None, "connection closed instead of an UNSUPPORTED_VERSION response"
        corr, err, vers = H.parse_api_versions_v0_response(payload)
        assert corr == 777
        assert err == 35, f"want UNSUPPORTED_VERSION (35), got {err}"
        assert 18 in vers, f"UNSUPPORTED_VERSION response should list ApiVersions' versions, got {vers}"
        s.sendall(H.api_versions_v0_request(778))
        payload = H.recv_frame(s)
        assert payload is not None
        corr, err, vers = H.parse_api_versions_v0_response(payload)
        assert (corr, err) == (778, 0) and 0 in vers

    # 6. A burst of connections dropped mid-way.
    socks = [H.raw_connect(broker.bootstrap) for _ in range(100)]
    for i, s in enumerate(socks):
        if i % 2:
            s.sendall(struct.pack(">i", 50) + b"\x00\x03")
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST on close
        s.close()

    # The server is alive, did not balloon, and serves real clients.
    assert broker.is_alive(), "fluxo died from garbage input"
    rss1 = H.rss_bytes(pid)
    assert rss1 < rss0 + 512 * 1024 * 1024, f"RSS grew from {rss0} to {rss1}"
    topic = new_topic("after")
    H.create_topic(broker.bootstrap, topic, partitions=2)
    H.assert_all_delivered(H.produce_all(H.producer(broker.bootstrap), topic,
                                         [dict(key=b"k%d" % i, value=b"v%d" % i) for i in range(100)]))
    got = H.consume_all(broker.bootstrap, topic)
    assert sorted(r.value for recs in got.values() for r in recs) == sorted(b"v%d" % i for i in range(100))
    assert broker.pid == pid and broker.is_alive()
