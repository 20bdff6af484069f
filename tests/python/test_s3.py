"""The Delta and Parquet sinks on S3-compatible storage: moto's S3 server,
run from PyPI, and read back with the `deltalake` package and pyarrow's S3
file system, as users' tools would read a bucket.

`path = 's3://bucket/prefix'` with `s3.endpoint`, `s3.region`,
`s3.access_key_id`, `s3.secret_access_key` and `s3.allow_http` puts a sink's
table in a bucket. There is no fsync and no rename on S3: a Delta sink
commits with a put-if-absent of the next `_delta_log` entry (If-None-Match),
a Parquet sink uploads a staged object and copies it to its final name at
commit.

- The first test writes one windowed view into a Delta table and a
  directory of Parquet files in the bucket, kills the server twice (a few
  checkpoints after new events, and right after them) and checks that each
  holds every window the final watermark closed exactly once, with values
  computed here from the events, and that the Delta commits carry the
  sink's application transaction.
  Both are then registered with `CREATE TABLE` on the same S3 paths and a
  batch query reads the same rows from the bucket.
- The second checks that a missing bucket, an unreachable endpoint, plain
  http without `s3.allow_http` and misplaced options fail `CREATE SINK`
  (and a missing bucket or table `CREATE TABLE`) with a 400 that says what
  to check, and create nothing.
- The third gives no `s3.*` option: the server's `AWS_*` environment
  variables (endpoint, region, keys, allow http) reach the bucket.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import boto3
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pytest
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

import fluxo_helpers as H
from test_parquet_sink import SOURCE, VIEW, VIEW_NAME, describe, expected_windows, normalize, pipeline, \
    source_watermark, view_rows
from test_sql import make_bids, produce_bids, sql, topic_with, wait_watermark

KEY_ID = "testing"
SECRET = "testing-secret"
REGION = "us-east-1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3:
    """A moto S3 server on localhost."""

    def __init__(self, port: int):
        self.port = port
        self.endpoint = f"http://127.0.0.1:{port}"
        self.client = boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION,
                                   aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET)

    def options(self, **extra: str) -> dict[str, str]:
        """The sink options that reach this server."""
        return {"s3.endpoint": self.endpoint, "s3.region": REGION, "s3.access_key_id": KEY_ID,
                "s3.secret_access_key": SECRET, "s3.allow_http": "true", **extra}

    def keys(self, bucket: str, prefix: str) -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))

    def delta_rows(self, url: str) -> Counter:
        try:
            table = DeltaTable(url, storage_options={
                "AWS_ENDPOINT_URL": self.endpoint, "AWS_REGION": REGION, "AWS_ACCESS_KEY_ID": KEY_ID,
                "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_ALLOW_HTTP": "true"}).to_pyarrow_table()
        except TableNotFoundError:
            return Counter()
        names = table.schema.names
        cols = [table.column(n).to_pylist() for n in names]
        return Counter(normalize(names, row) for row in zip(*cols))

    def parquet_rows(self, bucket: str, prefix: str) -> Counter:
        """The committed files' rows; pyarrow skips `_staging/` as it skips
        every `_` name."""
        if not any(k.endswith(".parquet") and "/_staging/" not in k for k in self.keys(bucket, prefix + "/")):
            return Counter()
        fs = pafs.S3FileSystem(access_key=KEY_ID, secret_key=SECRET, region=REGION, scheme="http",
                               endpoint_override=f"127.0.0.1:{self.port}")
        table = ds.dataset(f"{bucket}/{prefix}", filesystem=fs, format="parquet").to_table()
        names = table.schema.names
        cols = [table.column(n).to_pylist() for n in names]
        return Counter(normalize(names, row) for row in zip(*cols))


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    server = Path(sys.executable).parent / "moto_server"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(port)],
                                stdout=out, stderr=subprocess.STDOUT)
    s3 = S3(port)

    def up():
        if proc.poll() is not None:
            raise AssertionError(f"moto_server exited: {log.read_text()}")
        try:
            s3.client.list_buckets()
            return True
        except Exception:
            return None
    try:
        H.wait_for(up, timeout=30, desc="moto's S3 server answers")
        yield s3
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def sink_sql(name: str, connector: str, path: str, options: dict[str, str]) -> str:
    listed = ", ".join(f"{k} = '{v}'" for k, v in {"connector": connector, "path": path, **options}.items())
    return f"CREATE SINK {name} FROM {VIEW_NAME} WITH ({listed})"


def wait_rows(broker, read, want: Counter, what: str, timeout: float = 90) -> Counter:
    """Polls until `read()` holds every expected row, then waits a few more
    checkpoints so that a duplicate committed late would show."""
    def complete():
        got = read()
        return got if not (want - got) else None
    try:
        H.wait_for(complete, timeout=timeout, desc=f"every expected row in {what}")
    except AssertionError as e:
        raise AssertionError(f"{e}: {describe(read(), want)}; pipeline: {pipeline(broker)}") from None
    time.sleep(1.0)  # five checkpoint intervals
    return read()


@pytest.mark.timeout(360)
def test_s3_sinks_hold_every_window_exactly_once_across_kill_9(broker, new_topic, s3):
    bucket = "lake-exactly-once"
    s3.client.create_bucket(Bucket=bucket)
    delta_url = f"s3://{bucket}/tables/windows_delta"
    parquet_prefix = "tables/windows_parquet"
    topic = topic_with(broker, new_topic, 2)
    bids = make_bids(30_000, seed=53)
    clean = [{k: v for k, v in b.items() if k != "_ts"} for b in bids]
    produce_bids(broker, topic, clean[:10_000])
    sql(broker, SOURCE.format(topic=topic))
    sql(broker, VIEW)
    assert sql(broker, sink_sql("lake_delta", "delta", delta_url, s3.options()))["message"] == \
        "CREATE SINK lake_delta"
    sql(broker, sink_sql("lake_parquet", "parquet", f"s3://{bucket}/{parquet_prefix}",
                         s3.options(target_file_size="1MB")))
    read_delta = lambda: s3.delta_rows(delta_url)
    read_parquet = lambda: s3.parquet_rows(bucket, parquet_prefix)
    H.wait_for(lambda: sum(read_delta().values()) > 0 and sum(read_parquet().values()) > 0,
               timeout=60, desc="committed rows in both sinks")

    for part, delay in ((clean[10_000:20_000], 0.5), (clean[20_000:], 0.0)):
        produce_bids(broker, topic, part)
        time.sleep(delay)
        status = pipeline(broker)
        broker.kill9()
        staged = [k for k in s3.keys(bucket, parquet_prefix + "/_staging/")]
        broker.note(f"at the kill: events_in {status['events_in']}, watermark {status['watermark']}, "
                    f"checkpoint {status['last_checkpoint']}; staged parquet objects {staged}")
        broker.start(port=broker.port)

    watermark = source_watermark(bids)
    wait_watermark(broker, VIEW_NAME, watermark)
    want = expected_windows(bids, watermark)
    _, view = view_rows(broker)
    assert view == want, f"the view is wrong after the crashes: {describe(view, want)}"
    got = wait_rows(broker, read_delta, want, delta_url)
    assert got == want, f"the Delta table is not exactly once across kill -9: {describe(got, want)}"
    got = wait_rows(broker, read_parquet, want, f"s3://{bucket}/{parquet_prefix}")
    assert got == want, f"the Parquet files are not exactly once across kill -9: {describe(got, want)}"

    # Every Delta data commit carries the sink's transaction, versions growing.
    log = [k for k in s3.keys(bucket, "tables/windows_delta/_delta_log/") if k.endswith(".json")]
    txns = []
    for key in log:
        body = s3.client.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
        txns += [json.loads(line)["txn"] for line in body.splitlines() if '"txn"' in line]
    assert txns and len({t["appId"] for t in txns}) == 1, txns
    versions = [t["version"] for t in txns]
    assert versions == sorted(set(versions)), versions
    # The committed Parquet objects are named as on disk, and nothing from
    # before the crashes is left staged.
    files = [k.rsplit("/", 1)[1] for k in s3.keys(bucket, parquet_prefix + "/") if "/_staging/" not in k]
    assert files and all(f.startswith("part-") and f.endswith(".parquet") for f in files), files
    assert pipeline(broker)["status"] == "running"

    # The same tables, registered for batch queries, read from the bucket.
    listed = lambda opts: ", ".join(f"{k} = '{v}'" for k, v in opts.items())
    sql(broker, f"CREATE TABLE delta_t WITH (connector = 'delta', path = '{delta_url}', {listed(s3.options())})")
    sql(broker, f"CREATE TABLE parquet_t WITH (connector = 'parquet', path = 's3://{bucket}/{parquet_prefix}', "
                f"{listed(s3.options())})")
    total = [[sum(want.values()), sum(r[3] * n for r, n in want.items())]]
    for table in ("delta_t", "parquet_t"):
        body = sql(broker, f"SELECT count(*) AS n, sum(bids) AS bids FROM {table}")
        assert body["rows"] == total, (table, body)
    tables = {r[0]: r for r in sql(broker, "SHOW TABLES")["rows"]}
    assert delta_url in tables["delta_t"], tables


@pytest.mark.timeout(120)
def test_a_wrong_bucket_or_endpoint_fails_create_sink(broker, new_topic, s3):
    s3.client.create_bucket(Bucket="lake-checks")
    topic = topic_with(broker, new_topic, 1)
    sql(broker, SOURCE.format(topic=topic))
    sql(broker, VIEW)
    closed = f"http://127.0.0.1:{free_port()}"
    http_refused = {k: v for k, v in s3.options().items() if k != "s3.allow_http"}
    reach = ", ".join(f"{k} = '{v}'" for k, v in s3.options().items())
    for connector in ("delta", "parquet"):
        cases = {
            sink_sql("s", connector, "s3://no-such-bucket/t", s3.options()):
                ["cannot list s3://no-such-bucket/t", "NoSuchBucket", "check that the bucket exists"],
            sink_sql("s", connector, "s3://lake-checks/t", s3.options(**{"s3.endpoint": closed})):
                ["cannot list s3://lake-checks/t", closed],
            sink_sql("s", connector, "s3://lake-checks/t", http_refused):
                ["is plain http; add s3.allow_http = 'true'"],
            sink_sql("s", connector, "lake/t", {"s3.region": REGION}):
                ["s3.region apply to s3:// paths only"],
            sink_sql("s", connector, "gs://lake-checks/t", {}):
                ["s3://bucket/prefix"],
            sink_sql("s", connector, "s3://lake-checks/t", s3.options(**{"s3.allow_http": "yes"})):
                ["s3.allow_http must be 'true' or 'false'"],
            f"CREATE TABLE t WITH (connector = '{connector}', path = 's3://no-such-bucket/t', {reach})":
                ["cannot list s3://no-such-bucket/t", "NoSuchBucket"],
            f"CREATE TABLE t WITH (connector = '{connector}', path = 's3://lake-checks/empty', {reach})":
                ["s3://lake-checks/empty"],
        }
        for statement, fragments in cases.items():
            started = time.monotonic()
            body = sql(broker, statement, expect_status=400)
            for fragment in fragments:
                assert fragment in body["error"], (statement, body)
            assert time.monotonic() - started < 20, f"refusing took too long: {statement}"
    assert sql(broker, "SHOW SINKS")["rows"] == [], "a refused sink was created"
    assert sql(broker, "SHOW TABLES")["rows"] == [], "a refused table was created"
    assert s3.keys("lake-checks", "") == [], "a refused sink wrote to the bucket"


@pytest.mark.timeout(120)
def test_without_s3_options_the_aws_environment_variables_are_used(broker_factory, new_topic, s3, monkeypatch):
    bucket = "lake-from-env"
    s3.client.create_bucket(Bucket=bucket)
    for name, value in (("AWS_ENDPOINT_URL", s3.endpoint), ("AWS_REGION", REGION), ("AWS_ACCESS_KEY_ID", KEY_ID),
                        ("AWS_SECRET_ACCESS_KEY", SECRET), ("AWS_ALLOW_HTTP", "true")):
        monkeypatch.setenv(name, value)
    broker = broker_factory(name="broker")  # started with the variables above
    topic = topic_with(broker, new_topic, 2)
    bids = make_bids(5_000, seed=59)
    produce_bids(broker, topic, [{k: v for k, v in b.items() if k != "_ts"} for b in bids])
    sql(broker, SOURCE.format(topic=topic))
    sql(broker, VIEW)
    sql(broker, sink_sql("env_delta", "delta", f"s3://{bucket}/delta", {}))
    sql(broker, sink_sql("env_parquet", "parquet", f"s3://{bucket}/parquet", {}))
    watermark = source_watermark(bids)
    wait_watermark(broker, VIEW_NAME, watermark)
    want = expected_windows(bids, watermark)
    assert wait_rows(broker, lambda: s3.delta_rows(f"s3://{bucket}/delta"), want, "the Delta table") == want
    assert wait_rows(broker, lambda: s3.parquet_rows(bucket, "parquet"), want, "the Parquet files") == want
