"""Consumer groups with real clients: rebalances, commits, restarts."""
import threading
import time
import uuid

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


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
