"""The REST API, SSE streams and /metrics of the HTTP front, driven over
real HTTP against the real binary, with confluent-kafka on the Kafka side:
records ingested over HTTP are read back by a Kafka consumer, and a Kafka
consumer group shows up with its lag."""

from __future__ import annotations

import http.client
import json
import time

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

import fluxo_helpers as H


def request(broker, method: str, path: str, body=None, headers=None) -> tuple[int, object, dict]:
    host, port = broker.http_addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    raw = resp.read()
    ctype = resp.getheader("content-type", "")
    data = json.loads(raw) if "json" in ctype else raw.decode("utf-8", "replace")
    return resp.status, data, dict(resp.getheaders())


def ok(broker, method, path, body=None, status=200):
    got, data, _ = request(broker, method, path, body)
    assert got == status, f"{method} {path}: {got} {data}"
    return data


def error(broker, method, path, body=None, status=400) -> str:
    got, data, _ = request(broker, method, path, body)
    assert got == status, f"{method} {path}: expected {status}, got {got} {data}"
    assert isinstance(data, dict) and data.get("error"), f"not a JSON error: {data!r}"
    return data["error"]


def consume_all(broker, topic: str, partitions: int, expect: int, timeout: float = 20.0):
    c = Consumer({**H.BASE_CONF, "bootstrap.servers": broker.bootstrap, "group.id": "reader",
                  "enable.auto.commit": False})
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < expect and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is not None and m.error() is None:
            out.append(m)
    c.close()
    return out


@pytest.mark.timeout(120)
def test_topics_are_created_described_and_deleted(broker, new_topic):
    name = new_topic("api")
    created = ok(broker, "POST", "/api/v1/topics",
                 {"name": name, "partitions": 3, "config": {"retention.ms": "3600000"}}, status=201)
    assert created["partition_count"] == 3
    assert created["config"] == {"retention.ms": "3600000"}
    assert [p["partition"] for p in created["partitions"]] == [0, 1, 2]
    # The Kafka side sees the same topic.
    assert H.topic_partition_count(broker.bootstrap, name) == 3

    listed = {t["name"]: t for t in ok(broker, "GET", "/api/v1/topics")["topics"]}
    assert name in listed and listed[name]["records"] == 0
    assert "already exists" in error(broker, "POST", "/api/v1/topics", {"name": name}, status=409)
    assert "invalid topic" in error(broker, "POST", "/api/v1/topics", {"name": "bad/name"}).lower()
    assert "config" in error(broker, "POST", "/api/v1/topics",
                             {"name": new_topic("c"), "config": {"no.such.key": "1"}}).lower()
    assert "partitions" in error(broker, "POST", "/api/v1/topics",
                                 {"name": new_topic("p"), "partitions": 0}).lower()
    assert "expected a JSON body" in error(broker, "POST", "/api/v1/topics", "{nope")
    assert error(broker, "POST", "/api/v1/topics", {"partitions": 1})  # no name

    assert ok(broker, "DELETE", f"/api/v1/topics/{name}") == {"deleted": name}
    assert "does not exist" in error(broker, "GET", f"/api/v1/topics/{name}", status=404)
    error(broker, "DELETE", f"/api/v1/topics/{name}", status=404)
    error(broker, "DELETE", "/api/v1/topics/__consumer_offsets", status=403)


