"""Kafka transactions (KIP-98) end to end: real clients against fluxo.

What users of transactional producers and read_committed consumers rely on:

* visibility: a read_committed consumer sees exactly the records of
  committed transactions, in offset order, and none of an aborted one; a
  read_uncommitted consumer sees them all (the aborted records are in the
  log, only hidden). An open transaction holds back everything after its
  first record (the last stable offset, LSO), even non-transactional
  records, until it ends;
* fencing: a second producer with the same transactional.id fences the
  first (its commit fails, its open transaction is aborted);
* timeouts: the broker aborts a transaction that outlives its
  transaction.timeout.ms, and refuses a timeout above
  transaction.max.timeout.ms (900000, Kafka's default);
* crashes: an open transaction survives a graceful restart or is cleanly
  aborted by the next instance after kill -9; nothing of an aborted
  transaction ever becomes visible, everything of a committed one does;
* exactly once: the consume-transform-produce loop with
  send_offsets_to_transaction turns each input into exactly one visible
  output even when the broker is killed in the middle of a transaction
  and when the application is replaced by a new instance mid-transaction;
* a second client (kafka-python) gets the same semantics;
* the coordinator refuses bad raw requests with Kafka's error codes.

Consumers use assign() from offset 0 and `enable.partition.eof`: the EOF
event of a read_committed consumer comes at the LSO, of a read_uncommitted
one at the high watermark, which is how "the consumer has read everything
it may see" is told apart from "it has not got there yet" without sleeps.
End offsets are asked with an explicit isolation level (AdminClient
ListOffsets): READ_UNCOMMITTED gives the high watermark, READ_COMMITTED the
LSO. (librdkafka's get_watermark_offsets follows the consumer's
isolation.level, whose default is read_committed: it gives the LSO too.)
"""

from __future__ import annotations

import collections
import struct
import time
import uuid

import crc32c
import pytest
from confluent_kafka import IsolationLevel, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import OffsetSpec
from kafka import KafkaConsumer, KafkaProducer
from kafka import TopicPartition as KTopicPartition

import fluxo_helpers as H

# The error codes a fenced producer may see (librdkafka turns the broker's
# PRODUCER_FENCED / INVALID_PRODUCER_EPOCH into its fatal _FENCED).
FENCED_CODES = {KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH}

# For clients that live through a broker restart: reconnect quickly, and no
# re-bootstrap when the only broker is down. librdkafka's re-bootstrap
# decommissions the broker handles, after which send_offsets_to_transaction
# can wait forever for a group coordinator (librdkafka issue #5511, seen
# here with 2.16); with one broker at a fixed address it gains nothing.
RESTART_SAFE = {"reconnect.backoff.max.ms": 1000, "metadata.recovery.strategy": "none"}

# Kafka API keys of the transaction protocol.
API_PRODUCE = 0
API_INIT_PRODUCER_ID = 22
API_ADD_PARTITIONS_TO_TXN = 24
API_ADD_OFFSETS_TO_TXN = 25
API_END_TXN = 26
API_TXN_OFFSET_COMMIT = 28
TXN_APIS = {
    API_INIT_PRODUCER_ID: "InitProducerId",
    API_ADD_PARTITIONS_TO_TXN: "AddPartitionsToTxn",
    API_ADD_OFFSETS_TO_TXN: "AddOffsetsToTxn",
    API_END_TXN: "EndTxn",
    API_TXN_OFFSET_COMMIT: "TxnOffsetCommit",
}

# Kafka error codes.
ERR_NONE = 0
ERR_COORDINATOR_LOAD_IN_PROGRESS = 14
ERR_INVALID_PRODUCER_EPOCH = 47
ERR_INVALID_TXN_STATE = 48
ERR_INVALID_PRODUCER_ID_MAPPING = 49
ERR_CONCURRENT_TRANSACTIONS = 51
ERR_PRODUCER_FENCED = 90


# -- helpers ------------------------------------------------------------------

def txn_id(tag: str) -> str:
    """A transactional.id no other test (or earlier run) uses."""
    return f"txn-{tag}-{uuid.uuid4().hex}"


def txn_producer(bootstrap: str, transactional_id: str, **conf) -> Producer:
    return H.producer(bootstrap, **{"transactional.id": transactional_id, "linger.ms": 5, **conf})


def produce_values(p: Producer, topic: str, values: list[bytes], partitions: int = 2,
                   flush_timeout: float = 60.0, check: bool = True) -> list[H.Delivery]:
    """Produce `values` round-robin over the partitions (value i to partition
    i % partitions), flush, and return the delivery reports in input order."""
    reports = H.produce_all(p, topic, [dict(value=v, partition=i % partitions) for i, v in enumerate(values)],
                            flush_timeout=flush_timeout)
    if check:
        H.assert_all_delivered(reports)
    return reports


def expected(reports: list[H.Delivery], partition: int) -> list[tuple[int, bytes]]:
    """(offset, value) of the successfully delivered records of one partition, in offset order."""
    return sorted((r.offset, r.value) for r in reports if r.err is None and r.partition == partition)


def assert_records(got: list[tuple[int, bytes]], want: list[tuple[int, bytes]], what: str) -> None:
    """Exact comparison of (offset, value) lists, with a readable diff of the values."""
    if got == want:
        return
    gv = collections.Counter(v for _, v in got)
    wv = collections.Counter(v for _, v in want)
    missing, extra = wv - gv, gv - wv
    raise AssertionError(
        f"{what}: got {len(got)} records, want {len(want)}; "
        f"missing {sorted(missing.elements())[:10]}, unexpected or duplicated {sorted(extra.elements())[:10]}; "
        f"got (offset, value) {got[:8]}..., want {want[:8]}...")


