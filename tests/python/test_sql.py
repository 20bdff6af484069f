"""Continuous SQL end to end: the real `fluxo serve`, events produced with
confluent-kafka, statements over the HTTP API (`POST /api/v1/sql`) and
`fluxo sql`, live changes over server-sent events, and a kill -9 in the
middle of a stream. Every expected result is computed here, independently,
from the events the test produced."""

from __future__ import annotations

import http.client
import json
import random
import subprocess
import time
from collections import defaultdict
from datetime import datetime, timezone

import pytest
from confluent_kafka import Producer

import fluxo_helpers as H

T0 = 1_700_000_000_000  # ms


def topic_with(broker, new_topic, partitions: int) -> str:
    name = new_topic("sql")
    H.create_topic(broker.bootstrap, name, partitions=partitions)
    return name


def sql(broker, statement: str, expect_status: int = 200) -> dict:
    host, port = broker.http_addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("POST", "/api/v1/sql", body=json.dumps({"sql": statement}),
                 headers={"content-type": "application/json"})
    resp = conn.getresponse()
    body = json.loads(resp.read())
    assert resp.status == expect_status, f"{statement}: {resp.status} {body}"
    return body


def get(broker, path: str) -> dict:
    host, port = broker.http_addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("GET", path)
    resp = conn.getresponse()
    return {"status": resp.status, "body": json.loads(resp.read())}


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def produce_bids(broker, topic: str, bids: list[dict]) -> None:
    p = Producer({**H.BASE_CONF, "bootstrap.servers": broker.bootstrap, "linger.ms": 5})
    for i, b in enumerate(bids):
        p.produce(topic, json.dumps(b).encode(), partition=i % 2)
        if i % 5000 == 0:
            p.poll(0)
    assert p.flush(30) == 0


def make_bids(n: int, seed: int = 7) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        ts = T0 + i * 10 - rng.randrange(0, 1500)
        # Half the events carry RFC 3339 times, half epoch milliseconds.
        when = iso(ts) if i % 2 else ts
        out.append({"auction": rng.randrange(10), "price": rng.randrange(1, 500),
                    "channel": rng.choice(["web", "app"]), "date_time": when, "_ts": ts})
    return out


# A partition that stays silent for the source's idle_timeout stops holding
# the watermark back, and its next events can then be late (as in any engine
# with idleness): with a short timeout, a loaded machine that delivers one
# partition's bids well before the other's makes the other's first events
# late. So the tests keep both partitions active (a minute of idleness) and
# wait for the watermark the two partitions together allow.
SOURCE = """CREATE SOURCE bids (auction BIGINT, price BIGINT, channel TEXT, date_time TIMESTAMP,
              WATERMARK FOR date_time AS date_time - INTERVAL '2' SECOND)
            WITH (connector = 'topic', topic = '{topic}', format = 'json', idle_timeout = '1 minute')"""


def source_watermark(bids: list[dict]) -> int:
    """The watermark once both partitions have delivered `bids`
    (produce_bids puts bid i in partition i % 2): the smaller of the two
    partitions' largest event times, minus the source's 2 s delay."""
    return min(max(b["_ts"] for b in bids[p::2]) for p in (0, 1)) - 2000

VIEW = """CREATE MATERIALIZED VIEW per_auction AS
            SELECT auction, window_start, window_end, count(*) AS bids, max(price) AS top
            FROM TUMBLE(bids, date_time, INTERVAL '5' SECOND)
            GROUP BY auction, window_start, window_end"""


def expected_windows(bids: list[dict], watermark: int) -> dict:
    acc = defaultdict(lambda: [0, 0])
    for b in bids:
        start = b["_ts"] - b["_ts"] % 5000
        if start + 5000 <= watermark:
            a = acc[(b["auction"], iso(start), iso(start + 5000))]
            a[0] += 1
            a[1] = max(a[1], b["price"])
    return {k: tuple(v) for k, v in acc.items()}


def view_rows(broker) -> dict:
    body = sql(broker, "SELECT * FROM per_auction")
    assert [c["name"] for c in body["columns"]] == ["auction", "window_start", "window_end", "bids", "top"]
    return {(r[0], r[1], r[2]): (r[3], r[4]) for r in body["rows"]}


