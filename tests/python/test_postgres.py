"""fluxo's Postgres endpoint, driven by the clients people use: psql and
psycopg 3.

psql uses the simple query protocol: DDL, SHOW, a pull query on a view and a
batch query over a source's history must print what the HTTP API returns, and
a wrong statement must give an error with its SQLSTATE while the session goes
on. psycopg uses the extended protocol (Parse/Bind/Describe/Execute) with
parameters bound by the server, typed results (integers as int, timestamps
as datetime), its own BEGIN/COMMIT around statements, and must get a
Postgres error class it can catch for bad SQL on a connection that stays
usable.

Around the queries: psql's \\d commands (their pg_catalog queries answered
from fluxo's catalog), the session functions and SHOWs drivers send at
connect, password logins (checked down to the ErrorResponse a bare protocol
client sees), and SUBSCRIBE, read as it streams, through psycopg's
`cursor.stream()` (extended protocol) and a bare client (simple protocol),
until a CancelRequest ends it with SQLSTATE 57014.
"""

from __future__ import annotations

import queue
import re
import socket
import struct
import subprocess
import threading
from collections import Counter
from datetime import datetime

import psycopg
import pytest

import fluxo_helpers as H
from test_sql import SOURCE, VIEW, T0, expected_windows, iso, make_bids, produce_bids, source_watermark, sql, \
    topic_with, wait_watermark


def psql(broker, *commands: str, check: bool = True, user: str = "fluxo", password: str | None = None,
         tuples_only: bool = True) -> subprocess.CompletedProcess:
    # -w: never prompt for a password (there is no terminal); PGPASSWORD gives one.
    args = ["psql", "-h", broker.pg_host, "-p", str(broker.pg_port), "-U", user, "-d", "fluxo",
            "-X", "-w", "-A", "-F", "|", "-v", "ON_ERROR_STOP=0"]
    if tuples_only:
        args.append("-t")
    for c in commands:
        args += ["-c", c]
    env = {"PGCONNECT_TIMEOUT": "10", "PATH": "/usr/bin:/bin"}
    if password is not None:
        env["PGPASSWORD"] = password
    out = subprocess.run(args, capture_output=True, text=True, timeout=60, env=env)
    if check:
        assert out.returncode == 0, f"psql {commands}: {out.returncode}\n{out.stdout}\n{out.stderr}"
    return out


def connect(broker, **kwargs) -> psycopg.Connection:
    params = {"host": broker.pg_host, "port": broker.pg_port, "user": "fluxo", "dbname": "fluxo",
              "connect_timeout": 10, **kwargs}
    return psycopg.connect(**params)


def load_bids(broker, new_topic, n: int) -> tuple[list[dict], int]:
    topic = topic_with(broker, new_topic, 2)
    bids = make_bids(n)
    produce_bids(broker, topic, bids)
    sql(broker, SOURCE.format(topic=topic))
    sql(broker, VIEW)
    watermark = source_watermark(bids)
    wait_watermark(broker, "per_auction", watermark)
    return bids, watermark


@pytest.mark.timeout(180)
def test_psql_runs_ddl_pull_and_batch_queries_and_reports_errors(broker, new_topic):
    bids, watermark = load_bids(broker, new_topic, 4_000)

    out = psql(broker, "SHOW VIEWS", "SELECT count(*) FROM bids",
               "SELECT auction, count(*) FROM per_auction GROUP BY auction ORDER BY auction")
    lines = out.stdout.split()
    assert lines[0] == "per_auction|bids|running", out.stdout
    assert lines[1] == str(len(bids)), out.stdout
    want = {}
    for (auction, _, _), _ in expected_windows(bids, watermark).items():
        want[auction] = want.get(auction, 0) + 1
    assert lines[2:] == [f"{a}|{n}" for a, n in sorted(want.items())], out.stdout

    # DDL through psql, then the view it made, as the HTTP API sees it.
    out = psql(broker, "CREATE MATERIALIZED VIEW web AS SELECT auction, price FROM bids WHERE channel = 'web'")
    assert "CREATE MATERIALIZED VIEW web" in out.stdout, out.stdout
    n_web = sum(1 for b in bids if b["channel"] == "web")
    H.wait_for(lambda: sql(broker, "SELECT count(*) FROM web")["rows"] == [[n_web]],
               timeout=30, desc="view web caught up")

    # A wrong statement: an ERROR with its SQLSTATE, and the next command still runs.
    out = psql(broker, "\\set VERBOSITY verbose", "SELECT nope FROM bids", "SELECT 1 + 1", check=False)
    assert "ERROR:" in out.stderr and "nope" in out.stderr, out.stderr
    assert "42" in out.stderr.split("ERROR:")[1][:12], out.stderr  # class 42: syntax or access rule
    assert out.stdout.split() == ["2"], out.stdout
    out = psql(broker, "SELEC 1", check=False)
    assert "42601" in out.stderr or "syntax error" in out.stderr, out.stderr