def end_offsets(bootstrap: str, topic: str, partitions, isolation: IsolationLevel) -> dict[int, int]:
    """ListOffsets(latest) at an explicit isolation level: the high watermark
    for READ_UNCOMMITTED, the last stable offset for READ_COMMITTED."""
    a = H.admin(bootstrap)
    fs = a.list_offsets({TopicPartition(topic, p): OffsetSpec.latest() for p in partitions},
                        isolation_level=isolation, request_timeout=30)
    return {tp.partition: f.result(timeout=30).offset for tp, f in fs.items()}


def high_watermarks(bootstrap: str, topic: str, partitions) -> dict[int, int]:
    return end_offsets(bootstrap, topic, partitions, IsolationLevel.READ_UNCOMMITTED)


class TopicReader:
    """A confluent-kafka consumer of every partition of a topic from offset 0.

    `records[p]` is what it got from partition p, as (offset, value);
    `eof[p]` is the offset of the last end-of-partition event (the LSO for
    read_committed, the high watermark for read_uncommitted), None before
    the first one."""

    def __init__(self, bootstrap: str, topic: str, isolation: str):
        self.topic, self.isolation = topic, isolation
        self.c = H.consumer(bootstrap, **{"isolation.level": isolation, "enable.partition.eof": True})
        md = self.c.list_topics(topic=topic, timeout=10)
        t = md.topics[topic]
        assert t.error is None, f"metadata error for {topic}: {t.error}"
        self.parts = sorted(t.partitions)
        self.records: dict[int, list[tuple[int, bytes]]] = {p: [] for p in self.parts}
        self.eof: dict[int, int | None] = {p: None for p in self.parts}
        self.c.assign([TopicPartition(topic, p, 0) for p in self.parts])

    def _poll(self, timeout: float) -> None:
        for m in self.c.consume(num_messages=500, timeout=timeout):
            err = m.error()
            if err is None:
                self.records[m.partition()].append((m.offset(), m.value()))
            elif err.code() == KafkaError._PARTITION_EOF:
                self.eof[m.partition()] = m.offset()
            else:
                raise AssertionError(f"{self.isolation} consumer error on {self.topic}: {err!r}")

    def summary(self) -> str:
        return (f"{ {p: len(v) for p, v in self.records.items()} } records, "
                f"end-of-partition at {self.eof}")

    def reached(self, ends: dict[int, int]) -> bool:
        """True once every partition signalled its end at or beyond ends[p]."""
        return all(self.eof[p] is not None and self.eof[p] >= ends[p] for p in self.parts)

    def poll_until(self, pred, timeout: float = 60.0, desc: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.isolation} consumer of {self.topic}: timed out after "
                                     f"{timeout}s waiting for {desc}; got {self.summary()}")
            self._poll(0.5)

    def poll_for(self, seconds: float) -> None:
        """Keep consuming for `seconds` (only to show that nothing more arrives)."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self._poll(min(left, 0.5))

    def close(self) -> None:
        self.c.close()


def read_partitions(bootstrap: str, topic: str, isolation: str,
                    timeout: float = 60.0) -> dict[int, list[tuple[int, bytes]]]:
    """Everything a consumer with `isolation` gets from offset 0 up to the
    current high watermark of each partition. For read_committed this waits
    until no transaction holds the LSO below the high watermark."""
    r = TopicReader(bootstrap, topic, isolation)
    try:
        hw = high_watermarks(bootstrap, topic, r.parts)
        r.poll_until(lambda: r.reached(hw), timeout, f"the end of every partition (high watermarks {hw})")
        return r.records
    finally:
        r.close()


def commit_or_abort(p: Producer, timeout: float = 60.0) -> bool:
    """commit_transaction(), retried while the error is retriable. True if it
    committed; False if the error required an abort (which is then done).
    Fails the test on a fatal error."""
    for _ in range(5):
        try:
            p.commit_transaction(timeout)
            return True
        except KafkaException as e:
            err = e.args[0]
            if err.txn_requires_abort():
                p.abort_transaction(timeout)
                return False
            assert err.retriable() and not err.fatal(), \
                f"commit_transaction failed with a fatal or non-retriable error: {err!r}"
    raise AssertionError("commit_transaction still failing with retriable errors after 5 attempts")


# -- ApiVersions ----------------------------------------------------------------

@pytest.mark.timeout(30)
def test_api_versions_advertise_the_transaction_apis(broker):
    """Clients only start transactions if the broker lists these APIs."""
    versions = H.api_versions(broker.bootstrap)
    missing = [f"{name} ({key})" for key, name in TXN_APIS.items() if key not in versions]
    assert not missing, f"ApiVersions does not list {missing}: {sorted(versions)}"


# -- visibility (confluent-kafka) ------------------------------------------------

@pytest.mark.timeout(120)
def test_read_committed_sees_exactly_the_committed_transactions(broker, new_topic):
    """Commit T1, abort T2, commit T3 over two partitions: read_committed
    gets T1 and T3 in order, read_uncommitted gets all three."""
    topic = new_topic("vis")
    H.create_topic(broker.bootstrap, topic, partitions=2)
    p = txn_producer(broker.bootstrap, txn_id("vis"))
    p.init_transactions(30)

    committed = [b"c%d" % i for i in range(20)]
    aborted = [b"a%d" % i for i in range(10)]
    p.begin_transaction()
    r1 = produce_values(p, topic, committed[:10])
    p.commit_transaction(30)
    p.begin_transaction()
    r2 = produce_values(p, topic, aborted)  # flushed: in the log before the abort
    p.abort_transaction(30)
    p.begin_transaction()
    r3 = produce_values(p, topic, committed[10:])
    p.commit_transaction(30)

    rc = read_partitions(broker.bootstrap, topic, "read_committed")
    assert sorted(rc) == [0, 1]
    for part in (0, 1):
        assert_records(rc[part], expected(r1 + r3, part), f"read_committed, partition {part}")
        assert [v for _, v in rc[part]] == [v for i, v in enumerate(committed) if i % 2 == part]
    assert sorted(v for recs in rc.values() for _, v in recs) == sorted(committed)

    ru = read_partitions(broker.bootstrap, topic, "read_uncommitted")
    for part in (0, 1):
        assert_records(ru[part], expected(r1 + r2 + r3, part), f"read_uncommitted, partition {part}")

    # /metrics counts the outcomes and shows nothing holding the LSO back.
    import http.client
    from prometheus_client.parser import text_string_to_metric_families
    host, port = broker.http_addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("GET", "/metrics")
    families = {f.name: f for f in text_string_to_metric_families(conn.getresponse().read().decode())}
    ended = {s.labels["outcome"]: s.value for s in families["fluxo_transactions"].samples
             if s.name.endswith("_total")}
    assert ended["committed"] == 2 and ended["aborted"] == 1, ended
    stable = {s.labels["partition"]: s.value for s in families["fluxo_log_last_stable_offset"].samples
              if s.labels["topic"] == topic}
    end = {s.labels["partition"]: s.value for s in families["fluxo_log_end_offset"].samples
           if s.labels["topic"] == topic}
    assert stable == end and len(end) == 2


@pytest.mark.timeout(120)
def test_open_transaction_holds_back_later_records_until_it_ends(broker, new_topic):
    """While a transaction is open, a read_committed consumer stops at its
    first record (the LSO), even for non-transactional records written
    after it; on commit it gets all of them, in offset order."""
    bs = broker.bootstrap
    topic = new_topic("lso")
    H.create_topic(bs, topic, partitions=2)
    plain = H.producer(bs, **{"linger.ms": 5})
    r_before = produce_values(plain, topic, [b"before%d" % i for i in range(4)])

    p = txn_producer(bs, txn_id("lso"))
    p.init_transactions(30)
    p.begin_transaction()
    r_open = produce_values(p, topic, [b"open%d" % i for i in range(6)])  # flushed, not committed
    r_after = produce_values(plain, topic, [b"after%d" % i for i in range(6)])
    first_open = {part: expected(r_open, part)[0][0] for part in (0, 1)}
    hw = {part: expected(r_after, part)[-1][0] + 1 for part in (0, 1)}

    assert high_watermarks(bs, topic, [0, 1]) == hw

    reader = TopicReader(bs, topic, "read_committed")
    try:
        reader.poll_until(lambda: reader.reached(first_open), 30, f"the LSO {first_open}")
        reader.poll_for(2.0)  # anything wrongly visible past the LSO would arrive now
        assert reader.eof == first_open, f"read_committed end of partition should be the LSO {first_open}"
        for part in (0, 1):
            assert_records(reader.records[part], expected(r_before, part),
                           f"read_committed with an open transaction, partition {part}")

        # ListOffsets(latest, READ_COMMITTED) agrees: the LSO is the open
        # transaction's first offset (the high watermark covers everything).
        assert end_offsets(bs, topic, [0, 1], IsolationLevel.READ_COMMITTED) == first_open, \
            "ListOffsets(READ_COMMITTED, latest) should be the first offset of the open transaction"

        # A read_uncommitted consumer is not held back.
        ru = read_partitions(bs, topic, "read_uncommitted")
        for part in (0, 1):
            assert_records(ru[part], expected(r_before + r_open + r_after, part),
                           f"read_uncommitted with an open transaction, partition {part}")

        p.commit_transaction(30)
        hw_after = high_watermarks(bs, topic, [0, 1])  # now including the commit markers
        reader.poll_until(lambda: reader.reached(hw_after), 30, f"the high watermarks {hw_after} after the commit")
        for part in (0, 1):
            assert_records(reader.records[part], expected(r_before + r_open + r_after, part),
                           f"read_committed after the commit, partition {part}")
    finally:
        reader.close()


# -- fencing and timeouts ------------------------------------------------------------

@pytest.mark.timeout(120)
def test_second_instance_fences_the_zombie(broker, new_topic):
    """A new producer with the same transactional.id fences the old one: the
    old one's commit fails as fenced and its records never become visible;
    the new one commits normally."""
    bs = broker.bootstrap
    topic = new_topic("fence")
    H.create_topic(bs, topic, partitions=2)
    tid = txn_id("fence")

    zombie = txn_producer(bs, tid)
    zombie.init_transactions(30)
    zombie.begin_transaction()
    r_zombie = produce_values(zombie, topic, [b"zombie%d" % i for i in range(6)])

    fresh = txn_producer(bs, tid)
    fresh.init_transactions(60)  # aborts the zombie's open transaction

    with pytest.raises(KafkaException) as ei:
        zombie.commit_transaction(30)
    err = ei.value.args[0]
    assert err.code() in FENCED_CODES, \
        f"zombie commit should fail as fenced (_FENCED, PRODUCER_FENCED or INVALID_PRODUCER_EPOCH), got {err!r}"

    fresh.begin_transaction()
    r_fresh = produce_values(fresh, topic, [b"fresh%d" % i for i in range(6)])
    fresh.commit_transaction(30)

    rc = read_partitions(bs, topic, "read_committed")
    ru = read_partitions(bs, topic, "read_uncommitted")
    for part in (0, 1):
        assert_records(rc[part], expected(r_fresh, part), f"read_committed, partition {part}")
        assert_records(ru[part], expected(r_zombie + r_fresh, part), f"read_uncommitted, partition {part}")


@pytest.mark.timeout(120)
def test_transaction_timeout_aborts_and_unblocks_read_committed(broker, new_topic):
    """A transaction left open past transaction.timeout.ms (3 s) is aborted by
    the broker: its records are never visible, it stops holding back the
    LSO, and its producer's commit fails."""
    bs = broker.bootstrap
    topic = new_topic("tmo")
    H.create_topic(bs, topic, partitions=2)

    slow = txn_producer(bs, txn_id("slow"), **{"transaction.timeout.ms": 3000})
    slow.init_transactions(30)
    t0 = time.monotonic()
    slow.begin_transaction()
    r_slow = produce_values(slow, topic, [b"timed-out%d" % i for i in range(5)])

    # Committed after the slow transaction started: held back until it is aborted.
    other = txn_producer(bs, txn_id("other"))
    other.init_transactions(30)
    other.begin_transaction()
    r_ok = produce_values(other, topic, [b"ok0", b"ok1"])
    other.commit_transaction(30)

    reader = TopicReader(bs, topic, "read_committed")
    try:
        hw = high_watermarks(bs, topic, [0, 1])
        reader.poll_until(lambda: reader.reached(hw), 45,
                          f"the high watermarks {hw} (the broker aborting the timed-out transaction)")
        elapsed = time.monotonic() - t0
        for part in (0, 1):
            assert_records(reader.records[part], expected(r_ok, part), f"read_committed, partition {part}")
    finally:
        reader.close()
    assert elapsed >= 2.9, f"a transaction with a 3 s timeout was aborted after {elapsed:.2f}s"

    with pytest.raises(KafkaException):
        slow.commit_transaction(20)

    ru = read_partitions(bs, topic, "read_uncommitted")
    for part in (0, 1):
        assert_records(ru[part], expected(r_slow + r_ok, part), f"read_uncommitted, partition {part}")
    # The aborted transaction stays invisible after the failed commit.
    rc = read_partitions(bs, topic, "read_committed")
    for part in (0, 1):
        assert_records(rc[part], expected(r_ok, part), f"read_committed after the failed commit, partition {part}")


