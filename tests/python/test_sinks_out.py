"""Sinks that write out of fluxo, each against its real peer: the webhook sink
against an HTTP receiver that fails on purpose, the postgres sink against a
real PostgreSQL server (Debian's, started here), and the connector list that
both declare.

- The connector list (`GET /api/v1/connectors`) names every source and sink
  with its options; an unknown connector or option is refused with a 400
  naming what is accepted.
- Webhook: the receiver answers 503 to the first attempts of every batch,
  so each batch is retried with back-off under the same Idempotency-Key;
  once the receiver drops repeated keys it holds every window of the view
  exactly once. A second sink to a receiver that refuses everything (400)
  puts every row into the dead-letter topic (read back with
  confluent-kafka), and its status counts the failures.
- PostgreSQL: a windowed (append-only) view and an updating GROUP BY view
  (with a key: upserts and deletes) are kept in tables that must equal the
  views; the server is killed with SIGKILL twice in the middle of the
  stream, and afterwards every window is in the table exactly once.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psycopg
import pytest

import fluxo_helpers as H
from test_parquet_sink import COLUMNS, VIEW, VIEW_NAME, describe, expected_windows, normalize, pipeline, view_rows
from test_sql import SOURCE, get, make_bids, produce_bids, source_watermark, sql, topic_with, wait_watermark


# -- the connector list ------------------------------------------------------

def test_connectors_are_listed_and_unknown_ones_refused_by_name(broker, new_topic):
    listed = get(broker, "/api/v1/connectors")
    assert listed["status"] == 200
    by_kind = {(c["kind"], c["name"]): c for c in listed["body"]["connectors"]}
    for kind, name in [("source", "topic"), ("source", "nexmark"), ("sink", "topic"), ("sink", "parquet"),
                       ("sink", "delta"), ("sink", "postgres"), ("sink", "webhook")]:
        assert (kind, name) in by_kind, f"{kind} {name} not listed: {sorted(by_kind)}"
    webhook = {o["name"]: o for o in by_kind[("sink", "webhook")]["options"]}
    assert webhook["url"]["required"] and "max_retries" in webhook and webhook["url"]["description"]

    topic = topic_with(broker, new_topic, 1)
    sql(broker, SOURCE.format(topic=topic))
    sql(broker, VIEW)
    err = sql(broker, f"CREATE SINK s FROM {VIEW_NAME} WITH (connector = 'kafka', topic = 'x')", expect_status=400)
    assert "connector 'kafka'" in err["error"] and "'webhook'" in err["error"] and "'postgres'" in err["error"], err
    err = sql(broker, f"CREATE SINK s FROM {VIEW_NAME} WITH (connector = 'webhook', url = 'http://127.0.0.1:9/', "
                      "retries = '3')", expect_status=400)
    assert "unknown option 'retries'" in err["error"] and "max_retries" in err["error"], err
    err = sql(broker, "CREATE SOURCE s2 (a BIGINT) WITH (connector = 'mqtt5', topic = 'x')", expect_status=400)
    assert "connector 'mqtt5'" in err["error"] and "'topic'" in err["error"], err


# -- webhook -----------------------------------------------------------------

class Receiver:
    """An HTTP receiver that fails the first `fail_first` attempts of each
    batch (by Idempotency-Key) with `status`, or every attempt when
    `fail_first` is None, and keeps what it accepted."""

    def __init__(self, status: int = 503, fail_first: int | None = 2):
        self.status = status
        self.fail_first = fail_first
        self.attempts: Counter = Counter()
        self.accepted: dict[str, list[dict]] = {}
        self.deliveries = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["content-length"]))
                key = self.headers.get("idempotency-key")
                with receiver.lock:
                    receiver.attempts[key] += 1
                    refuse = receiver.fail_first is None or receiver.attempts[key] <= receiver.fail_first
                    if not refuse:
                        receiver.deliveries += 1
                        receiver.accepted.setdefault(key, json.loads(body))
                self.send_response(receiver.status if refuse else 200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def rows(self) -> Counter:
        with self.lock:
            return Counter(normalize(COLUMNS, [r[c] for c in COLUMNS])
                           for batch in self.accepted.values() for r in batch)

    def close(self):
        self.server.shutdown()


@pytest.mark.timeout(240)
def test_webhook_batches_are_retried_under_one_key_and_dead_lettered_when_refused(broker, new_topic):
    topic = topic_with(broker, new_topic, 2)
    bids = make_bids(10_000, seed=41)
    clean = [{k: v for k, v in b.items() if k != "_ts"} for b in bids]
    flaky, refusing = Receiver(503, fail_first=2), Receiver(400, fail_first=None)
    try:
        sql(broker, SOURCE.format(topic=topic))
        sql(broker, VIEW)
        sql(broker, f"CREATE SINK hook FROM {VIEW_NAME} WITH (connector = 'webhook', url = '{flaky.url}', "
                    "batch_rows = '50', retry_backoff = '20ms', max_retries = '4')")
        sql(broker, f"CREATE SINK refused FROM {VIEW_NAME} WITH (connector = 'webhook', url = '{refusing.url}', "
                    "dead_letter_topic = 'refused_rows')")
        produce_bids(broker, topic, clean)
        watermark = source_watermark(bids)
        wait_watermark(broker, VIEW_NAME, watermark)
        want = expected_windows(bids, watermark)
        assert view_rows(broker)[1] == want

        H.wait_for(lambda: flaky.rows() == want or None, timeout=60,
                   desc=f"every window at the receiver: {describe(flaky.rows(), want)}")
        # Every batch was refused twice and then taken, each attempt under the same key.
        assert flaky.attempts and all(n == 3 for n in flaky.attempts.values()), flaky.attempts
        assert all(len(b) <= 50 for b in flaky.accepted.values())

        # The refusing receiver's rows all went to the dead-letter topic.
        def dead_letters():
            recs = H.consume_all(broker.bootstrap, "refused_rows", timeout=10)
            got = Counter(normalize(COLUMNS, [json.loads(r.value)[c] for c in COLUMNS])
                          for part in recs.values() for r in part)
            return recs if got == want else None
        recs = H.wait_for(dead_letters, timeout=60, desc="every row in the dead-letter topic")
        first = next(r for part in recs.values() for r in part)
        headers = dict(first.headers)
        assert b"400" in headers["webhook_error"], headers
        assert headers["idempotency_key"].startswith(b"refused-"), headers
        assert refusing.deliveries == 0 and all(n == 1 for n in refusing.attempts.values()), \
            "a 400 is not retried"

        sinks = {s["name"]: s for s in pipeline(broker)["sinks"]}
        assert sinks["refused"]["dead_lettered"] == sum(want.values()), sinks
        assert sinks["refused"]["failures"] == len(refusing.attempts) and "400" in sinks["refused"]["last_error"]
        assert sinks["hook"]["rows"] == sum(want.values()) and sinks["hook"]["dead_lettered"] == 0, sinks
        assert sinks["hook"]["failures"] == 2 * len(flaky.attempts), sinks
    finally:
        flaky.close()
        refusing.close()


@pytest.mark.timeout(240)
def test_webhook_loses_nothing_across_kill_9(broker, new_topic):
    """At least once: after a kill -9 the pipeline resends what came after
    its last checkpoint, so every window reaches the receiver; a row sent
    twice can only be one of the last checkpoint interval's."""
    topic = topic_with(broker, new_topic, 2)
    bids = make_bids(20_000, seed=45)
    clean = [{k: v for k, v in b.items() if k != "_ts"} for b in bids]
    receiver = Receiver(503, fail_first=0)
    try:
        sql(broker, SOURCE.format(topic=topic))
        sql(broker, VIEW)
        sql(broker, f"CREATE SINK hook FROM {VIEW_NAME} WITH (connector = 'webhook', url = '{receiver.url}', "
                    "batch_rows = '100')")
        produce_bids(broker, topic, clean[:10_000])
        H.wait_for(lambda: receiver.rows() or None, timeout=60, desc="a first batch at the receiver")
        broker.kill9()
        broker.start(port=broker.port)
        produce_bids(broker, topic, clean[10_000:])
        watermark = source_watermark(bids)
        wait_watermark(broker, VIEW_NAME, watermark)
        want = expected_windows(bids, watermark)
        H.wait_for(lambda: set(receiver.rows()) == set(want) or None, timeout=60,
                   desc=f"every window at the receiver: {describe(receiver.rows(), want)}")
        assert not set(receiver.rows()) - set(want), "nothing the view does not hold"
    finally:
        receiver.close()


