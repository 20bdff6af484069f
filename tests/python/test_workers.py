"""Workers sharing a cluster: engine-only servers with the same
--cluster-id share their catalog through the command topic
_fluxo-<id>-commands (DDL on any worker is seen by all) and their sinks
through the consumer group fluxo-<id>-workers: each sink runs on one
worker, and when that worker is killed -9 its sinks move to the others,
which resume them from the checkpoints in the shared --checkpoint-url with
nothing lost or doubled in the sink topics (read_committed). A sink split
into tasks (by its source's partitions, or by groups) runs on several
workers at once, each task moving on its own."""

from __future__ import annotations

import json
import os
import random
import signal
import time

import pytest

import fluxo_helpers as H
from conftest import BrokerStartError
from test_engine_only import strip
from test_s3 import s3  # noqa: F401  (the moto server fixture)
from test_sql import (SOURCE, T0, VIEW, expected_windows, get, make_bids, produce_bids, sink_rows,
                      source_watermark, sql, topic_with, view_rows, wait_watermark)

SINKS = 6
S3_ENV = ("AWS_ENDPOINT_URL", "AWS_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
          "AWS_ALLOW_HTTP")


def cluster_broker(broker_factory, tmp_path):
    """A broker whose consumer groups notice a lost member within 6 s."""
    conf = tmp_path / "broker.toml"
    conf.write_text("[groups]\nconsumer_session_timeout_ms = 6000\n"
                    "consumer_heartbeat_interval_ms = 1000\n")
    return broker_factory(extra_args=["--config", str(conf)], name="broker")


def start_workers(engine_factory, broker, tmp_path, cluster_id: str, names=("w1", "w2", "w3"),
                  checkpoints: str | None = None) -> dict:
    """Workers of cluster `cluster_id`, keeping checkpoints in one place."""
    shared = ["--cluster-id", cluster_id, "--checkpoint-url", checkpoints or str(tmp_path / "checkpoints")]
    return {n: engine_factory(broker.bootstrap, extra_args=shared, name=n) for n in names}


def sink_owners(workers: dict) -> dict[str, list[str]]:
    """sink name -> the workers whose pipeline of it is running (not standby)."""
    owners: dict[str, list[str]] = {}
    for name, w in workers.items():
        for p in get(w, "/api/v1/pipelines")["body"]["pipelines"]:
            if p["name"].startswith("out"):
                owners.setdefault(p["name"], [])
                if not p["status"].startswith("standby"):
                    owners[p["name"]].append(name)
    return owners


def settled(workers: dict):
    """Every sink runs on exactly one of `workers`."""
    owners = sink_owners(workers)
    ok = len(owners) == SINKS and all(len(o) == 1 for o in owners.values())
    return {s: o[0] for s, o in owners.items()} if ok else None


