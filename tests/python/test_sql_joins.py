"""Joins, tables over topics, views on views and top-N against a running
fluxo, fed by confluent-kafka: the views must equal the same SELECT run as
a batch query over the topics, through updates, tombstones and kill -9s."""

from __future__ import annotations

import json
import random
import time

from confluent_kafka import Producer

import fluxo_helpers as H
from test_sql import sql

T0 = 1_700_000_000_000  # ms

TABLES = """
CREATE TABLE customers (id BIGINT, name TEXT, tier TEXT, PRIMARY KEY (id))
  WITH (connector = 'topic', topic = '{customers}', format = 'json');
CREATE SOURCE orders (order_id BIGINT, customer_id BIGINT, amount BIGINT, ts TIMESTAMP,
  WATERMARK FOR ts AS ts - INTERVAL '1' HOUR)
  WITH (connector = 'topic', topic = '{orders}', format = 'json');
CREATE SOURCE clicks (customer_id BIGINT, page TEXT, ts TIMESTAMP,
  WATERMARK FOR ts AS ts - INTERVAL '1' HOUR)
  WITH (connector = 'topic', topic = '{clicks}', format = 'json');
"""

# The unified customer profile: a table joined with two streams' aggregates.
PROFILE = """
SELECT c.id, c.name, c.tier, o.orders, o.spend, k.clicks, k.last_click
FROM customers c
LEFT JOIN (SELECT customer_id, count(*) AS orders, sum(amount) AS spend
           FROM orders GROUP BY customer_id) o ON o.customer_id = c.id
LEFT JOIN (SELECT customer_id, count(*) AS clicks, max(ts) AS last_click
           FROM clicks GROUP BY customer_id) k ON k.customer_id = c.id
"""

SPEND_PER_TIER = """
SELECT c.tier, count(*) AS orders, sum(o.amount) AS spend
FROM orders o JOIN customers c ON o.customer_id = c.id GROUP BY c.tier
"""

CLICK_THEN_ORDER = """
SELECT k.customer_id, count(*) AS conversions
FROM clicks k JOIN orders o
  ON k.customer_id = o.customer_id AND o.ts BETWEEN k.ts AND k.ts + INTERVAL '30' SECOND
GROUP BY k.customer_id
"""

TOP_SPENDERS = """
SELECT id, spend, rn FROM (
  SELECT id, spend, ROW_NUMBER() OVER (ORDER BY spend DESC, id) AS rn FROM profile WHERE spend IS NOT NULL)
WHERE rn <= 5
"""

VIEWS = {
    "profile": PROFILE,
    "spend_per_tier": SPEND_PER_TIER,
    "click_then_order": CLICK_THEN_ORDER,
}


def iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + ".%03dZ" % (ms % 1000)


def produce(broker, topic: str, records: list[tuple[bytes | None, dict | None]], partitions: int) -> None:
    p = Producer({**H.BASE_CONF, "bootstrap.servers": broker.bootstrap, "linger.ms": 5})
    for i, (key, value) in enumerate(records):
        body = None if value is None else json.dumps(value).encode()
        p.produce(topic, body, key=key, partition=(i % partitions) if key is None else 0)
        if i % 2000 == 0:
            p.poll(0)
    assert p.flush(30) == 0


def customer(i: int, rng: random.Random) -> tuple[bytes, dict]:
    return str(i).encode(), {"id": i, "name": f"c{i}", "tier": rng.choice(["gold", "silver", "bronze"])}


def rows(broker, query: str) -> list:
    return sorted(map(json.dumps, sql(broker, query)["rows"]))


def settled(broker, view: str, query: str, timeout: float = 90) -> None:
    """Waits until the view holds what the batch query says."""
    want = None

    def same():
        nonlocal want
        want = rows(broker, query)
        return rows(broker, f"SELECT * FROM {view}") == want

    H.wait_for(same, timeout=timeout, desc=f"view {view} equals its query as a batch")
    assert want, f"{view}: the batch query returned no rows; the test would prove nothing"