@pytest.mark.timeout(180)
def test_psycopg_binds_parameters_and_gets_typed_rows(broker, new_topic):
    bids, watermark = load_bids(broker, new_topic, 4_000)
    expected = expected_windows(bids, watermark)

    with connect(broker) as conn:
        # Parameters of several types, bound server-side (extended protocol).
        rows = conn.execute(
            "SELECT auction, window_start, bids FROM per_auction "
            "WHERE auction = %s AND bids >= %s AND window_start >= %s ORDER BY window_start",
            (3, 1, datetime.utcfromtimestamp(T0 / 1000))).fetchall()
        want = sorted((k[0], k[1], v[0]) for k, v in expected.items()
                      if k[0] == 3 and k[1] >= iso(T0))
        assert [(a, iso(int(ws.timestamp() * 1000) if ws.tzinfo else
                         int((ws - datetime(1970, 1, 1)).total_seconds() * 1000)), n)
                for a, ws, n in rows] == want
        assert rows and isinstance(rows[0][0], int) and isinstance(rows[0][1], datetime)

        # A string parameter that tries to break out of its quotes is a value.
        rows = conn.execute("SELECT count(*) FROM bids WHERE channel = %s",
                            ("web' OR '1'='1",)).fetchall()
        assert rows == [(0,)]
        rows = conn.execute("SELECT count(*) FROM bids WHERE channel = %s", ("web",)).fetchall()
        assert rows == [(sum(1 for b in bids if b["channel"] == "web"),)]

        # Column descriptions come before execution, with Postgres type OIDs.
        cur = conn.execute("SELECT * FROM per_auction LIMIT 1")
        assert [d.name for d in cur.description] == ["auction", "window_start", "window_end", "bids", "top"]
        assert [d.type_code for d in cur.description] == [20, 1114, 1114, 20, 20]

        # DDL through the extended protocol too.
        conn.execute("CREATE MATERIALIZED VIEW pricey AS SELECT auction, price FROM bids WHERE price > 400")
        conn.commit()

        # Bad SQL: a psycopg error with a class-42 SQLSTATE; the connection goes on.
        with pytest.raises(psycopg.errors.ProgrammingError) as e:
            conn.execute("SELECT nope FROM bids")
        assert e.value.sqlstate and e.value.sqlstate.startswith("42"), e.value.sqlstate
        conn.rollback()
        with pytest.raises(psycopg.Error) as e:
            conn.execute("SELECT * FROM no_such_view")
        assert "no_such_view" in str(e.value)
        conn.rollback()
        assert conn.execute("SELECT 40 + %s", (2,)).fetchone() == (42,)

    assert sql(broker, "SHOW VIEWS")["rows"][1][0] == "pricey"


# -- a bare protocol client ---------------------------------------------------

