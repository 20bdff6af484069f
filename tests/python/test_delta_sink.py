"""The Delta Lake sink and Delta tables, checked with the `deltalake` Python
package (delta-rs), as users' tools read and write them.

`CREATE SINK ... WITH (connector = 'delta', path = '...')` writes a view's
rows as a Delta table: data files as rows come, and one Delta commit per
pipeline checkpoint that also records the sink's application transaction
(`txn`: app id, version = the checkpoint's epoch). A reader of the table sees
every row exactly once, also across `kill -9` and restart.

- The first test writes a windowed view into two tables, one partitioned by
  `window_start`, attached after the view already holds rows; each table must
  hold exactly the view's rows, with Delta types (long, timestamp without time
  zone), its commits must carry the sink's `txn` with growing versions, and
  the same table registered with `CREATE TABLE ... (connector = 'delta')`
  answers a batch query like the view.
- The second kills the server twice (a few checkpoints after new events, and
  right after them) and checks every window closed by the final watermark is
  in the table exactly once, with values computed here from the events.
- The third registers a table written by delta-rs itself and joins it with a
  topic's history in one batch query.
- The fourth checks what is refused, with a 400 and a precise error.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

import fluxo_helpers as H
from test_parquet_sink import COLUMNS, SOURCE, VIEW, VIEW_NAME, describe, expected_windows, normalize, \
    pipeline, source_watermark, view_rows
from test_sql import make_bids, produce_bids, sql, topic_with, wait_watermark


def sink_sql(name: str, path, **extra: str) -> str:
    options = {"connector": "delta", "path": str(path), **extra}
    listed = ", ".join(f"{k} = '{v}'" for k, v in options.items())
    return f"CREATE SINK {name} FROM {VIEW_NAME} WITH ({listed})"


def delta_rows(path: Path) -> tuple[list[str], Counter]:
    """The rows of the table's latest version as delta-rs reads them."""
    if not (path / "_delta_log").is_dir():
        return [], Counter()
    table = DeltaTable(str(path)).to_pyarrow_table()
    names = table.schema.names
    cols = [table.column(n).to_pylist() for n in names]
    return names, Counter(normalize(names, row) for row in zip(*cols))


def commits(path: Path) -> list[dict]:
    """Each commit file of the Delta log, as a list of its actions."""
    out = []
    for f in sorted((path / "_delta_log").glob("*.json")):
        out.append([json.loads(line) for line in f.read_text().splitlines() if line.strip()])
    return out


def wait_delta(broker, path: Path, want: Counter, timeout: float = 60) -> Counter:
    """Polls until the table holds every expected row, then waits a few more
    checkpoints so that a duplicate committed late would show."""
    def complete():
        _, got = delta_rows(path)
        return got if not (want - got) else None
    try:
        H.wait_for(complete, timeout=timeout, desc=f"every expected row in the Delta table {path}")
    except AssertionError as e:
        raise AssertionError(f"{e}: {describe(delta_rows(path)[1], want)}; pipeline: {pipeline(broker)}") from None
    time.sleep(1.0)  # five checkpoint intervals
    return delta_rows(path)[1]