@pytest.mark.timeout(90)
def test_transaction_timeout_above_the_broker_maximum_is_refused(broker, new_topic):
    """transaction.timeout.ms above transaction.max.timeout.ms (900000) fails
    init_transactions with INVALID_TRANSACTION_TIMEOUT; the maximum itself works."""
    bs = broker.bootstrap
    too_long = txn_producer(bs, txn_id("toolong"), **{"transaction.timeout.ms": 1_000_000})
    with pytest.raises(KafkaException) as ei:
        too_long.init_transactions(30)
    err = ei.value.args[0]
    assert err.code() == KafkaError.INVALID_TRANSACTION_TIMEOUT, \
        f"want INVALID_TRANSACTION_TIMEOUT, got {err!r}"

    topic = new_topic("maxtmo")
    H.create_topic(bs, topic, partitions=2)
    at_max = txn_producer(bs, txn_id("atmax"), **{"transaction.timeout.ms": 900_000})
    at_max.init_transactions(30)
    at_max.begin_transaction()
    reports = produce_values(at_max, topic, [b"m0", b"m1", b"m2"])
    at_max.commit_transaction(30)
    rc = read_partitions(bs, topic, "read_committed")
    for part in (0, 1):
        assert_records(rc[part], expected(reports, part), f"read_committed, partition {part}")


