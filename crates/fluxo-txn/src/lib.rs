//! fluxo's transaction coordinator: what makes a Kafka transactional
//! producer's writes to many partitions, and its consumed offsets, visible
//! all at once or not at all.
//!
//! A transactional id is registered by InitProducerId, which gives it a
//! producer id and bumps its epoch; the bump fences any older producer with
//! the same id (its requests get PRODUCER_FENCED / INVALID_PRODUCER_EPOCH)
//! and aborts the transaction it left open. A transaction then names the
//! partitions it writes (AddPartitionsToTxn) and the groups whose offsets
//! it commits (AddOffsetsToTxn, then TxnOffsetCommit), and ends with
//! EndTxn. Ending is two-phase, as in Kafka:
//!
//! 1. PrepareCommit / PrepareAbort is written to `__transaction_state` and
//!    fsynced: from here on the outcome is decided and survives a crash;
//! 2. a COMMIT or ABORT marker (a control batch) is appended to every
//!    partition of the transaction and fsynced, and on commit the pending
//!    offsets become the groups' committed offsets;
//! 3. CompleteCommit / CompleteAbort is written.
//!
//! On start the state is replayed and every transaction found in a
//! Prepare state is completed before any transactional request is served
//! (until then: COORDINATOR_LOAD_IN_PROGRESS); an Ongoing one is aborted
//! when its timeout passes, like any other. A background tick aborts
//! transactions that outlive `transaction.timeout.ms`, bumping the epoch so
//! the producer is fenced on its next call.
//!
//! Invariants: a marker is written only after the decision is durable; a
//! transaction's partitions get markers of one kind; a group's offsets
//! from a transaction are applied only after its COMMIT markers are
//! durable; the per-partition side (open transactions, LSO, the aborted
//! index) lives in `fluxo-log`.

mod state_log;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fluxo_groups::{CommittedOffset, GroupCoordinator};
use fluxo_log::batch::ControlType;
use fluxo_log::{LogError, LogStore};
use parking_lot::Mutex;

use state_log::StateLog;
pub use state_log::{PendingOffset, TxnMetadata, TxnStatus, TRANSACTION_STATE_TOPIC};

#[derive(Debug, thiserror::Error)]
pub enum TxnError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Groups(#[from] fluxo_groups::GroupError),
    #[error("internal error in the transaction coordinator, please report this bug: {0}")]
    Internal(String),
}

pub type Result<T, E = TxnError> = std::result::Result<T, E>;

/// Kafka error codes the coordinator answers with.
pub mod codes {
    use kafka_protocol::error::ResponseError as E;
    pub const NONE: i16 = 0;
    pub const INVALID_PRODUCER_ID_MAPPING: i16 = E::InvalidProducerIdMapping.code();
    pub const INVALID_PRODUCER_EPOCH: i16 = E::InvalidProducerEpoch.code();
    pub const PRODUCER_FENCED: i16 = E::ProducerFenced.code();
    pub const INVALID_TXN_STATE: i16 = E::InvalidTxnState.code();
    pub const CONCURRENT_TRANSACTIONS: i16 = E::ConcurrentTransactions.code();
    pub const INVALID_TRANSACTION_TIMEOUT: i16 = E::InvalidTransactionTimeout.code();
    pub const COORDINATOR_LOAD_IN_PROGRESS: i16 = E::CoordinatorLoadInProgress.code();
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = E::UnknownTopicOrPartition.code();
    pub const OPERATION_NOT_ATTEMPTED: i16 = E::OperationNotAttempted.code();
    pub const TRANSACTIONAL_ID_NOT_FOUND: i16 = E::TransactionalIdNotFound.code();
    pub const KAFKA_STORAGE_ERROR: i16 = E::KafkaStorageError.code();
    pub const INVALID_REQUEST: i16 = E::InvalidRequest.code();
    pub const INVALID_GROUP_ID: i16 = E::InvalidGroupId.code();
}

