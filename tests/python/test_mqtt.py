"""The MQTT front against real MQTT clients (paho-mqtt, Debian's
mosquitto_pub/mosquitto_sub) and real Kafka clients (confluent-kafka).

The first level of an MQTT topic names the fluxo topic; the whole MQTT topic
is the record key and the `mqtt_topic` header; the payload is the value.
"""

from __future__ import annotations

import queue
import socket
import struct
import subprocess
import threading
import time
import uuid

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

import fluxo_helpers as H

V311 = mqtt.MQTTv311
V5 = mqtt.MQTTv5
PROTOCOLS = [pytest.param(V311, id="mqtt311"), pytest.param(V5, id="mqtt5")]


class Device:
    """A paho client with its events as queues and flags."""

    def __init__(self, broker, client_id=None, protocol=V311, clean=True,
                 username=None, password=None, will=None, keepalive=30,
                 session_expiry=3600):
        self.client_id = client_id or f"dev-{uuid.uuid4().hex[:8]}"
        self.protocol = protocol
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=protocol,
            clean_session=clean if protocol == V311 else None,
        )
        self.messages: "queue.Queue[mqtt.MQTTMessage]" = queue.Queue()
        self.connack = queue.Queue()
        self.subacks = queue.Queue()
        self.disconnected = threading.Event()
        self.published: dict[int, object] = {}
        c = self.client
        c.on_message = lambda _c, _u, m: self.messages.put(m)
        c.on_connect = lambda _c, _u, flags, rc, _p: self.connack.put((flags, rc))
        c.on_subscribe = lambda _c, _u, mid, rcs, _p: self.subacks.put((mid, rcs))
        c.on_disconnect = lambda *_a: self.disconnected.set()
        c.on_publish = lambda _c, _u, mid, rc, _p: self.published.__setitem__(mid, rc)
        if username is not None:
            c.username_pw_set(username, password)
        if will is not None:
            c.will_set(will[0], will[1], qos=1)
        host, port = broker.listeners["mqtt"]
        props = None
        kwargs = {}
        if protocol == V5:
            kwargs["clean_start"] = clean
            if not clean:
                props = Properties(PacketTypes.CONNECT)
                props.SessionExpiryInterval = session_expiry
        c.connect(host, port, keepalive=keepalive, properties=props, **kwargs)
        c.loop_start()

    def wait_connack(self, timeout=10.0):
        flags, rc = self.connack.get(timeout=timeout)
        return flags, rc

    def connected(self):
        flags, rc = self.wait_connack()
        assert not rc.is_failure, f"CONNECT refused: {rc}"
        return flags

    def subscribe(self, *filters, qos=1):
        result, mid = self.client.subscribe([(f, qos) for f in filters])
        assert result == mqtt.MQTT_ERR_SUCCESS
        got_mid, rcs = self.subacks.get(timeout=10)
        assert got_mid == mid
        return rcs

    def publish(self, topic, payload, qos=1, timeout=10.0):
        info = self.client.publish(topic, payload, qos=qos)
        info.wait_for_publish(timeout=timeout)
        assert info.is_published(), f"no acknowledgement for {topic}"
        return info

    def receive(self, n, timeout=15.0):
        out = []
        deadline = time.monotonic() + timeout
        while len(out) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"got {len(out)} of {n} messages: {[(m.topic, m.payload) for m in out]}")
            try:
                out.append(self.messages.get(timeout=left))
            except queue.Empty:
                pass
        return out

    def nothing_more(self, wait=1.0):
        try:
            m = self.messages.get(timeout=wait)
        except queue.Empty:
            return
        raise AssertionError(f"unexpected message {m.topic} {m.payload!r}")

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()

    def drop(self):
        """Close the socket without DISCONNECT, as a device losing power."""
        self.client.loop_stop()
        sock = self.client.socket()
        if sock is not None:
            sock.close()