class Wire:
    """Just enough of the Postgres protocol to see exactly what the server
    sends (the ErrorResponse of a failed login, rows as they are flushed)
    and to send a CancelRequest, as psql does on Ctrl-C."""

    def __init__(self, host: str, port: int, timeout: float = 30.0):
        self.addr = (host, port)
        self.sock = socket.create_connection(self.addr, timeout=timeout)
        self.buf = b""
        self.pid = self.key = None

    def close(self) -> None:
        self.sock.close()

    def send(self, kind: bytes, body: bytes = b"") -> None:
        self.sock.sendall(kind + struct.pack("!i", len(body) + 4) + body)

    def startup(self, user: str, password: str | None = None) -> dict | None:
        """Logs in: None once ready for queries, else the ErrorResponse's fields."""
        params = b"".join(k.encode() + b"\0" + v.encode() + b"\0"
                          for k, v in (("user", user), ("database", "fluxo"))) + b"\0"
        body = struct.pack("!i", 196608) + params  # protocol 3.0
        self.sock.sendall(struct.pack("!i", len(body) + 4) + body)
        while True:
            kind, payload = self.read()
            assert kind is not None, "server closed the connection during startup"
            if kind == b"R":
                code = struct.unpack("!i", payload[:4])[0]
                if code == 3:  # AuthenticationCleartextPassword
                    self.send(b"p", (password or "").encode() + b"\0")
                else:
                    assert code == 0, f"unexpected authentication request {code}"
            elif kind == b"K":
                self.pid, self.key = struct.unpack("!ii", payload[:8])
            elif kind == b"E":
                return error_fields(payload)
            elif kind == b"Z":
                return None

    def read(self) -> tuple[bytes | None, bytes | None]:
        """The next message; (None, None) once the server closed the connection."""
        while True:
            if len(self.buf) >= 5:
                length = struct.unpack("!i", self.buf[1:5])[0]
                if len(self.buf) >= length + 1:
                    kind, payload = self.buf[:1], self.buf[5:length + 1]
                    self.buf = self.buf[length + 1:]
                    return kind, payload
            chunk = self.sock.recv(65536)
            if not chunk:
                return None, None
            self.buf += chunk

    def until_ready(self) -> list[tuple[bytes, bytes]]:
        """Every message up to and including ReadyForQuery."""
        messages = []
        while True:
            kind, payload = self.read()
            assert kind is not None, f"server closed the connection after {messages}"
            messages.append((kind, payload))
            if kind == b"Z":
                return messages

    def query(self, sql: str) -> None:
        self.send(b"Q", sql.encode() + b"\0")

    def cancel(self) -> None:
        """A CancelRequest on a connection of its own, which the server closes."""
        with socket.create_connection(self.addr, timeout=10) as s:
            s.sendall(struct.pack("!iiii", 16, 80877102, self.pid, self.key))
            s.recv(1)


def error_fields(payload: bytes) -> dict:
    return {chr(part[0]): part[1:].decode() for part in payload.split(b"\0") if part}


def data_row(payload: bytes) -> list:
    n = struct.unpack("!h", payload[:2])[0]
    pos, values = 2, []
    for _ in range(n):
        size = struct.unpack("!i", payload[pos:pos + 4])[0]
        pos += 4
        values.append(None if size < 0 else payload[pos:pos + size].decode())
        pos += max(size, 0)
    return values


def column_names(payload: bytes) -> list:
    n = struct.unpack("!h", payload[:2])[0]
    pos, names = 2, []
    for _ in range(n):
        end = payload.index(b"\0", pos)
        names.append(payload[pos:end].decode())
        pos = end + 1 + 18  # table oid, column, type oid, size, modifier, format
    return names


# -- authentication -------------------------------------------------------------

def login_error(broker, user: str, password: str) -> dict | None:
    """The ErrorResponse of a login (None if it succeeds); a failed login
    must also close the connection."""
    w = Wire(broker.pg_host, broker.pg_port)
    try:
        error = w.startup(user, password)
        if error is not None:
            for _ in range(10):  # what follows the error, then the end
                if w.read() == (None, None):
                    break
            else:
                raise AssertionError("the connection stayed open after a failed login")
        return error
    finally:
        w.close()


