"""An engine-only server reaching its cluster over TLS (Kafka's
security.protocol = SSL), as against a managed Kafka (MSK, Confluent
Cloud, Event Hubs) whose brokers only take TLS.

fluxo's own broker does not terminate TLS, so the cluster here is a fluxo
broker behind a TLS terminator (Python's ssl module, as a load balancer's
TLS listener would sit in front of brokers), with the broker advertising
the terminator's address. librdkafka (confluent-kafka) produces and reads
through the same terminator with the same CA file, so both sides speak
real TLS, checked against a CA made for the test."""

from __future__ import annotations

import asyncio
import datetime
import json
import socket
import subprocess
import threading
from pathlib import Path

import pytest

import fluxo_helpers as H
from test_sql import sql


def make_ca_and_server_cert(directory: Path) -> tuple[Path, Path, Path]:
    """A CA, and a server certificate it signed for 127.0.0.1."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fluxo test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_pem, cert_pem, key_pem = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    ca_pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return ca_pem, cert_pem, key_pem


class TlsTerminator:
    """Takes TLS on `port` and forwards the plaintext to `target`."""

    def __init__(self, cert: Path, key: Path):
        import ssl
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.target: tuple[str, int] | None = None
        self.loop = asyncio.new_event_loop()
        self.started = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.started.wait(10), "the TLS terminator did not start"

    def _run(self):
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", self.port, ssl=self.context))
        self.started.set()
        try:
            self.loop.run_forever()
        finally:
            server.close()

    async def _serve(self, reader, writer):
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return

        async def pipe(src, dst):
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def close(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)


@pytest.fixture
def tls_cluster(broker_factory, tmp_path):
    ca, cert, key = make_ca_and_server_cert(tmp_path)
    terminator = TlsTerminator(cert, key)
    broker = broker_factory(extra_args=["--advertised-kafka-addr", f"127.0.0.1:{terminator.port}"],
                            name="broker")
    host, port = broker.bootstrap.rsplit(":", 1)
    terminator.target = (host, int(port))
    try:
        yield f"127.0.0.1:{terminator.port}", ca
    finally:
        terminator.close()


@pytest.mark.timeout(180)
def test_an_engine_only_server_reads_and_writes_its_cluster_over_tls(
        tls_cluster, engine_factory, new_topic):
    bootstrap, ca = tls_cluster
    ssl_conf = {"security.protocol": "SSL", "ssl.ca.location": str(ca)}
    topic, out = new_topic("tls-in"), new_topic("tls-out")
    from confluent_kafka.admin import NewTopic
    admin = H.admin(bootstrap, **ssl_conf)
    admin.create_topics([NewTopic(topic, num_partitions=2)])[topic].result(30)
    p = H.producer(bootstrap, **ssl_conf)
    for i in range(2_000):
        p.produce(topic, json.dumps({"seq": i, "price": i % 500}).encode(), partition=i % 2)
    assert p.flush(30) == 0

    engine = engine_factory(bootstrap, extra_args=[
        "--kafka-security-protocol", "ssl", "--kafka-ssl-ca-location", str(ca)])
    sql(engine, f"""CREATE SOURCE bids (seq BIGINT, price BIGINT)
                    WITH (connector = 'topic', topic = '{topic}', format = 'json')""")
    sql(engine, f"CREATE SINK pricey WITH (topic = '{out}') AS "
                "SELECT seq, price FROM bids WHERE price >= 400")
    want = sorted(i for i in range(2_000) if i % 500 >= 400)

    def complete():
        recs = (H.consume_all(bootstrap, out, **ssl_conf)
                if out in admin.list_topics(timeout=10).topics else {})
        got = sorted(json.loads(r.value)["seq"] for part in recs.values() for r in part)
        return got if len(got) >= len(want) else None
    got = H.wait_for(complete, timeout=90, desc="the sink's rows, read over TLS")
    assert got == want


@pytest.mark.timeout(120)
def test_a_certificate_the_ca_file_does_not_vouch_for_is_refused(tls_cluster, tmp_path):
    """Checked, not just encrypted: with another CA file the server does not
    start, and says why; plaintext to a TLS port does not get through."""
    bootstrap, _ = tls_cluster
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    other_ca, _, _ = make_ca_and_server_cert(other_dir)
    base = [H.fluxo_bin(), "serve", "--engine-only", "--kafka-bootstrap", bootstrap,
            "--http-addr", "127.0.0.1:0", "--pg-addr", "127.0.0.1:0"]
    run = subprocess.run(base + ["--data-dir", str(tmp_path / "d1"), "--kafka-security-protocol", "ssl",
                                 "--kafka-ssl-ca-location", str(other_ca)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode != 0
    assert "TLS handshake failed" in run.stderr, run.stderr
    assert "cannot reach the Kafka cluster" in run.stderr, run.stderr