@pytest.mark.timeout(420)
def test_workers_share_ddl_and_a_killed_workers_sinks_move_exactly_once(
        broker_factory, engine_factory, new_topic, tmp_path):
    broker = cluster_broker(broker_factory, tmp_path)
    topic = topic_with(broker, new_topic, 2)
    outs = [new_topic(f"shared-out{i}") for i in range(SINKS)]
    bids = make_bids(30_000, seed=41)
    clean = strip(bids)
    produce_bids(broker, topic, clean[:4_000])
    workers = start_workers(engine_factory, broker, tmp_path, "shop")
    w1, w2, w3 = workers.values()

    # DDL on any worker is applied by all, in one order.
    sql(w1, SOURCE.format(topic=topic))
    sql(w2, VIEW.replace("AS\n", "WITH (checkpoint_interval = '300ms') AS\n", 1))
    # Each statement is checked against every command before it, whichever
    # worker took those: the sinks go to other workers than the view did.
    for i, out in enumerate(outs):
        sql(w3 if i % 2 else w1,
            f"CREATE SINK out{i} FROM per_auction WITH (connector = 'topic', topic = '{out}')")
    # The others apply each statement moments after the worker that took it.
    for w in workers.values():
        H.wait_for(lambda w=w: {r[0] for r in sql(w, "SHOW SINKS")["rows"]}
                   == {f"out{i}" for i in range(SINKS)}, timeout=10, desc=f"every sink on {w.name}")
        assert sql(w, "SELECT count(*) FROM bids")["rows"] == [[4_000]]
    # A name another worker took is refused here, before any command.
    err = sql(w3, "CREATE MATERIALIZED VIEW per_auction AS SELECT 1", expect_status=400)["error"]
    assert "already exists" in err, err
    assert sql(w2, "CREATE MATERIALIZED VIEW IF NOT EXISTS per_auction AS SELECT 1")["message"]
    # A worker that does not keep checkpoints where the others do is refused.
    with pytest.raises(BrokerStartError) as refused:
        engine_factory(broker.bootstrap, extra_args=["--cluster-id", "shop"], name="stray")
    assert "same --checkpoint-url" in str(refused.value), refused.value
    workers_alive = dict(workers)

    owners = H.wait_for(lambda: settled(workers_alive), timeout=60,
                        desc="each sink running on exactly one worker")
    produce_bids(broker, topic, clean[4_000:12_000])
    time.sleep(1.5)
    # Kill -9 the worker that runs out0 (and whatever else it runs).
    victim = owners["out0"]
    workers_alive.pop(victim)
    workers[victim].kill9()
    produce_bids(broker, topic, clean[12_000:18_000])
    moved = H.wait_for(lambda: settled(workers_alive), timeout=60,
                       desc="the killed worker's sinks running on the others")
    assert moved["out0"] != victim
    produce_bids(broker, topic, clean[18_000:24_000])
    # A worker joining takes some sinks over while they hold windows open:
    # their owners stop them, and the newcomer resumes them from the
    # checkpoints (it applies the whole command topic first).
    (late,) = start_workers(engine_factory, broker, tmp_path, "shop", names=("late",)).values()
    workers_alive["late"] = late
    H.wait_for(lambda: settled(workers_alive), timeout=60,
               desc="each sink running on exactly one worker, the newcomer included")
    produce_bids(broker, topic, clean[24_000:])

    watermark = source_watermark(bids)
    want = expected_windows(bids, watermark)
    for w in workers_alive.values():
        wait_watermark(w, "per_auction", watermark, timeout=120)
        # Every live worker answers for the whole view.
        assert view_rows(w) == want
    expected = sorted((a, s, e, n, top) for (a, s, e), (n, top) in want.items())
    for i, out in enumerate(outs):
        def complete(out=out):
            got = sink_rows(broker, out)
            return got if len({(a, s, e) for a, s, e, _, _ in got}) >= len(want) else None
        got = H.wait_for(complete, timeout=90, desc=f"every window in sink topic {out}")
        # Exactly once, whichever workers wrote it.
        assert sorted(got) == expected, f"out{i}"

    # A record that is not a command (another program writing the topic)
    # is skipped, and holds no worker up.
    p = H.producer(broker.bootstrap)
    p.produce("_fluxo-shop-commands", b"not a fluxo command")
    assert p.flush(10) == 0
    # DDL from the newcomer reaches the others: dropping a sink stops it everywhere.
    sql(late, "DROP SINK out5")
    for w in workers_alive.values():
        H.wait_for(lambda w=w: "out5" not in {r[0] for r in sql(w, "SHOW SINKS")["rows"]},
                   timeout=30, desc=f"out5 dropped on {w.name}")