@pytest.mark.timeout(120)
def test_a_password_is_required_once_configured(broker_factory, monkeypatch):
    b = broker_factory(["--pg-user", "app", "--pg-password", "s3cret"], name="locked")

    # On the wire: FATAL 28P01 for a wrong password and for a wrong user.
    error = login_error(b, "app", "wrong")
    assert error and error["C"] == "28P01" and error["S"] == "FATAL", error
    assert error["M"] == 'password authentication failed for user "app"', error
    error = login_error(b, "fluxo", "s3cret")
    assert error and error["C"] == "28P01", error
    assert login_error(b, "app", "s3cret") is None

    # psycopg: a wrong password is an OperationalError with Postgres's
    # message; the right one logs in.
    with pytest.raises(psycopg.OperationalError) as e:
        connect(b, user="app", password="wrong")
    assert 'password authentication failed for user "app"' in str(e.value)
    with connect(b, user="app", password="s3cret") as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("app",)
        assert conn.execute("SELECT 40 + 2").fetchone() == (42,)

    # psql with PGPASSWORD.
    out = psql(b, "SELECT 1", user="app", password="wrong", check=False)
    assert out.returncode != 0 and "password authentication failed" in out.stderr, out.stderr
    out = psql(b, "SELECT 1", user="app", check=False)
    assert out.returncode != 0, out.stdout
    assert psql(b, "SHOW VIEWS", "SELECT 1", user="app", password="s3cret").stdout.split() == ["1"]

    # FLUXO_PG_PASSWORD sets it too (with the default user, fluxo).
    monkeypatch.setenv("FLUXO_PG_PASSWORD", "from-env")
    b2 = broker_factory([], name="locked-by-env")
    assert login_error(b2, "fluxo", "s3cret")["C"] == "28P01"
    assert login_error(b2, "fluxo", "from-env") is None


def test_without_a_password_anyone_connects(broker):
    # Trust: any user, and a password nobody asked for is never sent.
    assert login_error(broker, "whoever", "anything") is None
    with connect(broker, user="whoever", password="anything") as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("whoever",)


# -- psql's \d and what drivers ask at connect ------------------------------------

READINGS = """CREATE SOURCE readings (sensor TEXT, reading DOUBLE, ok BOOLEAN, grade INT, taken_on DATE,
                amount DECIMAL(10, 2), ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)
              WITH (connector = 'topic', topic = '{topic}', format = 'json')"""

# DESCRIBE's type names, as Postgres's format_type names them.
PG_TYPES = {"BIGINT": "bigint", "INT": "integer", "SMALLINT": "smallint", "REAL": "real",
            "DOUBLE": "double precision", "BOOLEAN": "boolean", "TEXT": "text", "DATE": "date",
            "TIMESTAMP": "timestamp without time zone", "TIMESTAMPTZ": "timestamp with time zone"}


def pg_type(describe_type: str) -> str:
    m = re.fullmatch(r"DECIMAL\((\d+), (\d+)\)", describe_type)
    return f"numeric({m.group(1)},{m.group(2)})" if m else PG_TYPES[describe_type]


def described_columns(broker, name: str) -> list[tuple[str, str]]:
    """(column, Postgres type) of `name`, from the HTTP API's DESCRIBE."""
    return [(row[0], pg_type(row[1])) for row in sql(broker, f"DESCRIBE {name}")["rows"]]