# -- restarts and crashes -------------------------------------------------------------

@pytest.mark.timeout(150)
def test_graceful_restart_in_the_middle_of_a_transaction(broker, new_topic):
    """A graceful broker restart while a transaction is open: either the
    transaction carries on and commits (all its records visible), or it
    fails with an abortable error, is aborted and a retry commits. Either
    way read_committed sees exactly the committed transactions."""
    bs = broker.bootstrap
    topic = new_topic("restart")
    H.create_topic(bs, topic, partitions=2)
    p = txn_producer(bs, txn_id("restart"), **{"transaction.timeout.ms": 30000, **RESTART_SAFE})
    p.init_transactions(30)
    p.begin_transaction()
    r_before = produce_values(p, topic, [b"before%d" % i for i in range(10)])

    broker.restart()

    r_after = produce_values(p, topic, [b"after%d" % i for i in range(10)], check=False)
    if commit_or_abort(p):
        failed = [r for r in r_after if r.err is not None]
        assert not failed, f"commit succeeded although {len(failed)} records failed: {failed[0].err!r}"
        r_committed = r_before + r_after
        r_retry: list[H.Delivery] = []
    else:
        broker.note("transaction across the restart was aborted; retrying")
        p.begin_transaction()
        r_retry = produce_values(p, topic, [b"retry%d" % i for i in range(10)])
        p.commit_transaction(30)
        r_committed = r_retry

    rc = read_partitions(bs, topic, "read_committed")
    for part in (0, 1):
        assert_records(rc[part], expected(r_committed, part), f"read_committed, partition {part}")

    # Every acknowledged record is in the log; anything else there can only be
    # an "after" record whose delivery report was an error.
    ru = read_partitions(bs, topic, "read_uncommitted")
    unacked = {r.value for r in r_after if r.err is not None}
    for part in (0, 1):
        want = set(expected(r_before + r_after + r_retry, part))
        got = set(ru[part])
        assert want <= got, f"partition {part}: acknowledged records missing: {sorted(want - got)[:10]}"
        stray = [v for _, v in got - want if v not in unacked]
        assert not stray, f"partition {part}: unexpected records {stray[:10]}"