@pytest.mark.timeout(240)
def test_checkpoints_on_s3_carry_a_sink_to_the_next_worker(
        broker_factory, engine_factory, new_topic, tmp_path, s3, monkeypatch):
    """Two workers keep their checkpoints in a bucket of moto's S3 server
    (reached through the AWS_* variables); the worker running the sink
    stops (SIGTERM: it leaves the group at once), and the other resumes the
    sink from the bucket: the sink topic holds every window once."""
    from test_s3 import KEY_ID, REGION, SECRET
    bucket = "fluxo-state"
    s3.client.create_bucket(Bucket=bucket)
    for name, value in zip(S3_ENV, (s3.endpoint, REGION, KEY_ID, SECRET, "true")):
        monkeypatch.setenv(name, value)
    broker = cluster_broker(broker_factory, tmp_path)
    topic, out = topic_with(broker, new_topic, 2), new_topic("s3-out")
    bids = make_bids(12_000, seed=43)
    clean = strip(bids)
    produce_bids(broker, topic, clean[:6_000])
    workers = start_workers(engine_factory, broker, tmp_path, "lake", names=("a", "b"),
                            checkpoints=f"s3://{bucket}/checkpoints")
    sql(workers["a"], SOURCE.format(topic=topic))
    sql(workers["b"], VIEW.replace("AS\n", "WITH (checkpoint_interval = '300ms') AS\n", 1))
    sql(workers["a"], f"CREATE SINK out0 FROM per_auction WITH (topic = '{out}')")

    def owner():
        owners = sink_owners(workers)
        return owners["out0"][0] if len(owners.get("out0", [])) == 1 else None
    first = H.wait_for(owner, timeout=60, desc="one worker running the sink")
    H.wait_for(lambda: any(k.endswith("/checkpoint") for k in s3.keys(bucket, "checkpoints/out0.")),
               timeout=30, desc="the sink's checkpoint in the bucket")
    assert workers[first].stop() == 0
    remaining = {n: w for n, w in workers.items() if n != first}
    (other,) = remaining
    H.wait_for(lambda: sink_owners(remaining).get("out0") == [other], timeout=30,
               desc="the other worker running the sink")
    produce_bids(broker, topic, clean[6_000:])
    watermark = source_watermark(bids)
    want = expected_windows(bids, watermark)
    wait_watermark(remaining[other], "per_auction", watermark, timeout=120)

    def complete():
        got = sink_rows(broker, out)
        return got if len({(a, s, e) for a, s, e, _, _ in got}) >= len(want) else None
    got = H.wait_for(complete, timeout=90, desc="every window in the sink topic")
    assert sorted(got) == sorted((a, s, e, n, top) for (a, s, e), (n, top) in want.items())


def task_spread(workers: dict, sink: str) -> dict[int, list[str]] | None:
    """task index -> the workers running that task of `sink` (from each
    worker's pipeline status: `tasks`, and `tasks_here` running there)."""
    spread: dict[int, list[str]] = {}
    count = None
    for name, w in workers.items():
        for p in get(w, "/api/v1/pipelines")["body"]["pipelines"]:
            if p["name"] != sink:
                continue
            count = p["tasks"]
            for i in p["tasks_here"]:
                spread.setdefault(i, []).append(name)
            if p["tasks_here"]:
                assert f"of {count} here" in p["status"], p["status"]
    return spread if count is not None and len(spread) == count else None


def task_spread_here(worker, sink: str) -> list[int]:
    """The tasks of `sink` running on `worker`."""
    for p in get(worker, "/api/v1/pipelines")["body"]["pipelines"]:
        if p["name"] == sink:
            return p["tasks_here"]
    return []


def split_evenly(workers: dict, sink: str, tasks: int):
    """Every task of `sink` running on exactly one worker, and every worker
    running some."""
    spread = task_spread(workers, sink)
    if spread is None or len(spread) != tasks or any(len(o) != 1 for o in spread.values()):
        return None
    return spread if {o[0] for o in spread.values()} == set(workers) else None


