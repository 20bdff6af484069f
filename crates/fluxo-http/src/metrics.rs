//! `GET /metrics` in Prometheus' text format.
//!
//! The broker's request histograms and connection counts live in its own
//! registry; everything that is state rather than an event (log sizes,
//! offsets, group lag, pipeline progress) is read at scrape time into a
//! registry made for that scrape, so a deleted topic or dropped view simply
//! stops appearing.

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use fluxo_sql::Engine;
use prometheus::{Encoder, GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::{ApiError, AppState, BrokerServices, Services};

pub(crate) async fn render(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let services = state.services.clone();
    let text = tokio::task::spawn_blocking(move || scrape(&services))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::internal(format!("cannot render metrics: {e}")))?;
    Ok((
        [(CONTENT_TYPE, TextEncoder::new().format_type().to_string())],
        text,
    ))
}

fn counter(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> prometheus::Result<IntGaugeVec> {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(g.clone()))?;
    Ok(g)
}

fn float_gauge(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<GaugeVec> {
    let g = GaugeVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(g.clone()))?;
    Ok(g)
}

fn scrape(services: &Services) -> prometheus::Result<String> {
    let r = Registry::new();
    // Engine-only mode has no local topics, groups or transactions: only
    // the engine's families are shown.
    if let Some(broker) = &services.broker {
        broker_state(&r, broker)?;
    }
    engine_state(&r, &services.engine)?;
    let mut families = match &services.broker {
        Some(broker) => broker.broker_metrics.registry().gather(),
        None => Vec::new(),
    };
    families.extend(r.gather());
    let mut out = Vec::new();
    TextEncoder::new().encode(&families, &mut out)?;
    String::from_utf8(out).map_err(|e| prometheus::Error::Msg(e.to_string()))
}

/// The log's, the groups' and the transactions' state.
fn broker_state(r: &Registry, broker: &BrokerServices) -> prometheus::Result<()> {
    let records_in = counter(
        r,
        "fluxo_topic_records_in_total",
        "Records appended to the topic since start (producers, HTTP ingest, sinks, generators)",
        &["topic"],
    )?;
    let bytes_in = counter(
        r,
        "fluxo_topic_bytes_in_total",
        "Record-batch bytes appended to the topic since start",
        &["topic"],
    )?;
    let records_out = counter(
        r,
        "fluxo_topic_records_out_total",
        "Records sent to Kafka consumers since start",
        &["topic"],
    )?;
    let bytes_out = counter(
        r,
        "fluxo_topic_bytes_out_total",
        "Record-batch bytes sent to Kafka consumers since start",
        &["topic"],
    )?;
    let log_size = gauge(
        r,
        "fluxo_log_size_bytes",
        "Bytes of the partition's segments on disk",
        &["topic", "partition"],
    )?;
    let log_start = gauge(
        r,
        "fluxo_log_start_offset",
        "The partition's first offset",
        &["topic", "partition"],
    )?;
    let log_end = gauge(
        r,
        "fluxo_log_end_offset",
        "The partition's next offset",
        &["topic", "partition"],
    )?;
    let log_stable = gauge(
        r,
        "fluxo_log_last_stable_offset",
        "Where read_committed consumers stop: the first offset of the oldest open transaction, or the end",
        &["topic", "partition"],
    )?;
    let cleaner_runs = counter(
        r,
        "fluxo_log_cleaner_runs_total",
        "Log cleaner runs over the compacted topic's partitions since start",
        &["topic"],
    )?;
    let cleaner_read = counter(
        r,
        "fluxo_log_cleaner_bytes_read_total",
        "Bytes the log cleaner read from the compacted topic since start",
        &["topic"],
    )?;
    let cleaner_written = counter(
        r,
        "fluxo_log_cleaner_bytes_written_total",
        "Bytes of cleaned segments the log cleaner wrote since start",
        &["topic"],
    )?;
    let cleaner_removed = counter(
        r,
        "fluxo_log_cleaner_records_removed_total",
        "Records the log cleaner dropped (superseded, aborted, expired tombstones) since start",
        &["topic"],
    )?;
    let cleaner_tombstones = counter(
        r,
        "fluxo_log_cleaner_tombstones_removed_total",
        "Tombstones dropped after delete.retention.ms since start",
        &["topic"],
    )?;
    let cleaner_last_run = gauge(
        r,
        "fluxo_log_cleaner_last_run_timestamp_seconds",
        "When the log cleaner last cleaned one of the topic's partitions (Unix seconds)",
        &["topic"],
    )?;
    for topic in broker.store.topics() {
        let compacted = topic.config().is_compacted();
        if compacted {
            let labels = [topic.name.as_str()];
            let stats: Vec<_> = topic
                .partitions()
                .iter()
                .map(|p| p.cleaner_stats())
                .collect();
            cleaner_runs
                .with_label_values(&labels)
                .inc_by(stats.iter().map(|c| c.runs).sum());
            cleaner_read
                .with_label_values(&labels)
                .inc_by(stats.iter().map(|c| c.bytes_read).sum());
            cleaner_written
                .with_label_values(&labels)
                .inc_by(stats.iter().map(|c| c.bytes_written).sum());
            cleaner_removed
                .with_label_values(&labels)
                .inc_by(stats.iter().map(|c| c.records_removed).sum());
            cleaner_tombstones
                .with_label_values(&labels)
                .inc_by(stats.iter().map(|c| c.tombstones_removed).sum());
            let last = stats.iter().map(|c| c.last_run_ms).max().unwrap_or(0);
            cleaner_last_run.with_label_values(&labels).set(last / 1000);
        }
        let (mut recs, mut bytes) = (0, 0);
        for p in topic.partitions() {
            let o = p.offsets();
            let part = p.partition.to_string();
            let labels = [topic.name.as_str(), part.as_str()];
            log_size.with_label_values(&labels).set(o.size_bytes as i64);
            log_start.with_label_values(&labels).set(o.log_start_offset);
            log_end.with_label_values(&labels).set(o.end_offset);
            log_stable
                .with_label_values(&labels)
                .set(p.last_stable_offset());
            let a = p.append_totals();
            recs += a.records;
            bytes += a.bytes;
        }
        records_in.with_label_values(&[&topic.name]).inc_by(recs);
        bytes_in.with_label_values(&[&topic.name]).inc_by(bytes);
    }
    for (topic, bytes, records) in broker.broker_metrics.fetched_per_topic() {
        records_out.with_label_values(&[&topic]).inc_by(records);
        bytes_out.with_label_values(&[&topic]).inc_by(bytes);
    }

    let group_lag = gauge(
        r,
        "fluxo_group_lag",
        "Records between the group's committed offset and the partition's end",
        &["group", "topic", "partition"],
    )?;
    let group_members = gauge(
        r,
        "fluxo_group_members",
        "Members of the consumer group",
        &["group"],
    )?;
    for g in broker.groups.list() {
        let members = broker
            .groups
            .describe(&g.group_id)
            .map_or(0, |d| d.members.len());
        group_members
            .with_label_values(&[&g.group_id])
            .set(members as i64);
        for l in broker.groups.lag(&g.group_id) {
            let part = l.partition.to_string();
            group_lag
                .with_label_values(&[g.group_id.as_str(), l.topic.as_str(), part.as_str()])
                .set(l.lag);
        }
    }

    let txn_ends = counter(
        r,
        "fluxo_transactions_total",
        "Transactions the coordinator ended since start, by outcome (committed, aborted, timed_out: aborted by transaction.timeout.ms)",
        &["outcome"],
    )?;
    let txn_open = gauge(
        r,
        "fluxo_transactional_ids",
        "Registered transactional ids by the state of their transaction",
        &["state"],
    )?;
    let t = broker.transactions.counters();
    txn_ends
        .with_label_values(&["committed"])
        .inc_by(t.committed);
    txn_ends.with_label_values(&["aborted"]).inc_by(t.aborted);
    txn_ends
        .with_label_values(&["timed_out"])
        .inc_by(t.timed_out);
    for (_, meta) in broker.transactions.list() {
        txn_open.with_label_values(&[meta.status.name()]).inc();
    }
    Ok(())
}