@pytest.mark.timeout(120)
def test_psql_describe_commands_list_and_describe_fluxo_objects(broker, new_topic):
    sql(broker, SOURCE.format(topic=topic_with(broker, new_topic, 2)))
    sql(broker, READINGS.format(topic=topic_with(broker, new_topic, 1)))
    sql(broker, VIEW)

    def lines(*commands, **kw):
        return psql(broker, *commands, **kw).stdout.splitlines()

    assert lines("\\d") == ["public|bids|table|fluxo", "public|per_auction|materialized view|fluxo",
                            "public|readings|table|fluxo"]
    assert lines("\\dt") == ["public|bids|table|fluxo", "public|readings|table|fluxo"]
    assert lines("\\dt r*") == ["public|readings|table|fluxo"]
    assert lines("\\dv") == lines("\\dm") == ["public|per_auction|materialized view|fluxo"]
    assert lines("\\dn") == ["public|fluxo"]

    # \d NAME: each column with the Postgres name of its DESCRIBE type.
    for name in ("per_auction", "bids", "readings"):
        columns = [tuple(line.split("|")[:2]) for line in lines(f"\\d {name}")]
        assert columns == described_columns(broker, name), name
    readings = dict(described_columns(broker, "readings"))
    assert readings == {"sensor": "text", "reading": "double precision", "ok": "boolean", "grade": "integer",
                        "taken_on": "date", "amount": "numeric(10,2)", "ts": "timestamp without time zone"}
    assert dict(described_columns(broker, "per_auction"))["window_start"] == "timestamp without time zone"

    out = psql(broker, "\\d per_auction", "\\d+ per_auction", "\\d bids", tuples_only=False).stdout
    assert 'Materialized view "public.per_auction"' in out, out
    assert 'Table "public.bids"' in out, out
    assert "View definition:" in out and "TUMBLE" in out, out
    out = psql(broker, "\\d no_such_thing", check=False)
    assert 'Did not find any relation named "no_such_thing"' in out.stderr, out.stderr

    # What drivers and tools ask at connect.
    assert lines("SELECT version()", "SHOW server_version", "SELECT current_schema()",
                 "SELECT current_database()", "SELECT current_user", "SHOW transaction isolation level",
                 "SELECT current_setting('standard_conforming_strings')") == [
        lines("SELECT version()")[0], lines("SHOW server_version")[0], "public", "fluxo", "fluxo",
        "read committed", "on"]
    assert lines("SELECT version()")[0].startswith("PostgreSQL 15.0 (fluxo ")
    assert lines("SHOW server_version")[0].startswith("15.0 (fluxo ")
    out = psql(broker, "\\set VERBOSITY verbose", "SHOW no_such_setting", check=False)
    assert "42704" in out.stderr, out.stderr

    with connect(broker) as conn:
        assert conn.info.server_version == 150000
        assert conn.execute("SELECT current_setting('server_version_num')").fetchone() == ("150000",)
        assert conn.execute("SELECT current_schema(), current_database(), current_user").fetchone() \
            == ("public", "fluxo", "fluxo")
        # A catalog query through the extended protocol, with a parameter.
        rows = conn.execute(
            "SELECT c.oid, n.nspname, c.relname FROM pg_catalog.pg_class c "
            "LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relname OPERATOR(pg_catalog.~) %s", ("^(bids)$",)).fetchall()
        assert [(nsp, rel) for _, nsp, rel in rows] == [("public", "bids")]
        assert isinstance(rows[0][0], int)
        # What fluxo has none of: no rows, no error.
        assert conn.execute("SELECT conname FROM pg_catalog.pg_constraint").fetchall() == []


# -- SUBSCRIBE -----------------------------------------------------------------------

PER_CHANNEL = "CREATE MATERIALIZED VIEW per_channel AS SELECT channel, count(*) AS n FROM bids GROUP BY channel"


def channel_counts(bids: list[dict]) -> dict:
    return dict(Counter(b["channel"] for b in bids))


