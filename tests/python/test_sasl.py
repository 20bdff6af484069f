"""SASL/PLAIN: a broker with users in its config file lets a connection do
nothing but ApiVersions and authenticate until it has, and closes it on a
wrong password. Real clients authenticate against it (librdkafka through
confluent-kafka, kafka-python), and so does an engine-only server reaching
the broker as its cluster with --kafka-security-protocol sasl_plaintext."""

from __future__ import annotations

import json
import socket
import struct
import subprocess

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import NewTopic

import fluxo_helpers as H
from test_sql import sql

USER, PASSWORD = "alice", "s3cret-Pa55"


def sasl_conf(password: str = PASSWORD) -> dict:
    return {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "PLAIN",
            "sasl.username": USER, "sasl.password": password}


@pytest.fixture
def sasl_broker(broker_factory, tmp_path):
    conf = tmp_path / "broker.toml"
    conf.write_text(f'[kafka]\nsasl_plain_users = {{ {USER} = "{PASSWORD}" }}\n')
    return broker_factory(extra_args=["--config", str(conf)], name="broker")


@pytest.mark.timeout(120)
def test_clients_authenticate_and_a_wrong_password_or_none_is_refused(sasl_broker, new_topic):
    bootstrap = sasl_broker.bootstrap
    topic = new_topic("sasl")
    admin = H.admin(bootstrap, **sasl_conf())
    admin.create_topics([NewTopic(topic, num_partitions=1)])[topic].result(30)
    p = H.producer(bootstrap, **sasl_conf())
    for i in range(10):
        p.produce(topic, f"v{i}".encode())
    assert p.flush(30) == 0
    recs = H.consume_all(bootstrap, topic, **sasl_conf())
    assert [r.value for r in recs[0]] == [f"v{i}".encode() for i in range(10)]

    # kafka-python, another client, with the same user.
    from kafka import KafkaConsumer, TopicPartition
    c = KafkaConsumer(bootstrap_servers=bootstrap, security_protocol="SASL_PLAINTEXT",
                      sasl_mechanism="PLAIN", sasl_plain_username=USER,
                      sasl_plain_password=PASSWORD, enable_auto_commit=False,
                      consumer_timeout_ms=5000)
    c.assign([TopicPartition(topic, 0)])
    c.seek_to_beginning()
    assert [m.value for m in c] == [f"v{i}".encode() for i in range(10)]
    c.close()

    # A wrong password, and no SASL at all, get nothing.
    for conf in (sasl_conf("wrong"), {}):
        other = H.admin(bootstrap, **conf)
        with pytest.raises(KafkaException):
            other.list_topics(timeout=5)
    assert "SASL authentication failed" in sasl_broker.log_tail()

    # Before authenticating, a frame larger than SASL needs closes the
    # connection unread (the broker holds no large unauthenticated request).
    host, port = bootstrap.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        raw.sendall(struct.pack(">i", 1 << 20) + b"\0" * 4096)
        try:
            assert raw.recv(1) == b""
        except ConnectionResetError:
            pass
    assert sasl_broker.is_alive()

    # fluxo's own CLI, with the password from the environment.
    cli = [H.fluxo_bin(), "topic", "list", "-b", bootstrap, "--security-protocol", "sasl_plaintext",
           "--sasl-username", USER]
    listed = subprocess.run(cli, env={"FLUXO_SASL_PASSWORD": PASSWORD, "PATH": "/usr/bin:/bin"},
                            capture_output=True, text=True, timeout=30)
    assert listed.returncode == 0 and topic in listed.stdout, listed.stderr
    refused = subprocess.run(cli, env={"FLUXO_SASL_PASSWORD": "wrong", "PATH": "/usr/bin:/bin"},
                             capture_output=True, text=True, timeout=30)
    assert refused.returncode != 0 and "Invalid username or password" in refused.stderr, \
        refused.stderr


@pytest.mark.timeout(120)
def test_an_engine_only_server_authenticates_to_its_cluster(sasl_broker, engine_factory,
                                                            new_topic, tmp_path):
    bootstrap = sasl_broker.bootstrap
    topic, out = new_topic("sasl-in"), new_topic("sasl-out")
    admin = H.admin(bootstrap, **sasl_conf())
    admin.create_topics([NewTopic(topic, num_partitions=2)])[topic].result(30)
    p = H.producer(bootstrap, **sasl_conf())
    for i in range(1_000):
        p.produce(topic, json.dumps({"seq": i}).encode(), partition=i % 2)
    assert p.flush(30) == 0

    engine = engine_factory(bootstrap, extra_args=[
        "--kafka-security-protocol", "sasl_plaintext",
        "--kafka-sasl-username", USER, "--kafka-sasl-password", PASSWORD])
    sql(engine, f"""CREATE SOURCE events (seq BIGINT)
                    WITH (connector = 'topic', topic = '{topic}', format = 'json')""")
    sql(engine, f"CREATE SINK odd WITH (topic = '{out}') AS SELECT seq FROM events WHERE seq % 2 = 1")
    want = list(range(1, 1_000, 2))

    def complete():
        if out not in admin.list_topics(timeout=10).topics:
            return None
        recs = H.consume_all(bootstrap, out, **sasl_conf())
        got = sorted(json.loads(r.value)["seq"] for part in recs.values() for r in part)
        return got if len(got) >= len(want) else None
    assert H.wait_for(complete, timeout=90, desc="the sink's rows") == want

    # A wrong password stops a server at start, saying why.
    run = subprocess.run([H.fluxo_bin(), "serve", "--engine-only", "--kafka-bootstrap", bootstrap,
                          "--data-dir", str(tmp_path / "wrong"), "--http-addr", "127.0.0.1:0",
                          "--pg-addr", "127.0.0.1:0", "--kafka-security-protocol", "sasl_plaintext",
                          "--kafka-sasl-username", USER],
                         env={"FLUXO_KAFKA_SASL_PASSWORD": "wrong", "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, timeout=60)
    assert run.returncode != 0
    assert "SASL authentication" in run.stderr and "Invalid username or password" in run.stderr, \
        run.stderr
