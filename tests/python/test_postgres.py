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
"""

from __future__ import annotations

import subprocess
from datetime import datetime

import psycopg
import pytest

import fluxo_helpers as H
from test_sql import SOURCE, VIEW, T0, expected_windows, iso, make_bids, produce_bids, sql, \
    topic_with, wait_watermark


def psql(broker, *commands: str, check: bool = True) -> subprocess.CompletedProcess:
    args = ["psql", "-h", broker.pg_host, "-p", str(broker.pg_port), "-U", "fluxo", "-d", "fluxo",
            "-X", "-A", "-t", "-F", "|", "-v", "ON_ERROR_STOP=0"]
    for c in commands:
        args += ["-c", c]
    out = subprocess.run(args, capture_output=True, text=True, timeout=60,
                         env={"PGCONNECT_TIMEOUT": "10", "PATH": "/usr/bin:/bin"})
    if check:
        assert out.returncode == 0, f"psql {commands}: {out.returncode}\n{out.stdout}\n{out.stderr}"
    return out


def connect(broker) -> psycopg.Connection:
    return psycopg.connect(host=broker.pg_host, port=broker.pg_port, user="fluxo", dbname="fluxo",
                           connect_timeout=10)


def load_bids(broker, new_topic, n: int) -> tuple[list[dict], int]:
    topic = topic_with(broker, new_topic, 2)
    bids = make_bids(n)
    produce_bids(broker, topic, bids)
    sql(broker, SOURCE.format(topic=topic))
    sql(broker, VIEW)
    watermark = max(b["_ts"] for b in bids) - 2000
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
