"""Avro in SQL through fluxo's schema registry, with Confluent's serializers.

Producers write Confluent-framed Avro with confluent-kafka's
`AvroSerializer` pointed at fluxo's registry; a source declared without
columns takes them from the latest schema of `<topic>-value`; records
written with a later, compatible version decode into the same columns by
field name; a view over the source writes an Avro topic sink, whose schema
the sink registers, and `AvroDeserializer` reads the sink's records back.
The source's columns are fixed in the catalog, so a restart decodes the
same way. Values that are not Avro are skipped and counted, and statements
that cannot work are refused with what to do.
"""

from __future__ import annotations

import json

import pytest
from confluent_kafka import KafkaError
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

import fluxo_helpers as H
from test_sql import get, sql

ORDER_V1 = json.dumps({
    "type": "record", "name": "Order", "namespace": "shop",
    "fields": [
        {"name": "id", "type": "long"},
        {"name": "item", "type": "string"},
        {"name": "qty", "type": "int"},
        {"name": "price", "type": "double"},
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "note", "type": ["null", "string"], "default": None},
    ],
})
# BACKWARD compatible: a new field with a default.
ORDER_V2 = json.dumps({
    "type": "record", "name": "Order", "namespace": "shop",
    "fields": json.loads(ORDER_V1)["fields"] + [
        {"name": "coupon", "type": ["null", "string"], "default": None},
    ],
})
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def registry(broker) -> SchemaRegistryClient:
    host, port = broker.listeners["registry"]
    return SchemaRegistryClient({"url": f"http://{host}:{port}"})


def order(i: int, v2: bool = False) -> dict:
    o = {"id": i, "item": ["tea", "cake", "pie"][i % 3], "qty": 1 + i % 4,
         "price": 1.5 * (1 + i % 5), "ts": T0 + i * 100, "note": None if i % 2 else f"n{i}"}
    if v2:
        o["coupon"] = "SAVE" if i % 7 == 0 else None
    return o


def produce_avro(broker, topic: str, schema: str, orders: list[dict]) -> None:
    serializer = AvroSerializer(registry(broker), schema)
    ctx = SerializationContext(topic, MessageField.VALUE)
    p = H.producer(broker.bootstrap)
    H.assert_all_delivered(H.produce_all(p, topic, [{"value": serializer(o, ctx)} for o in orders]))


def read_avro(broker, topic: str, want: int, timeout: float = 60) -> list[dict]:
    deserializer = AvroDeserializer(registry(broker))
    ctx = SerializationContext(topic, MessageField.VALUE)
    c = H.consumer(broker.bootstrap, **{"isolation.level": "read_committed", "auto.offset.reset": "earliest"})
    c.subscribe([topic])
    out: list[dict] = []
    try:
        def enough():
            msg = c.poll(0.5)
            if msg is not None and msg.error() is None:
                out.append(deserializer(msg.value(), ctx))
            elif msg is not None and msg.error().code() != KafkaError._PARTITION_EOF:
                raise AssertionError(msg.error())
            return len(out) >= want
        H.wait_for(enough, timeout=timeout, interval=0, desc=f"{want} Avro records in {topic}")
    finally:
        c.close()
    return out


def pipeline(broker, name: str) -> dict:
    return next(p for p in get(broker, "/api/v1/pipelines")["body"]["pipelines"] if p["name"] == name)


