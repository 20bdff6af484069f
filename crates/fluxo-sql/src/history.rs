//! Batch queries over a source's history: in a `SELECT` (not a view), a
//! source is the records its topic holds, from each partition's log start to
//! the end it had when the query was planned. Later records are not seen, so
//! a query's answer is one consistent cut of the topic.
//!
//! The scan is split into streams that DataFusion runs in parallel: each
//! partition's offset range is cut into pieces so that there are at least as
//! many streams as the session's target partitions. A stream reads 1 MiB of
//! the log at a time and decodes it against the source's schema, so memory
//! stays bounded however long the topic is. Records that do not fit the
//! schema are skipped, as in pipelines, and counted in a warning in the
//! server's log.
//!
//! A filter on the source's event-time column (its `WATERMARK FOR` column)
//! skips stretches of the log that cannot hold a matching row. Event times
//! are in the records' values, so no index can be built without decoding
//! them: instead every read of a stretch (1 MiB of records) notes the least
//! and greatest event time it decoded, and a later query with a time filter
//! skips any stretch whose range the filter rules out. Records never change
//! at an offset (retention and compaction only remove them), so a range
//! stays a superset of what the stretch holds; it is kept per partition log
//! and dropped with it, so a topic deleted and made again starts afresh.
//! The filter is still applied to every row read: skipping is an
//! optimization, never a change of the answer.
//!
//! `TUMBLE` and `HOP` over a source in a batch query read the same history
//! with each record's window bounds added from its time column, so the
//! query that defines a windowed view also runs over everything the topic
//! holds (with every window, closed or not).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Weak};

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{DataType, SchemaRef, TimeUnit, TimestampMillisecondType};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::Expr;
use datafusion::logical_expr::{Between, BinaryExpr, Operator, TableProviderFilterPushDown};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};
use datafusion::scalar::ScalarValue;
use fluxo_dataflow::upsert::Upsert;
use fluxo_dataflow::window::{self, WindowSpec};
use fluxo_log::{EventLog, PartitionReading};
use parking_lot::Mutex;

use crate::error::{Result, SqlError};
use crate::format::{Format, RecordDecoder};
use crate::parser::SourceDef;
use crate::reader::{decode_record_range, SourceReading};
use crate::source::full_schema;

/// How much of a partition one read takes.
const READ_BYTES: usize = 1 << 20;

/// A source as a bounded table over its topic's records.
pub struct HistoryTable {
    source: Arc<SourceDef>,
    store: Arc<dyn EventLog>,
    topic: String,
    format: Format,
    /// The source's columns, then `window_start` and `window_end` if windowed.
    schema: SchemaRef,
    window: Option<Windowing>,
}

/// `TUMBLE` or `HOP` over history: each record gets the bounds of its
/// windows from the time column (a hopping window repeats the record once
/// per window that contains it).
#[derive(Debug, Clone, Copy)]
struct Windowing {
    spec: WindowSpec,
    time_index: usize,
}

impl HistoryTable {
    pub fn new(source: Arc<SourceDef>, store: Arc<dyn EventLog>) -> Result<HistoryTable> {
        let topic = source.log_topic()?.to_string();
        let format = source.format()?;
        Ok(HistoryTable {
            schema: Arc::new(source.schema()),
            source,
            store,
            topic,
            format,
            window: None,
        })
    }

    /// The source's history in `spec`'s windows over column `time_index`
    /// (TUMBLE or HOP).
    pub fn windowed(
        source: Arc<SourceDef>,
        store: Arc<dyn EventLog>,
        spec: WindowSpec,
        time_index: usize,
    ) -> Result<HistoryTable> {
        if let WindowSpec::Session { .. } = spec {
            return Err(SqlError::Plan(
                "SESSION windows run only in materialized views".into(),
            ));
        }
        let mut table = HistoryTable::new(source, store)?;
        table.schema = full_schema(&table.source, true);
        table.window = Some(Windowing { spec, time_index });
        Ok(table)
    }
}

impl fmt::Debug for HistoryTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "HistoryTable({} over topic {})",
            self.source.name, self.topic
        )
    }
}

