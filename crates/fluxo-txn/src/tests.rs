use super::*;
use bytes::{Bytes, BytesMut};
use fluxo_groups::GroupConfig;
use fluxo_log::TopicConfig;
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<LogStore>,
    groups: Arc<GroupCoordinator>,
    txns: Arc<TxnCoordinator>,
}

impl Fixture {
    async fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(LogStore::open(dir.path()).unwrap());
        store.create_topic("t", 2, TopicConfig::default()).unwrap();
        let groups = GroupCoordinator::open(store.clone(), GroupConfig::default()).unwrap();
        let txns =
            TxnCoordinator::open(store.clone(), groups.clone(), TxnConfig::default()).unwrap();
        txns.on_tick().await;
        txns.recovered.store(true, Ordering::Release);
        Fixture {
            _dir: dir,
            store,
            groups,
            txns,
        }
    }

    /// Reopens everything on the same directory, as after a crash.
    async fn reopen(self) -> Fixture {
        let Fixture {
            _dir,
            store,
            groups,
            txns,
        } = self;
        let path = _dir.path().to_path_buf();
        drop((txns, groups, store));
        let store = Arc::new(LogStore::open(&path).unwrap());
        let groups = GroupCoordinator::open(store.clone(), GroupConfig::default()).unwrap();
        let txns =
            TxnCoordinator::open(store.clone(), groups.clone(), TxnConfig::default()).unwrap();
        txns.on_tick().await;
        txns.recovered.store(true, Ordering::Release);
        Fixture {
            _dir,
            store,
            groups,
            txns,
        }
    }

    /// Appends `n` transactional records of (pid, epoch) to t/`partition`.
    fn write(&self, partition: i32, pid: i64, epoch: i16, first_seq: i32, n: usize) {
        let records: Vec<Record> = (0..n)
            .map(|i| Record {
                transactional: true,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id: pid,
                producer_epoch: epoch,
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                sequence: first_seq + i as i32,
                timestamp: 1,
                key: None,
                value: Some(Bytes::from_static(b"v")),
                headers: Default::default(),
            })
            .collect();
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            &records,
            &RecordEncodeOptions {
                version: 2,
                compression: Compression::None,
            },
        )
        .unwrap();
        self.store
            .partition("t", partition)
            .unwrap()
            .append(&mut buf)
            .unwrap();
    }

    fn log(&self, partition: i32) -> Arc<fluxo_log::PartitionLog> {
        self.store.partition("t", partition).unwrap()
    }
}

fn parts(ps: &[i32]) -> Vec<(String, i32)> {
    ps.iter().map(|p| ("t".to_string(), *p)).collect()
}

#[tokio::test]
async fn commit_writes_markers_everywhere_and_releases_the_lso() {
    let f = Fixture::new().await;
    let (pid, epoch) = f.txns.init_producer_id("app", 60_000, None).await.unwrap();
    assert_eq!(epoch, 0);
    assert_eq!(
        f.txns
            .add_partitions("app", pid, epoch, &parts(&[0, 1]), false)
            .await,
        vec![codes::NONE, codes::NONE]
    );
    assert_eq!(
        f.txns.check_produce("app", pid, epoch, "t", 0),
        ProduceCheck::Ok
    );
    f.write(0, pid, epoch, 0, 3);
    f.write(1, pid, epoch, 0, 2);
    assert_eq!(
        f.log(0).last_stable_offset(),
        0,
        "open transaction holds the LSO"
    );
    assert_eq!(f.txns.end_txn("app", pid, epoch, true).await, codes::NONE);
    assert_eq!(f.log(0).last_stable_offset(), 4, "3 records and a marker");
    assert_eq!(f.log(1).last_stable_offset(), 3);
    assert!(f.log(0).aborted_transactions(0, 4).is_empty());
    // A retried EndTxn succeeds again; the opposite outcome does not.
    assert_eq!(f.txns.end_txn("app", pid, epoch, true).await, codes::NONE);
    assert_eq!(
        f.txns.end_txn("app", pid, epoch, false).await,
        codes::INVALID_TXN_STATE
    );
    assert_eq!(
        f.txns.describe("app").unwrap().status,
        TxnStatus::CompleteCommit
    );
}