@pytest.mark.timeout(150)
def test_kill9_with_an_open_transaction_is_aborted_by_the_next_instance(broker, new_topic):
    """kill -9 with a transaction open; after the restart a new producer with
    the same transactional.id aborts it (init_transactions) and commits its
    own records: read_committed sees only those, the old instance is fenced."""
    bs = broker.bootstrap
    topic = new_topic("crash")
    H.create_topic(bs, topic, partitions=2)
    tid = txn_id("crash")
    old = txn_producer(bs, tid, **RESTART_SAFE)
    old.init_transactions(30)
    old.begin_transaction()
    r_old = produce_values(old, topic, [b"lost%d" % i for i in range(10)])

    broker.kill9()
    broker.start()

    new = txn_producer(bs, tid)
    new.init_transactions(60)
    new.begin_transaction()
    r_new = produce_values(new, topic, [b"new%d" % i for i in range(10)])
    new.commit_transaction(30)

    with pytest.raises(KafkaException):
        old.commit_transaction(20)

    rc = read_partitions(bs, topic, "read_committed")
    ru = read_partitions(bs, topic, "read_uncommitted")
    for part in (0, 1):
        assert_records(rc[part], expected(r_new, part), f"read_committed, partition {part}")
        # acks=all records survive kill -9: the aborted ones are still in the log.
        assert_records(ru[part], expected(r_old + r_new, part), f"read_uncommitted, partition {part}")


@pytest.mark.timeout(150)
@pytest.mark.parametrize("failpoint", ["txn-after-prepare", "txn-after-markers"])
def test_a_crash_between_the_two_phases_of_a_commit_completes_it_once(broker, new_topic, monkeypatch, failpoint):
    """The broker dies inside EndTxn (FLUXO_FAILPOINT aborts the process
    like kill -9): after the decision is durable but before any marker, or
    after the markers but before the transaction is recorded complete. On
    restart the coordinator completes the commit before serving
    transactional requests; the producer's retried commit succeeds and
    read_committed sees every record exactly once, in order."""
    import threading
    bs = broker.bootstrap
    topic = new_topic("phases")
    H.create_topic(bs, topic, partitions=2)
    broker.stop()
    monkeypatch.setenv("FLUXO_FAILPOINT", failpoint)
    broker.start()
    monkeypatch.delenv("FLUXO_FAILPOINT")
    p = txn_producer(bs, txn_id("phases"), **RESTART_SAFE)
    p.init_transactions(30)
    p.begin_transaction()
    reports = produce_values(p, topic, [b"v%d" % i for i in range(20)])
    outcome: list[object] = []
    def commit():
        try:
            outcome.append(commit_or_abort(p, 90))
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            outcome.append(e)
    committer = threading.Thread(target=commit)
    committer.start()
    assert broker.proc.wait(timeout=30) != 0, "the failpoint stopped the broker"
    broker.start()
    committer.join(100)
    assert outcome == [True], f"the retried commit: {outcome}"
    rc = read_partitions(bs, topic, "read_committed")
    for part in (0, 1):
        assert_records(rc[part], expected(reports, part), f"read_committed, partition {part}")


# -- exactly once: consume-transform-produce ---------------------------------------------