@pytest.mark.timeout(300)
def test_a_sink_splits_its_source_partitions_over_the_workers_exactly_once(
        broker_factory, engine_factory, new_topic, tmp_path):
    """A sink whose rows depend on one event at a time runs as one task per
    partition of its source, spread over the workers by their group; when a
    worker is killed -9 its tasks move to the others and resume from their
    checkpoints: the sink topic holds every matching bid once."""
    broker = cluster_broker(broker_factory, tmp_path)
    topic, out = topic_with(broker, new_topic, 6), new_topic("split-out")
    bids = strip(make_bids(24_000, seed=47))

    def produce(part: list[dict], start: int):
        p = H.producer(broker.bootstrap, **{"linger.ms": 5})
        for i, b in enumerate(part, start):
            p.produce(topic, json.dumps({**b, "seq": i}).encode(), partition=i % 6)
        assert p.flush(30) == 0

    produce(bids[:3_000], 0)
    workers = start_workers(engine_factory, broker, tmp_path, "split")
    w1, w2, _ = workers.values()
    sql(w1, f"""CREATE SOURCE bids (seq BIGINT, auction BIGINT, price BIGINT, channel TEXT)
                WITH (connector = 'topic', topic = '{topic}', format = 'json')""")
    # The sink runs its own query: no view kept on every worker.
    sql(w2, f"CREATE SINK split WITH (topic = '{out}') AS "
            "SELECT seq, auction, price FROM bids WHERE price > 250")
    # The task count is fixed when the sink is made: one per partition.
    (split,) = [p for p in get(w2, "/api/v1/pipelines")["body"]["pipelines"] if p["name"] == "split"]
    assert "tasks = '6'" in split["sql"], split["sql"]
    spread = H.wait_for(lambda: split_evenly(workers, "split", 6), timeout=60,
                        desc="six tasks over three workers, each task on one")
    produce(bids[3_000:10_000], 3_000)
    time.sleep(1.5)
    victim = spread[0][0]
    alive = {n: w for n, w in workers.items() if n != victim}
    workers[victim].kill9()
    produce(bids[10_000:17_000], 10_000)
    H.wait_for(lambda: split_evenly(alive, "split", 6), timeout=60,
               desc="the killed worker's tasks running on the others")
    produce(bids[17_000:], 17_000)

    want = sorted((i, b["auction"], b["price"]) for i, b in enumerate(bids) if b["price"] > 250)

    def complete():
        recs = H.consume_all(broker.bootstrap, out)
        got = [json.loads(r.value) for part in recs.values() for r in part]
        rows = sorted((r["seq"], r["auction"], r["price"]) for r in got)
        return rows if len(rows) >= len(want) else None
    got = H.wait_for(complete, timeout=90, desc="every pricey bid in the sink topic")
    assert got == want, f"{len(got)} rows, {len(want)} wanted"

    # Progress is the sink's group on the cluster, every task its own
    # partitions: together all six at the topic's end.
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
    ends = H.watermarks(broker.bootstrap, topic, list(range(6)))
    admin = H.admin(broker.bootstrap)

    def caught_up():
        req = ConsumerGroupTopicPartitions("fluxo-split-split",
                                           [TopicPartition(topic, p) for p in range(6)])
        res = admin.list_consumer_group_offsets([req])["fluxo-split-split"].result(10)
        got = {tp.partition: tp.offset for tp in res.topic_partitions}
        return got if got == {p: ends[p][1] for p in range(6)} else None
    H.wait_for(caught_up, timeout=30, desc="the sink's group at the end of every partition")

    # What cannot be split is refused by name.
    w = next(iter(alive.values()))
    sql(w, "CREATE MATERIALIZED VIEW pricey AS SELECT seq, auction, price FROM bids WHERE price > 250")
    err = sql(w, "CREATE SINK s3 FROM pricey WITH (connector = 'webhook', "
                 "url = 'http://127.0.0.1:9/hook', tasks = 2)", expect_status=400)["error"]
    assert "only topic, Delta and Parquet sinks" in err, err
    err = sql(w, f"CREATE SINK s4 FROM pricey WITH (topic = '{out}', tasks = 99)",
              expect_status=400)["error"]
    assert "from 1 to 32" in err, err