#[async_trait]
impl TableProvider for HistoryTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    /// Filters on the event-time column are taken to skip stretches of the
    /// log (inexactly: DataFusion still applies them to the rows read).
    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        let column = self.source.watermark.as_ref().map(|w| w.column.as_str());
        Ok(filters
            .iter()
            .map(|f| match column.and_then(|c| filter_range(f, c)) {
                Some(_) => TableProviderFilterPushDown::Inexact,
                None => TableProviderFilterPushDown::Unsupported,
            })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let time = self.source.watermark.as_ref().and_then(|w| {
            let index = self
                .source
                .columns
                .iter()
                .position(|c| c.name == w.column)?;
            let range = filters
                .iter()
                .filter_map(|f| filter_range(f, &w.column))
                .fold(TimeRange::ALL, TimeRange::intersect);
            Some(TimeColumn {
                index,
                id: format!("{:?}/{}/{index}", self.format, w.column),
                range,
            })
        });
        let projection = projection
            .cloned()
            .unwrap_or_else(|| (0..self.schema.fields().len()).collect());
        // A topic that does not exist (yet) has no history.
        let logs = self
            .store
            .topic(&self.topic)
            .map(|t| t.partitions)
            .unwrap_or_default();
        let ranges: Vec<(Arc<dyn PartitionReading>, i64, i64)> = logs
            .into_iter()
            .map(|log| {
                // A batch query reads what is committed when it starts.
                let (start, end) = (log.log_start_offset(), log.last_stable_offset());
                (log, start, end)
            })
            .filter(|(_, start, end)| end > start)
            .collect();
        let pieces = split_ranges(ranges, state.config().target_partitions());
        Ok(Arc::new(HistoryExec::new(
            self.source.name.clone(),
            // Every column is decoded, even those the query does not use,
            // so that the same records are skipped as bad whatever the
            // query reads (and as in the source's views).
            self.source
                .decoder(Arc::new(self.source.schema()))
                .map_err(|e| DataFusionError::External(Box::new(e)))?,
            self.schema.clone(),
            self.window,
            projection,
            pieces,
            limit,
            time,
        )?))
    }
}

/// A table over a topic as a batch query sees it: its current rows, the
/// newest per key as of the committed end of every partition when the
/// query starts (tombstones delete).
pub struct TableState {
    source: Arc<SourceDef>,
    store: Arc<dyn EventLog>,
    schema: SchemaRef,
}

impl TableState {
    pub fn new(source: Arc<SourceDef>, store: Arc<dyn EventLog>) -> TableState {
        TableState {
            schema: Arc::new(source.schema()),
            source,
            store,
        }
    }

    /// Reads the whole topic through the table's upsert.
    fn rows(&self) -> Result<RecordBatch> {
        let reading = SourceReading::of(&self.source)?;
        let mut table = Upsert::new(self.schema.clone(), self.source.key_indices())?;
        let topic = &reading.topic;
        let logs = self
            .store
            .topic(topic)
            .map(|t| t.partitions)
            .unwrap_or_default();
        for log in logs {
            let (mut offset, end) = (log.log_start_offset(), log.last_stable_offset());
            while offset < end {
                let (bytes, aborted) = log.read_committed(offset, READ_BYTES).map_err(|e| {
                    SqlError::Execution(format!("reading {topic}/{}: {e}", log.partition()))
                })?;
                let (values, next) =
                    decode_record_range(bytes, offset, end, &aborted, reading.tombstones.as_ref())?;
                if next <= offset {
                    break;
                }
                offset = next;
                let slices: Vec<&[u8]> = values.iter().map(|v| v.as_ref()).collect();
                table.process(&reading.decoder.decode(&slices)?.batch)?;
            }
        }
        let state = table.checkpoint()?;
        let rows = state.batches_named("rows").next().cloned();
        rows.ok_or_else(|| SqlError::Internal("a table's state has no rows".into()))
    }
}

impl fmt::Debug for TableState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TableState({})", self.source.name)
    }
}

#[async_trait]
impl TableProvider for TableState {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let rows = self
            .rows()
            .map_err(|e| DataFusionError::Execution(e.to_string()))?;
        let table =
            datafusion::datasource::MemTable::try_new(self.schema.clone(), vec![vec![rows]])?;
        table.scan(state, projection, filters, limit).await
    }
}

/// Event times in milliseconds, both ends included.
#[derive(Debug, Clone, Copy, PartialEq)]
struct TimeRange {
    lo: i64,
    hi: i64,
}

impl TimeRange {
    const ALL: TimeRange = TimeRange {
        lo: i64::MIN,
        hi: i64::MAX,
    };

    /// Whether a stretch whose times span `times` (`None`: no row had a
    /// time, and a comparison with NULL matches nothing) may hold a match.
    fn admits(&self, times: Option<(i64, i64)>) -> bool {
        times.is_some_and(|(min, max)| max >= self.lo && min <= self.hi)
    }

    fn intersect(self, other: TimeRange) -> TimeRange {
        TimeRange {
            lo: self.lo.max(other.lo),
            hi: self.hi.min(other.hi),
        }
    }
}