# -- PostgreSQL --------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_bin(name: str) -> str:
    for version in sorted(Path("/usr/lib/postgresql").glob("*"), reverse=True):
        if (version / "bin" / name).exists():
            return str(version / "bin" / name)
    pytest.fail("no PostgreSQL server: scripts/setup-tests.sh installs Debian's postgresql")


class PgServer:
    """A PostgreSQL server of its own on a free port, as the `postgres` user
    when run as root (PostgreSQL refuses root); it can be stopped and
    started again on the same port and data."""

    def __init__(self) -> None:
        # Not under pytest's tmp dir: the postgres user cannot enter root's.
        self.home = Path(tempfile.mkdtemp(prefix="fluxo-pg-"))
        self.data = self.home / "data"
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.home, "postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        subprocess.run([*self.as_user, pg_bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", "fluxo"],
                       check=True, capture_output=True)
        self.port = free_port()
        self.url = f"postgresql://fluxo@127.0.0.1:{self.port}/postgres"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [*self.as_user, pg_bin("postgres"), "-D", str(self.data), "-p", str(self.port),
             "-c", "listen_addresses=127.0.0.1", "-k", str(self.data), "-c", "fsync=on"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def ready():
            try:
                with psycopg.connect(self.url, connect_timeout=2):
                    return True
            except psycopg.OperationalError:
                return None
        H.wait_for(ready, timeout=30, desc="PostgreSQL accepting connections")

    def stop(self) -> None:
        """A fast shutdown: open connections are cut, as when the server goes away."""
        if self.proc is not None:
            # pg_ctl, since runuser does not pass SIGINT on.
            subprocess.run([*self.as_user, pg_bin("pg_ctl"), "-D", str(self.data), "stop", "-m", "fast"],
                           check=True, capture_output=True, timeout=60)
            self.proc.wait(timeout=30)
            self.proc = None


@pytest.fixture(scope="module")
def postgres_server():
    server = PgServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.home, ignore_errors=True)