@pytest.mark.timeout(300)
def test_a_windowed_aggregation_splits_by_groups_over_the_workers_exactly_once(
        broker_factory, engine_factory, new_topic, tmp_path):
    """A sink of a windowed aggregation with tasks = 3 runs as three writer
    tasks, each decoding its share of the source's partitions and sending
    the rows to an exchange topic by group key, and three reader tasks,
    each aggregating one partition of the exchange, spread over three
    workers. One worker is killed -9 while windows are open and its tasks
    resume elsewhere from their checkpoints: the sink topic holds every
    window once, as one worker would have written it. The exchange lets go
    of what its readers checkpointed, and goes with the sink."""
    broker = cluster_broker(broker_factory, tmp_path)
    topic, out = topic_with(broker, new_topic, 2), new_topic("groups-out")
    bids = make_bids(20_000, seed=53)
    clean = strip(bids)
    produce_bids(broker, topic, clean[:4_000])
    workers = start_workers(engine_factory, broker, tmp_path, "groups")
    w1, w2, w3 = workers.values()
    sql(w1, SOURCE.format(topic=topic))
    sql(w2, VIEW.replace("AS\n", "WITH (checkpoint_interval = '300ms') AS\n", 1))
    sql(w3, f"CREATE SINK agg FROM per_auction WITH (topic = '{out}', tasks = 3)")
    spread = H.wait_for(lambda: split_evenly(workers, "agg", 6), timeout=60,
                        desc="six tasks (three readers, three writers) over the three workers")
    produce_bids(broker, topic, clean[4_000:10_000])
    time.sleep(1.5)
    # Tasks 0-2 read the exchange, 3-5 write it: the victim runs one of each
    # where the group put them so.
    runs = {name: {i for i, owners in spread.items() if name in owners} for name in workers}
    victim = next((n for n, tasks in runs.items() if min(tasks) < 3 <= max(tasks)), spread[1][0])
    alive = {n: w for n, w in workers.items() if n != victim}
    workers[victim].kill9()
    produce_bids(broker, topic, clean[10_000:15_000])
    H.wait_for(lambda: split_evenly(alive, "agg", 6), timeout=60,
               desc="the killed worker's tasks running on the others")
    produce_bids(broker, topic, clean[15_000:])

    watermark = source_watermark(bids)
    want = expected_windows(bids, watermark)
    expected = sorted((a, s, e, n, top) for (a, s, e), (n, top) in want.items())

    def complete():
        got = sink_rows(broker, out)
        return got if len({(a, s, e) for a, s, e, _, _ in got}) >= len(want) else None
    got = H.wait_for(complete, timeout=120, desc="every window in the sink topic")
    assert sorted(got) == expected

    def exchanges():
        return {t for t in H.all_topics(broker.bootstrap)
                if t.startswith("_fluxo-groups-agg.") and t.endswith("-exchange")}
    (exchange,) = exchanges()
    assert H.topic_partition_count(broker.bootstrap, exchange) == 3
    # Kept until its readers purge it, however long one is away.
    configs = H.describe_topic_configs(broker.bootstrap, exchange)
    assert configs["retention.ms"].value == "-1", configs["retention.ms"]
    # Each reader deletes from its partition what it checkpointed.
    H.wait_for(lambda: all(low > 0 for low, _ in
                           H.watermarks(broker.bootstrap, exchange, range(3)).values()),
               timeout=30, desc="the exchange purged up to the readers' checkpoints")

    w = next(iter(alive.values()))
    sql(w, "DROP SINK agg")
    H.wait_for(lambda: not exchanges(), timeout=30, desc="the exchange topic deleted")

    # What cannot be split is refused by name.
    sql(w, "CREATE MATERIALIZED VIEW total AS SELECT count(*) AS n FROM bids")
    err = sql(w, f"CREATE SINK s2 FROM total WITH (topic = '{out}', tasks = 2)",
              expect_status=400)["error"]
    assert "cannot be split into tasks" in err, err