def records(broker, topic):
    by_partition = H.consume_all(broker.bootstrap, topic)
    return [r for recs in by_partition.values() for r in recs]


def header(rec, name):
    return dict(rec.headers or ()).get(name)


def mqtt_socket(broker, timeout=10.0):
    host, port = broker.listeners["mqtt"]
    return socket.create_connection((host, port), timeout=timeout)


def connect_packet(client_id: bytes, keepalive: int = 30) -> bytes:
    """A minimal MQTT 3.1.1 CONNECT (clean session), for raw-socket tests."""
    body = b"\x00\x04MQTT\x04\x02" + struct.pack(">H", keepalive)
    body += struct.pack(">H", len(client_id)) + client_id
    return bytes([0x10, len(body)]) + body


def read_connack(s: socket.socket) -> bytes:
    data = b""
    while len(data) < 4:
        chunk = s.recv(4 - len(data))
        assert chunk, "closed before CONNACK"
        data += chunk
    return data


# -- publish -------------------------------------------------------------------

@pytest.mark.timeout(60)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_publishes_become_records_keyed_by_mqtt_topic(broker, new_topic, protocol):
    topic = new_topic("sensors")
    dev = Device(broker, protocol=protocol)
    dev.connected()
    dev.publish(f"{topic}/dev-1/temp", b"21.5", qos=0)
    dev.publish(f"{topic}/dev-1/temp", b"21.7", qos=1)
    dev.publish(f"{topic}/dev-2/temp", b"19.0", qos=1)
    dev.close()
    got = sorted((r.key, r.value) for r in records(broker, topic))
    assert got == [
        (f"{topic}/dev-1/temp".encode(), b"21.5"),
        (f"{topic}/dev-1/temp".encode(), b"21.7"),
        (f"{topic}/dev-2/temp".encode(), b"19.0"),
    ]
    for r in records(broker, topic):
        assert header(r, "mqtt_topic") == r.key


@pytest.mark.timeout(60)
def test_qos2_is_written_exactly_once(broker, new_topic):
    topic = new_topic("q2")
    dev = Device(broker, protocol=V5)
    dev.connected()
    for i in range(5):
        dev.publish(f"{topic}/d", f"m{i}".encode(), qos=2)
    dev.close()
    assert [r.value for r in records(broker, topic)] == [f"m{i}".encode() for i in range(5)]


@pytest.mark.timeout(120)
def test_acknowledged_qos1_records_survive_kill9(broker, new_topic):
    topic = new_topic("durable")
    dev = Device(broker, protocol=V311)
    dev.connected()
    infos = [dev.client.publish(f"{topic}/dev-{i % 4}", f"v{i}".encode(), qos=1) for i in range(200)]
    for info in infos:
        info.wait_for_publish(timeout=30)
    acked = {f"v{i}".encode() for i, info in enumerate(infos) if info.is_published()}
    assert len(acked) == 200
    broker.kill9()
    dev.drop()
    broker.start()
    got = {r.value for r in records(broker, topic)}
    assert acked <= got, f"lost {len(acked - got)} acknowledged records"


@pytest.mark.timeout(60)
def test_invalid_topics_are_refused(broker):
    # MQTT 5: a negative PUBACK (0x90 topic name invalid); the connection stays.
    dev = Device(broker, protocol=V5)
    dev.connected()
    info = dev.client.publish("bad topic/x", b"v", qos=1)
    info.wait_for_publish(timeout=10)
    H.wait_for(lambda: info.mid in dev.published, timeout=10)
    assert dev.published[info.mid].value == 0x90
    dev.publish("fine/x", b"still connected", qos=1)
    dev.close()
    # MQTT 3.1.1 has no negative PUBACK: the server closes the connection.
    old = Device(broker, protocol=V311)
    old.connected()
    old.client.publish("$SYS/x", b"v", qos=1)
    assert old.disconnected.wait(10), "a 3.1.1 client publishing to an invalid topic stays connected"
    old.client.loop_stop()


