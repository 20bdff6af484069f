"""Batch queries over a source's history, checked against DuckDB.

A `SELECT` that reads a SOURCE directly (not a materialized view) runs as a
batch over everything the source's topic holds: every partition, from the
start of its log to the end it has when the query runs. Such a query can use
all of SQL (joins, subqueries, window functions, ORDER BY, LIMIT), so the
simplest way to know the right answer is to ask another engine. The first
test produces 20,000 pseudo-random bids with confluent-kafka over three
partitions. Their event times are epoch milliseconds, RFC 3339 in UTC, or
RFC 3339 with an offset. Two records that do not fit the schema go in among
them: fluxo must skip those. DuckDB reads the same valid bids from a
JSON-lines file, and each query must give the same columns and rows in both.
The queries are aggregates, a filter with ORDER BY and LIMIT, a join on a
subquery, a window function, and per-second buckets and a filter on the
event-time column.

The second test checks the edges. A batch sees what was produced up to the
moment it runs. A source whose topic does not exist yet is empty, not an
error. An unknown column gets a 400 that names it.
"""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta, timezone

import duckdb
import pytest

import fluxo_helpers as H
from test_sql import sql, topic_with

T0 = 1_700_000_000_000  # ms
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
PLUS_TWO = timezone(timedelta(hours=2))
CHANNELS = ["web", "app", "ios", "android", "partner"]

SOURCE = """CREATE SOURCE {name} (auction BIGINT, bidder BIGINT, price BIGINT, channel TEXT, date_time TIMESTAMP,
              WATERMARK FOR date_time AS date_time - INTERVAL '1' SECOND)
            WITH (connector = 'topic', topic = '{topic}', format = 'json')"""

DUCKDB_COLUMNS = ("{auction: 'BIGINT', bidder: 'BIGINT', price: 'BIGINT', channel: 'VARCHAR', "
                  "date_time: 'TIMESTAMP'}")

# One line each; fluxo must skip both (not JSON; a price that is not a number).
MALFORMED = [
    b"not json at all",
    json.dumps({"auction": 1, "bidder": 1, "price": "lots", "channel": "web", "date_time": T0}).encode(),
]

# Every query orders its rows completely (rows that tie on the ORDER BY are
# identical), so the two answers are compared as lists. Sums, counts, min
# and max only: no floating point in the answers.
QUERIES = [
    "SELECT count(*) AS n FROM bids",
    """SELECT channel, count(*) AS n, sum(price) AS total, max(price) AS top,
              min(date_time) AS first_bid, max(date_time) AS last_bid
       FROM bids GROUP BY channel ORDER BY channel""",
    """SELECT auction, bidder, price FROM bids WHERE price > 99000
       ORDER BY price DESC, auction, bidder LIMIT 10""",
    # Auctions with more bids than the average auction.
    """SELECT b.auction, count(*) AS n, max(b.price) AS top
       FROM bids AS b
       JOIN (SELECT auction FROM bids GROUP BY auction
             HAVING count(*) > (SELECT avg(n) FROM (SELECT count(*) AS n FROM bids GROUP BY auction) AS c)
            ) AS busy ON b.auction = busy.auction
       GROUP BY b.auction ORDER BY b.auction""",
    """SELECT auction, bidder, price,
              rank() OVER (PARTITION BY auction ORDER BY price DESC, bidder) AS r
       FROM bids WHERE auction < 5 ORDER BY auction, r, bidder""",
    # A wrongly decoded event time (an offset ignored, say) moves bids
    # between buckets.
    """SELECT date_trunc('second', date_time) AS sec, count(*) AS n, sum(price) AS total
       FROM bids GROUP BY date_trunc('second', date_time) ORDER BY sec""",
]


def rfc3339(ms: int, tz: timezone = timezone.utc) -> str:
    """`2023-11-14T22:13:20.123Z`, or with an offset: `2023-11-15T00:13:20.123+02:00`."""
    t = (EPOCH + timedelta(milliseconds=ms)).astimezone(tz)
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def make_bids(n: int, seed: int) -> list[dict]:
    """Bids with `date_time` in epoch ms. A fifth of them go to ten hot
    auctions (0-9); the rest are spread over auctions 10-999."""
    rng = random.Random(seed)
    bids = []
    for i in range(n):
        hot = rng.random() < 0.2
        bids.append({
            "auction": rng.randrange(10) if hot else rng.randrange(10, 1000),
            "bidder": rng.randrange(1, 5000),
            "price": rng.randrange(1, 100_000),
            "channel": rng.choice(CHANNELS),
            "date_time": T0 + i * 10 + rng.randrange(2000),  # a little out of order
        })
    return bids


def wire_records(bids: list[dict]) -> list[dict]:
    """produce_all() records, keyed by bidder so they spread over partitions.
    The event time takes turns: epoch ms, RFC 3339 in UTC, RFC 3339 at +02:00."""
    def event_time(i: int, ms: int):
        return [ms, rfc3339(ms), rfc3339(ms, PLUS_TWO)][i % 3]

    return [{"key": str(b["bidder"]).encode(),
             "value": json.dumps({**b, "date_time": event_time(i, b["date_time"])}).encode()}
            for i, b in enumerate(bids)]


