"""The Parquet sink, read back with pyarrow as users' tools would read it.

`CREATE SINK ... WITH (connector = 'parquet', path = '...')` writes a view's
rows as Parquet files into a directory. Rows are staged in `path/_staging/`
(which pyarrow, Spark and DuckDB skip) and renamed to
`path/part-<epoch>-<n>.parquet` once the pipeline's checkpoint is durable, so
a reader of the directory sees every row exactly once: never a row twice,
never a half-written file, also across `kill -9` and restart.

The first test produces deterministic bids with confluent-kafka into a
two-partition topic, aggregates them in 5-second tumbling windows (count and
sum per auction) and attaches the sink once the view already holds rows, so
the sink must first get the view's existing rows (snapshot) and then every
window closed after. When the view has every closed window, the directory
must hold exactly the view's rows (as a multiset: no duplicates), with the
view's column names, in files named as documented; a sink with a relative
path writes the same rows under the server's data dir.

The second test is the exactly-once property: bids arrive in three parts,
and after each of the last two the server is killed with SIGKILL and
restarted on the same data dir: once half a second after the part (a few
checkpoints later), once right after it, when its windows are usually
written to a staged file but not yet committed (the harness notes in the
broker log show what was staged and committed at each kill). Once it has caught up, every window closed
by the final watermark must be in the Parquet files exactly once, with the
values computed here, independently, from the events the test produced; and
nothing staged before a crash may be left over.

The third test checks what is refused with a 400 and a precise error: an
updating view (a GROUP BY without a window, or a window with
allowed_lateness), whose rows Parquet files cannot take back; a missing
`path`; an unknown option.
"""

from __future__ import annotations

import re
import time
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pytest

import fluxo_helpers as H
from test_sql import SOURCE, get, make_bids, produce_bids, source_watermark, sql, topic_with, wait_watermark

VIEW_NAME = "lake_windows"
VIEW = f"""CREATE MATERIALIZED VIEW {VIEW_NAME} WITH (checkpoint_interval = '200ms') AS
            SELECT auction, window_start, window_end, count(*) AS bids, sum(price) AS total
            FROM TUMBLE(bids, date_time, INTERVAL '5' SECOND)
            GROUP BY auction, window_start, window_end"""
COLUMNS = ["auction", "window_start", "window_end", "bids", "total"]
TIME_COLUMNS = {"window_start", "window_end"}
PART_RE = re.compile(r"^part-\d+-\d+\.parquet$")
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def sink_sql(name: str, path, **extra: str) -> str:
    options = {"connector": "parquet", "path": str(path), **extra}
    listed = ", ".join(f"{k} = '{v}'" for k, v in options.items())
    return f"CREATE SINK {name} FROM {VIEW_NAME} WITH ({listed})"


def to_ms(v) -> int:
    """A timestamp as epoch milliseconds: an ISO-8601 string from the HTTP
    API, or a datetime from pyarrow (naive means UTC)."""
    if isinstance(v, str):
        v = datetime.fromisoformat(v.replace("Z", "+00:00"))
    if v.tzinfo is None:
        v = v.replace(tzinfo=timezone.utc)
    return (v - EPOCH) // timedelta(milliseconds=1)


def normalize(names: list[str], values) -> tuple:
    return tuple(to_ms(v) if n in TIME_COLUMNS else v for n, v in zip(names, values))


def view_rows(broker) -> tuple[list[str], Counter]:
    """The view's columns and rows (a multiset of normalized tuples)."""
    body = sql(broker, f"SELECT * FROM {VIEW_NAME}")
    names = [c["name"] for c in body["columns"]]
    return names, Counter(normalize(names, r) for r in body["rows"])


def lake(path: Path) -> tuple[list[str], Counter]:
    """The committed rows of a Parquet sink directory as pyarrow reads them
    (`pyarrow.dataset` skips `_staging`, as it skips every `_` name)."""
    if not path.is_dir():
        return [], Counter()
    table = ds.dataset(str(path), format="parquet").to_table()
    names = table.schema.names
    if not names:  # no committed file yet
        return [], Counter()
    cols = [table.column(n).to_pylist() for n in names]
    return names, Counter(normalize(names, row) for row in zip(*cols))


