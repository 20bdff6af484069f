"""The MQTT source: `CREATE SOURCE ... WITH (connector = 'mqtt', url =
'mqtt://host:port', topic = 'sensors/#')` subscribes to an existing broker,
here Debian's mosquitto started for the test, and lands its messages in the
source's topic of fluxo's log before any view reads them.

Devices publish readings with paho-mqtt at QoS 1. The source's topic, read
with confluent-kafka, must hold each reading with the MQTT topic as key and
header; a view over the source aggregates them. fluxo is then killed with
SIGKILL while devices keep publishing: mosquitto queues the QoS 1 messages
for the source's persistent session, and after the restart every reading is
in the topic (QoS 1 is at least once: a message acknowledged by nobody may
arrive twice, none may be missing).
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections import Counter

import paho.mqtt.client as mqtt
import pytest

import fluxo_helpers as H
from test_sql import sql


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mosquitto(tmp_path):
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                    "max_queued_messages 100000\n")
    proc = subprocess.Popen(["/usr/sbin/mosquitto", "-c", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def ready():
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            return None
    try:
        H.wait_for(ready, timeout=15, desc="mosquitto listening")
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def publish(port: int, readings: list[tuple[str, dict]]) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"dev-{time.monotonic_ns()}")
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        infos = [client.publish(t, json.dumps(r), qos=1) for t, r in readings]
        for info in infos:
            info.wait_for_publish(timeout=30)
            assert info.is_published()
    finally:
        client.loop_stop()
        client.disconnect()


PROBE = "sensors/probe"


def topic_readings(broker) -> Counter:
    """The devices' readings in the source's topic (probes left out)."""
    recs = H.consume_all(broker.bootstrap, "mqtt-readings", timeout=30)
    out = Counter()
    for part in recs.values():
        for r in part:
            assert dict(r.headers)["mqtt_topic"] == r.key, r
            if r.key.decode() != PROBE:
                out[(r.key.decode(), r.value.decode())] += 1
    return out


def wait_subscribed(broker, port: int) -> None:
    """Publishes probes until one reaches the source's topic: from then on
    the source's session exists on the broker and keeps what it misses."""
    def arrived():
        publish(port, [(PROBE, {"device": "probe", "seq": -1, "temp": 0})])
        try:
            recs = H.consume_all(broker.bootstrap, "mqtt-readings", timeout=5)
        except AssertionError:
            return None
        return any(r.key == PROBE.encode() for part in recs.values() for r in part) or None
    H.wait_for(arrived, timeout=60, interval=0.5, desc="the MQTT source subscribed")


def readings(start: int, n: int) -> list[tuple[str, dict]]:
    return [(f"sensors/dev-{i % 7}/temp", {"device": f"dev-{i % 7}", "seq": i, "temp": 20 + i % 10})
            for i in range(start, start + n)]


@pytest.mark.timeout(180)
def test_an_mqtt_source_lands_a_brokers_messages_durably(broker, mosquitto):
    assert sql(broker, f"""CREATE SOURCE readings (device TEXT, seq BIGINT, temp DOUBLE)
                           WITH (connector = 'mqtt', url = 'mqtt://127.0.0.1:{mosquitto}',
                                 topic = 'sensors/#', format = 'json')""")["message"] == "CREATE SOURCE readings"
    sql(broker, "CREATE MATERIALIZED VIEW per_device AS SELECT device, count(*) AS n FROM readings GROUP BY device")
    wait_subscribed(broker, mosquitto)
    first = readings(0, 500)
    publish(mosquitto, first)
    want = Counter((t, json.dumps(r)) for t, r in first)
    H.wait_for(lambda: topic_readings(broker) == want or None, timeout=30,
               desc="every reading in the source's topic")
    H.wait_for(lambda: sorted(map(tuple, sql(broker, "SELECT device, n FROM per_device WHERE device <> 'probe'")["rows"]))
               == sorted((f"dev-{d}", sum(1 for i in range(500) if i % 7 == d)) for d in range(7)) or None,
               timeout=30, desc="the view counting every reading")

    # Readings published while fluxo is down wait in mosquitto's queue for
    # the source's persistent session.
    broker.kill9()
    later = readings(500, 300)
    publish(mosquitto, later)
    broker.start(port=broker.port)
    want.update((t, json.dumps(r)) for t, r in later)

    def complete():
        got = topic_readings(broker)
        return got if not (want - got) else None
    got = H.wait_for(complete, timeout=60, desc="every reading after the restart")
    assert set(got) == set(want), f"unexpected readings: {list(set(got) - set(want))[:3]}"

    err = sql(broker, "CREATE SOURCE bad (a TEXT) WITH (connector = 'mqtt', url = 'mqtt://127.0.0.1:1', "
                      "topic = 'a/#/b')", expect_status=400)
    assert "'#' must be" in err["error"], err
    err = sql(broker, "CREATE SOURCE bad (a TEXT) WITH (connector = 'mqtt', topic = 'a/#')", expect_status=400)
    assert "needs the option url" in err["error"], err
