//! The client's cluster parts against a real broker (fluxo's, in process):
//! reading a topic as an `EventLog`, and the transactional producer's
//! recovery, which engine-only sinks rely on for exactly-once output.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fluxo_client::cluster::{Cluster, Lane};
use fluxo_client::remote::RemoteLog;
use fluxo_client::txn::{Ended, TransactionalProducer};
use fluxo_client::Isolation;
use fluxo_log::records::{decode_records, OutRecord};
use fluxo_log::{EventLog, LogStore};

struct Server {
    _dir: tempfile::TempDir,
    addr: String,
    _server: fluxo_kafka::ServerHandle,
}

async fn broker() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LogStore::open(dir.path()).unwrap());
    let groups =
        fluxo_groups::GroupCoordinator::open_unloaded(store.clone(), Default::default()).unwrap();
    groups.load().unwrap();
    let transactions =
        fluxo_txn::TxnCoordinator::open(store.clone(), groups.clone(), Default::default()).unwrap();
    // Transactional requests are served once the first tick loaded the state.
    let _timers = transactions.spawn_timers();
    let broker = Arc::new(
        fluxo_kafka::Broker::new(store, groups, transactions, Default::default()).unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = fluxo_kafka::serve(listener, broker).unwrap();
    Server {
        addr: server.local_addr.to_string(),
        _dir: dir,
        _server: server,
    }
}

fn records(values: &[&str]) -> Vec<OutRecord> {
    values
        .iter()
        .map(|v| OutRecord {
            value: Some(Bytes::from(v.to_string())),
            ..OutRecord::default()
        })
        .collect()
}

/// What a read_committed reader of `topic`/0 gets through the remote log.
async fn committed_values(log: Arc<RemoteLog>, topic: &str) -> Vec<String> {
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        // The bounds are polled: wait until the partition's are known.
        let mut out = Vec::new();
        for _ in 0..100 {
            let reading = log.topic(&topic).unwrap();
            let p = reading.partitions[0].clone();
            let (bytes, aborted) = p.read_committed(0, 1 << 20).unwrap();
            let aborted: Vec<(i64, i64)> = aborted
                .iter()
                .map(|a| (a.producer_id, a.first_offset))
                .collect();
            let (recs, _) = decode_records(&bytes, 0, &aborted).unwrap();
            out = recs
                .into_iter()
                .filter_map(|r| r.value)
                .map(|v| String::from_utf8_lossy(&v).into_owned())
                .collect();
            if p.last_stable_offset() == p.end_offset() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        out
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_producers_checkpointed_transaction_is_committed_and_later_ones_aborted() {
    let server = broker().await;
    let cluster = Cluster::connect(&server.addr).await.unwrap();
    cluster.create_topic("out", 1).await.unwrap();
    let log = RemoteLog::start(cluster.clone(), tokio::runtime::Handle::current());

    // A first run: one committed transaction, then one prepared (its
    // producer epoch recorded, as a checkpoint would) but not committed
    // when the process dies.
    let mut first = TransactionalProducer::new(cluster.clone(), "sink-a".into());
    first.send("out", 0, &records(&["a1", "a2"])).await.unwrap();
    first.commit().await.unwrap();
    first.send("out", 0, &records(&["b1"])).await.unwrap();
    let prepared = first.open().unwrap();
    drop(first);
    assert_eq!(committed_values(log.clone(), "out").await, ["a1", "a2"]);

    // The restart commits the checkpoint's transaction...
    let mut second = TransactionalProducer::new(cluster.clone(), "sink-a".into());
    assert_eq!(
        second.commit_prepared(prepared).await.unwrap(),
        Ended::Committed
    );
    // ...and asking again is harmless.
    assert_eq!(
        second.commit_prepared(prepared).await.unwrap(),
        Ended::Committed
    );
    second.abort().await.unwrap();
    assert_eq!(
        committed_values(log.clone(), "out").await,
        ["a1", "a2", "b1"]
    );

    // That run writes on without a checkpoint and dies: the next restart
    // finds the checkpoint's transaction superseded and aborts the rest.
    second.send("out", 0, &records(&["c1"])).await.unwrap();
    let checkpointed = second.open().unwrap();
    second.commit().await.unwrap();
    second.send("out", 0, &records(&["d1"])).await.unwrap();
    drop(second);
    let mut third = TransactionalProducer::new(cluster.clone(), "sink-a".into());
    assert_eq!(
        third.commit_prepared(checkpointed).await.unwrap(),
        Ended::Superseded
    );
    third.abort().await.unwrap();
    assert_eq!(
        committed_values(log.clone(), "out").await,
        ["a1", "a2", "b1", "c1"]
    );
    // The aborted record is in the log, skipped by read_committed readers.
    let client = fluxo_client::Client::connect(&server.addr).await.unwrap();
    let all = fluxo_client::fetch(&client, "out", 0, 0, 0, 1 << 20, Isolation::ReadUncommitted)
        .await
        .unwrap();
    let values: Vec<Bytes> = all.records.into_iter().filter_map(|r| r.value).collect();
    assert!(values.contains(&Bytes::from_static(b"d1")));
}

/// A broker answers one connection's requests in order, so a fetch that
/// waits for data must not share a connection with a sink's writes: with
/// a two-second long poll open on an idle topic, a transactional write and
/// its commit still finish at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_on_the_waiting_lane_holds_up_no_write() {
    let server = broker().await;
    let cluster = Cluster::connect(&server.addr).await.unwrap();
    cluster.create_topic("idle", 1).await.unwrap();
    cluster.create_topic("out", 1).await.unwrap();

    let polling = cluster.clone();
    let long_poll = tokio::spawn(async move {
        let started = std::time::Instant::now();
        polling
            .with_leader_on(Lane::Waiting, "idle", 0, |client| async move {
                fluxo_client::fetch(
                    &client,
                    "idle",
                    0,
                    0,
                    2_000,
                    1 << 20,
                    Isolation::ReadCommitted,
                )
                .await
            })
            .await
            .unwrap();
        started.elapsed()
    });
    // Let the fetch reach the broker first.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let started = std::time::Instant::now();
    let mut producer = TransactionalProducer::new(cluster.clone(), "sink-b".into());
    producer.send("out", 0, &records(&["x"])).await.unwrap();
    producer.commit().await.unwrap();
    let writing = started.elapsed();

    let polled = long_poll.await.unwrap();
    assert!(
        polled >= Duration::from_millis(1_900),
        "the fetch did not wait: {polled:?}"
    );
    assert!(
        writing < Duration::from_millis(1_000),
        "the write waited behind the long poll: {writing:?}"
    );
}