@pytest.mark.timeout(240)
def test_a_delta_table_holds_the_view_rows_exactly(broker, new_topic, tmp_path):
    topic = topic_with(broker, new_topic, 2)
    bids = make_bids(20_000, seed=31)
    clean = [{k: v for k, v in b.items() if k != "_ts"} for b in bids]
    produce_bids(broker, topic, clean[:10_000])
    sql(broker, SOURCE.format(topic=topic))
    sql(broker, VIEW)
    wait_watermark(broker, VIEW_NAME, source_watermark(bids[:10_000]))
    _, before = view_rows(broker)
    assert before, "the view holds no rows before the sink is created"
    path = tmp_path / "lake"
    parted = tmp_path / "lake_by_window"
    assert sql(broker, sink_sql("lake", path))["message"] == "CREATE SINK lake"
    sql(broker, sink_sql("lake_parted", parted, partition_by="window_start", target_file_size="1MB"))
    assert sorted(map(tuple, sql(broker, "SHOW SINKS")["rows"])) == \
        [("lake", VIEW_NAME, "delta"), ("lake_parted", VIEW_NAME, "delta")]

    produce_bids(broker, topic, clean[10_000:])
    watermark = source_watermark(bids)
    wait_watermark(broker, VIEW_NAME, watermark)
    names, view = view_rows(broker)
    assert names == COLUMNS
    assert view == expected_windows(bids, watermark), describe(view, expected_windows(bids, watermark))

    for p in (path, parted):
        got = wait_delta(broker, p, view)
        assert got == view, f"the Delta table {p} does not hold the view's rows exactly: {describe(got, view)}"
        assert not (before - got), "rows the view held before the sink was created are missing"

    table = DeltaTable(str(path))
    fields = {f.name: f.type.type for f in table.schema().fields}
    assert list(fields) == COLUMNS
    assert fields["auction"] == "long" and fields["bids"] == "long", fields
    assert fields["window_start"] == "timestamp_ntz", fields
    assert DeltaTable(str(parted)).metadata().partition_columns == ["window_start"]
    assert any(d.name.startswith("window_start=") for d in parted.iterdir()), list(parted.iterdir())

    # Every data commit carries the sink's transaction, versions growing.
    txns = [a["txn"] for c in commits(path) for a in c if "txn" in a]
    assert txns, "no commit carries an application transaction"
    assert len({t["appId"] for t in txns}) == 1, txns
    versions = [t["version"] for t in txns]
    assert versions == sorted(set(versions)), versions
    assert table.transaction_version(txns[0]["appId"]) == versions[-1]

    # The same table, registered for batch queries.
    sql(broker, f"CREATE TABLE lake_table WITH (connector = 'delta', path = '{path}')")
    assert "lake_table" in [r[0] for r in sql(broker, "SHOW TABLES")["rows"]]
    body = sql(broker, "SELECT count(*) AS n, sum(total) AS total FROM lake_table")
    assert body["rows"] == [[sum(view.values()), sum(r[4] * n for r, n in view.items())]], body


@pytest.mark.timeout(300)
def test_delta_rows_land_exactly_once_across_kill_9(broker, new_topic, tmp_path):
    topic = topic_with(broker, new_topic, 2)
    bids = make_bids(30_000, seed=37)
    clean = [{k: v for k, v in b.items() if k != "_ts"} for b in bids]
    path = tmp_path / "lake"
    produce_bids(broker, topic, clean[:10_000])
    sql(broker, SOURCE.format(topic=topic))
    sql(broker, VIEW)
    sql(broker, sink_sql("lake", path))
    H.wait_for(lambda: sum(delta_rows(path)[1].values()) > 0, timeout=60, desc=f"committed rows in {path}")

    for part, delay in ((clean[10_000:20_000], 0.5), (clean[20_000:], 0.0)):
        produce_bids(broker, topic, part)
        time.sleep(delay)
        status = pipeline(broker)
        broker.kill9()
        broker.note(f"at the kill: events_in {status['events_in']}, watermark {status['watermark']}, "
                    f"checkpoint {status['last_checkpoint']}; Delta versions {len(commits(path))}")
        broker.start(port=broker.port)

    watermark = source_watermark(bids)
    wait_watermark(broker, VIEW_NAME, watermark)
    want = expected_windows(bids, watermark)
    _, view = view_rows(broker)
    assert view == want, f"the view is wrong after the crashes: {describe(view, want)}"
    got = wait_delta(broker, path, want)
    assert got == want, f"not exactly once across kill -9: {describe(got, want)}"
    status = pipeline(broker)
    assert status["status"] == "running", status