def expected_windows(bids: list[dict], watermark: int) -> Counter:
    """(auction, start ms, end ms, count, sum) for every 5 s window the
    watermark closed, computed from the produced events."""
    acc = defaultdict(lambda: [0, 0])
    for b in bids:
        start = b["_ts"] - b["_ts"] % 5000
        if start + 5000 <= watermark:
            a = acc[(b["auction"], start, start + 5000)]
            a[0] += 1
            a[1] += b["price"]
    return Counter((k[0], k[1], k[2], n, s) for k, (n, s) in acc.items())


def pipeline(broker) -> dict:
    return next(p for p in get(broker, "/api/v1/pipelines")["body"]["pipelines"]
                if p["name"] == VIEW_NAME)


def describe(got: Counter, want: Counter) -> str:
    dups = {r: n for r, n in got.items() if n > 1}
    missing = want - got
    extra = got - want
    return (f"{sum(got.values())} rows in the files, {sum(want.values())} expected; "
            f"{len(dups)} rows more than once (first: {list(dups.items())[:3]}), "
            f"{sum(missing.values())} missing (first: {list(missing)[:3]}), "
            f"{sum(extra.values())} unexpected (first: {list(extra)[:3]})")


def wait_lake(broker, path: Path, want: Counter, timeout: float = 60) -> Counter:
    """Polls until the committed rows hold every expected row (they become
    visible at the next checkpoint), then waits a few more checkpoints so that
    a duplicate written late would show, and returns what the files hold."""
    def complete():
        _, got = lake(path)
        return got if not (want - got) else None
    try:
        H.wait_for(complete, timeout=timeout, desc=f"every expected row in {path}")
    except AssertionError as e:
        raise AssertionError(f"{e}: {describe(lake(path)[1], want)}; pipeline: {pipeline(broker)}") from None
    time.sleep(1.0)  # five checkpoint intervals
    return lake(path)[1]


def committed_files(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.is_file())


def staged_files(path: Path) -> list[str]:
    staging = path / "_staging"
    return sorted(p.name for p in staging.iterdir()) if staging.is_dir() else []


@pytest.mark.timeout(240)
def test_parquet_files_hold_the_view_rows_exactly(broker, new_topic, tmp_path):
    topic = topic_with(broker, new_topic, 2)
    bids = make_bids(20_000, seed=23)
    clean = [{k: v for k, v in b.items() if k != "_ts"} for b in bids]
    produce_bids(broker, topic, clean[:10_000])
    sql(broker, SOURCE.format(topic=topic))
    sql(broker, VIEW)
    # The sink comes after the view holds rows: it must get those first.
    wait_watermark(broker, VIEW_NAME, source_watermark(bids[:10_000]))
    _, before = view_rows(broker)
    assert before, "the view holds no rows before the sink is created"
    path = tmp_path / "lake"
    assert sql(broker, sink_sql("lake", path, target_file_size="64MB", snapshot="true"))["message"] \
        == "CREATE SINK lake"
    # A relative path is under the server's data dir.
    sql(broker, sink_sql("lake_rel", "lake_rel"))
    assert sorted(map(tuple, sql(broker, "SHOW SINKS")["rows"])) == \
        [("lake", VIEW_NAME, "parquet"), ("lake_rel", VIEW_NAME, "parquet")]

    produce_bids(broker, topic, clean[10_000:])
    watermark = source_watermark(bids)
    wait_watermark(broker, VIEW_NAME, watermark)
    names, view = view_rows(broker)
    assert names == COLUMNS
    want = expected_windows(bids, watermark)
    assert view == want, \
        f"the view is wrong: {describe(view, want)}; late events: {pipeline(broker)['late_events']}"

    got = wait_lake(broker, path, view)
    assert got == view, f"the Parquet files do not hold the view's rows exactly: {describe(got, view)}"
    assert not (before - got), "rows the view held before the sink was created are not in the files"
    lake_names, _ = lake(path)
    assert lake_names == names, f"Parquet columns {lake_names}, view columns {names}"
    schema = ds.dataset(str(path), format="parquet").schema
    for col in TIME_COLUMNS:
        assert pa.types.is_timestamp(schema.field(col).type), f"{col} is {schema.field(col).type} in Parquet"
    for col in ("auction", "bids", "total"):
        assert pa.types.is_integer(schema.field(col).type), f"{col} is {schema.field(col).type} in Parquet"
    files = committed_files(path)
    assert files and all(PART_RE.match(f) for f in files), f"files in {path}: {files}"
    assert staged_files(path) == [], f"staged files left with no rows coming: {staged_files(path)}"

    rel = broker.data_dir / "lake_rel"
    got_rel = wait_lake(broker, rel, view)
    assert got_rel == view, f"the relative-path sink in {rel}: {describe(got_rel, view)}"
    assert pipeline(broker)["last_checkpoint"]["epoch"] >= 1