@pytest.mark.timeout(120)
def test_ingested_records_reach_kafka_consumers_and_the_browser(broker, new_topic):
    name = new_topic("ingest")
    ok(broker, "POST", "/api/v1/topics", {"name": name, "partitions": 2}, status=201)

    one = ok(broker, "POST", f"/api/v1/topics/{name}/records?partition=1", {"user": "ana", "n": 1})
    assert one["records"] == 1 and one["offsets"] == [{"partition": 1, "base_offset": 0, "last_offset": 0}]
    many = ok(broker, "POST", f"/api/v1/topics/{name}/records?key_field=user",
              [{"user": "bo", "n": 2}, {"user": "bo", "n": 3}, {"user": "cy", "n": 4}])
    assert many["records"] == 3
    lines = "\n".join(json.dumps({"user": "dee", "n": n}) for n in (5, 6)) + "\n"
    got, body, _ = request(broker, "POST", f"/api/v1/topics/{name}/records?key=fixed", lines,
                           {"content-type": "application/x-ndjson"})
    assert got == 200 and body["records"] == 2, body

    msgs = consume_all(broker, name, 2, expect=6)
    values = sorted(json.loads(m.value())["n"] for m in msgs)
    assert values == [1, 2, 3, 4, 5, 6]
    by_n = {json.loads(m.value())["n"]: m for m in msgs}
    assert by_n[1].partition() == 1 and by_n[1].key() is None
    assert by_n[2].key() == b"bo" and by_n[3].partition() == by_n[2].partition(), "same key, same partition"
    assert by_n[5].key() == b"fixed"
    assert abs(by_n[1].timestamp()[1] - time.time() * 1000) < 60_000

    browsed = ok(broker, "GET", f"/api/v1/topics/{name}/records?limit=4")["records"]
    assert len(browsed) == 4
    assert [json.loads(r["value"])["n"] for r in browsed] == [6, 5, 4, 3] or \
        sorted(json.loads(r["value"])["n"] for r in browsed) == [3, 4, 5, 6], browsed
    assert all(r["timestamp"] >= b["timestamp"] for r, b in zip(browsed, browsed[1:])), "newest first"
    only_1 = ok(broker, "GET", f"/api/v1/topics/{name}/records?partition=1")["records"]
    assert only_1 and all(r["partition"] == 1 for r in only_1)
    assert {"key", "value", "headers", "offset", "partition", "timestamp"} <= set(only_1[0])
    error(broker, "GET", f"/api/v1/topics/{name}/records?partition=9", status=404)

    topic = ok(broker, "GET", f"/api/v1/topics/{name}")
    assert topic["records"] == 6 and topic["size_bytes"] > 0
    assert sum(p["end_offset"] for p in topic["partitions"]) == 6


@pytest.mark.timeout(120)
def test_bad_ingest_requests_get_clear_4xx_and_write_nothing(broker, new_topic):
    name = new_topic("bad")
    ok(broker, "POST", "/api/v1/topics",
       {"name": name, "partitions": 1, "config": {"max.message.bytes": "2000"}}, status=201)
    path = f"/api/v1/topics/{name}/records"
    assert "not valid JSON" in error(broker, "POST", path, '{"a": 1')
    assert "line 2" in error(broker, "POST", path, '{"a": 1}\n{broken\n')
    assert "empty" in error(broker, "POST", path, "")
    assert "no records" in error(broker, "POST", path, "[]")
    assert "partition 5" in error(broker, "POST", path + "?partition=5", {"a": 1})
    assert "not both" in error(broker, "POST", path + "?key=a&key_field=b", {"a": 1})
    big = [{"a": 1}, {"blob": "x" * 5000}]
    assert "max.message.bytes" in error(broker, "POST", path, big, status=413)
    assert "does not exist" in error(broker, "POST", f"/api/v1/topics/{new_topic('nope')}/records",
                                     {"a": 1}, status=404)
    assert ok(broker, "GET", f"/api/v1/topics/{name}")["records"] == 0, "refused requests wrote nothing"
    assert error(broker, "GET", "/api/v1/nothing/here", status=404)