/// A timestamp literal in milliseconds (truncated: the bounds it gives are
/// then never narrower than the filter's).
fn literal_ms(expr: &Expr) -> Option<i64> {
    let Expr::Literal(value, _) = expr else {
        return None;
    };
    if !matches!(
        value.data_type(),
        DataType::Timestamp(_, _) | DataType::Date32 | DataType::Date64
    ) {
        return None;
    }
    match value
        .cast_to(&DataType::Timestamp(TimeUnit::Millisecond, None))
        .ok()?
    {
        ScalarValue::TimestampMillisecond(Some(ms), _) => Some(ms),
        _ => None,
    }
}

/// Whether `expr` is the column, or a cast of it to another timestamp unit
/// (which keeps order, so bounds on it bound the column).
fn is_column(expr: &Expr, name: &str) -> bool {
    match expr {
        Expr::Column(c) => c.name == name,
        Expr::Cast(cast) if matches!(cast.field.data_type(), DataType::Timestamp(_, None)) => {
            is_column(&cast.expr, name)
        }
        _ => false,
    }
}

/// The event times one pushed-down filter allows, if it bounds `column`.
fn filter_range(filter: &Expr, column: &str) -> Option<TimeRange> {
    match filter {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            let (op, ms) = if is_column(left, column) {
                (*op, literal_ms(right)?)
            } else if is_column(right, column) {
                (op.swap()?, literal_ms(left)?)
            } else {
                return None;
            };
            match op {
                Operator::Eq => Some(TimeRange { lo: ms, hi: ms }),
                Operator::Lt | Operator::LtEq => Some(TimeRange {
                    lo: i64::MIN,
                    hi: ms,
                }),
                Operator::Gt | Operator::GtEq => Some(TimeRange {
                    lo: ms,
                    hi: i64::MAX,
                }),
                _ => None,
            }
        }
        Expr::Between(Between {
            expr,
            negated: false,
            low,
            high,
        }) if is_column(expr, column) => Some(TimeRange {
            lo: literal_ms(low)?,
            hi: literal_ms(high)?,
        }),
        _ => None,
    }
}

/// The least and greatest event time each stretch of a partition held, by
/// the stretch's first offset: `(end offset, times)`.
struct PartitionZones {
    log: Weak<dyn PartitionReading>,
    zones: BTreeMap<i64, (i64, Option<(i64, i64)>)>,
}

/// Topic, partition, and which column of which format the times are of
/// (two sources over one topic may read different times from it).
type ZoneKey = (String, i32, String);

static TIME_ZONES: LazyLock<Mutex<HashMap<ZoneKey, PartitionZones>>> =
    LazyLock::new(Default::default);

/// What a stream knows of the event-time column.
#[derive(Debug, Clone)]
struct TimeColumn {
    /// Index in the source's columns.
    index: usize,
    /// Identifies the column's values in the zone cache.
    id: String,
    /// What the query's filters allow.
    range: TimeRange,
}

fn zone_key(log: &dyn PartitionReading, column: &TimeColumn) -> ZoneKey {
    (log.topic().to_string(), log.partition(), column.id.clone())
}

/// Where a stream at `offset` can go on reading if the stretch there
/// cannot hold a row in `range`.
fn skip_to(log: &Arc<dyn PartitionReading>, column: &TimeColumn, offset: i64) -> Option<i64> {
    if column.range == TimeRange::ALL {
        return None;
    }
    let key = zone_key(log.as_ref(), column);
    let mut all = TIME_ZONES.lock();
    let zones = all.get(&key)?;
    if !zones.log.upgrade().is_some_and(|l| Arc::ptr_eq(&l, log)) {
        // The topic was deleted (and perhaps made again) since.
        all.remove(&key);
        return None;
    }
    let (_, (end, times)) = zones.zones.range(..=offset).next_back()?;
    (*end > offset && !column.range.admits(*times)).then_some(*end)
}

fn note_zone(
    log: &Arc<dyn PartitionReading>,
    column: &TimeColumn,
    start: i64,
    end: i64,
    times: Option<(i64, i64)>,
) {
    let mut all = TIME_ZONES.lock();
    let entry = all
        .entry(zone_key(log.as_ref(), column))
        .or_insert_with(|| PartitionZones {
            log: Arc::downgrade(log),
            zones: BTreeMap::new(),
        });
    if !entry.log.upgrade().is_some_and(|l| Arc::ptr_eq(&l, log)) {
        entry.log = Arc::downgrade(log);
        entry.zones.clear();
    }
    let known = entry.zones.entry(start).or_insert((end, times));
    if known.0 < end {
        *known = (end, times);
    }
}

