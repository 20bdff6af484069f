"""Consumer groups with real clients: rebalances, commits, restarts."""
import struct
import threading
import time
import uuid

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from fluxo_helpers import frame, raw_connect, recv_frame, request_header_v1


def make_topic(boot, partitions, records):
    name = f"grp-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": boot})
    for f in admin.create_topics([NewTopic(name, partitions, 1)]).values():
        f.result(30)
    p = Producer({"bootstrap.servers": boot, "acks": "all", "linger.ms": 5})
    for i in range(records):
        p.produce(name, key=str(i).encode(), value=str(i).encode(), partition=i % partitions)
    assert p.flush(30) == 0
    return name


def consumer(boot, group, strategy="range", **extra):
    conf = {
        "bootstrap.servers": boot,
        "group.id": group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "partition.assignment.strategy": strategy,
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 500,
    }
    conf.update(extra)
    return Consumer(conf)


def wait_for_assignment(consumers, expect_each, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        for c in consumers:
            c.poll(0.1)
        sizes = [len(c.assignment()) for c in consumers]
        if all(s == expect_each for s in sizes):
            return sizes
    raise AssertionError(f"assignment sizes {[len(c.assignment()) for c in consumers]}, wanted {expect_each} each")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("strategy", ["range", "cooperative-sticky"])
def test_three_consumers_share_six_partitions_and_read_everything_once(broker, strategy):
    topic = make_topic(broker.bootstrap, 6, 600)
    group = f"g-{uuid.uuid4().hex[:6]}"
    cs = [consumer(broker.bootstrap, group, strategy) for _ in range(3)]
    for c in cs:
        c.subscribe([topic])
    wait_for_assignment(cs, 2)
    assigned = sorted(tp.partition for c in cs for tp in c.assignment())
    assert assigned == [0, 1, 2, 3, 4, 5]
    seen = []
    deadline = time.time() + 60
    while len(seen) < 600 and time.time() < deadline:
        for c in cs:
            m = c.poll(0.05)
            if m is not None and m.error() is None:
                seen.append(int(m.value()))
                c.commit(message=m, asynchronous=False)
    assert sorted(seen) == list(range(600)), "every record exactly once"
    for c in cs:
        c.close()


@pytest.mark.timeout(120)
def test_a_leaving_member_hands_its_partitions_over_and_commits_survive_restart(broker):
    topic = make_topic(broker.bootstrap, 4, 400)
    group = f"g-{uuid.uuid4().hex[:6]}"
    a, b = consumer(broker.bootstrap, group), consumer(broker.bootstrap, group)
    a.subscribe([topic])
    b.subscribe([topic])
    wait_for_assignment([a, b], 2)
    seen = set()
    # a reads some and commits, then leaves; b takes over all four.
    deadline = time.time() + 30
    while len(seen) < 100 and time.time() < deadline:
        m = a.poll(0.1)
        if m is not None and m.error() is None:
            seen.add(int(m.value()))
            a.commit(message=m, asynchronous=False)
        b.poll(0)
    a.close()
    wait_for_assignment([b], 4)
    deadline = time.time() + 30
    while len(seen) < 400 and time.time() < deadline:
        m = b.poll(0.1)
        if m is not None and m.error() is None:
            v = int(m.value())
            assert v not in seen, f"record {v} read twice after the handover"
            seen.add(v)
            b.commit(message=m, asynchronous=False)
    assert len(seen) == 400
    b.close()

    broker.restart()
    c = consumer(broker.bootstrap, group)
    committed = c.committed([TopicPartition(topic, p) for p in range(4)], timeout=10)
    assert [tp.offset for tp in committed] == [100, 100, 100, 100]
    c.subscribe([topic])
    deadline = time.time() + 15
    extra = []
    while time.time() < deadline:
        m = c.poll(0.2)
        if m is not None and m.error() is None:
            extra.append(m)
        if c.assignment() and time.time() > deadline - 10:
            break
    assert extra == [], "a new member resumes exactly after the commits"
    c.close()


CHILD = """
import sys, time
from confluent_kafka import Consumer
c = Consumer({"bootstrap.servers": sys.argv[1], "group.id": sys.argv[2], "session.timeout.ms": 6000,
              "heartbeat.interval.ms": 500, "auto.offset.reset": "earliest", "enable.auto.commit": False})
c.subscribe([sys.argv[3]])
while not c.assignment():
    c.poll(0.1)
print("assigned", len(c.assignment()), flush=True)
while True:
    c.poll(0.1)
"""


@pytest.mark.timeout(120)
def test_a_killed_member_is_expired_and_its_partitions_move(broker):
    import subprocess
    import sys
    topic = make_topic(broker.bootstrap, 2, 10)
    group = f"g-{uuid.uuid4().hex[:6]}"
    b = consumer(broker.bootstrap, group)
    b.subscribe([topic])
    child = subprocess.Popen([sys.executable, "-c", CHILD, broker.bootstrap, group, topic], stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 30
        # Poll b while the child joins, until each holds one partition.
        while time.time() < deadline and len(b.assignment()) != 1:
            b.poll(0.1)
        assert len(b.assignment()) == 1
        # kill -9: no LeaveGroup; the coordinator must notice the silence.
        child.kill()
        child.wait(10)
        start = time.time()
        wait_for_assignment([b], 2, timeout=40)
        elapsed = time.time() - start
        assert elapsed < 20, f"took {elapsed:.1f} s to reassign after a 6 s session timeout"
    finally:
        child.kill()
        b.close()


@pytest.mark.timeout(120)
def test_static_member_restart_keeps_its_assignment_without_rebalance(broker):
    topic = make_topic(broker.bootstrap, 4, 0)
    group = f"g-{uuid.uuid4().hex[:6]}"
    a = consumer(broker.bootstrap, group, **{"group.instance.id": "a"})
    b = consumer(broker.bootstrap, group, **{"group.instance.id": "b"})
    a.subscribe([topic])
    b.subscribe([topic])
    wait_for_assignment([a, b], 2)
    b_parts = sorted(tp.partition for tp in b.assignment())
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    gen_before = admin.describe_consumer_groups([group])[group].result(10)
    b.close()  # a static member's close sends no LeaveGroup
    b2 = consumer(broker.bootstrap, group, **{"group.instance.id": "b"})
    b2.subscribe([topic])
    wait_for_assignment([a, b2], 2)
    assert sorted(tp.partition for tp in b2.assignment()) == b_parts
    gen_after = admin.describe_consumer_groups([group])[group].result(10)
    assert len(gen_after.members) == 2
    assert str(gen_after.state).endswith("STABLE")
    a.close()
    b2.close()


@pytest.mark.timeout(60)
def test_admin_lists_and_describes_groups_and_committed_offsets(broker):
    topic = make_topic(broker.bootstrap, 2, 20)
    group = f"g-{uuid.uuid4().hex[:6]}"
    c = consumer(broker.bootstrap, group)
    c.subscribe([topic])
    wait_for_assignment([c], 2)
    c.commit(offsets=[TopicPartition(topic, 0, 7), TopicPartition(topic, 1, 3)], asynchronous=False)
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    listed = admin.list_consumer_groups().result(10)
    assert group in [g.group_id for g in listed.valid]
    d = admin.describe_consumer_groups([group])[group].result(10)
    assert len(d.members) == 1
    assert sorted(tp.partition for tp in d.members[0].assignment.topic_partitions) == [0, 1]
    from confluent_kafka import ConsumerGroupTopicPartitions
    res = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group].result(10)
    assert sorted((tp.partition, tp.offset) for tp in res.topic_partitions) == [(0, 7), (1, 3)]
    # Deleting a group with members is refused; after the member leaves it works.
    with pytest.raises(KafkaException):
        admin.delete_consumer_groups([group])[group].result(10)
    c.close()
    admin.delete_consumer_groups([group])[group].result(10)
    assert group not in [g.group_id for g in admin.list_consumer_groups().result(10).valid]


@pytest.mark.timeout(60)
def test_kafka_python_group_consumes_and_commits(broker):
    from kafka import KafkaConsumer
    topic = make_topic(broker.bootstrap, 3, 90)
    group = f"g-{uuid.uuid4().hex[:6]}"
    kc = KafkaConsumer(topic, bootstrap_servers=broker.bootstrap, group_id=group, auto_offset_reset="earliest",
                       enable_auto_commit=False, consumer_timeout_ms=10000)
    got = []
    for m in kc:
        got.append(int(m.value))
        if len(got) == 90:
            break
    kc.commit()
    kc.close()
    assert sorted(got) == list(range(90))
    c = consumer(broker.bootstrap, group)
    committed = c.committed([TopicPartition(topic, p) for p in range(3)], timeout=10)
    assert [tp.offset for tp in committed] == [30, 30, 30]
    c.close()


KILLED_MID_BATCH_CHILD = """
import json, sys, time
from confluent_kafka import Consumer, TopicPartition
boot, group, topic, batch_size, done_n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
c = Consumer({"bootstrap.servers": boot, "group.id": group, "session.timeout.ms": 6000,
              "heartbeat.interval.ms": 500, "auto.offset.reset": "earliest", "enable.auto.commit": False})
c.subscribe([topic])
batch = []
while len(batch) < batch_size:
    batch += [m for m in c.consume(batch_size - len(batch), timeout=0.5) if m.error() is None]
# The first done_n records of the batch are processed and committed...
done = {}
for m in batch[:done_n]:
    done[m.partition()] = m.offset() + 1
c.commit(offsets=[TopicPartition(topic, p, o) for p, o in done.items()], asynchronous=False)
print(json.dumps({"committed": done, "read": len(batch)}), flush=True)
# ...and the process dies while working on the rest.
time.sleep(600)
"""


@pytest.mark.timeout(90)
def test_a_consumer_killed_mid_batch_is_replaced_by_one_that_resumes_at_the_last_commit(broker):
    import json
    import subprocess
    import sys
    topic = make_topic(broker.bootstrap, 3, 300)
    group = f"g-{uuid.uuid4().hex[:6]}"
    child = subprocess.Popen([sys.executable, "-c", KILLED_MID_BATCH_CHILD, broker.bootstrap, group, topic, "150", "70"],
                             stdout=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline()
        assert line, f"child exited with {child.wait(10)} before committing"
        committed = {int(p): o for p, o in json.loads(line)["committed"].items()}
        child.kill()  # SIGKILL mid-batch: 80 records read but not committed
        child.wait(10)
    finally:
        child.kill()
    assert sum(committed.values()) == 70

    c = consumer(broker.bootstrap, group)
    got = {p: [] for p in range(3)}
    try:
        before = c.committed([TopicPartition(topic, p) for p in range(3)], timeout=10)
        assert {tp.partition: tp.offset for tp in before if tp.offset >= 0} == committed
        c.subscribe([topic])
        deadline = time.time() + 40
        # The restarted consumer waits for the dead member's 6 s session to end, then owns all.
        while sum(map(len, got.values())) < 300 - 70 and time.time() < deadline:
            m = c.poll(0.2)
            if m is not None and m.error() is None:
                got[m.partition()].append(m.offset())
                c.commit(message=m, asynchronous=False)
    finally:
        c.close()
    for p in range(3):
        start = committed.get(p, 0)
        assert got[p][:1] == [start], f"partition {p}: restarted consumer began at {got[p][:1]}, committed {start}"
        # What was committed before the kill plus what is read after: every offset once, no gaps.
        assert list(range(start)) + got[p] == list(range(100)), f"partition {p}"


# -- raw classic group protocol, for exact error codes ----------------------

JOIN_GROUP, SYNC_GROUP, HEARTBEAT, OFFSET_COMMIT = 11, 14, 12, 8
ILLEGAL_GENERATION, REBALANCE_IN_PROGRESS = 22, 27


def kstr(s):
    b = s.encode()
    return struct.pack(">h", len(b)) + b


def kbytes(b):
    return struct.pack(">i", len(b)) + b


class Reader:
    def __init__(self, data):
        self.data, self.pos = data, 0

    def take(self, fmt):
        (v,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return v

    def str(self):
        n = self.take(">h")
        s = self.data[self.pos:self.pos + max(n, 0)].decode()
        self.pos += max(n, 0)
        return s

    def bytes(self):
        n = self.take(">i")
        b = self.data[self.pos:self.pos + max(n, 0)]
        self.pos += max(n, 0)
        return b


class RawMember:
    """One classic group member on its own connection, speaking JoinGroup v1,
    SyncGroup v0, Heartbeat v0 and OffsetCommit v2 (non-flexible versions)."""

    def __init__(self, boot, group):
        self.sock = raw_connect(boot, timeout=30)
        self.group, self.member_id, self.generation, self.corr = group, "", -1, 0

    def send(self, api_key, version, body):
        self.corr += 1
        self.sock.sendall(frame(request_header_v1(api_key, version, self.corr) + body))

    def recv(self):
        payload = recv_frame(self.sock)
        assert payload is not None, "connection closed"
        r = Reader(payload)
        assert r.take(">i") == self.corr
        return r

    def send_join(self):
        self.send(JOIN_GROUP, 1, kstr(self.group) + struct.pack(">ii", 10000, 10000) + kstr(self.member_id)
                  + kstr("consumer") + struct.pack(">i", 1) + kstr("range") + kbytes(b""))

    def recv_join(self):
        r = self.recv()
        err, self.generation = r.take(">h"), r.take(">i")
        _protocol, leader, self.member_id = r.str(), r.str(), r.str()
        members = []
        for _ in range(r.take(">i")):
            members.append(r.str())
            r.bytes()  # the member's subscription metadata
        assert err == 0, f"JoinGroup error {err}"
        return leader, members

    def send_sync(self, assignments):
        body = kstr(self.group) + struct.pack(">i", self.generation) + kstr(self.member_id)
        body += struct.pack(">i", len(assignments)) + b"".join(kstr(m) + kbytes(b"") for m in assignments)
        self.send(SYNC_GROUP, 0, body)

    def recv_sync(self):
        return self.recv().take(">h")

    def heartbeat(self):
        self.send(HEARTBEAT, 0, kstr(self.group) + struct.pack(">i", self.generation) + kstr(self.member_id))
        return self.recv().take(">h")

    def commit(self, generation, topic, partition, offset):
        """OffsetCommit v2 with the given generation; returns the partition's error code."""
        body = kstr(self.group) + struct.pack(">i", generation) + kstr(self.member_id) + struct.pack(">q", -1)
        body += struct.pack(">i", 1) + kstr(topic) + struct.pack(">i", 1) + struct.pack(">iq", partition, offset) + kstr("")
        self.send(OFFSET_COMMIT, 2, body)
        r = self.recv()
        assert r.take(">i") == 1 and r.str() == topic and r.take(">i") == 1 and r.take(">i") == partition
        return r.take(">h")

    def close(self):
        self.sock.close()


@pytest.mark.timeout(60)
def test_a_commit_from_a_stale_generation_gets_illegal_generation(broker):
    topic = make_topic(broker.bootstrap, 1, 0)
    group = f"g-{uuid.uuid4().hex[:6]}"
    a, b = RawMember(broker.bootstrap, group), RawMember(broker.bootstrap, group)
    try:
        a.send_join()
        leader, _ = a.recv_join()
        assert leader == a.member_id
        a.send_sync([a.member_id])
        assert a.recv_sync() == 0
        old = a.generation
        assert a.commit(old, topic, 0, 5) == 0, "a commit from the current generation is accepted"

        # b joins; a learns of the rebalance from its heartbeat and rejoins.
        b.send_join()
        deadline = time.time() + 20
        while a.heartbeat() != REBALANCE_IN_PROGRESS:
            assert time.time() < deadline, "a's heartbeat never reported the rebalance"
            time.sleep(0.1)
        a.send_join()
        leader, members = a.recv_join()
        b.recv_join()
        assert leader == a.member_id and sorted(members) == sorted([a.member_id, b.member_id])
        assert a.generation == b.generation > old
        b.send_sync([])
        a.send_sync([a.member_id, b.member_id])
        assert a.recv_sync() == 0 and b.recv_sync() == 0

        assert a.commit(old, topic, 0, 9) == ILLEGAL_GENERATION, "a zombie of the old generation is fenced"
        c = consumer(broker.bootstrap, group)
        assert c.committed([TopicPartition(topic, 0)], timeout=10)[0].offset == 5, "the stale commit changed nothing"
        c.close()
        assert a.commit(a.generation, topic, 0, 9) == 0
    finally:
        a.close()
        b.close()