# -- subscribe -----------------------------------------------------------------

@pytest.mark.timeout(60)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_wildcard_subscriptions_receive_kafka_producers_records(broker, new_topic, protocol):
    topic, other = new_topic("plant"), new_topic("alerts")
    sub = Device(broker, protocol=protocol)
    sub.connected()
    rcs = sub.subscribe(f"{topic}/+/temp", f"{other}/#", qos=1)
    assert [rc.value if hasattr(rc, "value") else rc for rc in rcs] == [1, 1]
    p = H.producer(broker.bootstrap)
    H.assert_all_delivered(H.produce_all(p, topic, [
        dict(key=f"{topic}/line-1/temp".encode(), value=b"a"),
        dict(key=f"{topic}/line-1/humidity".encode(), value=b"not matched"),
        dict(key=f"{topic}/x/y/temp".encode(), value=b"too deep for +"),
    ]))
    H.assert_all_delivered(H.produce_all(p, other, [dict(key=b"not an mqtt topic", value=b"c")]))
    got = sub.receive(2)
    assert sorted((m.topic, m.payload, m.qos) for m in got) == sorted([
        (f"{topic}/line-1/temp", b"a", 1),
        (other, b"c", 1),  # a key that is no topic of `other`: the fluxo topic's name
    ])
    sub.nothing_more()
    sub.close()


@pytest.mark.timeout(60)
def test_subscribers_get_other_devices_publishes(broker, new_topic):
    topic = new_topic("chat")
    sub = Device(broker, protocol=V5)
    sub.connected()
    sub.subscribe(f"{topic}/#", qos=0)
    pub = Device(broker, protocol=V311)
    pub.connected()
    pub.publish(f"{topic}/room-1", b"hello", qos=1)
    [m] = sub.receive(1)
    assert (m.topic, m.payload, m.qos) == (f"{topic}/room-1", b"hello", 0)
    sub.close()
    pub.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_persistent_session_receives_what_came_while_away(broker, new_topic, protocol):
    topic = new_topic("away")
    client_id = f"persistent-{uuid.uuid4().hex[:6]}"
    first = Device(broker, client_id=client_id, protocol=protocol, clean=False)
    first.connected()
    first.subscribe(f"{topic}/#", qos=1)
    first.close()
    p = H.producer(broker.bootstrap)
    H.assert_all_delivered(H.produce_all(p, topic, [
        dict(key=f"{topic}/d".encode(), value=f"while away {i}".encode()) for i in range(3)
    ]))
    back = Device(broker, client_id=client_id, protocol=protocol, clean=False)
    flags = back.connected()
    session_present = flags.session_present if hasattr(flags, "session_present") else flags["session present"]
    assert session_present
    got = back.receive(3)
    assert [m.payload for m in got] == [f"while away {i}".encode() for i in range(3)]
    back.nothing_more()
    back.close()
    # A clean session starts over: no subscription, nothing delivered.
    clean = Device(broker, client_id=client_id, protocol=protocol, clean=True)
    clean.connected()
    H.assert_all_delivered(H.produce_all(p, topic, [dict(key=b"k", value=b"after clean")]))
    clean.nothing_more()
    clean.close()


@pytest.mark.timeout(60)
def test_a_second_connect_takes_the_session_over(broker, new_topic):
    client_id = f"twin-{uuid.uuid4().hex[:6]}"
    first = Device(broker, client_id=client_id, protocol=V311)
    first.connected()
    first.client.reconnect_delay_set(min_delay=60, max_delay=60)  # stay down once closed
    second = Device(broker, client_id=client_id, protocol=V311)
    second.connected()
    assert first.disconnected.wait(10), "the first connection was not closed"
    second.publish(f"{new_topic('twin')}/x", b"v", qos=1)
    first.client.loop_stop()
    second.close()