/// The least and greatest time in column `index` of `batch`.
fn time_span(batch: &RecordBatch, index: usize) -> Result<Option<(i64, i64)>> {
    let times = arrow::compute::cast(
        batch.column(index),
        &DataType::Timestamp(TimeUnit::Millisecond, None),
    )?;
    let times = times.as_primitive::<TimestampMillisecondType>();
    Ok(arrow::compute::min(times).zip(arrow::compute::max(times)))
}

type Piece = (Arc<dyn PartitionReading>, i64, i64);

/// Cuts offset ranges into at least `streams` pieces (as evenly as offsets
/// allow), so that one long partition still decodes on every core.
fn split_ranges(ranges: Vec<Piece>, streams: usize) -> Vec<Piece> {
    if ranges.is_empty() || ranges.len() >= streams {
        return ranges;
    }
    let per_range = streams.div_ceil(ranges.len()) as i64;
    let mut pieces = Vec::new();
    for (log, start, end) in ranges {
        let step = ((end - start) / per_range).max(1);
        let mut from = start;
        while from < end {
            let to = if end - from < 2 * step {
                end
            } else {
                from + step
            };
            pieces.push((log.clone(), from, to));
            from = to;
        }
    }
    pieces
}

/// The leaf of a batch query over a source.
pub struct HistoryExec {
    source: String,
    /// Decodes every column of the source.
    decoder: RecordDecoder,
    window: Option<Windowing>,
    /// The source's columns and, if windowed, the window bounds.
    full: SchemaRef,
    /// The columns the query uses.
    projection: Vec<usize>,
    schema: SchemaRef,
    pieces: Vec<Piece>,
    limit: Option<usize>,
    time: Option<TimeColumn>,
    /// Offsets a time filter let the streams skip, for EXPLAIN ANALYZE.
    skipped: Arc<AtomicU64>,
    properties: Arc<PlanProperties>,
}

impl HistoryExec {
    #[allow(clippy::too_many_arguments)]
    fn new(
        source: String,
        decoder: RecordDecoder,
        full: SchemaRef,
        window: Option<Windowing>,
        projection: Vec<usize>,
        pieces: Vec<Piece>,
        limit: Option<usize>,
        time: Option<TimeColumn>,
    ) -> DfResult<HistoryExec> {
        let schema = Arc::new(full.project(&projection)?);
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(pieces.len().max(1)),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(HistoryExec {
            source,
            decoder,
            window,
            full,
            projection,
            schema,
            pieces,
            limit,
            time,
            skipped: Arc::new(AtomicU64::new(0)),
            properties: Arc::new(properties),
        })
    }
}

impl fmt::Debug for HistoryExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HistoryExec({})", self.source)
    }
}

impl DisplayAs for HistoryExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "TopicHistory: {} ({} stream(s)",
            self.source,
            self.pieces.len()
        )?;
        if let Some(limit) = self.limit {
            write!(f, ", limit {limit}")?;
        }
        if let Some(time) = self.time.as_ref().filter(|t| t.range != TimeRange::ALL) {
            write!(
                f,
                ", event time in [{}, {}] ms, {} record(s) skipped",
                time.range.lo,
                time.range.hi,
                self.skipped.load(Ordering::Relaxed)
            )?;
        }
        write!(f, ")")
    }
}

/// Where one stream stands.
struct Cursor {
    log: Arc<dyn PartitionReading>,
    offset: i64,
    end: i64,
    remaining: Option<usize>,
}

impl ExecutionPlan for HistoryExec {
    fn name(&self) -> &str {
        "HistoryExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(
        &self,
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let cursor = self.pieces.get(partition).map(|(log, from, to)| Cursor {
            log: log.clone(),
            offset: *from,
            end: *to,
            remaining: self.limit,
        });
        let read = Read {
            decoder: self.decoder.clone(),
            window: self.window,
            full: self.full.clone(),
            projection: self.projection.clone(),
            source: self.source.clone(),
            time: self.time.clone(),
            skipped: self.skipped.clone(),
        };
        let stream = futures::stream::unfold(cursor, move |cursor| {
            let next = cursor.and_then(|mut c| {
                match read.next_batch(&mut c) {
                    Ok(Some(batch)) => Some((Ok(batch), Some(c))),
                    Ok(None) => None,
                    // The stream ends after an error.
                    Err(e) => Some((Err(DataFusionError::External(Box::new(e))), None)),
                }
            });
            futures::future::ready(next)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            stream,
        )))
    }
}