def test_joins_tables_and_top_n_equal_the_batch_query_across_updates_and_kill_9s(broker, new_topic):
    names = {"customers": new_topic("customers"), "orders": new_topic("orders"), "clicks": new_topic("clicks")}
    H.create_topic(broker.bootstrap, names["customers"], partitions=1)
    H.create_topic(broker.bootstrap, names["orders"], partitions=2)
    H.create_topic(broker.bootstrap, names["clicks"], partitions=2)
    rng = random.Random(15)
    produce(broker, names["customers"], [customer(i, rng) for i in range(200)], 1)
    for statement in TABLES.format(**names).split(";"):
        if statement.strip():
            sql(broker, statement)
    for name, query in VIEWS.items():
        sql(broker, f"CREATE MATERIALIZED VIEW {name} WITH (checkpoint_interval = '300ms') AS {query}")
    sql(broker, f"CREATE MATERIALIZED VIEW top_spenders AS {TOP_SPENDERS}")

    t = T0
    order_id = 0
    for round_ in range(4):
        orders, clicks = [], []
        for _ in range(1500):
            t += rng.randint(0, 40)
            c = rng.randrange(230)  # some customers do not exist (yet)
            if rng.random() < 0.5:
                clicks.append((None, {"customer_id": c, "page": f"p{rng.randrange(9)}", "ts": iso(t)}))
            else:
                order_id += 1
                orders.append((None, {"order_id": order_id, "customer_id": c,
                                      "amount": rng.randint(1, 500), "ts": iso(t)}))
        produce(broker, names["orders"], orders, 2)
        produce(broker, names["clicks"], clicks, 2)
        # Customers change tier, arrive late, or are deleted by a tombstone.
        changes = [customer(rng.randrange(230), rng) for _ in range(40)]
        changes += [(str(rng.randrange(200)).encode(), None) for _ in range(5)]
        produce(broker, names["customers"], changes, 1)
        time.sleep(rng.uniform(0.1, 1.0))
        broker.kill9()
        broker.start(port=broker.port)
        broker.note(f"round {round_}: killed and restarted")

    for name, query in VIEWS.items():
        settled(broker, name, query)
    settled(broker, "top_spenders", TOP_SPENDERS.replace("FROM profile", f"FROM ({PROFILE})"))
    # Some customers were deleted: the profile has fewer rows than ids seen.
    ids = [r[0] for r in sql(broker, "SELECT id FROM profile")["rows"]]
    assert len(ids) == len(set(ids)) and len(ids) < 230
    # The interval join's state is bounded by the watermark, not the input.
    pipelines = {p["name"]: p for p in sql_pipelines(broker)}
    assert pipelines["click_then_order"]["status"] == "running", pipelines["click_then_order"]


def sql_pipelines(broker) -> list[dict]:
    from test_sql import get
    return get(broker, "/api/v1/pipelines")["body"]["pipelines"]


def test_an_unbounded_stream_join_and_min_over_updates_are_refused_with_the_fix(broker, new_topic):
    names = {"customers": new_topic("customers"), "orders": new_topic("orders"), "clicks": new_topic("clicks")}
    for statement in TABLES.format(**names).split(";"):
        if statement.strip():
            sql(broker, statement)
    err = sql(broker, "CREATE MATERIALIZED VIEW j AS SELECT * FROM clicks k JOIN orders o "
                      "ON k.customer_id = o.customer_id", expect_status=400)["error"]
    assert "needs a time bound" in err and "BETWEEN" in err, err
    err = sql(broker, "CREATE MATERIALIZED VIEW m AS SELECT c.tier, median(o.amount) FROM orders o "
                      "JOIN customers c ON o.customer_id = c.id GROUP BY c.tier", expect_status=400)["error"]
    assert "cannot be kept up to date" in err, err
    # EXPLAIN shows the graph: the join over its two inputs.
    lines = [r[0] for r in sql(broker, f"EXPLAIN CREATE MATERIALIZED VIEW p AS {PROFILE}")["rows"]]
    text = "\n".join(lines)
    assert "Join: Left" in text and "Source: customers" in text and "Source: clicks" in text, text