# -- last will, keep-alive, authentication ---------------------------------------

@pytest.mark.timeout(60)
def test_last_will_is_published_when_the_socket_drops(broker, new_topic):
    topic = new_topic("wills")
    watcher = Device(broker, protocol=V311)
    watcher.connected()
    watcher.subscribe(f"{topic}/#", qos=1)
    dev = Device(broker, protocol=V311, will=(f"{topic}/dev-9/status", b"offline"))
    dev.connected()
    dev.drop()
    [m] = watcher.receive(1)
    assert (m.topic, m.payload) == (f"{topic}/dev-9/status", b"offline")
    # A DISCONNECT leaves no will.
    polite = Device(broker, protocol=V311, will=(f"{topic}/dev-8/status", b"offline"))
    polite.connected()
    polite.close()
    watcher.nothing_more()
    watcher.close()
    [rec] = records(broker, topic)
    assert rec.key == f"{topic}/dev-9/status".encode()


@pytest.mark.timeout(30)
def test_keep_alive_closes_silent_connections(broker):
    with mqtt_socket(broker) as s:
        s.sendall(connect_packet(b"silent", keepalive=1))
        assert read_connack(s) == b"\x20\x02\x00\x00"
        started = time.monotonic()
        assert H.wait_closed(s, 10), "a silent connection outlived its keep-alive"
        assert time.monotonic() - started >= 1.0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_wrong_password_is_refused(broker_factory, new_topic, protocol):
    b = broker_factory(["--mqtt-user", "devices", "--mqtt-password", "s3cret"])
    for user, password in [("devices", "wrong"), ("someone", "s3cret"), (None, None)]:
        dev = Device(b, protocol=protocol, username=user, password=password)
        _, rc = dev.wait_connack()
        assert rc.is_failure and rc.value in (0x86, 0x87), f"{user}/{password}: {rc}"
        dev.client.loop_stop()
        dev.client.disconnect()
    ok = Device(b, protocol=protocol, username="devices", password="s3cret")
    ok.connected()
    ok.publish(f"{new_topic('auth')}/x", b"v", qos=1)
    ok.close()


# -- bad input -------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_malformed_packets_close_only_their_connection(broker, new_topic):
    topic = new_topic("robust")
    good = Device(broker, protocol=V311)
    good.connected()
    good.subscribe(f"{topic}/#", qos=1)
    # Not MQTT at all.
    with mqtt_socket(broker) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert H.wait_closed(s, 10)
    # A CONNECT, then a packet of the reserved type 0 and garbage.
    with mqtt_socket(broker) as s:
        s.sendall(connect_packet(b"garbage"))
        assert read_connack(s)[:2] == b"\x20\x02"
        s.sendall(b"\x00\x05hello")
        assert H.wait_closed(s, 10)
    # A PUBLISH announcing ~256 MB: refused on its header, never buffered.
    with mqtt_socket(broker) as s:
        s.sendall(connect_packet(b"huge"))
        read_connack(s)
        s.sendall(b"\x30\xff\xff\xff\x7f" + b"\x00" * 1024)
        assert H.wait_closed(s, 10)
    # A second CONNECT is a protocol violation.
    with mqtt_socket(broker) as s:
        s.sendall(connect_packet(b"twice"))
        read_connack(s)
        s.sendall(connect_packet(b"twice"))
        assert H.wait_closed(s, 10)
    # The well-behaved device never noticed.
    assert not good.disconnected.is_set()
    good.publish(f"{topic}/ok", b"still here", qos=1)
    [m] = good.receive(1)
    assert m.payload == b"still here"
    good.close()
    assert broker.is_alive()


# -- mosquitto's clients -----------------------------------------------------------