@pytest.fixture
def postgres(postgres_server) -> str:
    return postgres_server.url


def pg_rows(url: str, query: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(query).fetchall()


def table_windows(url: str, table: str) -> Counter:
    try:
        rows = pg_rows(url, f"SELECT auction, window_start, window_end, bids, total FROM {table}")
    except psycopg.errors.UndefinedTable:
        return Counter()
    return Counter(normalize(COLUMNS, r) for r in rows)


@pytest.mark.timeout(300)
def test_postgres_tables_equal_the_views_exactly_once_across_kill_9(broker, new_topic, postgres_server):
    postgres = postgres_server.url
    topic = topic_with(broker, new_topic, 2)
    bids = make_bids(30_000, seed=43)
    clean = [{k: v for k, v in b.items() if k != "_ts"} for b in bids]
    produce_bids(broker, topic, clean[:10_000])
    sql(broker, SOURCE.format(topic=topic))
    sql(broker, VIEW)
    sql(broker, "CREATE MATERIALIZED VIEW per_auction WITH (checkpoint_interval = '200ms') AS "
                "SELECT auction, count(*) AS bids, max(price) AS top FROM bids GROUP BY auction")
    assert sql(broker, f"CREATE SINK pg_windows FROM {VIEW_NAME} WITH (connector = 'postgres', "
                       f"url = '{postgres}', table = 'windows')")["message"] == "CREATE SINK pg_windows"
    sql(broker, f"CREATE SINK pg_auctions FROM per_auction WITH (connector = 'postgres', url = '{postgres}', "
                "table = 'public.auctions', key = 'auction')")
    # Rows that come and go: each group is in the view while its count is
    # even, so its row is deleted and inserted again epoch after epoch.
    sql(broker, "CREATE MATERIALIZED VIEW even_groups WITH (checkpoint_interval = '200ms') AS "
                "SELECT auction, channel, count(*) AS n FROM bids GROUP BY auction, channel HAVING count(*) % 2 = 0")
    sql(broker, f"CREATE SINK pg_even FROM even_groups WITH (connector = 'postgres', url = '{postgres}', "
                "table = 'even_groups', key = 'auction,channel')")
    # The tables exist at once, typed from the views.
    types = dict(pg_rows(postgres, "SELECT column_name, data_type FROM information_schema.columns "
                                   "WHERE table_name = 'windows'"))
    assert types == {"auction": "bigint", "window_start": "timestamp without time zone",
                     "window_end": "timestamp without time zone", "bids": "bigint", "total": "bigint"}, types
    H.wait_for(lambda: table_windows(postgres, "windows") or None, timeout=60, desc="rows in windows")

    for part, delay in ((clean[10_000:17_000], 0.5), (clean[17_000:24_000], 0.0)):
        produce_bids(broker, topic, part)
        time.sleep(delay)
        broker.kill9()
        broker.start(port=broker.port)
    # PostgreSQL goes away while bids keep coming: the sinks fail, their
    # pipelines start again from their checkpoints until it is back.
    postgres_server.stop()
    produce_bids(broker, topic, clean[24_000:])
    try:
        H.wait_for(lambda: any(s["failures"] > 0 for p in get(broker, "/api/v1/pipelines")["body"]["pipelines"]
                               for s in p["sinks"]), timeout=30, desc="a sink failing without PostgreSQL")
    except AssertionError:
        raise AssertionError(json.dumps([{k: p[k] for k in ("name", "status", "sinks", "last_error", "events_in", "restarts")}
                                         for p in get(broker, "/api/v1/pipelines")["body"]["pipelines"]], indent=1))
    postgres_server.start()

    watermark = source_watermark(bids)
    wait_watermark(broker, VIEW_NAME, watermark)
    want = expected_windows(bids, watermark)
    assert view_rows(broker)[1] == want

    def settled():
        got = table_windows(postgres, "windows")
        return got if got == want else None
    try:
        H.wait_for(settled, timeout=60, desc="the windows table equal to the view")
    except AssertionError:
        got = table_windows(postgres, "windows")
        raise AssertionError(f"not exactly once across kill -9: {describe(got, want)}; {pipeline(broker)}")

    per_auction = {}
    for b in bids:
        n, top = per_auction.get(b["auction"], (0, 0))
        per_auction[b["auction"]] = (n + 1, max(top, b["price"]))
    want_auctions = sorted((a, n, top) for a, (n, top) in per_auction.items())
    H.wait_for(lambda: pg_rows(postgres, "SELECT auction, bids, top FROM auctions ORDER BY auction")
               == want_auctions or None, timeout=60, desc="the upserted auctions table equal to the view")
    groups = Counter((b["auction"], b["channel"]) for b in bids)
    want_even = sorted((a, c, n) for (a, c), n in groups.items() if n % 2 == 0)
    H.wait_for(lambda: pg_rows(postgres, "SELECT auction, channel, n FROM even_groups ORDER BY auction, channel")
               == want_even or None, timeout=60, desc="the even_groups table equal to the view (upserts and deletes)")
    staged = pg_rows(postgres, "SELECT count(*) FROM fluxo_sink_staging")[0][0]
    progress = dict(pg_rows(postgres, "SELECT sink, epoch FROM fluxo_sink_progress"))
    assert set(progress) == {"pg_windows", "pg_auctions", "pg_even"} and all(e >= 1 for e in progress.values()), progress
    assert staged >= 0

    # A wrong password or table fails the statement itself.
    err = sql(broker, f"CREATE SINK bad FROM {VIEW_NAME} WITH (connector = 'postgres', "
                      f"url = 'postgresql://nobody@127.0.0.1:{free_port()}/postgres', table = 't')", expect_status=400)
    assert "cannot connect to PostgreSQL" in err["error"], err
    err = sql(broker, "CREATE SINK bad FROM per_auction WITH (connector = 'postgres', "
                      f"url = '{postgres}', table = 'auctions2')", expect_status=400)
    assert "needs key" in err["error"], err