/// How a stream turns log bytes into the scan's rows.
struct Read {
    decoder: RecordDecoder,
    window: Option<Windowing>,
    full: SchemaRef,
    projection: Vec<usize>,
    source: String,
    time: Option<TimeColumn>,
    skipped: Arc<AtomicU64>,
}

impl Read {
    /// The next non-empty batch of a stream, or `None` at its end.
    fn next_batch(&self, c: &mut Cursor) -> Result<Option<arrow::array::RecordBatch>> {
        loop {
            if c.offset >= c.end || c.remaining == Some(0) {
                return Ok(None);
            }
            if let Some(to) = self
                .time
                .as_ref()
                .and_then(|t| skip_to(&c.log, t, c.offset))
            {
                let to = to.min(c.end);
                self.skipped
                    .fetch_add((to - c.offset) as u64, Ordering::Relaxed);
                c.offset = to;
                continue;
            }
            let (bytes, aborted) = c.log.read_committed(c.offset, READ_BYTES).map_err(|e| {
                SqlError::Execution(format!(
                    "reading {}/{} at offset {}: {e}",
                    c.log.topic(),
                    c.log.partition(),
                    c.offset
                ))
            })?;
            let (values, next) = decode_record_range(bytes, c.offset, c.end, &aborted, None)?;
            if next <= c.offset {
                // Nothing readable before the end (the log moved under us).
                return Ok(None);
            }
            let start = std::mem::replace(&mut c.offset, next);
            let slices: Vec<&[u8]> = values.iter().map(|v| v.as_ref()).collect();
            let decoded = self.decoder.decode(&slices)?;
            if decoded.bad > 0 {
                tracing::warn!(
                    source = %self.source,
                    skipped = decoded.bad,
                    error = decoded.first_error.as_deref().unwrap_or(""),
                    "a batch query skipped records that do not match the source's schema"
                );
            }
            if let Some(time) = &self.time {
                let span = time_span(&decoded.batch, time.index)?;
                note_zone(&c.log, time, start, next, span);
            }
            let rows = match self.window {
                Some(w) => assign_windows(&decoded.batch, w, &self.full)?,
                None => decoded.batch,
            };
            let mut batch = rows.project(&self.projection)?;
            if let Some(remaining) = &mut c.remaining {
                if batch.num_rows() > *remaining {
                    batch = batch.slice(0, *remaining);
                }
                *remaining -= batch.num_rows();
            }
            if batch.num_rows() > 0 {
                return Ok(Some(batch));
            }
        }
    }
}

/// `batch` with its window bounds appended: one row per record and window
/// (records without a time belong to no window and are left out, as
/// pipelines skip them).
fn assign_windows(batch: &RecordBatch, window: Windowing, full: &SchemaRef) -> Result<RecordBatch> {
    let times = arrow::compute::cast(
        batch.column(window.time_index),
        &DataType::Timestamp(TimeUnit::Millisecond, None),
    )?;
    let times = times.as_primitive::<TimestampMillisecondType>();
    let assigned = window::assign(times.iter(), window.spec, window::Assign::Windows)?;
    let mut columns = assigned.take(batch)?;
    let (starts, ends) = assigned.bounds();
    columns.extend([starts, ends]);
    Ok(RecordBatch::try_new(full.clone(), columns)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_cut_into_enough_pieces_and_cover_every_offset() {
        let dir = tempfile::tempdir().unwrap();
        let store = fluxo_log::LogStore::open(dir.path()).unwrap();
        let topic = store
            .create_topic("t", 2, fluxo_log::TopicConfig::default())
            .unwrap();
        let logs = topic.partitions();
        let (a, b): (Arc<dyn PartitionReading>, Arc<dyn PartitionReading>) =
            (logs[0].clone(), logs[1].clone());
        let ranges = vec![(a, 0, 1000), (b, 10, 13)];
        // Four pieces each, except that three offsets make only three.
        let pieces = split_ranges(ranges.clone(), 8);
        assert_eq!(pieces.len(), 7);
        for (p, (_, start, end)) in ranges.iter().enumerate() {
            let mut mine: Vec<(i64, i64)> = pieces
                .iter()
                .filter(|(log, _, _)| log.partition() == p as i32)
                .map(|(_, from, to)| (*from, *to))
                .collect();
            mine.sort();
            // Contiguous, non-empty, from start to end.
            assert_eq!(mine.first().unwrap().0, *start);
            assert_eq!(mine.last().unwrap().1, *end);
            for w in mine.windows(2) {
                assert_eq!(w[0].1, w[1].0);
            }
            assert!(mine.iter().all(|(from, to)| from < to));
        }
        // Enough partitions already: left whole.
        assert_eq!(split_ranges(ranges, 2).len(), 2);
    }
}