#[derive(Debug, Clone)]
pub struct TxnConfig {
    /// `transaction.max.timeout.ms`: the longest timeout a producer may ask.
    pub max_timeout_ms: i32,
    /// How often timed-out transactions are looked for (Kafka's
    /// `transaction.abort.timed.out.transaction.cleanup.interval.ms`).
    pub abort_check_interval: Duration,
    /// `transactional.id.expiration.ms`: an id with no transaction open
    /// and no request for this long is forgotten (Kafka's default, 7 days).
    pub id_expiration: Duration,
}

impl Default for TxnConfig {
    fn default() -> Self {
        TxnConfig {
            max_timeout_ms: 900_000,
            abort_check_interval: Duration::from_secs(1),
            id_expiration: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// One transactional id's slot: None until InitProducerId registers it.
/// The async lock is held across the fsyncs of one request, so requests
/// for one id are serialised; different ids proceed independently.
type Slot = Arc<tokio::sync::Mutex<Option<TxnMetadata>>>;

pub struct TxnCoordinator {
    config: TxnConfig,
    store: Arc<LogStore>,
    groups: Arc<GroupCoordinator>,
    state_log: StateLog,
    slots: Mutex<HashMap<String, Slot>>,
    /// A copy of every id's metadata as of its last completed change, for
    /// the synchronous checks of the produce path and for describe/list.
    view: Mutex<HashMap<String, TxnMetadata>>,
    /// Writers of the state log share it; its compaction takes it alone.
    compaction: tokio::sync::RwLock<()>,
    /// Set once transactions left in a Prepare state by a crash are done.
    recovered: AtomicBool,
    committed: AtomicU64,
    aborted: AtomicU64,
    timed_out: AtomicU64,
}

/// Transactions ended since start, for `/metrics`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TxnCounters {
    pub committed: u64,
    pub aborted: u64,
    /// Aborted because they outlived `transaction.timeout.ms` (also
    /// counted in `aborted`).
    pub timed_out: u64,
}

/// What a client's transactional produce to one partition may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProduceCheck {
    Ok,
    Refused(i16),
}

impl TxnCoordinator {
    /// Opens the coordinator and replays `__transaction_state`. Requests
    /// are served once [`TxnCoordinator::spawn_timers`]' first tick has
    /// completed what a crash left prepared.
    pub fn open(
        store: Arc<LogStore>,
        groups: Arc<GroupCoordinator>,
        config: TxnConfig,
    ) -> Result<Arc<TxnCoordinator>> {
        let state_log = StateLog::open(&store)?;
        let loaded = state_log.load()?;
        tracing::info!("loaded {} transactional ids", loaded.len());
        let slots = loaded
            .iter()
            .map(|(id, meta)| {
                (
                    id.clone(),
                    Arc::new(tokio::sync::Mutex::new(Some(meta.clone()))),
                )
            })
            .collect();
        Ok(Arc::new(TxnCoordinator {
            config,
            store,
            groups,
            state_log,
            slots: Mutex::new(slots),
            view: Mutex::new(loaded),
            compaction: tokio::sync::RwLock::new(()),
            recovered: AtomicBool::new(false),
            committed: AtomicU64::new(0),
            aborted: AtomicU64::new(0),
            timed_out: AtomicU64::new(0),
        }))
    }

    pub fn config(&self) -> &TxnConfig {
        &self.config
    }