@pytest.mark.timeout(200)
def test_consume_transform_produce_is_exactly_once_across_kill9(broker, new_topic):
    """The read-process-write loop (send_offsets_to_transaction): 2000 inputs;
    halfway the broker is killed -9 with a transaction in flight, at three
    quarters the application itself "dies" with a transaction open and a new
    instance (same transactional.id) takes over. The loop recovers as
    applications do (abort on abortable errors, a new producer otherwise,
    the consumer rewound to the committed offsets). Each input yields
    exactly one visible output, in input order per partition."""
    n = 2000
    src, dst = new_topic("in"), new_topic("out")
    H.create_topic(broker.bootstrap, src, partitions=2)
    H.create_topic(broker.bootstrap, dst, partitions=2)
    reports = H.produce_all(H.producer(broker.bootstrap, **{"linger.ms": 5}), src,
                            [dict(value=b"%d" % i, partition=i % 2) for i in range(n)])
    H.assert_all_delivered(reports)
    ends = {part: max(r.offset for r in reports if r.partition == part) + 1 for part in (0, 1)}
    assert ends == {0: n // 2, 1: n // 2}

    group = f"eos-{uuid.uuid4().hex[:8]}"
    tid = txn_id("eos")
    in_tps = [TopicPartition(src, part) for part in (0, 1)]

    def new_consumer():
        # assign() without offsets: start from the group's committed offsets.
        c = H.consumer(broker.bootstrap, **{"group.id": group, "isolation.level": "read_committed",
                                            "auto.offset.reset": "earliest", **RESTART_SAFE})
        c.assign(in_tps)
        return c

    def committed_offsets(c) -> dict[int, int]:
        res = c.committed([TopicPartition(src, part) for part in (0, 1)], timeout=30)
        return {tp.partition: max(tp.offset, 0) for tp in res}

    def new_producer() -> Producer:
        # A new instance's init_transactions fences the old one and finishes
        # (commits or aborts) whatever transaction it left behind.
        deadline = time.monotonic() + 60
        while True:
            p = txn_producer(broker.bootstrap, tid, **{"transaction.timeout.ms": 30000, **RESTART_SAFE})
            try:
                p.init_transactions(30)
                return p
            except KafkaException as e:
                broker.note(f"eos: init_transactions failed: {e!r}")
                if time.monotonic() > deadline:
                    raise

    c, p = new_consumer(), new_producer()
    done = {0: 0, 1: 0}  # committed input positions
    crashed = app_restarted = False
    abandoned = 0  # outputs written by the transaction the "dead" instance left open
    recoveries = rounds = 0
    last_error = None
    deadline = time.monotonic() + 120
    try:
        while done != ends:
            # One crash needs a recovery or two, not a stream of them.
            assert recoveries <= 10 and time.monotonic() < deadline, \
                (f"loop stalled: committed input positions {done} of {ends} after {rounds} commits, "
                 f"{recoveries} recoveries, last error {last_error!r}")
            batch = []
            for m in c.consume(num_messages=100, timeout=1.0):
                err = m.error()
                if err is None:
                    batch.append(m)
                else:
                    assert not err.fatal(), f"fatal consumer error: {err!r}"
                    broker.note(f"eos: consumer error {err!r}")
            if not batch:
                continue
            try:
                p.begin_transaction()
                for m in batch:
                    p.produce(dst, value=m.value() + b"-out", partition=m.partition())
                if not crashed and sum(done.values()) >= n // 2:
                    # Crash with this transaction's records written but nothing decided.
                    p.flush(30)
                    broker.kill9()
                    broker.start()
                    crashed = True
                elif not app_restarted and sum(done.values()) >= 3 * n // 4:
                    # The application dies with this transaction's records
                    # written; a new instance fences it and starts over from
                    # the committed offsets.
                    p.flush(30)
                    abandoned = len(batch)
                    app_restarted = True
                    p = new_producer()
                    c.close()
                    c = new_consumer()
                    done = committed_offsets(c)
                    continue
                positions = [tp for tp in c.position(c.assignment()) if tp.offset >= 0]
                p.send_offsets_to_transaction(positions, c.consumer_group_metadata(), 30)
                p.commit_transaction(30)
            except KafkaException as e:
                err = last_error = e.args[0]
                recoveries += 1
                broker.note(f"eos: recovering from {err!r}")
                if err.txn_requires_abort():
                    try:
                        p.abort_transaction(30)
                    except KafkaException as e2:
                        broker.note(f"eos: abort failed too: {e2!r}")
                        p = new_producer()
                else:
                    p = new_producer()
                c.close()
                c = new_consumer()
                done = committed_offsets(c)
                continue
            rounds += 1
            for tp in positions:
                done[tp.partition] = tp.offset
    finally:
        c.close()
    print(f"eos: {rounds} committed rounds, {recoveries} recoveries")
    assert crashed and app_restarted, "the loop ended before both disruptions"

    check = new_consumer()
    try:
        assert committed_offsets(check) == ends
    finally:
        check.close()

    rc = read_partitions(broker.bootstrap, dst, "read_committed")
    for part in (0, 1):
        got = [v for _, v in rc[part]]
        want = [b"%d-out" % i for i in range(part, n, 2)]
        assert_records(list(enumerate(got)), list(enumerate(want)),
                       f"output partition {part} (read_committed, in input order)")
    # The abandoned transaction's outputs are in the log, only hidden.
    ru = read_partitions(broker.bootstrap, dst, "read_uncommitted")
    assert sum(len(v) for v in ru.values()) >= n + abandoned > n


# -- kafka-python ---------------------------------------------------------------------

def kp_send_all(p: KafkaProducer, topic: str, values: list[bytes]) -> list[H.Delivery]:
    futures = [p.send(topic, value=v, partition=i % 2) for i, v in enumerate(values)]
    p.flush(timeout=60)
    out = []
    for v, f in zip(values, futures):
        md = f.get(timeout=30)
        out.append(H.Delivery(None, md.topic, md.partition, md.offset, None, v, ()))
    return out


def kp_read(bootstrap: str, topic: str, isolation: str, timeout: float = 60.0) -> dict[int, list[tuple[int, bytes]]]:
    """Everything a kafka-python consumer with `isolation` gets from offset 0
    until its position reaches each partition's high watermark."""
    hw = high_watermarks(bootstrap, topic, [0, 1])
    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                      isolation_level=isolation, auto_offset_reset="earliest",
                      request_timeout_ms=30000, check_crcs=True)
    try:
        tps = [KTopicPartition(topic, part) for part in (0, 1)]
        c.assign(tps)
        for tp in tps:
            c.seek(tp, 0)
        out: dict[int, list[tuple[int, bytes]]] = {0: [], 1: []}
        deadline = time.monotonic() + timeout
        while any(c.position(tp) < hw[tp.partition] for tp in tps):
            assert time.monotonic() < deadline, \
                (f"kafka-python {isolation} consumer timed out at positions "
                 f"{ {tp.partition: c.position(tp) for tp in tps} }, high watermarks {hw}")
            for tp, recs in c.poll(timeout_ms=500, max_records=1000).items():
                out[tp.partition].extend((r.offset, r.value) for r in recs)
        return out
    finally:
        c.close()