@pytest.mark.timeout(180)
def test_psycopg_streams_a_subscription_until_it_is_cancelled(broker, new_topic):
    topic = topic_with(broker, new_topic, 2)
    sql(broker, SOURCE.format(topic=topic))
    sql(broker, PER_CHANNEL)
    first = make_bids(40, seed=1)
    produce_bids(broker, topic, first)
    H.wait_for(lambda: {r[0]: r[1] for r in sql(broker, "SELECT channel, n FROM per_channel")["rows"]}
               == channel_counts(first), timeout=30, desc="per_channel caught up")

    items: queue.Queue = queue.Queue()
    with connect(broker, autocommit=True) as conn:
        cur = conn.cursor()

        def read() -> None:
            try:
                for i, row in enumerate(cur.stream("SUBSCRIBE per_channel")):
                    if i == 0:
                        items.put([d.name for d in cur.description])
                    items.put(row)
            except Exception as e:  # noqa: BLE001 - handed to the test thread
                items.put(e)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()

        def take():
            item = items.get(timeout=30)
            assert not isinstance(item, Exception), repr(item)
            return item

        assert take() == ["op", "channel", "n"]
        # The snapshot: the view's rows, as inserts.
        snapshot = [take() for _ in channel_counts(first)]
        assert all(op == "insert" for op, _, _ in snapshot), snapshot
        assert {channel: n for _, channel, n in snapshot} == channel_counts(first)

        # Each change arrives as it happens: counts are retracted and inserted.
        held = Counter((channel, n) for _, channel, n in snapshot)
        second = make_bids(30, seed=2)
        produce_bids(broker, topic, second)
        want = channel_counts(first + second)
        ops = Counter()
        while {channel: n for (channel, n), k in held.items() if k} != want:
            op, channel, n = take()
            ops[op] += 1
            held[(channel, n)] += 1 if op == "insert" else -1
            assert held[(channel, n)] >= 0, f"delete of a row never inserted: {(channel, n)}"
        assert ops["delete"] >= 1 and ops["insert"] >= 1, ops

        # A CancelRequest ends it with 57014; the connection goes on.
        conn.cancel_safe()
        ended = items.get(timeout=30)
        assert isinstance(ended, psycopg.errors.QueryCanceled), repr(ended)
        assert ended.sqlstate == "57014"
        reader.join(timeout=10)
        assert not reader.is_alive()
        assert conn.execute("SELECT 40 + 2").fetchone() == (42,)

        # Leaving a stream early cancels it too (psycopg sends the CancelRequest).
        sql(broker, "CREATE MATERIALIZED VIEW web AS SELECT auction, price FROM bids WHERE channel = 'web'")
        H.wait_for(lambda: sql(broker, "SELECT count(*) FROM web")["rows"]
                   == [[sum(1 for b in first + second if b["channel"] == "web")]], timeout=30,
                   desc="view web caught up")
        stream = conn.cursor().stream("SUBSCRIBE web")
        op, auction, price = next(stream)
        assert op == "insert" and isinstance(auction, int) and isinstance(price, int)
        stream.close()
        assert conn.execute("SELECT count(*) FROM web").fetchone()[0] > 0

    # Unknown views are errors, as for SELECT.
    with connect(broker, autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as e:
            next(conn.cursor().stream("SUBSCRIBE no_such_view"))
        assert e.value.sqlstate == "42P01", e.value.sqlstate


@pytest.mark.timeout(120)
def test_subscribe_over_the_simple_protocol_flushes_each_change(broker, new_topic):
    topic = topic_with(broker, new_topic, 2)
    sql(broker, SOURCE.format(topic=topic))
    sql(broker, "CREATE MATERIALIZED VIEW web AS SELECT auction, price FROM bids WHERE channel = 'web'")
    w = Wire(broker.pg_host, broker.pg_port)
    try:
        assert w.startup("fluxo") is None
        w.query("SUBSCRIBE web")
        # The view is empty: the column description comes at once, alone.
        kind, payload = w.read()
        assert kind == b"T", (kind, payload)
        assert column_names(payload) == ["op", "auction", "price"]

        produce_bids(broker, topic, [{"auction": 7, "price": 42, "channel": "web", "date_time": T0},
                                     {"auction": 8, "price": 3, "channel": "app", "date_time": T0}])
        kind, payload = w.read()
        assert kind == b"D", (kind, payload)
        assert data_row(payload) == ["insert", "7", "42"]
        produce_bids(broker, topic, [{"auction": 9, "price": 5, "channel": "web", "date_time": T0}])
        kind, payload = w.read()
        assert (kind, data_row(payload)) == (b"D", ["insert", "9", "5"])

        # Ctrl-C in psql: a CancelRequest on another connection.
        w.cancel()
        messages = w.until_ready()
        errors = [error_fields(p) for k, p in messages if k == b"E"]
        assert [e["C"] for e in errors] == ["57014"], messages

        # The session goes on.
        w.query("SELECT 40 + 2")
        rows = [data_row(p) for k, p in w.until_ready() if k == b"D"]
        assert rows == [["42"]]
        w.query("SUBSCRIBE no_such_view")
        errors = [error_fields(p) for k, p in w.until_ready() if k == b"E"]
        assert [e["C"] for e in errors] == ["42P01"]
    finally:
        w.close()

    # A CancelRequest for no running query, or with a wrong key, changes nothing.
    w = Wire(broker.pg_host, broker.pg_port)
    try:
        assert w.startup("fluxo") is None
        w.key ^= 1
        w.cancel()
        w.query("SELECT 1")
        assert [data_row(p) for k, p in w.until_ready() if k == b"D"] == [["1"]]
    finally:
        w.close()
