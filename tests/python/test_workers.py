"""Workers sharing a cluster: engine-only servers with the same
--cluster-id share their catalog through the command topic
_fluxo-<id>-commands (DDL on any worker is seen by all) and their sinks
through the consumer group fluxo-<id>-workers: each sink runs on one
worker, and when that worker is killed -9 its sinks move to the others,
which resume them from the checkpoints in the shared --checkpoint-url with
nothing lost or doubled in the sink topics (read_committed)."""

from __future__ import annotations

import time

import pytest

import fluxo_helpers as H
from conftest import BrokerStartError
from test_engine_only import strip
from test_s3 import s3  # noqa: F401  (the moto server fixture)
from test_sql import (SOURCE, VIEW, expected_windows, get, make_bids, produce_bids, sink_rows,
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
    shared = ["--cluster-id", "shop", "--checkpoint-url", str(tmp_path / "checkpoints")]
    workers = {n: engine_factory(broker.bootstrap, extra_args=shared, name=n)
               for n in ("w1", "w2", "w3")}
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
    late = engine_factory(broker.bootstrap, extra_args=shared, name="late")
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
    shared = ["--cluster-id", "lake", "--checkpoint-url", f"s3://{bucket}/checkpoints"]
    workers = {n: engine_factory(broker.bootstrap, extra_args=shared, name=n) for n in ("a", "b")}
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