@pytest.mark.timeout(300)
def test_a_join_splits_by_key_over_the_workers_exactly_once(
        broker_factory, engine_factory, new_topic, tmp_path):
    """A sink of a join of two streams within a time bound, tasks = 3: each
    task keeps the join keys whose hash falls to it (its share of the join's
    state), on three workers; one is killed -9 while the join holds state
    and its task resumes on another from its checkpoint; then it restarts
    and takes a task back: the sink topic holds every joined pair once, as
    one worker would have written it."""
    broker = cluster_broker(broker_factory, tmp_path)
    views, buys = topic_with(broker, new_topic, 3), topic_with(broker, new_topic, 3)
    out = new_topic("join-out")
    rng = random.Random(59)
    n = 9_000
    # A view and a buy every 20 ms of event time, by one of 150 users.
    view_events = [{"seq": i, "user_id": rng.randrange(150), "ts": T0 + i * 20} for i in range(n)]
    buy_events = [{"seq": i, "user_id": rng.randrange(150), "ts": T0 + i * 20 + 7} for i in range(n)]

    def produce(lo: int, hi: int):
        p = H.producer(broker.bootstrap, **{"linger.ms": 5})
        for i in range(lo, hi):
            p.produce(views, json.dumps(view_events[i]).encode(), partition=i % 3)
            p.produce(buys, json.dumps(buy_events[i]).encode(), partition=i % 3)
        assert p.flush(30) == 0

    produce(0, 1_500)
    workers = start_workers(engine_factory, broker, tmp_path, "join")
    w1, w2, w3 = workers.values()
    for name, topic in (("page_views", views), ("buys", buys)):
        sql(w1, f"""CREATE SOURCE {name} (seq BIGINT, user_id BIGINT, ts TIMESTAMP,
                      WATERMARK FOR ts AS ts - INTERVAL '1' MINUTE)
                    WITH (connector = 'topic', topic = '{topic}', format = 'json',
                          idle_timeout = '1 minute')""")
    sql(w2, f"""CREATE SINK bought WITH (topic = '{out}', tasks = 3, checkpoint_interval = '300ms') AS
                SELECT v.seq AS view_seq, b.seq AS buy_seq, v.user_id
                FROM page_views v JOIN buys b
                  ON v.user_id = b.user_id AND b.ts BETWEEN v.ts AND v.ts + INTERVAL '2' SECOND""")
    spread = H.wait_for(lambda: split_evenly(workers, "bought", 3), timeout=60,
                        desc="three tasks, one on each worker")
    produce(1_500, 4_500)
    time.sleep(1.5)
    victim = spread[2][0]
    alive = {name: w for name, w in workers.items() if name != victim}
    workers[victim].kill9()
    produce(4_500, 6_000)
    H.wait_for(lambda: split_evenly(alive, "bought", 3), timeout=60,
               desc="the killed worker's task running on another")
    # The killed worker comes back on its data directory: it catches up
    # with the command topic, rejoins the sink's group and takes a task
    # again, from the checkpoint the other left.
    produce(6_000, 7_000)
    workers[victim].start()
    H.wait_for(lambda: split_evenly(workers, "bought", 3), timeout=60,
               desc="the restarted worker running a task again")
    produce(7_000, n)

    by_user: dict[int, list[dict]] = {}
    for v in view_events:
        by_user.setdefault(v["user_id"], []).append(v)
    want = sorted((v["seq"], b["seq"], b["user_id"]) for b in buy_events
                  for v in by_user.get(b["user_id"], ()) if v["ts"] <= b["ts"] <= v["ts"] + 2_000)
    assert len(want) > 1_000

    def complete():
        recs = H.consume_all(broker.bootstrap, out)
        got = [json.loads(r.value) for part in recs.values() for r in part]
        rows = sorted((r["view_seq"], r["buy_seq"], r["user_id"]) for r in got)
        return rows if len(rows) >= len(want) else None
    got = H.wait_for(complete, timeout=120, desc="every joined pair in the sink topic")
    assert got == want, f"{len(got)} rows, {len(want)} wanted"

    # A keyless aggregation over the join needs every pair in one place.
    w = next(iter(alive.values()))
    err = sql(w, f"""CREATE SINK n_bought WITH (topic = '{out}', tasks = 2) AS
                     SELECT count(*) AS n FROM page_views v JOIN buys b
                       ON v.user_id = b.user_id AND b.ts BETWEEN v.ts AND v.ts + INTERVAL '2' SECOND""",
              expect_status=400)["error"]
    assert "cannot be split into tasks" in err, err

    # Dropping the sink deletes the topic its tasks were shared through.
    def tasks_topics():
        topics = H.admin(broker.bootstrap).list_topics(timeout=10).topics
        return {t for t in topics if t.startswith("_fluxo-join-bought.") and t.endswith("-tasks")}
    assert len(tasks_topics()) == 1, tasks_topics()
    sql(w, "DROP SINK bought")
    H.wait_for(lambda: not tasks_topics(), timeout=30, desc="the tasks topic deleted")


