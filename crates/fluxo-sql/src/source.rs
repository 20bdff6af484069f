//! Sources as DataFusion sees them while planning a view, and the window
//! table functions `TUMBLE`, `HOP` and `SESSION`.
//!
//! A continuous query is planned by DataFusion like a batch query over
//! placeholder tables; the leaf of the physical plan is a [`SourceScanExec`]
//! that records which source, which columns and which window the query
//! reads. The planner turns the rest of the plan into a dataflow. The
//! placeholder cannot run as a batch: executing it is an error (batch
//! queries read sources through [`crate::history::HistoryTable`]).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{plan_datafusion_err, plan_err, ScalarValue};
use datafusion::datasource::TableType;
use datafusion::error::Result as DfResult;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};
use fluxo_dataflow::window::{window_type, WindowSpec, WINDOW_END, WINDOW_START};

use crate::parser::SourceDef;

/// Which clock a window runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowTime {
    /// The source's event-time column (the one its WATERMARK is on), by
    /// index in the source's columns.
    Event(usize),
    /// When the pipeline reads an event: `PROCTIME()` as the time column,
    /// or any window over a source without a WATERMARK.
    Processing,
}

/// What a continuous query reads: found at the leaf of its physical plan.
#[derive(Debug, Clone)]
pub struct ScanInfo {
    pub source: Arc<SourceDef>,
    /// The window and the clock it runs on.
    pub window: Option<(WindowSpec, WindowTime)>,
    /// Which of the scan's columns (source columns, then window_start and
    /// window_end if windowed) the plan uses, in order.
    pub projection: Vec<usize>,
    /// A table read `FOR SYSTEM_TIME AS OF` a stream's time: looked up as
    /// it is when each stream row arrives, its later changes not applied to
    /// rows already joined.
    pub as_of: bool,
}

impl ScanInfo {
    /// The scan's columns before projection.
    pub fn full_schema(&self) -> SchemaRef {
        full_schema(&self.source, self.window.is_some())
    }
}

pub fn full_schema(source: &SourceDef, windowed: bool) -> SchemaRef {
    let mut fields: Vec<Field> = source
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    if windowed {
        fields.push(Field::new(WINDOW_START, window_type(), false));
        fields.push(Field::new(WINDOW_END, window_type(), false));
    }
    Arc::new(Schema::new(fields))
}

/// A source, or a window over one, as a table for the planner.
#[derive(Debug)]
pub struct SourceTable {
    source: Arc<SourceDef>,
    window: Option<(WindowSpec, WindowTime)>,
    schema: SchemaRef,
    as_of: bool,
}

impl SourceTable {
    pub fn new(source: Arc<SourceDef>, window: Option<(WindowSpec, WindowTime)>) -> SourceTable {
        let schema = full_schema(&source, window.is_some());
        SourceTable {
            source,
            window,
            schema,
            as_of: false,
        }
    }

    /// A table as `FOR SYSTEM_TIME AS OF` reads it (see [`ScanInfo::as_of`]).
    pub fn as_of(source: Arc<SourceDef>) -> SourceTable {
        SourceTable {
            as_of: true,
            ..SourceTable::new(source, None)
        }
    }
}

#[async_trait]
impl TableProvider for SourceTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let projection = projection
            .cloned()
            .unwrap_or_else(|| (0..self.schema.fields().len()).collect());
        Ok(Arc::new(SourceScanExec::new(ScanInfo {
            source: self.source.clone(),
            window: self.window,
            projection,
            as_of: self.as_of,
        })))
    }
}

/// The leaf of a continuous query's physical plan (see the module docs).
#[derive(Debug)]
pub struct SourceScanExec {
    pub info: ScanInfo,
    properties: Arc<PlanProperties>,
}

impl SourceScanExec {
    fn new(info: ScanInfo) -> SourceScanExec {
        let full = info.full_schema();
        let schema = Arc::new(
            full.project(&info.projection)
                .unwrap_or_else(|_| (*full).clone()),
        );
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        SourceScanExec {
            info,
            properties: Arc::new(properties),
        }
    }
}

impl DisplayAs for SourceScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "SourceScan: {}", self.info.source.name)?;
        if let Some((w, _)) = &self.info.window {
            write!(f, " {w}")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for SourceScanExec {
    fn name(&self) -> &str {
        "SourceScanExec"
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
        _partition: usize,
        _context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        // Batch queries read sources (and windows over them) through
        // `HistoryTable`; a continuous scan reaching execution is a bug.
        plan_err!(
            "the continuous scan of source {} cannot run as a batch query",
            self.info.source.name
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    Tumble,
    Hop,
    Session,
}

impl WindowKind {
    pub fn sql_name(self) -> &'static str {
        match self {
            WindowKind::Tumble => "TUMBLE",
            WindowKind::Hop => "HOP",
            WindowKind::Session => "SESSION",
        }
    }
}

/// `TUMBLE(source, time_col, size)`, `HOP(source, time_col, slide, size)`,
/// `SESSION(source, time_col, gap)`.
pub struct WindowTableFunction {
    pub kind: WindowKind,
    pub sources: Arc<HashMap<String, Arc<SourceDef>>>,
    /// In a batch query: the log, whose history the window reads.
    pub history: Option<Arc<dyn fluxo_log::EventLog>>,
}

impl fmt::Debug for WindowTableFunction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WindowTableFunction({})", self.kind.sql_name())
    }
}