    fn slot(&self, id: &str) -> Slot {
        self.slots
            .lock()
            .entry(id.to_string())
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(None)))
            .clone()
    }

    fn loading(&self) -> Option<i16> {
        (!self.recovered.load(Ordering::Acquire)).then_some(codes::COORDINATOR_LOAD_IN_PROGRESS)
    }

    /// Writes `meta` durably, then publishes it to the view.
    async fn persist(&self, id: &str, meta: &TxnMetadata) -> Result<()> {
        let _shared = self.compaction.read().await;
        self.state_log.write(id, Some(meta)).await?;
        self.view.lock().insert(id.to_string(), meta.clone());
        Ok(())
    }

    /// InitProducerId with a transactional id: registers it or bumps its
    /// epoch, aborting a transaction the previous producer left open.
    /// `expected` is the producer id and epoch a client that already had
    /// them sends (KIP-360); a mismatch means it was fenced.
    pub async fn init_producer_id(
        &self,
        id: &str,
        timeout_ms: i32,
        expected: Option<(i64, i16)>,
    ) -> Result<(i64, i16), i16> {
        if let Some(code) = self.loading() {
            return Err(code);
        }
        if id.is_empty() {
            return Err(codes::INVALID_REQUEST);
        }
        if timeout_ms <= 0 || timeout_ms > self.config.max_timeout_ms {
            return Err(codes::INVALID_TRANSACTION_TIMEOUT);
        }
        let slot = self.slot(id);
        let mut guard = slot.lock().await;
        let now = fluxo_log::now_ms();
        let mut meta = match guard.take() {
            None => TxnMetadata {
                producer_id: self.store.allocate_producer_id(),
                producer_epoch: -1,
                last_producer_epoch: -1,
                timeout_ms,
                status: TxnStatus::Empty,
                partitions: Default::default(),
                groups: Default::default(),
                start_ms: -1,
                update_ms: now,
            },
            Some(meta) => {
                if let Some((pid, epoch)) = expected {
                    // The producer of a transaction the timer aborted
                    // knows only the epoch before that bump.
                    let known = epoch == meta.producer_epoch
                        || (meta.last_producer_epoch >= 0 && epoch == meta.last_producer_epoch);
                    if pid != meta.producer_id || !known {
                        *guard = Some(meta);
                        return Err(codes::PRODUCER_FENCED);
                    }
                }
                meta
            }
        };
        let outcome = async {
            match meta.status {
                TxnStatus::Ongoing => {
                    // Fence first, so the abort's markers carry the new
                    // epoch and the old producer cannot write after them.
                    meta.producer_epoch += 1;
                    self.end(id, &mut meta, false).await?;
                }
                TxnStatus::PrepareCommit | TxnStatus::PrepareAbort => {
                    self.finish(id, &mut meta).await?;
                }
                _ => {}
            }
            if meta.producer_epoch >= i16::MAX - 1 {
                meta.producer_id = self.store.allocate_producer_id();
                meta.producer_epoch = 0;
            } else {
                meta.producer_epoch += 1;
            }
            meta.last_producer_epoch = -1;
            meta.timeout_ms = timeout_ms;
            meta.status = TxnStatus::Empty;
            meta.start_ms = -1;
            meta.update_ms = fluxo_log::now_ms();
            self.persist(id, &meta).await
        }
        .await;
        match outcome {
            Ok(()) => {
                let result = (meta.producer_id, meta.producer_epoch);
                *guard = Some(meta);
                Ok(result)
            }
            Err(e) => {
                tracing::error!(transactional_id = id, "InitProducerId failed: {e}");
                *guard = self.durable(id);
                Err(codes::KAFKA_STORAGE_ERROR)
            }
        }
    }

    /// The id's metadata as last written (None if never): what a request
    /// that failed half-way falls back to.
    fn durable(&self, id: &str) -> Option<TxnMetadata> {
        self.view.lock().get(id).cloned()
    }

    /// Checks a request's producer id and epoch against the id's metadata.
    fn validate(meta: Option<&TxnMetadata>, pid: i64, epoch: i16) -> Result<&TxnMetadata, i16> {
        let Some(meta) = meta else {
            return Err(codes::INVALID_PRODUCER_ID_MAPPING);
        };
        if meta.producer_id != pid {
            return Err(codes::INVALID_PRODUCER_ID_MAPPING);
        }
        if epoch != meta.producer_epoch {
            return Err(codes::PRODUCER_FENCED);
        }
        if matches!(
            meta.status,
            TxnStatus::PrepareCommit | TxnStatus::PrepareAbort
        ) {
            return Err(codes::CONCURRENT_TRANSACTIONS);
        }
        Ok(meta)
    }

    /// AddPartitionsToTxn: the transaction will write these partitions.
    /// Returns a code per partition; with `verify_only` nothing is added
    /// and partitions not in the transaction get INVALID_TXN_STATE.
    pub async fn add_partitions(
        &self,
        id: &str,
        pid: i64,
        epoch: i16,
        partitions: &[(String, i32)],
        verify_only: bool,
    ) -> Vec<i16> {
        let all = |code| vec![code; partitions.len()];
        if let Some(code) = self.loading() {
            return all(code);
        }
        let slot = self.slot(id);
        let mut guard = slot.lock().await;
        let meta = match Self::validate(guard.as_ref(), pid, epoch) {
            Ok(m) => m,
            Err(code) => return all(code),
        };
        if verify_only {
            let open = meta.status == TxnStatus::Ongoing;
            return partitions
                .iter()
                .map(|p| {
                    if open && meta.partitions.contains(p) {
                        codes::NONE
                    } else {
                        codes::INVALID_TXN_STATE
                    }
                })
                .collect();
        }
        let unknown: Vec<bool> = partitions
            .iter()
            .map(|(t, p)| self.store.partition(t, *p).is_none())
            .collect();
        if unknown.iter().any(|u| *u) {
            return unknown
                .iter()
                .map(|u| {
                    if *u {
                        codes::UNKNOWN_TOPIC_OR_PARTITION
                    } else {
                        codes::OPERATION_NOT_ATTEMPTED
                    }
                })
                .collect();
        }
        if meta.status == TxnStatus::Ongoing
            && partitions.iter().all(|p| meta.partitions.contains(p))
        {
            return all(codes::NONE);
        }
        let mut next = meta.ongoing();
        next.partitions.extend(partitions.iter().cloned());
        match self.persist(id, &next).await {
            Ok(()) => {
                *guard = Some(next);
                all(codes::NONE)
            }
            Err(e) => {
                tracing::error!(transactional_id = id, "AddPartitionsToTxn failed: {e}");
                all(codes::KAFKA_STORAGE_ERROR)
            }
        }
    }

    /// AddOffsetsToTxn: the transaction will commit offsets for `group`.
    pub async fn add_offsets(&self, id: &str, pid: i64, epoch: i16, group: &str) -> i16 {
        if let Some(code) = self.loading() {
            return code;
        }
        if group.is_empty() {
            return codes::INVALID_GROUP_ID;
        }
        let slot = self.slot(id);
        let mut guard = slot.lock().await;
        let meta = match Self::validate(guard.as_ref(), pid, epoch) {
            Ok(m) => m,
            Err(code) => return code,
        };
        if meta.status == TxnStatus::Ongoing && meta.groups.contains_key(group) {
            return codes::NONE;
        }
        let mut next = meta.ongoing();
        next.groups.entry(group.to_string()).or_default();
        match self.persist(id, &next).await {
            Ok(()) => {
                *guard = Some(next);
                codes::NONE
            }
            Err(e) => {
                tracing::error!(transactional_id = id, "AddOffsetsToTxn failed: {e}");
                codes::KAFKA_STORAGE_ERROR
            }
        }
    }

    /// TxnOffsetCommit: offsets the group gets if the transaction commits.
    /// The member's generation is checked like a plain commit's (KIP-447),
    /// so a consumer that lost its partitions cannot commit for them.
    #[allow(clippy::too_many_arguments)]
    pub async fn txn_offset_commit(
        &self,
        id: &str,
        group: &str,
        pid: i64,
        epoch: i16,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
        offsets: Vec<((String, i32), PendingOffset)>,
    ) -> i16 {
        if let Some(code) = self.loading() {
            return code;
        }
        let slot = self.slot(id);
        let mut guard = slot.lock().await;
        let meta = match Self::validate(guard.as_ref(), pid, epoch) {
            Ok(m) => m,
            Err(code) => return code,
        };
        if meta.status != TxnStatus::Ongoing || !meta.groups.contains_key(group) {
            return codes::INVALID_TXN_STATE;
        }
        let code = self
            .groups
            .validate_commit(group, generation, member_id, instance_id);
        if code != codes::NONE {
            return code;
        }
        let mut next = meta.clone();
        let pending = next.groups.entry(group.to_string()).or_default();
        for (key, offset) in offsets {
            pending.insert(key, offset);
        }
        next.update_ms = fluxo_log::now_ms();
        // Pending offsets need not be durable yet: they are written with
        // the PrepareCommit record, and a crash before it aborts.
        self.view.lock().insert(id.to_string(), next.clone());
        *guard = Some(next);
        codes::NONE
    }

    /// EndTxn: commits or aborts the open transaction. A retry of an
    /// EndTxn that completed gets success again.
    pub async fn end_txn(&self, id: &str, pid: i64, epoch: i16, commit: bool) -> i16 {
        if let Some(code) = self.loading() {
            return code;
        }
        let slot = self.slot(id);
        let mut guard = slot.lock().await;
        let mut meta = match Self::validate(guard.as_ref(), pid, epoch) {
            Ok(m) => m.clone(),
            Err(code) => return code,
        };
        match (meta.status, commit) {
            (TxnStatus::Ongoing, _) => {}
            (TxnStatus::CompleteCommit, true) | (TxnStatus::CompleteAbort, false) => {
                return codes::NONE
            }
            _ => return codes::INVALID_TXN_STATE,
        }
        match self.end(id, &mut meta, commit).await {
            Ok(()) => {
                *guard = Some(meta);
                codes::NONE
            }
            Err(e) => {
                tracing::error!(transactional_id = id, "EndTxn failed: {e}");
                *guard = self.durable(id);
                codes::KAFKA_STORAGE_ERROR
            }
        }
    }

    /// Decides (Prepare*), then completes. On a failure after the decision
    /// the transaction stays prepared and the timer completes it later.
    async fn end(&self, id: &str, meta: &mut TxnMetadata, commit: bool) -> Result<()> {
        meta.status = if commit {
            TxnStatus::PrepareCommit
        } else {
            TxnStatus::PrepareAbort
        };
        meta.update_ms = fluxo_log::now_ms();
        self.persist(id, meta).await?;
        failpoint("txn-after-prepare");
        self.finish(id, meta).await
    }

    /// Writes the markers of a prepared transaction, applies its offsets
    /// on commit, and records it complete. Safe to repeat: a marker for a
    /// producer with no open transaction changes nothing.
    async fn finish(&self, id: &str, meta: &mut TxnMetadata) -> Result<()> {
        let commit = match meta.status {
            TxnStatus::PrepareCommit => true,
            TxnStatus::PrepareAbort => false,
            _ => return Ok(()),
        };
        let marker = if commit {
            ControlType::Commit
        } else {
            ControlType::Abort
        };
        let mut syncs = Vec::new();
        for (topic, partition) in &meta.partitions {
            // A topic deleted meanwhile has nothing left to mark.
            let Some(log) = self.store.partition(topic, *partition) else {
                continue;
            };
            match log.append_marker(meta.producer_id, meta.producer_epoch, marker, 0) {
                Ok(info) => syncs.push((log, info.last_offset + 1)),
                // The producer's epoch moved past this one in the log: a
                // newer marker already closed what this one would.
                Err(LogError::InvalidProducerEpoch(e)) => {
                    tracing::warn!(transactional_id = id, "marker skipped: {e}")
                }
                Err(e) => return Err(e.into()),
            }
        }
        for (log, offset) in syncs {
            log.sync_to(offset).await?;
        }
        failpoint("txn-after-markers");
        if commit {
            let now = fluxo_log::now_ms();
            for (group, offsets) in &meta.groups {
                let entries = offsets
                    .iter()
                    .map(|(key, o)| {
                        (
                            key.clone(),
                            Some(CommittedOffset {
                                offset: o.offset,
                                leader_epoch: o.leader_epoch,
                                metadata: o.metadata.clone(),
                                commit_ms: now,
                            }),
                        )
                    })
                    .collect();
                self.groups.offsets.commit(group, entries).await?;
            }
        }
        meta.status = if commit {
            self.committed.fetch_add(1, Ordering::Relaxed);
            TxnStatus::CompleteCommit
        } else {
            self.aborted.fetch_add(1, Ordering::Relaxed);
            TxnStatus::CompleteAbort
        };
        meta.partitions.clear();
        meta.groups.clear();
        meta.start_ms = -1;
        meta.update_ms = fluxo_log::now_ms();
        self.persist(id, meta).await
    }

    /// Whether a client's transactional batch for a partition may be
    /// written: the id must be registered with this producer id, the epoch
    /// current, and the partition added to the open transaction.
    pub fn check_produce(
        &self,
        id: &str,
        pid: i64,
        epoch: i16,
        topic: &str,
        partition: i32,
    ) -> ProduceCheck {
        if let Some(code) = self.loading() {
            return ProduceCheck::Refused(code);
        }
        let view = self.view.lock();
        let Some(meta) = view.get(id) else {
            return ProduceCheck::Refused(codes::INVALID_PRODUCER_ID_MAPPING);
        };
        if meta.producer_id != pid {
            return ProduceCheck::Refused(codes::INVALID_PRODUCER_ID_MAPPING);
        }
        if epoch != meta.producer_epoch {
            return ProduceCheck::Refused(codes::INVALID_PRODUCER_EPOCH);
        }
        if meta.status != TxnStatus::Ongoing
            || !meta.partitions.contains(&(topic.to_string(), partition))
        {
            return ProduceCheck::Refused(codes::INVALID_TXN_STATE);
        }
        ProduceCheck::Ok
    }

    /// Whether an open transaction holds offsets for this group partition
    /// (OffsetFetch with `require_stable` answers UNSTABLE_OFFSET_COMMIT).
    pub fn has_pending_offset(&self, group: &str, topic: &str, partition: i32) -> bool {
        let key = (topic.to_string(), partition);
        self.view.lock().values().any(|m| {
            matches!(m.status, TxnStatus::Ongoing | TxnStatus::PrepareCommit)
                && m.groups.get(group).is_some_and(|o| o.contains_key(&key))
        })
    }

    pub fn counters(&self) -> TxnCounters {
        TxnCounters {
            committed: self.committed.load(Ordering::Relaxed),
            aborted: self.aborted.load(Ordering::Relaxed),
            timed_out: self.timed_out.load(Ordering::Relaxed),
        }
    }

    /// DescribeTransactions.
    pub fn describe(&self, id: &str) -> Option<TxnMetadata> {
        self.view.lock().get(id).cloned()
    }

    /// ListTransactions: every registered id with its metadata.
    pub fn list(&self) -> BTreeMap<String, TxnMetadata> {
        self.view
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Completes what a crash left prepared, then aborts timed-out
    /// transactions every `abort_check_interval`, and compacts the state
    /// topic now and then.
    pub fn spawn_timers(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        let interval = self.config.abort_check_interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            let mut last_compaction_check = std::time::Instant::now();
            loop {
                tick.tick().await;
                let Some(this) = weak.upgrade() else { return };
                this.on_tick().await;
                this.recovered.store(true, Ordering::Release);
                if last_compaction_check.elapsed() > Duration::from_secs(60) {
                    last_compaction_check = std::time::Instant::now();
                    this.expire_ids().await;
                    this.compact_if_needed().await;
                }
            }
        })
    }

    async fn on_tick(&self) {
        let now = fluxo_log::now_ms();
        let due: Vec<(String, Slot)> = {
            let view = self.view.lock();
            let slots = self.slots.lock();
            view.iter()
                .filter(|(_, m)| match m.status {
                    TxnStatus::Ongoing => now - m.start_ms > m.timeout_ms as i64,
                    TxnStatus::PrepareCommit | TxnStatus::PrepareAbort => true,
                    _ => false,
                })
                .filter_map(|(id, _)| slots.get(id).map(|s| (id.clone(), s.clone())))
                .collect()
        };
        for (id, slot) in due {
            let mut guard = slot.lock().await;
            let Some(meta) = guard.as_mut() else { continue };
            let result = match meta.status {
                TxnStatus::Ongoing if now - meta.start_ms > meta.timeout_ms as i64 => {
                    tracing::info!(
                        transactional_id = id,
                        "aborting a transaction open for more than {} ms",
                        meta.timeout_ms
                    );
                    // The bump fences the producer: its next request gets
                    // PRODUCER_FENCED / INVALID_PRODUCER_EPOCH.
                    meta.last_producer_epoch = meta.producer_epoch;
                    meta.producer_epoch = meta.producer_epoch.saturating_add(1);
                    self.timed_out.fetch_add(1, Ordering::Relaxed);
                    self.end(&id, meta, false).await
                }
                TxnStatus::PrepareCommit | TxnStatus::PrepareAbort => self.finish(&id, meta).await,
                _ => Ok(()),
            };
            if let Err(e) = result {
                tracing::warn!(
                    transactional_id = id,
                    "completing a transaction failed (retrying): {e}"
                );
            }
        }
    }

    /// Forgets ids idle past `id_expiration` with nothing open: a
    /// tombstone in the state topic, then out of memory. Returns how many.
    async fn expire_ids(&self) -> usize {
        let now = fluxo_log::now_ms();
        let horizon = self.config.id_expiration.as_millis() as i64;
        let idle: Vec<(String, Slot)> = {
            let view = self.view.lock();
            let slots = self.slots.lock();
            view.iter()
                .filter(|(_, m)| {
                    matches!(
                        m.status,
                        TxnStatus::Empty | TxnStatus::CompleteCommit | TxnStatus::CompleteAbort
                    ) && now - m.update_ms > horizon
                })
                .filter_map(|(id, _)| slots.get(id).map(|s| (id.clone(), s.clone())))
                .collect()
        };
        let mut expired = 0;
        for (id, slot) in idle {
            let mut guard = slot.lock().await;
            // A request may have come meanwhile.
            if guard.as_ref().is_none_or(|m| now - m.update_ms <= horizon) {
                continue;
            }
            let _shared = self.compaction.read().await;
            if let Err(e) = self.state_log.write(&id, None).await {
                tracing::warn!(transactional_id = id, "cannot expire: {e}");
                continue;
            }
            *guard = None;
            self.view.lock().remove(&id);
            self.slots.lock().remove(&id);
            expired += 1;
        }
        if expired > 0 {
            tracing::info!("expired {expired} idle transactional id(s)");
        }
        expired
    }

    async fn compact_if_needed(&self) {
        let live: Vec<(String, TxnMetadata)> = self
            .view
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !self.state_log.needs_compaction(live.len()) {
            return;
        }
        let _exclusive = self.compaction.write().await;
        // Re-read under the lock: a write may have landed meanwhile.
        let live: Vec<(String, TxnMetadata)> = self
            .view
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        match self.state_log.compact(&live).await {
            Ok(deleted) => tracing::info!(
                "compacted {TRANSACTION_STATE_TOPIC}: {} ids, {deleted} old segment(s) deleted",
                live.len()
            ),
            Err(e) => tracing::warn!("compacting {TRANSACTION_STATE_TOPIC} failed: {e}"),
        }
    }
}

/// Crash tests' hook: with `FLUXO_FAILPOINT=<name>` in its environment the
/// process aborts (as a kill -9 would stop it) when it reaches the point of
/// that name: `txn-after-prepare` (the decision is durable, no marker
/// written), `txn-after-markers` (markers durable, not yet recorded
/// complete). Read once; unset, it costs a load.
fn failpoint(name: &str) {
    static ARMED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let armed = ARMED.get_or_init(|| std::env::var("FLUXO_FAILPOINT").ok());
    if armed.as_deref() == Some(name) {
        tracing::error!("failpoint {name} reached: aborting the process");
        std::process::abort();
    }
}

#[cfg(test)]
mod tests;