def produce(broker, topic: str, records: list[dict]) -> list[H.Delivery]:
    reports = H.produce_all(H.producer(broker.bootstrap, **{"linger.ms": 5}), topic, records)
    H.assert_all_delivered(reports)
    return reports


def duckdb_bids(tmp_path, bids: list[dict]) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with the bids as table `bids`, read from JSON lines."""
    path = tmp_path / "bids.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for b in bids:
            f.write(json.dumps({**b, "date_time": rfc3339(b["date_time"])}) + "\n")
    con = duckdb.connect()
    con.execute("CREATE TABLE bids AS SELECT * FROM read_json(?, format = 'newline_delimited', "
                f"columns = {DUCKDB_COLUMNS})", [str(path)])
    return con


def fluxo_answer(broker, query: str) -> tuple[list[str], list[list]]:
    """Column names and rows, with TIMESTAMP values as aware UTC datetimes."""
    body = sql(broker, query)
    names = [c["name"] for c in body["columns"]]
    times = {i for i, c in enumerate(body["columns"]) if c["type"].startswith("TIMESTAMP")}
    rows = [[datetime.fromisoformat(v) if i in times and v is not None else v for i, v in enumerate(row)]
            for row in body["rows"]]
    return names, rows


def duckdb_answer(con: duckdb.DuckDBPyConnection, query: str) -> tuple[list[str], list[list]]:
    """Column names and rows, with TIMESTAMP values (naive, UTC) as aware UTC datetimes."""
    cur = con.execute(query)
    names = [d[0] for d in cur.description]
    rows = [[v.replace(tzinfo=timezone.utc) if isinstance(v, datetime) else v for v in row]
            for row in cur.fetchall()]
    return names, rows


def assert_same_answer(broker, con: duckdb.DuckDBPyConnection, query: str) -> list[list]:
    want_names, want = duckdb_answer(con, query)
    assert want, f"the query should return rows: {query}"
    got_names, got = fluxo_answer(broker, query)
    assert got_names == want_names, query
    assert len(got) == len(want), f"{len(got)} rows from fluxo, {len(want)} from DuckDB: {query}"
    assert got == want, query
    return got


@pytest.mark.timeout(240)
def test_batch_queries_over_a_source_match_duckdb(broker, new_topic, tmp_path):
    topic = topic_with(broker, new_topic, 3)
    bids = make_bids(20_000, seed=2024)
    records = wire_records(bids)
    records[777:777] = [{"key": b"bad-1", "value": MALFORMED[0]}]
    records[13_000:13_000] = [{"key": b"bad-2", "value": MALFORMED[1]}]
    reports = produce(broker, topic, records)
    assert {r.partition for r in reports} == {0, 1, 2}

    assert sql(broker, SOURCE.format(name="bids", topic=topic))["message"] == "CREATE SOURCE bids"
    con = duckdb_bids(tmp_path, bids)

    # The malformed records are skipped whichever columns a query reads
    # (count(*) reads none).
    count = sql(broker, "SELECT count(*) AS n FROM bids")["rows"]
    assert count == [[len(bids)]], f"{count}: the {len(MALFORMED)} malformed records must not count"
    for query in QUERIES:
        assert_same_answer(broker, con, query)

    # A filter on the event time, at a bid's time in the middle of the data
    # (so that `>=` and `>` give different counts).
    middle = sorted(b["date_time"] for b in bids)[len(bids) // 2]
    [[n]] = assert_same_answer(
        broker, con, f"SELECT count(*) AS n FROM bids WHERE date_time >= '{rfc3339(middle)}'")
    assert n == sum(b["date_time"] >= middle for b in bids)


@pytest.mark.timeout(120)
def test_a_batch_reads_the_topic_as_it_is_when_the_query_runs(broker, new_topic):
    topic = topic_with(broker, new_topic, 3)
    first, more = make_bids(1_000, seed=5), make_bids(100, seed=6)
    produce(broker, topic, wire_records(first))
    sql(broker, SOURCE.format(name="bids", topic=topic))
    totals = "SELECT count(*) AS n, sum(price) AS total FROM bids"
    assert sql(broker, totals)["rows"] == [[1_000, sum(b["price"] for b in first)]]

    # Records acknowledged before the next query are in it.
    produce(broker, topic, wire_records(more))
    assert sql(broker, totals)["rows"] == [[1_100, sum(b["price"] for b in first + more)]]

    # A source over a topic nobody has created yet has no history.
    ghost = new_topic("ghost")
    assert ghost not in H.all_topics(broker.bootstrap)
    sql(broker, SOURCE.format(name="ghost", topic=ghost))
    assert sql(broker, "SELECT count(*) AS n FROM ghost")["rows"] == [[0]]
    empty = sql(broker, "SELECT * FROM ghost WHERE price > 10 ORDER BY date_time")
    assert empty["rows"] == []
    assert [c["name"] for c in empty["columns"]] == ["auction", "bidder", "price", "channel", "date_time"]

    # A query that cannot be planned is a 400 that names the culprit.
    for query in ["SELECT nope FROM bids",
                  "SELECT b.auction FROM bids AS b JOIN ghost AS g ON b.nope = g.auction"]:
        error = sql(broker, query, expect_status=400)["error"]
        assert "nope" in error, (query, error)