def wait_watermark(broker, view: str, watermark_ms: int, timeout: float = 60) -> dict:
    want = iso(watermark_ms)

    def ready():
        for p in get(broker, "/api/v1/pipelines")["body"]["pipelines"]:
            if p["name"] == view and p["watermark"] == want:
                return p
        return None
    return H.wait_for(ready, timeout=timeout, desc=f"watermark {want} in {view}")


def test_tumbling_view_over_http_matches_the_events(broker, new_topic):
    topic = topic_with(broker, new_topic, 2)
    bids = make_bids(20_000)
    produce_bids(broker, topic, [{k: v for k, v in b.items() if k != "_ts"} for b in bids])
    assert sql(broker, SOURCE.format(topic=topic))["message"] == "CREATE SOURCE bids"
    sql(broker, VIEW)
    watermark = source_watermark(bids)
    status = wait_watermark(broker, "per_auction", watermark)
    assert view_rows(broker) == expected_windows(bids, watermark)
    assert status["events_in"] == len(bids)
    assert status["late_events"] == 0
    assert any("WindowAggregate: TUMBLE" in op for op in status["operators"]), status["operators"]

    # A pull query with WHERE, ORDER BY and LIMIT over the view.
    top = sql(broker, "SELECT auction, bids FROM per_auction WHERE auction = 3 ORDER BY bids DESC, window_start LIMIT 2")
    exp = sorted(((k[0], v[0], k[1]) for k, v in expected_windows(bids, watermark).items() if k[0] == 3),
                 key=lambda x: (-x[1], x[2]))[:2]
    assert top["rows"] == [[a, n] for a, n, _ in exp]

    # Late events: behind every closed window; counted, results unchanged.
    produce_bids(broker, topic, [{"auction": 1, "price": 1, "channel": "web", "date_time": T0}] * 3)
    H.wait_for(lambda: next(p for p in get(broker, "/api/v1/pipelines")["body"]["pipelines"]
                            if p["name"] == "per_auction")["late_events"] == 3, desc="late events counted")
    assert view_rows(broker) == expected_windows(bids, watermark)

    explain = sql(broker, "EXPLAIN " + VIEW.split(" AS", 1)[1])
    assert any("Source: bids" in r[0] for r in explain["rows"])


