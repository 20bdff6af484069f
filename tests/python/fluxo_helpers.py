"""Shared helpers for the fluxo client-compatibility tests (confluent-kafka)."""

from __future__ import annotations

import os
import socket
import struct
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import pytest

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType

REPO_ROOT = Path(__file__).resolve().parents[2]


def fluxo_bin() -> str:
    path = os.path.abspath(os.environ.get("FLUXO_BIN") or str(REPO_ROOT / "target" / "debug" / "fluxo"))
    if not os.access(path, os.X_OK):
        pytest.fail(f"fluxo binary not found or not executable: {path} (set FLUXO_BIN)",
                    pytrace=False)
    return path


# librdkafka: keep clients quiet-ish but let real errors show up in captured stderr.
BASE_CONF = {
    "broker.address.family": "v4",
    "log_level": 4,
}


def wait_for(pred: Callable[[], object], timeout: float = 30.0, interval: float = 0.1,
             desc: str = "condition"):
    """Poll `pred` until it returns a truthy value; return that value."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            v = pred()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - reported on timeout
            last_exc = e
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {desc}"
                                 + (f" (last error: {last_exc!r})" if last_exc else ""))
        time.sleep(interval)


# -- admin ------------------------------------------------------------------

def admin(bootstrap: str, **conf) -> AdminClient:
    return AdminClient({**BASE_CONF, "bootstrap.servers": bootstrap, **conf})


def topic_partition_count(bootstrap: str, topic: str, timeout: float = 10.0) -> int | None:
    """Partition count from Metadata, or None if the broker says the topic is unknown."""
    md = admin(bootstrap).list_topics(topic=topic, timeout=timeout)
    t = md.topics.get(topic)
    if t is None or t.error is not None:
        return None
    return len(t.partitions)


def all_topics(bootstrap: str, timeout: float = 10.0) -> set[str]:
    return set(admin(bootstrap).list_topics(timeout=timeout).topics)


def create_topic(bootstrap: str, name: str, partitions: int = 1,
                 config: dict[str, str] | None = None, timeout: float = 30.0) -> None:
    """CreateTopics via AdminClient, then wait until Metadata shows every partition with a leader."""
    a = admin(bootstrap)
    fs = a.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1,
                                   config=dict(config or {}))],
                         operation_timeout=timeout, request_timeout=timeout)
    fs[name].result(timeout=timeout)

    def ready():
        md = a.list_topics(topic=name, timeout=5)
        t = md.topics.get(name)
        if t is None or t.error is not None or len(t.partitions) != partitions:
            return False
        return all(p.leader >= 0 and p.error is None for p in t.partitions.values())

    wait_for(ready, timeout=timeout, desc=f"topic {name} with {partitions} partitions in metadata")


def describe_topic_configs(bootstrap: str, topic: str, timeout: float = 30.0) -> dict:
    """name -> ConfigEntry for a topic."""
    res = ConfigResource(ResourceType.TOPIC, topic)
    a = admin(bootstrap)  # must stay alive until the future resolves
    fs = a.describe_configs([res], request_timeout=timeout)
    return fs[res].result(timeout=timeout)


# -- produce ----------------------------------------------------------------

@dataclass
class Delivery:
    err: KafkaError | None
    topic: str | None
    partition: int | None
    offset: int | None
    key: bytes | None
    value: bytes | None
    timestamp: tuple


def producer(bootstrap: str, **conf) -> Producer:
    return Producer({**BASE_CONF, "bootstrap.servers": bootstrap, "acks": "all", **conf})


def produce_all(p: Producer, topic: str, records: Iterable[dict], flush_timeout: float = 120.0) -> list[Delivery]:
    """Produce records (dicts of Producer.produce kwargs: value, key, headers,
    timestamp, partition) and return their delivery reports, in input order."""
    reports: dict[int, Delivery] = {}

    def make_cb(i):
        def cb(err, msg):
            reports[i] = Delivery(err, msg.topic(), msg.partition(), msg.offset(), msg.key(),
                                  msg.value(), msg.timestamp())
        return cb

    n = 0
    for r in records:
        cb = make_cb(n)
        while True:
            try:
                p.produce(topic, on_delivery=cb, **r)
                break
            except BufferError:
                p.poll(0.05)
        n += 1
        if n % 1000 == 0:
            p.poll(0)
    left = p.flush(flush_timeout)
    assert left == 0, f"{left} messages still undelivered after flush({flush_timeout})"
    assert len(reports) == n, f"{len(reports)} delivery reports for {n} messages"
    return [reports[i] for i in range(n)]


def assert_all_delivered(reports: list[Delivery]) -> None:
    errs = [r for r in reports if r.err is not None]
    assert not errs, f"{len(errs)} of {len(reports)} deliveries failed, first: {errs[0].err!r}"


# -- consume ----------------------------------------------------------------

@dataclass(frozen=True)
class Rec:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple | None
    ts_type: int
    ts: int


def consumer(bootstrap: str, **conf) -> Consumer:
    # No consumer groups in fluxo yet: a group.id is set (librdkafka wants
    # one) but only assign() is used, never subscribe(), and nothing is committed.
    return Consumer({
        **BASE_CONF,
        "bootstrap.servers": bootstrap,
        "group.id": f"fluxo-test-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "error",
        "check.crcs": True,
        **conf,
    })


def watermarks(bootstrap: str, topic: str, partitions: Iterable[int], timeout: float = 10.0) -> dict[int, tuple[int, int]]:
    c = consumer(bootstrap)
    try:
        return {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout, cached=False)
                for p in partitions}
    finally:
        c.close()


def consume_all(bootstrap: str, topic: str, timeout: float = 120.0, **conf) -> dict[int, list[Rec]]:
    """Read every partition of `topic` from offset 0 up to its current high
    watermark with assign() (as read_committed, librdkafka's default, unless
    `conf` says otherwise). Returns partition -> records in offset order."""
    c = consumer(bootstrap, **conf)
    try:
        md = c.list_topics(topic=topic, timeout=10)
        t = md.topics[topic]
        assert t.error is None, f"metadata error for {topic}: {t.error}"
        parts = sorted(t.partitions)
        highs = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)[1]
                 for p in parts}
        out: dict[int, list[Rec]] = {p: [] for p in parts}
        pending = {p for p in parts if highs[p] > 0}
        if pending:
            c.assign([TopicPartition(topic, p, 0) for p in sorted(pending)])
        deadline = time.monotonic() + timeout
        while pending:
            if time.monotonic() > deadline:
                got = {p: len(out[p]) for p in parts}
                raise AssertionError(f"consume_all({topic}) timed out: got {got}, high watermarks {highs}")
            for m in c.consume(num_messages=2000, timeout=0.5):
                err = m.error()
                if err is not None:
                    raise AssertionError(f"consumer error on {topic}: {err!r}")
                p = m.partition()
                hdrs = m.headers()
                out[p].append(Rec(p, m.offset(), m.key(), m.value(),
                                  tuple(hdrs) if hdrs is not None else None, *m.timestamp()))
                if m.offset() >= highs[p] - 1:
                    pending.discard(p)
            # A transactional topic ends with a marker, which is never
            # delivered: the consumer's position moves past it.
            if pending:
                for tp in c.position([TopicPartition(topic, p) for p in sorted(pending)]):
                    if tp.offset >= highs[tp.partition]:
                        pending.discard(tp.partition)
        return out
    finally:
        c.close()


def assert_dense(recs_by_part: dict[int, list[Rec]]) -> None:
    for p, recs in recs_by_part.items():
        offs = [r.offset for r in recs]
        assert offs == list(range(len(offs))), \
            f"partition {p}: offsets not dense from 0 (first few: {offs[:10]}, n={len(offs)})"


# -- raw Kafka protocol (for ApiVersions checks and garbage tests) -----------

API_VERSIONS_KEY = 18


def raw_connect(bootstrap: str, timeout: float = 10.0) -> socket.socket:
    host, port = bootstrap.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def frame(payload: bytes) -> bytes:
    return struct.pack(">i", len(payload)) + payload


def request_header_v1(api_key: int, api_version: int, correlation_id: int,
                      client_id: bytes = b"fluxo-raw-test") -> bytes:
    return struct.pack(">hhih", api_key, api_version, correlation_id, len(client_id)) + client_id


def api_versions_v0_request(correlation_id: int) -> bytes:
    return frame(request_header_v1(API_VERSIONS_KEY, 0, correlation_id))


def api_versions_flexible_request(api_version: int, correlation_id: int) -> bytes:
    """ApiVersions v3+ shape: request header v2 (tagged fields) and a body of
    compact strings client_software_name/version + tagged fields."""
    header = request_header_v1(API_VERSIONS_KEY, api_version, correlation_id) + b"\x00"
    name, ver = b"fluxo-tests", b"1.0"
    body = bytes([len(name) + 1]) + name + bytes([len(ver) + 1]) + ver + b"\x00"
    return frame(header + body)


def recv_exact(s: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def recv_frame(s: socket.socket) -> bytes | None:
    """One response frame (without the size prefix), or None on EOF."""
    size = recv_exact(s, 4)
    if size is None:
        return None
    (n,) = struct.unpack(">i", size)
    assert 0 <= n < 100 * 1024 * 1024, f"implausible response size {n}"
    return recv_exact(s, n)


def parse_api_versions_v0_response(payload: bytes) -> tuple[int, int, dict[int, tuple[int, int]]]:
    """-> (correlation_id, error_code, {api_key: (min, max)}) for a response
    header v0 + ApiVersions v0 body (the format Kafka also uses for the
    UNSUPPORTED_VERSION answer to any ApiVersions version it does not know)."""
    try:
        corr, err = struct.unpack_from(">ih", payload, 0)
        off = 6
        versions: dict[int, tuple[int, int]] = {}
        (count,) = struct.unpack_from(">i", payload, off)
        off += 4
        for _ in range(max(count, 0)):
            k, lo, hi = struct.unpack_from(">hhh", payload, off)
            off += 6
            versions[k] = (lo, hi)
    except struct.error as e:
        raise AssertionError(f"not an ApiVersions v0 response ({e}): {payload.hex()}") from None
    assert off == len(payload), f"{len(payload) - off} trailing bytes in ApiVersions v0 response: {payload.hex()}"
    return corr, err, versions


def api_versions(bootstrap: str) -> dict[int, tuple[int, int]]:
    """The broker's advertised {api_key: (min, max)} via ApiVersions v0."""
    with raw_connect(bootstrap) as s:
        s.sendall(api_versions_v0_request(4242))
        payload = recv_frame(s)
    assert payload is not None, "connection closed before ApiVersions v0 response"
    corr, err, versions = parse_api_versions_v0_response(payload)
    assert corr == 4242 and err == 0, (corr, err)
    return versions


def wait_closed(s: socket.socket, timeout: float = 10.0) -> bool:
    """True if the peer closes (EOF or reset) within `timeout`; any bytes it
    sends first are discarded."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        s.settimeout(left)
        try:
            data = s.recv(65536)
        except socket.timeout:
            return False
        except (ConnectionResetError, BrokenPipeError):
            return True
        if not data:
            return True


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0
