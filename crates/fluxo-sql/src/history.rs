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

use std::fmt;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};
use fluxo_log::{LogStore, PartitionLog};

use crate::error::{Result, SqlError};
use crate::format::{Format, RecordDecoder};
use crate::parser::SourceDef;
use crate::reader::decode_record_range;

/// How much of a partition one read takes.
const READ_BYTES: usize = 1 << 20;

/// A source as a bounded table over its topic's records.
pub struct HistoryTable {
    source: Arc<SourceDef>,
    store: Arc<LogStore>,
    topic: String,
    format: Format,
    schema: SchemaRef,
}

impl HistoryTable {
    pub fn new(source: Arc<SourceDef>, store: Arc<LogStore>) -> Result<HistoryTable> {
        let topic = source.options.required("a source", "topic")?.to_string();
        let format = Format::parse(source.options.get("format").unwrap_or("json"))?;
        Ok(HistoryTable {
            schema: Arc::new(source.schema()),
            source,
            store,
            topic,
            format,
        })
    }
}

impl fmt::Debug for HistoryTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HistoryTable({} over topic {})", self.source.name, self.topic)
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

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let projection = projection
            .cloned()
            .unwrap_or_else(|| (0..self.schema.fields().len()).collect());
        // A topic that does not exist (yet) has no history.
        let logs = self
            .store
            .topic(&self.topic)
            .map(|t| t.partitions())
            .unwrap_or_default();
        let ranges: Vec<(Arc<PartitionLog>, i64, i64)> = logs
            .into_iter()
            .map(|log| {
                let (start, end) = (log.log_start_offset(), log.end_offset());
                (log, start, end)
            })
            .filter(|(_, start, end)| end > start)
            .collect();
        let pieces = split_ranges(ranges, state.config().target_partitions());
        Ok(Arc::new(HistoryExec::new(
            self.source.name.clone(),
            self.schema.clone(),
            self.format,
            projection,
            pieces,
            limit,
        )?))
    }
}

type Piece = (Arc<PartitionLog>, i64, i64);

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
            let to = if end - from < 2 * step { end } else { from + step };
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
    /// The columns the query uses.
    projection: Vec<usize>,
    schema: SchemaRef,
    pieces: Vec<Piece>,
    limit: Option<usize>,
    properties: Arc<PlanProperties>,
}

impl HistoryExec {
    fn new(
        source: String,
        full: SchemaRef,
        format: Format,
        projection: Vec<usize>,
        pieces: Vec<Piece>,
        limit: Option<usize>,
    ) -> DfResult<HistoryExec> {
        let schema = Arc::new(full.project(&projection)?);
        // Every column is decoded, even those the query does not use, so
        // that the same records are skipped as bad whatever the query reads
        // (and as in the source's views).
        let decoder = RecordDecoder::new(full, format);
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(pieces.len().max(1)),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(HistoryExec {
            source,
            decoder,
            projection,
            schema,
            pieces,
            limit,
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
        write!(f, ")")
    }
}

/// Where one stream stands.
struct Cursor {
    log: Arc<PartitionLog>,
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
        let decoder = self.decoder.clone();
        let projection = self.projection.clone();
        let source = self.source.clone();
        let stream = futures::stream::unfold(cursor, move |cursor| {
            let next = cursor.and_then(|mut c| {
                match next_batch(&mut c, &decoder, &projection, &source) {
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

/// The next non-empty batch of a stream, or `None` at its end.
fn next_batch(
    c: &mut Cursor,
    decoder: &RecordDecoder,
    projection: &[usize],
    source: &str,
) -> Result<Option<arrow::array::RecordBatch>> {
    loop {
        if c.offset >= c.end || c.remaining == Some(0) {
            return Ok(None);
        }
        let bytes = c.log.read(c.offset, READ_BYTES).map_err(|e| {
            SqlError::Execution(format!(
                "reading {}/{} at offset {}: {e}",
                c.log.topic, c.log.partition, c.offset
            ))
        })?;
        let (values, next) = decode_record_range(bytes, c.offset, c.end)?;
        if next <= c.offset {
            // Nothing readable before the end (the log moved under us).
            return Ok(None);
        }
        c.offset = next;
        let slices: Vec<&[u8]> = values.iter().map(|v| v.as_ref()).collect();
        let decoded = decoder.decode(&slices)?;
        if decoded.bad > 0 {
            tracing::warn!(
                source,
                skipped = decoded.bad,
                error = decoded.first_error.as_deref().unwrap_or(""),
                "a batch query skipped records that do not match the source's schema"
            );
        }
        let mut batch = decoded.batch.project(projection)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_cut_into_enough_pieces_and_cover_every_offset() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(dir.path()).unwrap();
        let topic = store
            .create_topic("t", 2, fluxo_log::TopicConfig::default())
            .unwrap();
        let logs = topic.partitions();
        let ranges = vec![(logs[0].clone(), 0, 1000), (logs[1].clone(), 10, 13)];
        // Four pieces each, except that three offsets make only three.
        let pieces = split_ranges(ranges.clone(), 8);
        assert_eq!(pieces.len(), 7);
        for (p, (_, start, end)) in ranges.iter().enumerate() {
            let mut mine: Vec<(i64, i64)> = pieces
                .iter()
                .filter(|(log, _, _)| log.partition == p as i32)
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