@pytest.mark.timeout(240)
def test_an_avro_source_takes_its_columns_from_the_registry_and_an_avro_sink_round_trips(broker, new_topic):
    topic = new_topic("orders")
    first = [order(i) for i in range(300)]
    produce_avro(broker, topic, ORDER_V1, first)

    assert sql(broker, f"""CREATE SOURCE orders (WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)
                           WITH (connector = 'topic', topic = '{topic}', format = 'avro')""")["message"] \
        == "CREATE SOURCE orders"
    described = sql(broker, "SELECT * FROM orders LIMIT 1")
    assert [(c["name"], c["type"]) for c in described["columns"]] == [
        ("id", "BIGINT"), ("item", "TEXT"), ("qty", "INT"), ("price", "DOUBLE"),
        ("ts", "TIMESTAMP"), ("note", "TEXT")]

    # A later version of the subject decodes into the same columns.
    second = [order(i, v2=True) for i in range(300, 500)]
    produce_avro(broker, topic, ORDER_V2, second)
    orders = first + second

    def totals():
        rows = sql(broker, "SELECT item, count(*), sum(qty), count(note) FROM orders GROUP BY item ORDER BY item")["rows"]
        return rows if sum(r[1] for r in rows) == len(orders) else None
    want = sorted(
        [item, sum(1 for o in orders if o["item"] == item), sum(o["qty"] for o in orders if o["item"] == item),
         sum(1 for o in orders if o["item"] == item and o["note"] is not None)]
        for item in {o["item"] for o in orders})
    assert H.wait_for(totals, timeout=30, desc="every order in a batch query") == want

    # An append-only view written to an Avro topic sink, read back with
    # Confluent's deserializer through the schema the sink registered.
    sql(broker, """CREATE MATERIALIZED VIEW big AS
                   SELECT id, item, qty * price AS total, ts, note FROM orders WHERE qty >= 3""")
    out_topic = new_topic("big_out")
    assert sql(broker, f"""CREATE SINK big_out FROM big
                           WITH (connector = 'topic', topic = '{out_topic}', format = 'avro')""")["message"] \
        == "CREATE SINK big_out"
    assert f"{out_topic}-value" in registry(broker).get_subjects()
    expect = {o["id"]: (o["item"], o["qty"] * o["price"], o["ts"], o["note"]) for o in orders if o["qty"] >= 3}
    got = read_avro(broker, out_topic, len(expect))
    assert len(got) == len(expect)
    as_ms = {r["id"]: (r["item"], r["total"], int(r["ts"].timestamp() * 1000), r["note"]) for r in got}
    assert as_ms == expect

    # The columns are fixed in the catalog: after a kill -9, the source is
    # back with the same columns, and its view and sink go on.
    broker.kill9()
    broker.start(port=broker.port)
    third = [order(i, v2=True) for i in range(500, 540)]
    produce_avro(broker, topic, ORDER_V2, third)
    orders += third
    expect.update({o["id"]: (o["item"], o["qty"] * o["price"], o["ts"], o["note"]) for o in third if o["qty"] >= 3})
    assert H.wait_for(totals, timeout=30, desc="every order after the restart")
    got = read_avro(broker, out_topic, len(expect))
    assert {r["id"] for r in got} == set(expect), "each row once, across the restart"
    assert len(got) == len(expect)


def test_avro_mistakes_are_refused_or_counted(broker, new_topic):
    topic = new_topic("nothing")
    H.create_topic(broker.bootstrap, topic)
    e = sql(broker, f"CREATE SOURCE s WITH (topic = '{topic}', format = 'avro')", expect_status=400)["error"]
    assert f"{topic}-value" in e and "declare the columns" in e, e
    e = sql(broker, f"CREATE SOURCE s WITH (topic = '{topic}', format = 'json')", expect_status=400)["error"]
    assert "has no columns" in e, e

    # JSON where Avro is expected: skipped and counted, with the reason.
    p = H.producer(broker.bootstrap)
    H.assert_all_delivered(H.produce_all(p, topic, [{"value": b'{"id": 1}'}] * 5))
    produce_avro(broker, topic, ORDER_V1, [order(i) for i in range(3)])
    sql(broker, f"CREATE SOURCE s (id BIGINT, item TEXT) WITH (topic = '{topic}', format = 'avro')")
    sql(broker, "CREATE MATERIALIZED VIEW n AS SELECT item, count(*) AS c FROM s GROUP BY item")
    status = H.wait_for(lambda: (p := pipeline(broker, "n"))["bad_records"] == 5 and p, timeout=30,
                        desc="bad records counted")
    assert "not an Avro record" in (status["last_error"] or ""), status
    assert sorted(sql(broker, "SELECT item, c FROM n ORDER BY item")["rows"]) == [["cake", 1], ["pie", 1], ["tea", 1]]

    # A table over Avro would miss its deletes (tombstones with Avro keys).
    e = sql(broker, f"CREATE TABLE t (id BIGINT, item TEXT, PRIMARY KEY (id)) WITH (topic = '{topic}', format = 'avro')",
            expect_status=400)["error"]
    assert "tombstones" in e and "source" in e, e

    # A column that is no Avro name cannot be written as Avro.
    sql(broker, "CREATE MATERIALIZED VIEW m AS SELECT id, count(*) FROM s GROUP BY id")
    e = sql(broker, f"""CREATE SINK bad FROM m WITH (topic = '{new_topic("x")}', format = 'avro', key = 'id')""",
            expect_status=400)["error"]
    assert "not a valid Avro field name" in e, e
