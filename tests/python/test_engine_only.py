"""Engine-only mode: `fluxo serve --engine-only --kafka-bootstrap ...` runs
the SQL engine on an existing Kafka-protocol cluster, here a separate fluxo
broker process. Sources are read from the cluster with read_committed
fetches, topic sinks write to it in Kafka transactions, and a kill -9 of
the engine (or a restart of the cluster's broker) neither loses nor
doubles a sink's rows."""

from __future__ import annotations

import json
import random
import time

import psycopg

import fluxo_helpers as H
from test_sql import (SOURCE, VIEW, expected_windows, get, make_bids, produce_bids, sink_rows,
                      source_watermark, sql, topic_with, view_rows, wait_watermark)


def strip(bids: list[dict]) -> list[dict]:
    return [{k: v for k, v in b.items() if k != "_ts"} for b in bids]


def test_views_batch_queries_and_sinks_run_on_a_remote_cluster_exactly_once(
        broker, engine_factory, new_topic):
    topic = topic_with(broker, new_topic, 2)
    out = new_topic("remote-out")
    bids = make_bids(24_000, seed=21)
    clean = strip(bids)
    produce_bids(broker, topic, clean[:4_000])
    engine = engine_factory(broker.bootstrap)
    sql(engine, SOURCE.format(topic=topic))
    # A batch query reads the cluster's topic as it is now.
    assert sql(engine, "SELECT count(*) FROM bids")["rows"] == [[4_000]]
    sql(engine, VIEW.replace("AS\n", "WITH (checkpoint_interval = '300ms') AS\n", 1))
    sql(engine, f"CREATE SINK hot FROM per_auction WITH (connector = 'topic', topic = '{out}')")
    # The engine has no log of its own to ingest into.
    err = sql(engine, "CREATE SOURCE nx (auction BIGINT) WITH (connector = 'nexmark', stream = 'bid')",
              expect_status=400)["error"]
    assert "engine-only" in err and "connector = 'topic'" in err, err
    rng = random.Random(3)
    for k in range(4):
        produce_bids(broker, topic, clean[4_000 + k * 5_000: 9_000 + k * 5_000])
        time.sleep(rng.uniform(0.2, 1.2))
        engine.kill9()
        engine.start()
    # The cluster's broker restarts under the engine: it reconnects.
    broker.kill9()
    broker.start(port=broker.port)
    watermark = source_watermark(bids)
    wait_watermark(engine, "per_auction", watermark, timeout=120)
    want = expected_windows(bids, watermark)
    assert view_rows(engine) == want

    def complete():
        got = sink_rows(broker, out)
        return got if len({(a, s, e) for a, s, e, _, _ in got}) >= len(want) else None
    got = H.wait_for(complete, timeout=60, desc="every window in the cluster's sink topic")
    # Exactly once: every window row once, with the view's values.
    assert sorted(got) == sorted((a, s, e, n, top) for (a, s, e), (n, top) in want.items())
    # The sink wrote through the cluster's transaction coordinator.
    uncommitted = H.consume_all(broker.bootstrap, out, **{"isolation.level": "read_uncommitted"})
    assert sum(len(v) for v in uncommitted.values()) >= len(got)
    # The pipeline's progress is the committed offsets of its consumer
    # group on the cluster, where Kafka's tools see its lag: every bid read.
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
    group = "fluxo-fluxo-per_auction"
    ends = H.watermarks(broker.bootstrap, topic, [0, 1])

    admin = H.admin(broker.bootstrap)  # held: a dropped client drops its requests

    def caught_up():
        req = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in (0, 1)])
        res = admin.list_consumer_group_offsets([req])[group].result(10)
        got = {tp.partition: tp.offset for tp in res.topic_partitions}
        return got if got == {p: ends[p][1] for p in (0, 1)} else None
    H.wait_for(caught_up, timeout=30, desc="the pipeline's group at the end of the topic")
    # Postgres clients query the engine as they would a full server.
    with psycopg.connect(host=engine.pg_host, port=engine.pg_port, user="fluxo",
                         dbname="fluxo", autocommit=True) as conn:
        n = conn.execute("SELECT count(*) FROM per_auction").fetchone()[0]
    assert n == len(want)


def test_an_engine_only_server_says_what_it_does_not_have(broker, engine_factory, new_topic):
    engine = engine_factory(broker.bootstrap)
    topics = get(engine, "/api/v1/topics")
    assert topics["status"] >= 400 and "engine-only" in json.dumps(topics["body"]), topics
    assert get(engine, "/api/v1/pipelines")["status"] == 200
    # A source over a topic the cluster does not have waits for it.
    missing = new_topic("later")
    sql(engine, SOURCE.format(topic=missing).replace("bids", "later_bids", 1))
    sql(engine, "CREATE MATERIALIZED VIEW n_later AS SELECT count(*) AS n FROM later_bids")
    H.create_topic(broker.bootstrap, missing, partitions=2)
    produce_bids(broker, missing, strip(make_bids(500, seed=2)))
    H.wait_for(lambda: sql(engine, "SELECT n FROM n_later")["rows"] == [[500]], timeout=60,
               desc="the view counts the topic created after it")


def test_avro_through_the_clusters_own_schema_registry(broker, engine_factory, new_topic):
    """An engine-only server decodes Avro through a registry it reaches over
    HTTP (here the cluster broker's), and its Avro sink registers there."""
    from test_avro import ORDER_V1, ORDER_V2, order, produce_avro, read_avro
    host, port = broker.listeners["registry"]
    engine = engine_factory(broker.bootstrap,
                            extra_args=["--schema-registry-url", f"http://{host}:{port}"])
    topic, out = new_topic("orders"), new_topic("orders-out")
    H.create_topic(broker.bootstrap, topic, partitions=1)
    produce_avro(broker, topic, ORDER_V1, [order(i) for i in range(50)])
    # Columns come from the remote registry's latest schema of <topic>-value.
    sql(engine, f"CREATE SOURCE orders WITH (topic = '{topic}', format = 'avro')")
    produce_avro(broker, topic, ORDER_V2, [order(i, v2=True) for i in range(50, 80)])
    H.wait_for(lambda: sql(engine, "SELECT count(*), sum(qty) FROM orders")["rows"]
               == [[80, sum(1 + i % 4 for i in range(80))]], timeout=30, desc="80 orders decoded")
    sql(engine, "CREATE MATERIALIZED VIEW teas AS SELECT id, qty FROM orders WHERE item = 'tea'")
    sql(engine, f"CREATE SINK teas_out FROM teas WITH (topic = '{out}', format = 'avro')")
    got = read_avro(broker, out, want=sum(1 for i in range(80) if i % 3 == 0))
    assert sorted((r["id"], r["qty"]) for r in got) == [(i, 1 + i % 4) for i in range(0, 80, 3)]
