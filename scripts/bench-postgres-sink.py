#!/usr/bin/env python3
"""The PostgreSQL sink's rows per second against COPY into the same server.

Starts a PostgreSQL server of its own (Debian's, as the tests do) and a fluxo
server, generates N Nexmark bids into a topic, then times, several runs each:
- sink: `CREATE SINK ... FROM bids WITH (connector = 'postgres', ...)` until
  the table holds all N rows (rows staged, then applied with the progress
  row at each checkpoint: exactly once);
- COPY: the same N rows, already in the client's memory, written with
  `COPY ... FROM STDIN` (psycopg) into a table of the same shape: the
  fastest way a client loads PostgreSQL, with no exactly-once bookkeeping.

Usage: scripts/bench-postgres-sink.py [--rows N] [--runs K] [--fluxo PATH]
Prints each run and the medians; run from the repository root with the
test venv's Python (.venv/bin/python).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import psycopg


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_bin(name: str) -> str:
    for version in sorted(Path("/usr/lib/postgresql").glob("*"), reverse=True):
        if (version / "bin" / name).exists():
            return str(version / "bin" / name)
    raise SystemExit("no PostgreSQL server: scripts/setup-tests.sh installs Debian's postgresql")


def wait(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}")


def start_postgres(home: Path) -> tuple[subprocess.Popen, str]:
    as_user = []
    if os.geteuid() == 0:
        shutil.chown(home, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data = home / "data"
    subprocess.run([*as_user, pg_bin("initdb"), "-D", str(data), "-A", "trust", "-U", "fluxo"],
                   check=True, capture_output=True)
    port = free_port()
    proc = subprocess.Popen([*as_user, pg_bin("postgres"), "-D", str(data), "-p", str(port),
                             "-c", "listen_addresses=127.0.0.1", "-k", str(data)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"postgresql://fluxo@127.0.0.1:{port}/postgres"

    def ready():
        try:
            psycopg.connect(url, connect_timeout=2).close()
            return True
        except psycopg.OperationalError:
            return False
    wait(ready, 30, "PostgreSQL")
    return proc, url


def start_fluxo(binary: str, home: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([binary, "serve", "--data-dir", str(home / "fluxo"), "--kafka-addr", "127.0.0.1:0",
                             "--http-addr", "127.0.0.1:0", "--pg-addr", "127.0.0.1:0", "--mqtt-addr", "127.0.0.1:0",
                             "--registry-addr", "127.0.0.1:0"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        m = re.match(r"^fluxo: http listening on (\S+)", line)
        if m:
            return proc, m.group(1)
    raise SystemExit("fluxo did not start")


def sql(http: str, statement: str) -> dict:
    req = urllib.request.Request(f"http://{http}/api/v1/sql", data=json.dumps({"sql": statement}).encode(),
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        return json.loads(r.read())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--fluxo", default=None)
    args = ap.parse_args()
    binary = args.fluxo or next(p for p in ("target/release/fluxo", "target/debug/fluxo") if Path(p).exists())
    home = Path(tempfile.mkdtemp(prefix="fluxo-bench-pg-"))
    pg, url = start_postgres(home)
    fluxo, http = start_fluxo(binary, home)
    try:
        sql(http, f"""CREATE SOURCE bids (auction BIGINT, bidder BIGINT, price BIGINT, channel TEXT, url TEXT,
                                          date_time TIMESTAMP, extra TEXT)
                      WITH (connector = 'nexmark', stream = 'bid', max_events = '{args.rows}', seed = '3')""")
        wait(lambda: sql(http, "SELECT count(*) FROM bids")["rows"] == [[args.rows]], 300, "the generated bids")
        with psycopg.connect(url, autocommit=True) as conn:
            sink_s, copy_s = [], []
            for run in range(args.runs):
                table = f"bids_sink_{run}"
                started = time.monotonic()
                sql(http, f"CREATE SINK pg{run} FROM bids WITH (connector = 'postgres', url = '{url}', "
                          f"table = '{table}', checkpoint_interval = '1 second')")

                def done():
                    try:
                        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] >= args.rows
                    except psycopg.errors.UndefinedTable:
                        return False
                wait(done, 600, f"{args.rows} rows in {table}")
                sink_s.append(time.monotonic() - started)
                sql(http, f"DROP SINK pg{run}")

                rows = conn.execute(f"SELECT * FROM {table}").fetchall()
                conn.execute(f"CREATE TABLE copy_{run} (LIKE {table})")
                started = time.monotonic()
                with conn.cursor() as cur, cur.copy(f"COPY copy_{run} FROM STDIN") as copy:
                    for r in rows:
                        copy.write_row(r)
                copy_s.append(time.monotonic() - started)
                print(f"run {run}: sink {args.rows / sink_s[-1]:,.0f} rows/s, COPY {args.rows / copy_s[-1]:,.0f} rows/s",
                      flush=True)
        sink, copy = statistics.median(sink_s), statistics.median(copy_s)
        print(f"binary {binary}; {args.rows} rows; medians of {args.runs}: sink {args.rows / sink:,.0f} rows/s, "
              f"COPY {args.rows / copy:,.0f} rows/s, sink/COPY {copy / sink:.2f}")
    finally:
        fluxo.terminate()
        fluxo.wait(timeout=30)
        pg.terminate()
        pg.wait(timeout=30)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