@pytest.mark.timeout(120)
def test_a_table_written_by_delta_rs_joins_a_topic_history(broker, new_topic, tmp_path):
    topic = topic_with(broker, new_topic, 2)
    bids = make_bids(2_000, seed=41)
    clean = [{k: v for k, v in b.items() if k != "_ts"} for b in bids]
    produce_bids(broker, topic, clean)
    sql(broker, SOURCE.format(topic=topic))
    auctions = sorted({b["auction"] for b in bids})
    names = {a: f"item-{a}" for a in auctions}
    path = tmp_path / "auctions"
    write_deltalake(str(path), pa.table({"id": pa.array(auctions, pa.int64()),
                                         "item": pa.array([names[a] for a in auctions])}))
    write_deltalake(str(path), pa.table({"id": pa.array([-1], pa.int64()), "item": ["never bid on"]}),
                    mode="append")
    sql(broker, f"CREATE TABLE auctions WITH (connector = 'delta', path = '{path}')")
    described = sql(broker, "DESCRIBE auctions")["rows"]
    assert [r[0] for r in described] == ["id", "item"], described
    body = sql(broker, """SELECT a.item, count(*) AS n, sum(b.price) AS total
                          FROM bids b JOIN auctions a ON b.auction = a.id
                          GROUP BY a.item ORDER BY a.item""")
    want = Counter()
    totals = Counter()
    for b in bids:
        want[names[b["auction"]]] += 1
        totals[names[b["auction"]]] += b["price"]
    expected = [[item, want[item], totals[item]] for item in sorted(want)]
    assert body["rows"] == expected, body
    # A materialized view joins the stream with the table too: the table is
    # read once when the view starts, the bids as they come.
    sql(broker, """CREATE MATERIALIZED VIEW per_item AS
                   SELECT a.item, count(*) AS n, sum(b.price) AS total
                   FROM bids b JOIN auctions a ON b.auction = a.id GROUP BY a.item""")
    view_rows = lambda: sql(broker, "SELECT item, n, total FROM per_item ORDER BY item")["rows"]
    H.wait_for(lambda: view_rows() == expected, timeout=60, desc="the view joins every bid with its item")
    explained = json.dumps(sql(broker, "EXPLAIN SELECT a.item FROM bids b JOIN auctions a ON b.auction = a.id"))
    assert "read once when the view starts" in explained, explained
    # The table is read afresh for each query: a new version shows at once.
    write_deltalake(str(path), pa.table({"id": pa.array([-2], pa.int64()), "item": ["new"]}), mode="append")
    assert sql(broker, "SELECT count(*) FROM auctions")["rows"] == [[len(auctions) + 2]]
    # New bids reach the view through the table it read.
    more = make_bids(500, seed=42)
    produce_bids(broker, topic, [{k: v for k, v in b.items() if k != "_ts"} for b in more])
    for b in more:
        if b["auction"] in names:
            want[names[b["auction"]]] += 1
            totals[names[b["auction"]]] += b["price"]
    expected = [[item, want[item], totals[item]] for item in sorted(want)]
    H.wait_for(lambda: view_rows() == expected, timeout=60, desc="new bids join the table the view read")
    # After a kill -9 the view resumes from its checkpoint, the table's rows
    # in its state: new bids join each item once (not twice, not never).
    broker.kill9()
    broker.start(port=broker.port)
    later = make_bids(300, seed=43)
    produce_bids(broker, topic, [{k: v for k, v in b.items() if k != "_ts"} for b in later])
    for b in later:
        if b["auction"] in names:
            want[names[b["auction"]]] += 1
            totals[names[b["auction"]]] += b["price"]
    expected = [[item, want[item], totals[item]] for item in sorted(want)]
    H.wait_for(lambda: view_rows() == expected, timeout=60, desc="the view joins after a kill -9")
    refused = sql(broker, "CREATE MATERIALIZED VIEW items AS SELECT * FROM auctions", expect_status=400)
    assert "reads at least one source" in json.dumps(refused), refused


@pytest.mark.timeout(120)
def test_a_delta_sink_is_refused_where_it_could_not_be_exact(broker, new_topic, tmp_path):
    topic = topic_with(broker, new_topic, 1)
    sql(broker, SOURCE.format(topic=topic))
    sql(broker, "CREATE MATERIALIZED VIEW totals AS SELECT auction, count(*) AS n FROM bids GROUP BY auction")
    sql(broker, VIEW)
    path = tmp_path / "lake"
    other = tmp_path / "other"
    write_deltalake(str(other), pa.table({"x": pa.array(["a"])}))
    cases = {
        f"CREATE SINK s FROM totals WITH (connector = 'delta', path = '{path}')":
            ["view totals is updating"],
        f"CREATE SINK s FROM {VIEW_NAME} WITH (connector = 'delta')":
            ["delta sink needs the option path"],
        f"CREATE SINK s FROM {VIEW_NAME} WITH (connector = 'delta', path = '{path}', colour = 'red')":
            ["unknown option 'colour'"],
        f"CREATE SINK s FROM {VIEW_NAME} WITH (connector = 'delta', path = '{path}', partition_by = 'nope')":
            ["partition_by column nope is not a column"],
        f"CREATE SINK s FROM {VIEW_NAME} WITH (connector = 'delta', path = 'gs://bucket/lake')":
            ["a local directory or to s3://bucket/prefix"],
        f"CREATE SINK s FROM {VIEW_NAME} WITH (connector = 'delta', path = '{other}')":
            ["has columns (x string)"],
        f"CREATE TABLE t WITH (connector = 'delta', path = '{tmp_path / 'missing'}')":
            ["is not a Delta table"],
    }
    for statement, fragments in cases.items():
        body = sql(broker, statement, expect_status=400)
        for fragment in fragments:
            assert fragment in body["error"], (statement, body)
    assert sql(broker, "SHOW SINKS")["rows"] == [], "a refused sink was created"
    assert not path.exists(), f"a refused sink created {path}"