@pytest.mark.timeout(120)
def test_kafka_python_transactions(broker, new_topic):
    """kafka-python's transactional producer and isolation_level consumers:
    commit / abort / commit, read_committed gets the committed records only,
    read_uncommitted all of them; librdkafka agrees."""
    bs = broker.bootstrap
    topic = new_topic("kp")
    H.create_topic(bs, topic, partitions=2)
    p = KafkaProducer(bootstrap_servers=bs, transactional_id=txn_id("kp"), enable_idempotence=True,
                      linger_ms=5, request_timeout_ms=30000, max_block_ms=60000)
    try:
        p.init_transactions()
        committed = [b"kc%d" % i for i in range(20)]
        p.begin_transaction()
        r1 = kp_send_all(p, topic, committed[:10])
        p.commit_transaction()
        p.begin_transaction()
        r2 = kp_send_all(p, topic, [b"ka%d" % i for i in range(10)])
        p.abort_transaction()
        p.begin_transaction()
        r3 = kp_send_all(p, topic, committed[10:])
        p.commit_transaction()
    finally:
        p.close(timeout=10)

    rc = kp_read(bs, topic, "read_committed")
    ru = kp_read(bs, topic, "read_uncommitted")
    rc_librdkafka = read_partitions(bs, topic, "read_committed")
    for part in (0, 1):
        assert_records(rc[part], expected(r1 + r3, part), f"kafka-python read_committed, partition {part}")
        assert_records(ru[part], expected(r1 + r2 + r3, part), f"kafka-python read_uncommitted, partition {part}")
        assert_records(rc_librdkafka[part], expected(r1 + r3, part),
                       f"librdkafka read_committed of kafka-python's transactions, partition {part}")


# -- raw protocol: bad requests to the coordinator -----------------------------------------

def kstr(s: str | None) -> bytes:
    """Kafka (nullable) STRING: int16 length + UTF-8 bytes."""
    if s is None:
        return struct.pack(">h", -1)
    b = s.encode()
    return struct.pack(">h", len(b)) + b


def zigzag_varint(n: int) -> bytes:
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while True:
        b = z & 0x7F
        z >>= 7
        if z:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def record_batch(producer_id: int, epoch: int, base_sequence: int, values: list[bytes],
                 transactional: bool = True) -> bytes:
    """A v2 record batch (magic 2, uncompressed, CRC-32C), attribute 0x10 when transactional."""
    ts = int(time.time() * 1000)
    recs = b""
    for i, v in enumerate(values):
        body = (b"\x00" + zigzag_varint(0) + zigzag_varint(i) + zigzag_varint(-1)
                + zigzag_varint(len(v)) + v + zigzag_varint(0))
        recs += zigzag_varint(len(body)) + body
    attrs = 0x10 if transactional else 0
    after_crc = struct.pack(">hiqqqhii", attrs, len(values) - 1, ts, ts, producer_id, epoch,
                            base_sequence, len(values)) + recs
    rest = struct.pack(">ibI", -1, 2, crc32c.crc32c(after_crc)) + after_crc
    return struct.pack(">qi", 0, len(rest)) + rest


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.off = data, 0

    def take(self, fmt: str):
        (v,) = struct.unpack_from(fmt, self.data, self.off)
        self.off += struct.calcsize(fmt)
        return v

    def str(self) -> str | None:
        n = self.take(">h")
        if n < 0:
            return None
        s = self.data[self.off:self.off + n].decode()
        self.off += n
        return s

    def done(self) -> None:
        assert self.off == len(self.data), \
            f"{len(self.data) - self.off} unexpected trailing bytes in response: {self.data.hex()}"


class RawTxnClient:
    """Hand-encoded non-flexible requests: InitProducerId v1,
    AddPartitionsToTxn v1, EndTxn v1, Produce v3 (request header v1,
    response header v0)."""

    VERSIONS = {API_PRODUCE: 3, API_INIT_PRODUCER_ID: 1, API_ADD_PARTITIONS_TO_TXN: 1, API_END_TXN: 1}

    def __init__(self, bootstrap: str):
        advertised = H.api_versions(bootstrap)
        for key, v in self.VERSIONS.items():
            lo, hi = advertised.get(key, (None, None))
            assert lo is not None and lo <= v <= hi, \
                f"broker does not serve api {key} v{v} (advertised {advertised.get(key)})"
        self.sock = H.raw_connect(bootstrap, timeout=30)
        self.corr = 0

    def close(self) -> None:
        self.sock.close()

    def call(self, api_key: int, body: bytes) -> _Reader:
        self.corr += 1
        version = self.VERSIONS[api_key]
        self.sock.sendall(H.frame(H.request_header_v1(api_key, version, self.corr) + body))
        payload = H.recv_frame(self.sock)
        assert payload is not None, f"connection closed instead of a response to api {api_key} v{version}"
        r = _Reader(payload)
        assert r.take(">i") == self.corr, "response correlation id mismatch"
        return r

    def init_producer_id(self, transactional_id: str, timeout_ms: int = 60000) -> tuple[int, int, int]:
        """-> (error, producer id, epoch), retried while the coordinator is loading or busy."""
        deadline = time.monotonic() + 30
        while True:
            r = self.call(API_INIT_PRODUCER_ID, kstr(transactional_id) + struct.pack(">i", timeout_ms))
            r.take(">i")  # throttle
            err, pid, epoch = r.take(">h"), r.take(">q"), r.take(">h")
            r.done()
            if err in (ERR_COORDINATOR_LOAD_IN_PROGRESS, ERR_CONCURRENT_TRANSACTIONS) \
                    and time.monotonic() < deadline:
                time.sleep(0.1)
                continue
            return err, pid, epoch

    def add_partitions(self, transactional_id: str, pid: int, epoch: int, topic: str,
                       partitions: list[int]) -> dict[int, int]:
        """-> {partition: error}"""
        body = (kstr(transactional_id) + struct.pack(">qh", pid, epoch) + struct.pack(">i", 1) + kstr(topic)
                + struct.pack(">i", len(partitions)) + b"".join(struct.pack(">i", x) for x in partitions))
        r = self.call(API_ADD_PARTITIONS_TO_TXN, body)
        r.take(">i")  # throttle
        out = {}
        for _ in range(r.take(">i")):
            name = r.str()
            assert name == topic, f"AddPartitionsToTxn answered for topic {name!r}"
            for _ in range(r.take(">i")):
                part, err = r.take(">i"), r.take(">h")
                out[part] = err
        r.done()
        return out

    def end_txn(self, transactional_id: str, pid: int, epoch: int, commit: bool) -> int:
        r = self.call(API_END_TXN, kstr(transactional_id) + struct.pack(">qhb", pid, epoch, 1 if commit else 0))
        r.take(">i")  # throttle
        err = r.take(">h")
        r.done()
        return err

    def produce(self, transactional_id: str | None, topic: str, partition: int, batch: bytes) -> tuple[int, int]:
        """acks=all Produce of one batch to one partition -> (error, base offset)."""
        body = (kstr(transactional_id) + struct.pack(">hi", -1, 30000) + struct.pack(">i", 1) + kstr(topic)
                + struct.pack(">ii", 1, partition) + struct.pack(">i", len(batch)) + batch)
        r = self.call(API_PRODUCE, body)
        results = []
        for _ in range(r.take(">i")):
            name = r.str()
            for _ in range(r.take(">i")):
                part, err, base = r.take(">i"), r.take(">h"), r.take(">q")
                r.take(">q")  # log_append_time
                results.append((name, part, err, base))
        r.take(">i")  # throttle
        r.done()
        assert len(results) == 1 and results[0][:2] == (topic, partition), f"Produce response: {results}"
        return results[0][2], results[0][3]