/// The pipelines' progress.
fn engine_state(r: &Registry, engine: &Engine) -> prometheus::Result<()> {
    let events_in = counter(
        r,
        "fluxo_pipeline_events_in_total",
        "Events the pipeline read from its source",
        &["pipeline"],
    )?;
    let rows_out = counter(
        r,
        "fluxo_pipeline_rows_out_total",
        "Rows the pipeline emitted to its view and sinks",
        &["pipeline"],
    )?;
    let late = counter(
        r,
        "fluxo_pipeline_late_events_total",
        "Events too late for every window (counted, never silently dropped)",
        &["pipeline"],
    )?;
    let bad = counter(
        r,
        "fluxo_pipeline_bad_records_total",
        "Records that did not fit the source's schema and were skipped",
        &["pipeline"],
    )?;
    let running = gauge(
        r,
        "fluxo_pipeline_running",
        "1 while the pipeline runs",
        &["pipeline"],
    )?;
    let watermark_delay = float_gauge(
        r,
        "fluxo_pipeline_watermark_delay_seconds",
        "How far the pipeline's watermark is behind the wall clock",
        &["pipeline"],
    )?;
    let checkpoint_duration = float_gauge(
        r,
        "fluxo_pipeline_checkpoint_duration_seconds",
        "How long the last checkpoint took",
        &["pipeline"],
    )?;
    let checkpoint_bytes = gauge(
        r,
        "fluxo_pipeline_checkpoint_bytes",
        "Size of the last checkpoint",
        &["pipeline"],
    )?;
    let checkpoint_age = float_gauge(
        r,
        "fluxo_pipeline_checkpoint_age_seconds",
        "Time since the last checkpoint",
        &["pipeline"],
    )?;
    let state_bytes = gauge(
        r,
        "fluxo_pipeline_state_bytes",
        "Memory held by the pipeline's operator state",
        &["pipeline"],
    )?;
    let view_rows = gauge(
        r,
        "fluxo_pipeline_view_rows",
        "Rows in the pipeline's view",
        &["pipeline"],
    )?;
    let now = fluxo_log::now_ms();
    for p in engine.pipelines() {
        let l = [p.name.as_str()];
        events_in.with_label_values(&l).inc_by(p.events_in);
        rows_out.with_label_values(&l).inc_by(p.rows_out);
        late.with_label_values(&l).inc_by(p.late_events);
        bad.with_label_values(&l).inc_by(p.bad_records);
        running
            .with_label_values(&l)
            .set((p.status == "running") as i64);
        if let Some(wm) = p.watermark_ms {
            watermark_delay
                .with_label_values(&l)
                .set((now - wm).max(0) as f64 / 1000.0);
        }
        if let Some(c) = &p.last_checkpoint {
            checkpoint_duration
                .with_label_values(&l)
                .set(c.duration_ms as f64 / 1000.0);
            checkpoint_bytes.with_label_values(&l).set(c.bytes as i64);
            checkpoint_age
                .with_label_values(&l)
                .set((now - c.taken_at_ms).max(0) as f64 / 1000.0);
        }
        state_bytes.with_label_values(&l).set(p.state_bytes as i64);
        view_rows.with_label_values(&l).set(p.view_rows as i64);
    }
    Ok(())
}