#[tokio::test]
async fn abort_is_indexed_and_a_new_producer_fences_the_old_one() {
    let f = Fixture::new().await;
    let (pid, e0) = f.txns.init_producer_id("app", 60_000, None).await.unwrap();
    f.txns
        .add_partitions("app", pid, e0, &parts(&[0]), false)
        .await;
    f.write(0, pid, e0, 0, 2);
    // A second producer with the same id: the open transaction is aborted.
    // As in Kafka: one bump fences and aborts, one more is the new epoch.
    let (pid2, e2) = f.txns.init_producer_id("app", 60_000, None).await.unwrap();
    assert_eq!((pid2, e2), (pid, e0 + 2));
    let aborted = f.log(0).aborted_transactions(0, 10);
    assert_eq!(aborted.len(), 1);
    assert_eq!((aborted[0].first_offset, aborted[0].last_offset), (0, 2));
    assert_eq!(f.log(0).last_stable_offset(), 3);
    // The zombie is fenced everywhere.
    assert_eq!(
        f.txns
            .add_partitions("app", pid, e0, &parts(&[0]), false)
            .await,
        vec![codes::PRODUCER_FENCED]
    );
    assert_eq!(
        f.txns.end_txn("app", pid, e0, true).await,
        codes::PRODUCER_FENCED
    );
    assert_eq!(
        f.txns.check_produce("app", pid, e0, "t", 0),
        ProduceCheck::Refused(codes::INVALID_PRODUCER_EPOCH)
    );
    // KIP-360: a client naming a stale id/epoch is fenced too.
    assert_eq!(
        f.txns
            .init_producer_id("app", 60_000, Some((pid, e0)))
            .await,
        Err(codes::PRODUCER_FENCED)
    );
}

#[tokio::test]
async fn transaction_offsets_reach_the_group_only_on_commit() {
    let f = Fixture::new().await;
    let (pid, epoch) = f.txns.init_producer_id("ctp", 60_000, None).await.unwrap();
    for commit in [false, true] {
        f.txns
            .add_partitions("ctp", pid, epoch, &parts(&[1]), false)
            .await;
        assert_eq!(
            f.txns.add_offsets("ctp", pid, epoch, "g").await,
            codes::NONE
        );
        let offset = if commit { 42 } else { 7 };
        let pending = PendingOffset {
            offset,
            leader_epoch: -1,
            metadata: None,
        };
        assert_eq!(
            f.txns
                .txn_offset_commit(
                    "ctp",
                    "g",
                    pid,
                    epoch,
                    -1,
                    "",
                    None,
                    vec![(("in".into(), 0), pending)]
                )
                .await,
            codes::NONE
        );
        assert!(f.txns.has_pending_offset("g", "in", 0));
        assert!(f.groups.offsets.get("g", "in", 0).is_none());
        assert_eq!(f.txns.end_txn("ctp", pid, epoch, commit).await, codes::NONE);
        assert!(!f.txns.has_pending_offset("g", "in", 0));
    }
    assert_eq!(f.groups.offsets.get("g", "in", 0).unwrap().offset, 42);
}

#[tokio::test]
async fn a_timed_out_transaction_is_aborted_and_its_producer_fenced() {
    let f = Fixture::new().await;
    let (pid, epoch) = f.txns.init_producer_id("slow", 1, None).await.unwrap();
    f.txns
        .add_partitions("slow", pid, epoch, &parts(&[0]), false)
        .await;
    f.write(0, pid, epoch, 0, 1);
    tokio::time::sleep(Duration::from_millis(20)).await;
    f.txns.on_tick().await;
    let meta = f.txns.describe("slow").unwrap();
    assert_eq!(meta.status, TxnStatus::CompleteAbort);
    assert_eq!(meta.producer_epoch, epoch + 1);
    assert_eq!(f.log(0).last_stable_offset(), f.log(0).end_offset());
    assert_eq!(f.log(0).aborted_transactions(0, 10).len(), 1);
    assert_eq!(
        f.txns.end_txn("slow", pid, epoch, true).await,
        codes::PRODUCER_FENCED
    );
    // KIP-360: that producer may re-initialise with the epoch it knows and
    // go on (a zombie of an older epoch may not).
    assert_eq!(
        f.txns
            .init_producer_id("slow", 60_000, Some((pid, epoch)))
            .await,
        Ok((pid, epoch + 2))
    );
    assert_eq!(
        f.txns
            .init_producer_id("slow", 60_000, Some((pid, epoch)))
            .await,
        Err(codes::PRODUCER_FENCED)
    );
}

