"""fluxo's schema registry with Confluent's own client, serializer and
deserializer, plus its REST API's error codes over plain HTTP."""

from __future__ import annotations

import json
import struct
import urllib.error
import urllib.request

import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

import fluxo_helpers as H

USER_V1 = json.dumps({
    "type": "record", "name": "User", "namespace": "fluxo.test",
    "fields": [{"name": "id", "type": "long"}, {"name": "name", "type": "string"}],
})
# Compatible (BACKWARD): the new field has a default.
USER_V2 = json.dumps({
    "type": "record", "name": "User", "namespace": "fluxo.test",
    "fields": [{"name": "id", "type": "long"}, {"name": "name", "type": "string"},
               {"name": "email", "type": ["null", "string"], "default": None}],
})
# Incompatible: a new field without a default cannot be read from old data.
USER_BAD = json.dumps({
    "type": "record", "name": "User", "namespace": "fluxo.test",
    "fields": [{"name": "id", "type": "long"}, {"name": "name", "type": "string"},
               {"name": "age", "type": "int"}],
})


def registry_url(broker) -> str:
    host, port = broker.listeners["registry"]
    return f"http://{host}:{port}"


def client(broker) -> SchemaRegistryClient:
    return SchemaRegistryClient({"url": registry_url(broker)})