@pytest.mark.timeout(300)
def test_a_delta_sink_splits_over_the_workers_onto_s3_exactly_once(
        broker_factory, engine_factory, new_topic, tmp_path, s3, monkeypatch):
    """A Delta sink on S3 (moto's server) split into three tasks by its
    source's partitions, on three workers: each task appends its own files
    in Delta commits of its own application id, concurrently with the
    others. One worker is killed -9 mid-stream and its task resumes on
    another from its checkpoint: read back with the `deltalake` package,
    the table holds every matching bid once."""
    from deltalake import DeltaTable
    from test_s3 import KEY_ID, REGION, SECRET
    bucket = "fluxo-lake"
    s3.client.create_bucket(Bucket=bucket)
    for name, value in zip(S3_ENV, (s3.endpoint, REGION, KEY_ID, SECRET, "true")):
        monkeypatch.setenv(name, value)
    broker = cluster_broker(broker_factory, tmp_path)
    topic = topic_with(broker, new_topic, 6)
    bids = strip(make_bids(18_000, seed=61))

    def produce(lo: int, hi: int):
        p = H.producer(broker.bootstrap, **{"linger.ms": 5})
        for i in range(lo, hi):
            p.produce(topic, json.dumps({**bids[i], "seq": i}).encode(), partition=i % 6)
        assert p.flush(30) == 0

    produce(0, 3_000)
    workers = start_workers(engine_factory, broker, tmp_path, "lake")
    w1, w2, _ = workers.values()
    sql(w1, f"""CREATE SOURCE bids (seq BIGINT, auction BIGINT, price BIGINT, channel TEXT)
                WITH (connector = 'topic', topic = '{topic}', format = 'json')""")
    sql(w2, f"""CREATE SINK lake WITH (connector = 'delta', path = 's3://{bucket}/lake', tasks = 3,
                  checkpoint_interval = '300ms') AS
                SELECT seq, auction, price FROM bids WHERE price > 250""")
    # Parquet files of the same rows, from three tasks into one prefix.
    sql(w1, f"""CREATE SINK files WITH (connector = 'parquet', path = 's3://{bucket}/files',
                  tasks = 3, checkpoint_interval = '300ms') AS
                SELECT seq, auction, price FROM bids WHERE price > 250""")
    spread = H.wait_for(lambda: split_evenly(workers, "lake", 3), timeout=60,
                        desc="three tasks, one on each worker")
    H.wait_for(lambda: split_evenly(workers, "files", 3), timeout=60,
               desc="three Parquet tasks, one on each worker")
    produce(3_000, 8_000)
    time.sleep(1.5)
    victim = spread[0][0]
    alive = {n: w for n, w in workers.items() if n != victim}
    workers[victim].kill9()
    produce(8_000, 12_000)
    H.wait_for(lambda: split_evenly(alive, "lake", 3) and split_evenly(alive, "files", 3),
               timeout=60, desc="the killed worker's tasks running on the others")
    # The broker stops answering: the workers, cut off from the group's
    # coordinator for three heartbeat intervals, stop their tasks (before
    # the coordinator could hand them on) and take them back once it
    # answers again.
    os.kill(broker.proc.pid, signal.SIGSTOP)
    try:
        H.wait_for(lambda: all(not task_spread_here(w, s) for w in alive.values()
                               for s in ("lake", "files")),
                   timeout=20, desc="every task stopped while the coordinator is silent")
    finally:
        os.kill(broker.proc.pid, signal.SIGCONT)
    H.wait_for(lambda: split_evenly(alive, "lake", 3) and split_evenly(alive, "files", 3),
               timeout=60, desc="the tasks running again")
    produce(12_000, len(bids))

    want = sorted((i, b["auction"], b["price"]) for i, b in enumerate(bids) if b["price"] > 250)
    options = {"AWS_ENDPOINT_URL": s3.endpoint, "AWS_REGION": REGION, "AWS_ACCESS_KEY_ID": KEY_ID,
               "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_ALLOW_HTTP": "true"}

    def complete():
        try:
            table = DeltaTable(f"s3://{bucket}/lake", storage_options=options).to_pyarrow_table()
        except Exception:
            return None
        rows = sorted(zip(*(table.column(c).to_pylist() for c in ("seq", "auction", "price"))))
        return rows if len(rows) >= len(want) else None
    got = H.wait_for(complete, timeout=120, desc="every pricey bid in the Delta table")
    assert got == want, f"{len(got)} rows, {len(want)} wanted"

    # The commits came from the three tasks, each under its own application id.
    app_ids = set()
    for key in s3.keys(bucket, "lake/_delta_log/"):
        if key.endswith(".json"):
            body = s3.client.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
            for line in body.splitlines():
                action = json.loads(line)
                if "txn" in action:
                    app_ids.add(action["txn"]["appId"])
    assert len(app_ids) >= 3, app_ids

    import pyarrow.dataset as ds
    import pyarrow.fs as pafs

    def files_complete():
        fs = pafs.S3FileSystem(access_key=KEY_ID, secret_key=SECRET, region=REGION, scheme="http",
                               endpoint_override=f"127.0.0.1:{s3.port}")
        try:
            table = ds.dataset(f"{bucket}/files", filesystem=fs, format="parquet").to_table()
        except (FileNotFoundError, OSError):
            return None
        rows = sorted(zip(*(table.column(c).to_pylist() for c in ("seq", "auction", "price"))))
        return rows if len(rows) >= len(want) else None
    got = H.wait_for(files_complete, timeout=120, desc="every pricey bid in the Parquet files")
    assert got == want, f"{len(got)} rows in Parquet, {len(want)} wanted"
    names = [k.rsplit("/", 1)[1] for k in s3.keys(bucket, "files/") if "/_staging/" not in k]
    assert {n.split("-")[2] for n in names} == {"task0", "task1", "task2"}, names