impl TableFunctionImpl for WindowTableFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> DfResult<Arc<dyn TableProvider>> {
        let name = self.kind.sql_name();
        let exprs = args.exprs();
        let usage = match self.kind {
            WindowKind::Tumble => "TUMBLE(source, time_column, INTERVAL 'size')",
            WindowKind::Hop => "HOP(source, time_column, INTERVAL 'slide', INTERVAL 'size')",
            WindowKind::Session => "SESSION(source, time_column, INTERVAL 'gap')",
        };
        let want = if self.kind == WindowKind::Hop { 4 } else { 3 };
        if exprs.len() != want {
            return plan_err!("{name} takes {want} arguments: {usage}");
        }
        let Expr::Column(source_col) = &exprs[0] else {
            return plan_err!("{name}: the first argument must name a source: {usage}");
        };
        let source = self.sources.get(&source_col.name).ok_or_else(|| {
            plan_datafusion_err!("{name}: there is no source named {}", source_col.name)
        })?;
        if source.is_table() {
            return plan_err!(
                "{name}: {} is a table (the newest row per key), not a stream of events: TUMBLE, HOP and SESSION read sources",
                source.name
            );
        }
        let mut column_index = None;
        let time = match &exprs[1] {
            Expr::ScalarFunction(f) if f.name() == PROCTIME => WindowTime::Processing,
            Expr::Column(time_col) => {
                let time_index = source
                    .columns
                    .iter()
                    .position(|c| c.name == time_col.name)
                    .ok_or_else(|| {
                        plan_datafusion_err!(
                            "{name}: source {} has no column {}",
                            source.name,
                            time_col.name
                        )
                    })?;
                if !matches!(
                    source.columns[time_index].data_type,
                    DataType::Timestamp(_, _)
                ) {
                    return plan_err!(
                        "{name}: column {} of {} is {}, not a TIMESTAMP",
                        time_col.name,
                        source.name,
                        source.columns[time_index].sql_type
                    );
                }
                column_index = Some(time_index);
                match &source.watermark {
                    // Without a watermark there is no event time to follow.
                    None => WindowTime::Processing,
                    Some(w) if w.column == time_col.name => WindowTime::Event(time_index),
                    Some(w) => {
                        return plan_err!(
                            "{name}: windows follow the source's watermark, which is on {} of {}, not {}; \
                             use {}, or PROCTIME() for processing time",
                            w.column,
                            source.name,
                            time_col.name,
                            w.column
                        )
                    }
                }
            }
            _ => {
                return plan_err!(
                    "{name}: the second argument must be a TIMESTAMP column of {} or PROCTIME(): {usage}",
                    source.name
                )
            }
        };
        let lengths: Vec<i64> = exprs[2..]
            .iter()
            .map(|e| interval_literal_ms(name, e))
            .collect::<DfResult<_>>()?;
        let spec = match self.kind {
            WindowKind::Tumble => WindowSpec::Tumble { size: lengths[0] },
            WindowKind::Hop => {
                let (slide, size) = (lengths[0], lengths[1]);
                if size % slide != 0 {
                    return plan_err!(
                        "HOP: the size ({size} ms) must be a multiple of the slide ({slide} ms)"
                    );
                }
                WindowSpec::Hop { slide, size }
            }
            WindowKind::Session => WindowSpec::Session { gap: lengths[0] },
        };
        if let Some(store) = &self.history {
            // Over history, a window groups by the time column itself.
            let Some(index) = column_index else {
                return plan_err!(
                    "{name}: PROCTIME() windows run only in materialized views; \
                     a batch query over the topic's history has no processing time"
                );
            };
            if let WindowSpec::Session { .. } = spec {
                return plan_err!(
                    "SESSION windows run only in materialized views: \
                     CREATE MATERIALIZED VIEW with this query"
                );
            }
            let table =
                crate::history::HistoryTable::windowed(source.clone(), store.clone(), spec, index)
                    .map_err(|e| datafusion::error::DataFusionError::Plan(e.to_string()))?;
            return Ok(Arc::new(table));
        }
        Ok(Arc::new(SourceTable::new(
            source.clone(),
            Some((spec, time)),
        )))
    }
}

/// The function that names processing time as a window's time column.
pub const PROCTIME: &str = "proctime";

/// `PROCTIME()`: the current time, as a TIMESTAMP. As a window's time column
/// it makes the window run on processing time.
pub fn proctime_udf() -> datafusion::logical_expr::ScalarUDF {
    datafusion::logical_expr::create_udf(
        PROCTIME,
        vec![],
        DataType::Timestamp(arrow::datatypes::TimeUnit::Millisecond, None),
        datafusion::logical_expr::Volatility::Volatile,
        Arc::new(|_args| {
            Ok(datafusion::logical_expr::ColumnarValue::Scalar(
                ScalarValue::TimestampMillisecond(Some(crate::pipeline::now_ms()), None),
            ))
        }),
    )
}

fn interval_literal_ms(function: &str, e: &Expr) -> DfResult<i64> {
    let ms = match e {
        Expr::Literal(ScalarValue::IntervalMonthDayNano(Some(v)), _) if v.months == 0 => {
            v.days as i64 * 86_400_000 + v.nanoseconds / 1_000_000
        }
        Expr::Literal(ScalarValue::IntervalDayTime(Some(v)), _) => {
            v.days as i64 * 86_400_000 + v.milliseconds as i64
        }
        other => {
            return plan_err!(
                "{function}: expected an interval such as INTERVAL '10' SECOND, found {other}"
            )
        }
    };
    if ms <= 0 {
        return plan_err!("{function}: window lengths must be positive, found {e}");
    }
    Ok(ms)
}