def http(broker, method: str, path: str, body=None, accept: str | None = None,
         content_type: str = "application/vnd.schemaregistry.v1+json"):
    """(status, content type, parsed JSON body) of one request."""
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    req = urllib.request.Request(registry_url(broker) + path, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", content_type)
    if accept is not None:
        req.add_header("Accept", accept)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.headers.get("Content-Type"), json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type"), json.loads(e.read() or b"null")


def expect_error(broker, method, path, status, code, body=None):
    got_status, ctype, got = http(broker, method, path, body)
    assert (got_status, got.get("error_code")) == (status, code), (method, path, got_status, got)
    assert isinstance(got.get("message"), str) and got["message"], got
    assert ctype == "application/vnd.schemaregistry.v1+json"
    return got["message"]


@pytest.mark.timeout(120)
def test_register_evolve_and_round_trip_avro_records(broker, new_topic):
    sr = client(broker)
    topic = new_topic("users")
    subject = f"{topic}-value"

    id1 = sr.register_schema(subject, Schema(USER_V1, "AVRO"))
    assert sr.register_schema(subject, Schema(USER_V1, "AVRO")) == id1, "same schema, same id"
    assert sr.get_versions(subject) == [1]
    found = sr.lookup_schema(subject, Schema(USER_V1, "AVRO"))
    assert (found.schema_id, found.version) == (id1, 1)

    # Compatible evolution: a new version with a new id.
    assert sr.test_compatibility(subject, Schema(USER_V2, "AVRO")) is True
    id2 = sr.register_schema(subject, Schema(USER_V2, "AVRO"))
    assert id2 != id1
    assert sr.get_versions(subject) == [1, 2]
    latest = sr.get_latest_version(subject)
    assert (latest.version, latest.schema_id) == (2, id2)
    assert json.loads(latest.schema.schema_str) == json.loads(USER_V2)

    # Incompatible evolution: 409, and nothing registered.
    assert sr.test_compatibility(subject, Schema(USER_BAD, "AVRO")) is False
    with pytest.raises(SchemaRegistryError) as e:
        sr.register_schema(subject, Schema(USER_BAD, "AVRO"))
    assert (e.value.http_status_code, e.value.error_code) == (409, 409)
    assert sr.get_versions(subject) == [1, 2]

    # Ids are global: the same schema under another subject shares the id.
    other = f"{topic}-copy-value"
    assert sr.register_schema(other, Schema(USER_V1, "AVRO")) == id1
    assert sorted(sr.get_subjects_by_schema_id(id1)) == sorted([subject, other])
    assert {(v.subject, v.version) for v in sr.get_schema_versions(id1)} == {(subject, 1), (other, 1)}
    assert sr.get_schema_types() == ["AVRO"]

    # Produce Avro records with Confluent's serializer, read them back with
    # its deserializer through a fresh client (nothing cached).
    H.create_topic(broker.bootstrap, topic, 1)
    serializer = AvroSerializer(sr, USER_V2, conf={"auto.register.schemas": False, "use.latest.version": True})
    ctx = SerializationContext(topic, MessageField.VALUE)
    users = [{"id": i, "name": f"user-{i}", "email": None if i % 2 else f"u{i}@example.com"} for i in range(20)]
    p = H.producer(broker.bootstrap)
    H.assert_all_delivered(H.produce_all(p, topic, [{"value": serializer(u, ctx)} for u in users]))

    records = H.consume_all(broker.bootstrap, topic)[0]
    assert len(records) == len(users)
    magic, schema_id = struct.unpack(">bI", records[0].value[:5])
    assert (magic, schema_id) == (0, id2), "Confluent's wire format names the latest schema"
    deserializer = AvroDeserializer(client(broker))
    assert [deserializer(r.value, ctx) for r in records] == users

    # A reader on the old schema resolves records written with the new one.
    old_reader = AvroDeserializer(client(broker), USER_V1)
    assert old_reader(records[0].value, ctx) == {"id": 0, "name": "user-0"}


@pytest.mark.timeout(120)
def test_soft_and_hard_delete_and_subject_configs(broker, new_topic):
    sr = client(broker)
    subject = new_topic("del") + "-value"
    id1 = sr.register_schema(subject, Schema(USER_V1, "AVRO"))
    id2 = sr.register_schema(subject, Schema(USER_V2, "AVRO"))

    # A hard delete needs a soft delete first.
    with pytest.raises(SchemaRegistryError) as e:
        sr.delete_version(subject, 1, permanent=True)
    assert e.value.error_code == 40407
    assert sr.delete_version(subject, 1) == 1
    with pytest.raises(SchemaRegistryError) as e:
        sr.delete_version(subject, 1)
    assert e.value.error_code == 40406
    assert sr.get_versions(subject) == [2]
    assert sr.get_versions(subject, deleted=True) == [1, 2]
    assert sr.get_schema(id1).schema_str == USER_V1, "old messages still decode"
    assert sr.delete_version(subject, 1, permanent=True) == 1
    assert sr.get_versions(subject, deleted=True) == [2]

    # Subject: soft delete hides it, a second soft delete is 40404, then hard.
    with pytest.raises(SchemaRegistryError) as e:
        sr.delete_subject(subject, permanent=True)
    assert e.value.error_code == 40405
    assert sr.delete_subject(subject) == [2]
    assert subject not in sr.get_subjects()
    assert subject in sr.get_subjects(deleted=True)
    with pytest.raises(SchemaRegistryError) as e:
        sr.delete_subject(subject)
    assert e.value.error_code == 40404
    with pytest.raises(SchemaRegistryError) as e:
        sr.get_latest_version(subject)
    assert (e.value.http_status_code, e.value.error_code) == (404, 40401)
    assert sr.delete_subject(subject, permanent=True) == [2]
    assert subject not in sr.get_subjects(deleted=True)
    with pytest.raises(SchemaRegistryError) as e:
        client(broker).get_schema(id2)
    assert e.value.error_code == 40403

    # Compatibility levels: global default BACKWARD, per subject overrides.
    assert sr.get_compatibility() == "BACKWARD"
    cfg = new_topic("cfg") + "-value"
    sr.register_schema(cfg, Schema(USER_V1, "AVRO"))
    with pytest.raises(SchemaRegistryError) as e:
        sr.get_compatibility(cfg)
    assert e.value.error_code == 40408, "no subject-level config yet"
    assert sr.set_compatibility(cfg, "NONE") == {"compatibility": "NONE"}
    assert sr.get_compatibility(cfg) == "NONE"
    assert sr.register_schema(cfg, Schema(USER_BAD, "AVRO")) > 0, "NONE accepts anything"
    assert sr.set_compatibility(cfg, "FULL_TRANSITIVE") == {"compatibility": "FULL_TRANSITIVE"}
    with pytest.raises(SchemaRegistryError) as e:
        # USER_BAD (a reader under FULL) needs "age", which USER_V2 does not write.
        sr.register_schema(cfg, Schema(USER_V2, "AVRO"))
    assert e.value.error_code == 409
    with pytest.raises(SchemaRegistryError) as e:
        sr.set_compatibility(cfg, "SIDEWAYS")
    assert (e.value.http_status_code, e.value.error_code) == (422, 42203)
    assert sr.delete_config(cfg).compatibility_level.value == "FULL_TRANSITIVE"
    assert sr.get_compatibility() == "BACKWARD", "the global level did not change"


@pytest.mark.timeout(60)
def test_rest_api_error_codes_and_content_types(broker, new_topic):
    subject = new_topic("http") + "-value"
    status, ctype, body = http(broker, "POST", f"/subjects/{subject}/versions", {"schema": USER_V1})
    assert (status, ctype) == (200, "application/vnd.schemaregistry.v1+json")
    schema_id = body["id"]
    # Plain application/json is accepted and answered.
    status, ctype, body = http(broker, "GET", f"/subjects/{subject}/versions/latest",
                               accept="application/json")
    assert (status, ctype) == (200, "application/json")
    assert body == {"subject": subject, "version": 1, "id": schema_id, "schema": USER_V1}
    status, _, raw = http(broker, "GET", f"/schemas/ids/{schema_id}/schema")
    assert status == 200 and raw == json.loads(USER_V1)
    status, _, raw = http(broker, "GET", f"/subjects/{subject}/versions/1/schema")
    assert status == 200 and raw == json.loads(USER_V1)
    assert http(broker, "GET", "/mode")[2] == {"mode": "READWRITE"}
    assert http(broker, "GET", "/config")[2] == {"compatibilityLevel": "BACKWARD"}
    assert http(broker, "GET", "/schemas/types")[2] == ["AVRO"]
    status, _, body = http(broker, "POST", f"/compatibility/subjects/{subject}/versions/latest?verbose=true",
                           {"schema": USER_BAD})
    assert status == 200 and body["is_compatible"] is False and body["messages"], body

    expect_error(broker, "GET", "/subjects/no-such-subject/versions", 404, 40401)
    expect_error(broker, "GET", f"/subjects/{subject}/versions/7", 404, 40402)
    expect_error(broker, "GET", f"/subjects/{subject}/versions/zero", 422, 42202)
    expect_error(broker, "GET", "/schemas/ids/999999", 404, 40403)
    expect_error(broker, "POST", f"/subjects/{subject}", 404, 40403, {"schema": '"string"'})
    expect_error(broker, "POST", f"/subjects/{subject}/versions", 422, 42201, {"schema": "{not json"})
    expect_error(broker, "POST", f"/subjects/{subject}/versions", 422, 42201,
                 {"schema": '{"type":"record","name":"R"}'})
    message = expect_error(broker, "POST", f"/subjects/{subject}/versions", 422, 42201,
                           {"schema": '{"type":"object"}', "schemaType": "JSON"})
    assert "AVRO" in message
    expect_error(broker, "POST", f"/subjects/{subject}/versions", 409, 409, {"schema": USER_BAD})
    expect_error(broker, "PUT", "/config", 422, 42203, {"compatibility": "MOSTLY"})
    expect_error(broker, "DELETE", f"/subjects/{subject}?permanent=true", 404, 40405)
    expect_error(broker, "DELETE", f"/subjects/{subject}/versions/1?permanent=true", 404, 40407)
    expect_error(broker, "GET", "/no/such/endpoint", 404, 404)
    status, _, body = http(broker, "POST", f"/subjects/{subject}/versions", b"{broken")
    assert status == 400 and body["error_code"] == 400


@pytest.mark.timeout(120)
def test_kill9_keeps_ids_versions_and_configs(broker, new_topic):
    sr = client(broker)
    a = new_topic("a") + "-value"
    b = new_topic("b") + "-value"
    ids = {
        (a, 1): sr.register_schema(a, Schema(USER_V1, "AVRO")),
        (a, 2): sr.register_schema(a, Schema(USER_V2, "AVRO")),
        (b, 1): sr.register_schema(b, Schema('"string"', "AVRO")),
    }
    sr.set_compatibility(b, "FORWARD")
    sr.set_compatibility(level="FULL")
    sr.delete_version(a, 1)
    top = max(ids.values())

    broker.kill9()
    broker.start()
    sr = client(broker)

    for (subject, version), schema_id in ids.items():
        got = sr.get_version(subject, version, deleted=True)
        assert got.schema_id == schema_id, (subject, version)
    assert sr.get_versions(a) == [2]
    assert sr.get_versions(a, deleted=True) == [1, 2]
    assert sr.get_compatibility(b) == "FORWARD"
    assert sr.get_compatibility() == "FULL"
    assert sr.get_schema(ids[(a, 1)]).schema_str == USER_V1
    assert sr.register_schema(b, Schema('"string"', "AVRO")) == ids[(b, 1)]
    assert sr.register_schema(new_topic("c"), Schema('"long"', "AVRO")) == top + 1, "ids continue"

    # The registry's topic is fluxo's own: the HTTP API lists it as internal
    # and refuses to delete it.
    host, port = broker.http_addr.rsplit(":", 1)
    topics = json.loads(urllib.request.urlopen(f"http://{host}:{port}/api/v1/topics", timeout=10).read())
    listed = topics["topics"] if isinstance(topics, dict) else topics
    assert next(t for t in listed if t["name"] == "_schemas")["internal"] is True
    req = urllib.request.Request(f"http://{host}:{port}/api/v1/topics/_schemas", method="DELETE")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(req, timeout=10)
    assert refused.value.code == 403
    assert sr.get_versions(a) == [2]


@pytest.mark.timeout(60)
def test_references_and_subject_names_that_need_encoding(broker):
    address = json.dumps({"type": "record", "name": "Address", "namespace": "shop",
                          "fields": [{"name": "city", "type": "string"}]})
    customer = json.dumps({"type": "record", "name": "Customer", "namespace": "shop",
                           "fields": [{"name": "home", "type": "shop.Address"}]})
    # A subject with a slash travels percent-encoded, as Confluent's clients send it.
    status, _, body = http(broker, "POST", "/subjects/shop%2Faddress/versions", {"schema": address})
    assert status == 200, body
    address_id = body["id"]
    assert http(broker, "GET", "/subjects")[2] == ["shop/address"]
    # Without the reference the named type is unknown.
    expect_error(broker, "POST", "/subjects/customer/versions", 422, 42201, {"schema": customer})
    ref = {"name": "shop.Address", "subject": "shop/address", "version": 1}
    status, _, body = http(broker, "POST", "/subjects/customer/versions",
                           {"schema": customer, "references": [ref]})
    assert status == 200, body
    customer_id = body["id"]
    assert customer_id != address_id
    status, _, body = http(broker, "GET", f"/schemas/ids/{customer_id}")
    assert body == {"schema": customer, "references": [ref]}
    assert http(broker, "GET", "/subjects/shop%2Faddress/versions/1/referencedby")[2] == [customer_id]
    # What others reference cannot be deleted.
    expect_error(broker, "DELETE", "/subjects/shop%2Faddress", 422, 42206)
    # Confluent's client resolves the reference when it reads the schema by id.
    schema = client(broker).get_schema(customer_id)
    assert [(r.name, r.subject, r.version) for r in schema.references] == [("shop.Address", "shop/address", 1)]