@pytest.mark.timeout(120)
def test_groups_show_members_assignment_and_lag(broker, new_topic):
    name = new_topic("grp")
    H.create_topic(broker.bootstrap, name, partitions=2)
    p = Producer({**H.BASE_CONF, "bootstrap.servers": broker.bootstrap})
    for i in range(10):
        p.produce(name, value=b"x", partition=i % 2)
    assert p.flush(10) == 0
    c = Consumer({**H.BASE_CONF, "bootstrap.servers": broker.bootstrap, "group.id": f"g-{name}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([name])
    got = 0
    deadline = time.monotonic() + 30
    while got < 4 and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is not None and m.error() is None:
            got += 1
            last = m
    c.commit(message=last, asynchronous=False)
    group = f"g-{name}"
    listed = H.wait_for(lambda: next((g for g in ok(broker, "GET", "/api/v1/groups")["groups"]
                                      if g["group_id"] == group and g["members"] == 1), None),
                        desc="the group listed with its member")
    assert listed["lag"] > 0
    d = ok(broker, "GET", f"/api/v1/groups/{group}")
    assert d["state"] == "Stable" and len(d["members"]) == 1
    assigned = {(a["topic"], p) for a in d["members"][0]["assignment"] for p in a["partitions"]}
    assert assigned == {(name, 0), (name, 1)}
    committed = [x for x in d["partitions"] if x["topic"] == name]
    assert committed and all(x["end_offset"] == 5 for x in committed)
    assert d["lag"] == sum(x["lag"] for x in d["partitions"])
    H.wait_for(lambda: ok(broker, "GET", f"/api/v1/groups/{group}")["lag_history"],
               desc="lag history samples")
    _, text, _ = request(broker, "GET", "/metrics")
    lag = {(s.labels["topic"], s.labels["partition"]): s.value
           for f in text_string_to_metric_families(text) if f.name == "fluxo_group_lag"
           for s in f.samples if s.labels["group"] == group}
    assert sum(lag.values()) == d["lag"]
    members = [s.value for f in text_string_to_metric_families(text) if f.name == "fluxo_group_members"
               for s in f.samples if s.labels["group"] == group]
    assert members == [1]
    c.close()
    error(broker, "GET", "/api/v1/groups/no-such-group", status=404)


@pytest.mark.timeout(120)
def test_pipelines_stop_and_start_and_dashboards_are_kept(broker, new_topic):
    name = new_topic("pipe")
    ok(broker, "POST", "/api/v1/topics", {"name": name, "partitions": 1}, status=201)
    ok(broker, "POST", "/api/v1/sql", {"sql": f"CREATE SOURCE s (n BIGINT, k TEXT) WITH "
                                              f"(connector = 'topic', topic = '{name}', format = 'json')"})
    ok(broker, "POST", "/api/v1/sql", {"sql": "CREATE MATERIALIZED VIEW per_k AS "
                                              "SELECT k, count(*) AS c, sum(n) AS total FROM s GROUP BY k"})
    ok(broker, "POST", f"/api/v1/topics/{name}/records", [{"n": 1, "k": "a"}, {"n": 2, "k": "b"}])
    H.wait_for(lambda: ok(broker, "GET", "/api/v1/pipelines/per_k")["view_rows"] == 2, desc="view rows")
    _, text, _ = request(broker, "GET", "/metrics")
    events = [s.value for f in text_string_to_metric_families(text) if f.name == "fluxo_pipeline_events_in"
              for s in f.samples if s.labels["pipeline"] == "per_k"]
    assert events == [2]

    ok(broker, "POST", "/api/v1/pipelines/per_k/stop")
    H.wait_for(lambda: ok(broker, "GET", "/api/v1/pipelines/per_k")["status"] == "stopped", desc="stopped")
    ok(broker, "POST", f"/api/v1/topics/{name}/records", {"n": 5, "k": "c"})
    time.sleep(1.0)
    assert ok(broker, "GET", "/api/v1/pipelines/per_k")["view_rows"] == 2, "a stopped pipeline reads nothing"
    ok(broker, "POST", "/api/v1/pipelines/per_k/start")
    H.wait_for(lambda: ok(broker, "GET", "/api/v1/pipelines/per_k")["view_rows"] == 3, desc="resumed")
    assert ok(broker, "GET", "/api/v1/pipelines/per_k")["status"] == "running"
    error(broker, "POST", "/api/v1/pipelines/nope/stop", status=404)

    # Several views on one stream: each event names its view; an unknown
    # view gets a `missing` event and the others stream on.
    events = read_sse_events(broker, "/api/v1/changes?views=per_k,nope", 2)
    by_name = {name: data for name, data in events}
    assert by_name["snapshot"]["view"] == "per_k" and len(by_name["snapshot"]["rows"]) == 3
    assert by_name["missing"]["view"] == "nope" and "does not exist" in by_name["missing"]["error"]
    assert "at least one view" in error(broker, "GET", "/api/v1/changes?views=")

    chart = {"title": "Totals", "view": "per_k", "type": "bar", "x": "k", "y": ["total"], "limit": 5}
    d = ok(broker, "POST", "/api/v1/dashboards", {"name": "Mine", "charts": [chart]}, status=201)
    assert d["id"] and d["charts"][0]["id"]
    assert "no materialized view" in error(broker, "POST", "/api/v1/dashboards",
                                           {"name": "X", "charts": [{**chart, "view": "nope"}]})
    assert "pie" in error(broker, "POST", "/api/v1/dashboards",
                          {"name": "X", "charts": [{**chart, "type": "pie"}]})
    assert "name" in error(broker, "POST", "/api/v1/dashboards", {"name": " ", "charts": []})
    assert error(broker, "POST", "/api/v1/dashboards", {"name": "X", "bogus": 1})
    d["name"] = "Renamed"
    ok(broker, "PUT", f"/api/v1/dashboards/{d['id']}", d)
    broker.restart()
    after = ok(broker, "GET", f"/api/v1/dashboards/{d['id']}")
    assert after["name"] == "Renamed" and after["charts"] == d["charts"], "dashboards survive a restart"
    ok(broker, "DELETE", f"/api/v1/dashboards/{d['id']}")
    error(broker, "GET", f"/api/v1/dashboards/{d['id']}", status=404)
    error(broker, "PUT", f"/api/v1/dashboards/{d['id']}", d, status=404)


def read_sse_events(broker, path: str, count: int, timeout: float = 10.0) -> list[tuple[str, dict]]:
    """The first `count` (event, data) pairs of an SSE stream."""
    host, port = broker.http_addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    conn.request("GET", path, headers={"accept": "text/event-stream"})
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()
    out, name = [], None
    while len(out) < count:
        line = resp.fp.readline().decode().rstrip("\n")
        if line.startswith("event:"):
            name = line.split(":", 1)[1].strip()
        elif line.startswith("data:"):
            out.append((name, json.loads(line.split(":", 1)[1])))
    conn.close()
    return out


def read_sse_event(broker, path: str, event: str, timeout: float = 10.0) -> dict:
    host, port = broker.http_addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    conn.request("GET", path, headers={"accept": "text/event-stream"})
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.getheader("content-type").startswith("text/event-stream")
    name = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = resp.fp.readline().decode().rstrip("\n")
        if line.startswith("event:"):
            name = line.split(":", 1)[1].strip()
        elif line.startswith("data:") and name == event:
            conn.close()
            return json.loads(line.split(":", 1)[1])
    raise AssertionError(f"no {event} event on {path} within {timeout}s")


@pytest.mark.timeout(120)
def test_overview_rates_follow_traffic_and_metrics_parse(broker, new_topic):
    name = new_topic("rates")
    ok(broker, "POST", "/api/v1/topics", {"name": name, "partitions": 1}, status=201)
    p = Producer({**H.BASE_CONF, "bootstrap.servers": broker.bootstrap, "acks": "all"})
    stop = time.monotonic() + 4
    sent = 0
    while time.monotonic() < stop:
        for _ in range(200):
            p.produce(name, value=b"v" * 100)
            sent += 1
        p.poll(0)
        time.sleep(0.05)
    assert p.flush(10) == 0
    consume_all(broker, name, 1, expect=sent)

    # The sampler reads the counters once a second.
    overview = H.wait_for(lambda: (o := ok(broker, "GET", "/api/v1/overview"))
                          and max((s["bytes_out_per_sec"] for s in o["history"]), default=0) > 0 and o,
                          timeout=10, desc="the consumer's fetches counted as out")
    assert overview["topics"] >= 1 and overview["log_bytes"] > 0
    history = overview["history"]
    assert len(history) >= 3
    assert max(s["records_in_per_sec"] for s in history) > 100
    assert all(a["t"] < b["t"] for a, b in zip(history, history[1:]))
    sample = read_sse_event(broker, "/api/v1/overview/live", "sample")
    assert {"t", "records_in_per_sec", "bytes_in_per_sec", "topics", "connections"} <= set(sample)

    got, text, headers = request(broker, "GET", "/metrics")
    assert got == 200 and headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for family in ["fluxo_kafka_request_duration_seconds", "fluxo_kafka_connections",
                   "fluxo_topic_records_in", "fluxo_topic_bytes_out", "fluxo_log_size_bytes",
                   "fluxo_log_end_offset"]:
        assert family in families, f"{family} missing from /metrics: {sorted(families)}"
    recs_in = {s.labels["topic"]: s.value for s in families["fluxo_topic_records_in"].samples
               if s.name.endswith("_total")}
    assert recs_in[name] == sent
    produce_count = [s.value for s in families["fluxo_kafka_request_duration_seconds"].samples
                     if s.name.endswith("_count") and s.labels["api"] == "Produce"]
    assert produce_count and produce_count[0] > 0
    end = {s.labels["partition"]: s.value for s in families["fluxo_log_end_offset"].samples
           if s.labels["topic"] == name}
    assert end == {"0": sent}


@pytest.mark.timeout(60)
def test_the_console_is_served_by_the_binary(broker):
    got, html, headers = request(broker, "GET", "/")
    assert got == 200 and headers["content-type"].startswith("text/html")
    assert "/app.js" in html and "/app.css" in html
    got, js, headers = request(broker, "GET", "/app.js")
    assert got == 200 and "javascript" in headers["content-type"] and len(js) > 1000
    got, _, _ = request(broker, "GET", "/app.css")
    assert got == 200
    error(broker, "GET", "/nothing.js", status=404)