#[tokio::test]
async fn a_decided_commit_completes_after_a_crash_and_an_open_one_survives_to_time_out() {
    let f = Fixture::new().await;
    let (pid, epoch) = f.txns.init_producer_id("a", 60_000, None).await.unwrap();
    f.txns
        .add_partitions("a", pid, epoch, &parts(&[0]), false)
        .await;
    f.txns.add_offsets("a", pid, epoch, "g").await;
    let pending = PendingOffset {
        offset: 9,
        leader_epoch: -1,
        metadata: None,
    };
    f.txns
        .txn_offset_commit(
            "a",
            "g",
            pid,
            epoch,
            -1,
            "",
            None,
            vec![(("in".into(), 0), pending)],
        )
        .await;
    f.write(0, pid, epoch, 0, 2);
    // The decision is durable, then the process dies before any marker.
    let mut prepared = f.txns.describe("a").unwrap();
    prepared.status = TxnStatus::PrepareCommit;
    f.txns.state_log.write("a", Some(&prepared)).await.unwrap();
    // Another id is left open.
    let (pid_b, epoch_b) = f.txns.init_producer_id("b", 60_000, None).await.unwrap();
    f.txns
        .add_partitions("b", pid_b, epoch_b, &parts(&[1]), false)
        .await;
    f.write(1, pid_b, epoch_b, 0, 1);

    let f = f.reopen().await;
    assert_eq!(
        f.txns.describe("a").unwrap().status,
        TxnStatus::CompleteCommit
    );
    assert_eq!(f.log(0).last_stable_offset(), 3);
    assert!(f.log(0).aborted_transactions(0, 3).is_empty());
    assert_eq!(f.groups.offsets.get("g", "in", 0).unwrap().offset, 9);
    assert_eq!(f.txns.describe("b").unwrap().status, TxnStatus::Ongoing);
    assert_eq!(
        f.log(1).last_stable_offset(),
        0,
        "still open after the restart"
    );
    // The producer of "b" may still finish it.
    assert_eq!(
        f.txns.end_txn("b", pid_b, epoch_b, false).await,
        codes::NONE
    );
    assert_eq!(f.log(1).aborted_transactions(0, 5).len(), 1);
}

#[tokio::test]
async fn bad_requests_get_kafkas_codes_and_change_nothing() {
    let f = Fixture::new().await;
    assert_eq!(
        f.txns.end_txn("never", 1, 0, true).await,
        codes::INVALID_PRODUCER_ID_MAPPING
    );
    assert_eq!(
        f.txns.init_producer_id("x", 1_000_000, None).await,
        Err(codes::INVALID_TRANSACTION_TIMEOUT)
    );
    let (pid, epoch) = f.txns.init_producer_id("x", 60_000, None).await.unwrap();
    assert_eq!(
        f.txns.check_produce("x", pid, epoch, "t", 0),
        ProduceCheck::Refused(codes::INVALID_TXN_STATE)
    );
    assert_eq!(
        f.txns.end_txn("x", pid, epoch, true).await,
        codes::INVALID_TXN_STATE
    );
    assert_eq!(
        f.txns
            .add_partitions("x", pid, epoch + 5, &parts(&[0]), false)
            .await,
        vec![codes::PRODUCER_FENCED]
    );
    assert_eq!(
        f.txns
            .add_partitions(
                "x",
                pid,
                epoch,
                &[("t".into(), 0), ("nope".into(), 0)],
                false
            )
            .await,
        vec![
            codes::OPERATION_NOT_ATTEMPTED,
            codes::UNKNOWN_TOPIC_OR_PARTITION
        ]
    );
    assert_eq!(
        f.txns
            .txn_offset_commit("x", "g", pid, epoch, -1, "", None, vec![])
            .await,
        codes::INVALID_TXN_STATE,
        "offsets for a group never added"
    );
    assert_eq!(f.txns.describe("x").unwrap().status, TxnStatus::Empty);
    assert_eq!(f.log(0).end_offset(), 0);
}

#[tokio::test]
async fn idle_ids_expire_and_come_back_as_new() {
    let f = Fixture::new().await;
    let (pid, _) = f.txns.init_producer_id("old", 60_000, None).await.unwrap();
    let (busy, epoch) = f.txns.init_producer_id("busy", 60_000, None).await.unwrap();
    f.txns
        .add_partitions("busy", busy, epoch, &parts(&[0]), false)
        .await;
    // Everything counts as idle now; an open transaction never expires.
    let mut config = TxnConfig::default();
    config.id_expiration = Duration::ZERO;
    let txns = TxnCoordinator::open(f.store.clone(), f.groups.clone(), config).unwrap();
    drop(f.txns);
    txns.recovered.store(true, Ordering::Release);
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(txns.expire_ids().await, 1);
    assert!(txns.describe("old").is_none());
    assert_eq!(txns.describe("busy").unwrap().status, TxnStatus::Ongoing);
    assert_eq!(
        txns.end_txn("old", pid, 0, true).await,
        codes::INVALID_PRODUCER_ID_MAPPING
    );
    // Gone from the state topic too.
    drop(txns);
    let reopened =
        TxnCoordinator::open(f.store.clone(), f.groups.clone(), TxnConfig::default()).unwrap();
    assert!(reopened.describe("old").is_none());
    assert!(reopened.describe("busy").is_some());
    // The id may be used again, as a new one.
    reopened.recovered.store(true, Ordering::Release);
    let (new_pid, epoch) = reopened
        .init_producer_id("old", 60_000, None)
        .await
        .unwrap();
    assert_ne!(new_pid, pid);
    assert_eq!(epoch, 0);
}