def test_bad_statements_get_400_with_a_precise_error(broker, new_topic):
    topic = topic_with(broker, new_topic, 1)
    sql(broker, SOURCE.format(topic=topic))
    cases = {
        "SELEC 1": "syntax error",
        "CREATE MATERIALIZED VIEW v AS SELECT nope FROM bids": "nope",
        "CREATE MATERIALIZED VIEW v AS SELECT * FROM bids ORDER BY price": "ORDER BY is not supported",
        "SELECT * FROM no_such_view": "no_such_view",
        "CREATE SOURCE x (a INT) WITH (topic = 't', colour = 'red')": "unknown option 'colour'",
        "DROP MATERIALIZED VIEW nothing": "view nothing does not exist",
    }
    for statement, fragment in cases.items():
        body = sql(broker, statement, expect_status=400)
        assert fragment in body["error"], (statement, body)
    # Malformed bodies and unknown routes are JSON errors too.
    host, port = broker.http_addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("POST", "/api/v1/sql", body=b"{not json", headers={"content-type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 400 and "error" in json.loads(resp.read())
    assert get(broker, "/api/v1/nothing")["status"] == 404
    assert get(broker, "/api/v1/views/nothing/changes")["status"] == 404


def read_sse_events(resp, count: int, timeout: float = 30) -> list[tuple[str, dict]]:
    events, event = [], None
    deadline = time.monotonic() + timeout
    while len(events) < count and time.monotonic() < deadline:
        line = resp.fp.readline().decode().rstrip("\n")
        if line.startswith("event:"):
            event = line.split(":", 1)[1].strip()
        elif line.startswith("data:"):
            events.append((event, json.loads(line.split(":", 1)[1])))
    return events


def test_changes_stream_as_server_sent_events(broker, new_topic):
    topic = topic_with(broker, new_topic, 1)
    sql(broker, SOURCE.format(topic=topic))
    sql(broker, "CREATE MATERIALIZED VIEW per_channel AS SELECT channel, count(*) AS n FROM bids GROUP BY channel")
    host, port = broker.http_addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("GET", "/api/v1/views/per_channel/changes", headers={"accept": "text/event-stream"})
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.getheader("content-type").startswith("text/event-stream")
    [(kind, snapshot)] = read_sse_events(resp, 1)
    assert kind == "snapshot" and snapshot["rows"] == []
    produce_bids(broker, topic, [{"auction": 1, "price": 5, "channel": "web", "date_time": T0}])
    [(kind, change)] = read_sse_events(resp, 1)
    assert kind == "changes"
    assert change == {"deleted": [], "inserted": [["web", 1]]}
    produce_bids(broker, topic, [{"auction": 1, "price": 5, "channel": "web", "date_time": T0}])
    [(kind, change)] = read_sse_events(resp, 1)
    assert change == {"deleted": [["web", 1]], "inserted": [["web", 2]]}


def test_fluxo_sql_cli_runs_statements_and_reports_errors(broker, new_topic):
    topic = topic_with(broker, new_topic, 1)
    env = {"FLUXO_HTTP_ADDR": broker.http_addr, "PATH": "/usr/bin:/bin"}
    run = lambda *a, **kw: subprocess.run([H.fluxo_bin(), "sql", *a], capture_output=True, text=True,
                                          env=env, timeout=60, **kw)
    r = run("-e", SOURCE.format(topic=topic))
    assert r.returncode == 0, r.stderr
    assert "CREATE SOURCE bids" in r.stdout
    r = run("-e", "SHOW SOURCES")
    assert r.returncode == 0 and "bids" in r.stdout and topic in r.stdout and "(1 row)" in r.stdout
    r = run("-e", "SELECT nope FROM bids")
    assert r.returncode != 0 and "nope" in r.stderr
    # The REPL reads statements ended by ';' from stdin.
    r = run(input="DESCRIBE bids;\nSELECT 1 + 1 AS two;\n")
    assert r.returncode == 0, r.stderr
    assert "date_time" in r.stdout and "TIMESTAMP" in r.stdout and " 2 " in r.stdout


def test_views_are_back_and_exact_after_kill_9_mid_stream(broker, new_topic):
    topic = topic_with(broker, new_topic, 2)
    bids = make_bids(30_000, seed=11)
    clean = [{k: v for k, v in b.items() if k != "_ts"} for b in bids]
    produce_bids(broker, topic, clean[:15_000])
    sql(broker, SOURCE.format(topic=topic))
    sql(broker, VIEW)
    # Kill while the pipeline is still reading the second half.
    produce_bids(broker, topic, clean[15_000:])
    broker.kill9()
    broker.start(port=broker.port)
    assert [r[0] for r in sql(broker, "SHOW VIEWS")["rows"]] == ["per_auction"]
    watermark = source_watermark(bids)
    wait_watermark(broker, "per_auction", watermark)
    assert view_rows(broker) == expected_windows(bids, watermark)


def sink_rows(broker, topic: str) -> list[tuple]:
    """The rows a topic sink wrote, read back with confluent-kafka."""
    recs = H.consume_all(broker.bootstrap, topic)
    out = []
    for part in recs.values():
        for r in part:
            row = json.loads(r.value)
            out.append((row["auction"], row["window_start"], row["window_end"], row["bids"], row["top"]))
    return out


def test_a_topic_sink_delivers_every_window_exactly_once_across_ten_kill_9s(broker, new_topic):
    """Each checkpoint of the view is one transaction on the sink's topic, so
    a read_committed reader of the topic gets every window row exactly once,
    whatever the crashes, equal to the rows an uncrashed view holds."""
    topic = topic_with(broker, new_topic, 2)
    out = new_topic("sink-out")
    bids = make_bids(33_000, seed=5)
    clean = [{k: v for k, v in b.items() if k != "_ts"} for b in bids]
    produce_bids(broker, topic, clean[:3_000])
    sql(broker, SOURCE.format(topic=topic))
    sql(broker, VIEW.replace("AS\n", "WITH (checkpoint_interval = '300ms') AS\n", 1))
    # A GROUP BY without windows changes its rows: a sink without a key is refused.
    sql(broker, "CREATE MATERIALIZED VIEW totals AS SELECT auction, count(*) AS n FROM bids GROUP BY auction")
    err = sql(broker, f"CREATE SINK t FROM totals WITH (topic = '{out}-x')", expect_status=400)["error"]
    assert "key" in err, err
    sql(broker, f"CREATE SINK hot FROM per_auction WITH (connector = 'topic', topic = '{out}', format = 'json')")
    # The same windows from a sink that runs the query itself, no view kept.
    own_query = VIEW.split(" AS\n", 1)[1]
    sql(broker, f"CREATE SINK hot2 WITH (topic = '{out}-q', checkpoint_interval = '300ms') AS {own_query}")
    assert sql(broker, "SHOW SINKS")["rows"] == [["hot", "per_auction", "topic"],
                                                 ["hot2", "(its own query)", "topic"]]
    err = sql(broker, "DROP SOURCE bids", expect_status=400)["error"]
    assert "views" in err or "sinks" in err, err
    err = sql(broker, f"CREATE SINK bad FROM per_auction WITH (topic = '{out}-y', parallelism = 2)",
              expect_status=400)["error"]
    assert "parallelism applies to a sink's own query" in err, err
    rng = random.Random(11)
    for k in range(10):
        chunk = clean[3_000 + k * 3_000: 6_000 + k * 3_000]
        produce_bids(broker, topic, chunk)
        # Crash at a random point: between checkpoints, mid-commit, or idle.
        time.sleep(rng.uniform(0.0, 1.2))
        broker.kill9()
        broker.start(port=broker.port)
    watermark = source_watermark(bids)
    wait_watermark(broker, "per_auction", watermark, timeout=120)
    want = expected_windows(bids, watermark)
    assert view_rows(broker) == want
    pipelines = {p["name"]: p for p in get(broker, "/api/v1/pipelines")["body"]["pipelines"]}
    assert pipelines["per_auction"]["last_checkpoint"]["epoch"] >= 1

    def complete(topic=out):
        got = sink_rows(broker, topic)
        return got if len({(a, s, e) for a, s, e, _, _ in got}) >= len(want) else None
    got = H.wait_for(complete, timeout=60, desc="every window in the sink topic")
    # Exactly once: every window row once, with the view's values.
    assert sorted(got) == sorted((a, s, e, n, top) for (a, s, e), (n, top) in want.items())
    got = H.wait_for(lambda: complete(f"{out}-q"), timeout=60, desc="every window in the query sink's topic")
    assert sorted(got) == sorted((a, s, e, n, top) for (a, s, e), (n, top) in want.items())
    sql(broker, "DROP MATERIALIZED VIEW totals")
    sql(broker, "DROP SINK hot2")
    # The crashes left aborted transactions behind, which read_uncommitted
    # readers see and read_committed ones skip; nothing is left open.
    uncommitted = H.consume_all(broker.bootstrap, out, **{"isolation.level": "read_uncommitted"})
    assert sum(len(v) for v in uncommitted.values()) >= len(got)


def test_a_nexmark_source_generates_bids_that_views_aggregate(broker, new_topic):
    sql(broker, """CREATE SOURCE nx (auction BIGINT, bidder BIGINT, price BIGINT, channel TEXT, url TEXT,
                     date_time TIMESTAMP, extra TEXT,
                     WATERMARK FOR date_time AS date_time - INTERVAL '1' SECOND)
                   WITH (connector = 'nexmark', stream = 'bid', max_events = '20000', seed = '3',
                         start_time = '1700000000000', idle_timeout = '300ms')""")
    sql(broker, """CREATE MATERIALIZED VIEW nx_counts AS
                   SELECT channel, count(*) AS n, min(price) AS lo FROM nx GROUP BY channel""")
    # The generated events are in the source's topic for anyone to read.
    recs = H.wait_for(lambda: (lambda r: r if sum(map(len, r.values())) == 20_000 else None)(
        H.consume_all(broker.bootstrap, "nexmark-nx")), timeout=60, desc="20000 generated bids")
    bids = [json.loads(r.value) for part in recs.values() for r in part]
    assert {"auction", "bidder", "price", "channel", "url", "date_time", "extra"} <= set(bids[0])
    want = defaultdict(lambda: [0, None])
    for b in bids:
        w = want[b["channel"]]
        w[0] += 1
        w[1] = b["price"] if w[1] is None else min(w[1], b["price"])

    def matches():
        rows = sql(broker, "SELECT channel, n, lo FROM nx_counts")["rows"]
        got = {r[0]: [r[1], r[2]] for r in rows}
        return got if got == dict(want) else None
    H.wait_for(matches, timeout=60, desc="nx_counts matches the generated bids")
    bad = sql(broker, "CREATE SOURCE nx2 (a BIGINT) WITH (connector = 'nexmark', stream = 'trades')",
              expect_status=400)["error"]
    assert "'bid', 'auction' or 'person'" in bad, bad