@pytest.mark.timeout(300)
def test_parquet_rows_land_exactly_once_across_kill_9(broker, new_topic, tmp_path):
    topic = topic_with(broker, new_topic, 2)
    bids = make_bids(30_000, seed=29)
    clean = [{k: v for k, v in b.items() if k != "_ts"} for b in bids]
    path = tmp_path / "lake"
    produce_bids(broker, topic, clean[:10_000])
    sql(broker, SOURCE.format(topic=topic))
    sql(broker, VIEW)
    sql(broker, sink_sql("lake", path))
    # Let checkpoints commit files before the first crash.
    H.wait_for(lambda: sum(lake(path)[1].values()) > 0, timeout=60, desc=f"committed rows in {path}")

    # Crash 1: a few checkpoints after the second part. Crash 2: right after
    # the third, its windows usually staged but not committed yet.
    for part, delay in ((clean[10_000:20_000], 0.5), (clean[20_000:], 0.0)):
        produce_bids(broker, topic, part)
        time.sleep(delay)
        status, staged = pipeline(broker), staged_files(path)
        broker.kill9()
        broker.note(f"at the kill: events_in {status['events_in']}, watermark {status['watermark']}, "
                    f"checkpoint {status['last_checkpoint']}; staged {staged}; committed {committed_files(path)}")
        broker.start(port=broker.port)

    assert [r[0] for r in sql(broker, "SHOW SINKS")["rows"]] == ["lake"]
    watermark = source_watermark(bids)
    wait_watermark(broker, VIEW_NAME, watermark)
    want = expected_windows(bids, watermark)
    _, view = view_rows(broker)
    assert view == want, \
        f"the view is wrong after the crashes: {describe(view, want)}; late events: {pipeline(broker)['late_events']}"

    got = wait_lake(broker, path, want)
    assert got == want, f"not exactly once across kill -9: {describe(got, want)}"
    files = committed_files(path)
    assert files and all(PART_RE.match(f) for f in files), f"files in {path}: {files}"
    assert staged_files(path) == [], \
        f"staged files left over after the crashes, with no rows coming: {staged_files(path)}"
    status = pipeline(broker)
    assert status["status"] == "running", status
    assert status["last_checkpoint"]["epoch"] >= 1, status


@pytest.mark.timeout(120)
def test_a_parquet_sink_is_refused_where_it_could_not_be_exact(broker, new_topic, tmp_path):
    topic = topic_with(broker, new_topic, 1)
    sql(broker, SOURCE.format(topic=topic))
    sql(broker, "CREATE MATERIALIZED VIEW totals AS SELECT auction, count(*) AS n FROM bids GROUP BY auction")
    sql(broker, """CREATE MATERIALIZED VIEW late_windows WITH (allowed_lateness = '10 seconds') AS
                   SELECT auction, window_start, count(*) AS n
                   FROM TUMBLE(bids, date_time, INTERVAL '5' SECOND) GROUP BY auction, window_start""")
    sql(broker, VIEW)
    path = tmp_path / "lake"
    cases = {
        f"CREATE SINK s FROM totals WITH (connector = 'parquet', path = '{path}')":
            ["view totals is updating", "cannot take rows back"],
        f"CREATE SINK s FROM late_windows WITH (connector = 'parquet', path = '{path}')":
            ["view late_windows is updating", "cannot take rows back"],
        f"CREATE SINK s FROM {VIEW_NAME} WITH (connector = 'parquet')":
            ["parquet sink needs the option path"],
        f"CREATE SINK s FROM {VIEW_NAME} WITH (connector = 'parquet', path = '{path}', colour = 'red')":
            ["unknown option 'colour'"],
        f"CREATE SINK s FROM {VIEW_NAME} WITH (connector = 'parquet', path = '{path}', target_file_size = 'lots')":
            ["target_file_size"],
    }
    for statement, fragments in cases.items():
        body = sql(broker, statement, expect_status=400)
        for fragment in fragments:
            assert fragment in body["error"], (statement, body)
    assert sql(broker, "SHOW SINKS")["rows"] == [], "a refused sink was created"
    assert not path.exists(), f"a refused sink created {path}"