@pytest.mark.timeout(60)
def test_raw_end_txn_for_an_unknown_transactional_id(broker):
    """EndTxn for a transactional id that was never initialised: INVALID_PRODUCER_ID_MAPPING."""
    cl = RawTxnClient(broker.bootstrap)
    try:
        tid = txn_id("never")
        for commit in (True, False):
            err = cl.end_txn(tid, 4242, 0, commit=commit)
            assert err == ERR_INVALID_PRODUCER_ID_MAPPING, \
                f"EndTxn(commit={commit}) for an unknown id: want 49, got {err}"
    finally:
        cl.close()


@pytest.mark.timeout(60)
def test_raw_add_partitions_with_a_wrong_epoch_is_fenced(broker, new_topic):
    """AddPartitionsToTxn with an epoch the coordinator never gave out:
    PRODUCER_FENCED (or INVALID_PRODUCER_EPOCH); the right epoch works."""
    topic = new_topic("rawepoch")
    H.create_topic(broker.bootstrap, topic, partitions=2)
    cl = RawTxnClient(broker.bootstrap)
    try:
        tid = txn_id("rawepoch")
        err, pid, epoch = cl.init_producer_id(tid)
        assert err == ERR_NONE and pid >= 0 and epoch >= 0, (err, pid, epoch)
        res = cl.add_partitions(tid, pid, epoch + 5, topic, [0, 1])
        assert set(res) == {0, 1}, res
        assert all(e in (ERR_PRODUCER_FENCED, ERR_INVALID_PRODUCER_EPOCH) for e in res.values()), \
            f"AddPartitionsToTxn with epoch+5: want 90 or 47 for every partition, got {res}"
        assert cl.add_partitions(tid, pid, epoch, topic, [0, 1]) == {0: ERR_NONE, 1: ERR_NONE}
        assert cl.end_txn(tid, pid, epoch, commit=False) == ERR_NONE
    finally:
        cl.close()


@pytest.mark.timeout(90)
def test_raw_transactional_produce_to_a_partition_not_in_the_transaction(broker, new_topic):
    """A transactional batch for a partition never added with
    AddPartitionsToTxn is refused with INVALID_TXN_STATE and not appended;
    once the partition is added the same batch is accepted."""
    bs = broker.bootstrap
    topic = new_topic("rawprod")
    H.create_topic(bs, topic, partitions=1)
    base = produce_values(H.producer(bs), topic, [b"p0", b"p1", b"p2"], partitions=1)
    hw0 = high_watermarks(bs, topic, [0])[0]
    assert hw0 == 3

    cl = RawTxnClient(bs)
    try:
        tid = txn_id("rawprod")
        err, pid, epoch = cl.init_producer_id(tid)
        assert err == ERR_NONE and pid >= 0 and epoch >= 0, (err, pid, epoch)
        batch = record_batch(pid, epoch, 0, [b"sneaky"])
        err, _ = cl.produce(tid, topic, 0, batch)
        assert err == ERR_INVALID_TXN_STATE, f"transactional produce to an unadded partition: want 48, got {err}"
        assert high_watermarks(bs, topic, [0])[0] == hw0, "the refused batch moved the end offset"
        assert H.watermarks(bs, topic, [0])[0][1] == hw0, "the refused batch moved the end offset (consumer view)"

        # The refusal was about the transaction, not the encoding: after
        # AddPartitionsToTxn the same batch goes in at the old end offset.
        assert cl.add_partitions(tid, pid, epoch, topic, [0]) == {0: ERR_NONE}
        assert cl.produce(tid, topic, 0, batch) == (ERR_NONE, hw0)
        assert cl.end_txn(tid, pid, epoch, commit=False) == ERR_NONE
    finally:
        cl.close()

    rc = read_partitions(bs, topic, "read_committed")
    assert_records(rc[0], expected(base, 0), "read_committed")
    ru = read_partitions(bs, topic, "read_uncommitted")
    assert_records(ru[0], expected(base, 0) + [(hw0, b"sneaky")], "read_uncommitted")