@pytest.mark.timeout(60)
def test_mosquitto_pub_and_sub(broker, new_topic):
    topic = new_topic("mosq")
    host, port = broker.listeners["mqtt"]
    sub = subprocess.Popen(
        # Line-buffered: mosquitto_sub's stdout is a pipe here.
        ["stdbuf", "-oL", "mosquitto_sub", "-h", host, "-p", str(port), "-t", f"{topic}/#", "-q", "1",
         "-v", "-C", "2", "-W", "30", "-i", f"sub-{uuid.uuid4().hex[:6]}", "-d"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        # -d reports the SUBACK: publish only once the subscription exists.
        lines = []
        for line in sub.stdout:
            lines.append(line)
            if "SUBACK" in line:
                break
        else:
            raise AssertionError(f"mosquitto_sub got no SUBACK: {lines}")
        for version, payload in [("mqttv311", "from 3.1.1"), ("mqttv5", "from 5")]:
            subprocess.run(
                ["mosquitto_pub", "-h", host, "-p", str(port), "-V", version, "-q", "1",
                 "-t", f"{topic}/dev/{version}", "-m", payload],
                check=True, timeout=20,
            )
        out, _ = sub.communicate(timeout=30)
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait()
    got = [l for l in out.splitlines() if l.startswith(f"{topic}/")]
    assert got == [f"{topic}/dev/mqttv311 from 3.1.1", f"{topic}/dev/mqttv5 from 5"], out
    assert sub.returncode == 0
    got = sorted((r.key, r.value) for r in records(broker, topic))
    assert got == [(f"{topic}/dev/mqttv311".encode(), b"from 3.1.1"),
                   (f"{topic}/dev/mqttv5".encode(), b"from 5")]


@pytest.mark.timeout(60)
def test_shutdown_with_devices_connected_is_clean(broker, new_topic):
    topic = new_topic("bye")
    dev = Device(broker, protocol=V5, will=(f"{topic}/dev/status", b"offline"))
    dev.connected()
    dev.subscribe(f"{topic}/#", qos=1)
    dev.client.reconnect_delay_set(min_delay=60, max_delay=60)
    assert broker.stop() == 0, "SIGTERM with an MQTT device connected"
    assert dev.disconnected.wait(10), "the device was not disconnected"
    dev.client.loop_stop()
    broker.start()
    # The server stopping is no fault of the device: no last will.
    assert records(broker, topic) == []


@pytest.mark.timeout(60)
def test_without_auto_creation_missing_topics_are_refused(broker_factory, new_topic):
    b = broker_factory(["--auto-create-topics", "false"])
    missing, existing = new_topic("missing"), new_topic("existing")
    H.create_topic(b.bootstrap, existing, partitions=2)
    dev = Device(b, protocol=V5)
    dev.connected()
    info = dev.client.publish(f"{missing}/x", b"v", qos=1)
    H.wait_for(lambda: info.mid in dev.published, timeout=10)
    assert dev.published[info.mid].value == 0x90
    rcs = dev.subscribe(f"{missing}/#", f"{existing}/#", qos=1)
    assert [rc.is_failure for rc in rcs] == [True, False]
    dev.publish(f"{existing}/dev-1", b"kept", qos=1)
    [m] = dev.receive(1)
    assert (m.topic, m.payload) == (f"{existing}/dev-1", b"kept")
    dev.close()
    assert missing not in H.all_topics(b.bootstrap)


@pytest.mark.timeout(60)
def test_mqtt5_sessions_expire_after_their_interval(broker, new_topic):
    topic = new_topic("expiry")
    client_id = f"short-{uuid.uuid4().hex[:6]}"
    dev = Device(broker, client_id=client_id, protocol=V5, clean=False, session_expiry=1)
    dev.connected()
    dev.subscribe(f"{topic}/#", qos=1)
    dev.close()
    time.sleep(1.5)
    back = Device(broker, client_id=client_id, protocol=V5, clean=False, session_expiry=60)
    flags = back.connected()
    assert not flags.session_present, "the session outlived its 1 s expiry interval"
    back.close()
