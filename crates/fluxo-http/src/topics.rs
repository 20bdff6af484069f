//! Topics over HTTP: list and describe (offsets, sizes, rates, config),
//! create and delete, browse recent records, and ingest JSON records.
//!
//! Ingest is as durable as a Kafka produce with `acks=all`: the answer
//! comes only after the records are fsynced. Every record is checked
//! against the topic's `max.message.bytes` before anything is written, so
//! a refused request writes nothing; only an I/O failure part way can leave
//! the records before it in the log (as a multi-partition Kafka produce can).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use fluxo_log::partitioner::partition_for_key;
use fluxo_log::records::decode_records;
use fluxo_log::OutRecord;
use fluxo_log::{LogError, LogStore, PartitionLog, Topic, TopicConfig};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::{json_body, ApiError, AppState};

/// What one record's value may show in the browser before it is cut.
const MAX_SHOWN_VALUE: usize = 16 * 1024;
/// The most records one browse returns.
const MAX_BROWSE: usize = 1000;

fn log_error(e: LogError) -> ApiError {
    let status = match &e {
        LogError::UnknownTopic(_) => StatusCode::NOT_FOUND,
        LogError::TopicExists(_) => StatusCode::CONFLICT,
        LogError::InvalidTopic(_)
        | LogError::InvalidPartitions(_)
        | LogError::InvalidConfig(_)
        | LogError::InvalidRecord(_) => StatusCode::BAD_REQUEST,
        LogError::MessageTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        LogError::Offline(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    ApiError(status, e.to_string())
}

fn find_topic(store: &LogStore, name: &str) -> Result<Arc<Topic>, ApiError> {
    store
        .topic(name)
        .ok_or_else(|| ApiError::not_found(format!("topic {name} does not exist")))
}

fn topic_json(state: &AppState, topic: &Topic) -> Value {
    let mut records = 0i64;
    let mut size = 0u64;
    let compacted = topic.config().is_compacted();
    let partitions: Vec<Value> = topic
        .partitions()
        .iter()
        .map(|p| {
            let o = p.offsets();
            records += o.end_offset - o.log_start_offset;
            size += o.size_bytes;
            let mut partition = json!({
                "partition": p.partition,
                "log_start_offset": o.log_start_offset,
                "end_offset": o.end_offset,
                "size_bytes": o.size_bytes,
            });
            if compacted {
                // What the log cleaner did since the server started.
                partition["cleaner"] = json!(p.cleaner_stats());
            }
            partition
        })
        .collect();
    let rates = state.stats.topic_rates(&topic.name);
    json!({
        "name": topic.name,
        "id": topic.id.to_string(),
        "internal": fluxo_log::is_internal_topic(&topic.name),
        "partition_count": partitions.len(),
        "records": records,
        "size_bytes": size,
        "records_in_per_sec": rates.records_in_per_sec,
        "bytes_in_per_sec": rates.bytes_in_per_sec,
        "records_out_per_sec": rates.records_out_per_sec,
        "bytes_out_per_sec": rates.bytes_out_per_sec,
        "partitions": partitions,
        "config": topic.config().overrides,
    })
}

pub(crate) async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let topics: Vec<Value> = state
        .broker()?
        .store
        .topics()
        .iter()
        .map(|t| topic_json(&state, t))
        .collect();
    Ok(Json(json!({ "topics": topics })))
}

pub(crate) async fn describe(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let topic = find_topic(&state.broker()?.store, &name)?;
    Ok(Json(topic_json(&state, &topic)))
}

#[derive(Deserialize)]
struct NewTopic {
    name: String,
    #[serde(default = "one")]
    partitions: i32,
    #[serde(default)]
    config: BTreeMap<String, String>,
}

fn one() -> i32 {
    1
}

pub(crate) async fn create(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let broker = state.broker()?;
    let req: NewTopic = json_body(
        body,
        r#"{"name": "...", "partitions": N, "config": {"key": "value"}}"#,
    )?;
    let config = TopicConfig::from_pairs(req.config).map_err(log_error)?;
    let store = broker.store.clone();
    let topic =
        tokio::task::spawn_blocking(move || store.create_topic(&req.name, req.partitions, config))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .map_err(log_error)?;
    Ok((StatusCode::CREATED, Json(topic_json(&state, &topic))))
}

pub(crate) async fn delete(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let broker = state.broker()?;
    find_topic(&broker.store, &name)?;
    if fluxo_log::is_internal_topic(&name) {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            format!("{name} is an internal topic and cannot be deleted"),
        ));
    }
    let store = broker.store.clone();
    let deleted = name.clone();
    tokio::task::spawn_blocking(move || store.delete_topic(&deleted))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(log_error)?;
    broker.broker_metrics.forget_topic(&name);
    Ok(Json(json!({ "deleted": name })))
}

#[derive(Deserialize)]
pub(crate) struct BrowseQuery {
    limit: Option<usize>,
    partition: Option<i32>,
}

/// `GET /api/v1/topics/{topic}/records`: the newest records, newest first
/// (by timestamp, then offset), from one partition or all of them.
pub(crate) async fn browse(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<BrowseQuery>,
) -> Result<Json<Value>, ApiError> {
    let topic = find_topic(&state.broker()?.store, &name)?;
    let limit = q.limit.unwrap_or(50).clamp(1, MAX_BROWSE);
    let partitions = match q.partition {
        Some(p) => vec![topic.partition(p).ok_or_else(|| {
            ApiError::not_found(format!(
                "topic {name} has no partition {p} (it has {})",
                topic.partition_count()
            ))
        })?],
        None => topic.partitions(),
    };
    let records = tokio::task::spawn_blocking(move || {
        let mut all = Vec::new();
        for p in &partitions {
            all.extend(newest_records(p, limit)?);
        }
        all.sort_by(|a: &BrowsedRecord, b| {
            (b.timestamp, b.offset, b.partition).cmp(&(a.timestamp, a.offset, a.partition))
        });
        all.truncate(limit);
        Ok::<_, ApiError>(all)
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))??;
    let records: Vec<Value> = records.into_iter().map(|r| r.to_json()).collect();
    Ok(Json(json!({ "records": records })))
}

struct BrowsedRecord {
    partition: i32,
    offset: i64,
    timestamp: i64,
    key: Option<Bytes>,
    value: Option<Bytes>,
    headers: Vec<(String, Option<Bytes>)>,
}

/// Text of a key or value for people: lossy UTF-8, cut at a bound.
fn shown(bytes: &Option<Bytes>) -> (Value, bool) {
    match bytes {
        None => (Value::Null, false),
        Some(b) => {
            let cut = b.len() > MAX_SHOWN_VALUE;
            let text = String::from_utf8_lossy(&b[..b.len().min(MAX_SHOWN_VALUE)]).into_owned();
            (Value::String(text), cut)
        }
    }
}

impl BrowsedRecord {
    fn to_json(&self) -> Value {
        let (key, _) = shown(&self.key);
        let (value, truncated) = shown(&self.value);
        let headers: Vec<Value> = self
            .headers
            .iter()
            .map(|(k, v)| json!([k, shown(v).0]))
            .collect();
        json!({
            "partition": self.partition,
            "offset": self.offset,
            "timestamp": self.timestamp,
            "key": key,
            "value": value,
            "value_truncated": truncated,
            "value_bytes": self.value.as_ref().map_or(0, |v| v.len()),
            "headers": headers,
        })
    }
}

/// The last `limit` records of a partition, read forward from where they
/// start (the log has no backward reads; batches hold many records).
fn newest_records(log: &PartitionLog, limit: usize) -> Result<Vec<BrowsedRecord>, ApiError> {
    // The browser shows what read_committed consumers see: committed
    // records only, up to the last stable offset.
    let end = log.last_stable_offset();
    let mut offset = (end - limit as i64).max(log.log_start_offset());
    let mut out = Vec::new();
    while offset < end {
        let (bytes, aborted) = match log.read_committed(offset, 1024 * 1024) {
            Ok(b) => b,
            // Retention removed the start meanwhile: begin again further on.
            Err(LogError::OffsetOutOfRange { start, .. }) if start > offset => {
                offset = start;
                continue;
            }
            Err(e) => return Err(log_error(e)),
        };
        if bytes.is_empty() {
            break;
        }
        let before = offset;
        let aborted: Vec<(i64, i64)> = aborted
            .iter()
            .map(|a| (a.producer_id, a.first_offset))
            .collect();
        let (records, next) = decode_records(&bytes, offset, &aborted).map_err(|e| {
            ApiError::internal(format!(
                "cannot decode {}/{} at offset {offset}: {e}",
                log.topic, log.partition
            ))
        })?;
        out.extend(records.into_iter().map(|r| {
            BrowsedRecord {
                partition: log.partition,
                offset: r.offset,
                timestamp: r.timestamp,
                key: r.key,
                value: r.value,
                headers: r
                    .headers
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
            }
        }));
        offset = next;
        if offset == before {
            // A read that yields no whole batch would loop forever.
            break;
        }
    }
    let skip = out.len().saturating_sub(limit);
    out.drain(..skip);
    Ok(out)
}

/// Where unkeyed records go next: one partition per request (as Kafka's
/// sticky partitioner does per batch), moving on each request.
#[derive(Default)]
pub(crate) struct IngestState {
    next_partition: AtomicU32,
}

#[derive(Deserialize)]
pub(crate) struct IngestQuery {
    /// One key for every record of the request.
    key: Option<String>,
    /// Take each record's key from this field of its JSON object.
    key_field: Option<String>,
    partition: Option<i32>,
}

/// Splits a body into the JSON texts of its records: an object (or any
/// single value) is one record, an array one record per element, and
/// newline-delimited JSON one record per line.
fn parse_records(body: &[u8]) -> Result<Vec<(Value, String)>, ApiError> {
    let text = std::str::from_utf8(body)
        .map_err(|e| ApiError::bad_request(format!("the body is not UTF-8: {e}")))?;
    if text.trim().is_empty() {
        return Err(ApiError::bad_request(
            "the body is empty: send a JSON object, an array of them, or one JSON value per line",
        ));
    }
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Array(items)) => {
            if items.is_empty() {
                return Err(ApiError::bad_request("the array holds no records"));
            }
            Ok(items
                .into_iter()
                .map(|v| {
                    let s = v.to_string();
                    (v, s)
                })
                .collect())
        }
        Ok(v) => Ok(vec![(v, text.trim().to_string())]),
        Err(whole) => {
            let lines: Vec<(usize, &str)> = text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
                .collect();
            if lines.len() < 2 {
                return Err(ApiError::bad_request(format!(
                    "the body is not valid JSON: {whole}"
                )));
            }
            lines
                .into_iter()
                .map(|(i, line)| match serde_json::from_str::<Value>(line) {
                    Ok(v) => Ok((v, line.trim().to_string())),
                    Err(e) => Err(ApiError::bad_request(format!(
                        "line {} is not valid JSON: {e}",
                        i + 1
                    ))),
                })
                .collect()
        }
    }
}

fn key_of(value: &Value, q: &IngestQuery) -> Option<Bytes> {
    if let Some(k) = &q.key {
        return Some(Bytes::from(k.clone()));
    }
    let field = q.key_field.as_ref()?;
    match value.get(field) {
        Some(Value::String(s)) => Some(Bytes::from(s.clone())),
        Some(Value::Null) | None => None,
        Some(other) => Some(Bytes::from(other.to_string())),
    }
}

/// `POST /api/v1/topics/{topic}/records`.
pub(crate) async fn ingest(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<IngestQuery>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let broker = state.broker()?;
    let body = body.map_err(|e| ApiError(e.status(), e.body_text()))?;
    let topic = find_topic(&broker.store, &name)?;
    if q.key.is_some() && q.key_field.is_some() {
        return Err(ApiError::bad_request("give key or key_field, not both"));
    }
    let records = parse_records(&body)?;
    let count = topic.partition_count();
    if let Some(p) = q.partition {
        if !(0..count).contains(&p) {
            return Err(ApiError::bad_request(format!(
                "topic {name} has no partition {p} (it has {count})"
            )));
        }
    }
    let unkeyed =
        (state.ingest.next_partition.fetch_add(1, Ordering::Relaxed) % count as u32) as i32;
    let now = fluxo_log::now_ms();
    let mut by_partition: BTreeMap<i32, Vec<OutRecord>> = BTreeMap::new();
    for (value, text) in &records {
        let key = key_of(value, &q);
        let partition = match (q.partition, &key) {
            (Some(p), _) => p,
            (None, Some(k)) => partition_for_key(k, count),
            (None, None) => unkeyed,
        };
        by_partition.entry(partition).or_default().push(OutRecord {
            key,
            value: Some(Bytes::from(text.clone())),
            headers: Vec::new(),
            timestamp: now,
        });
    }
    let total = records.len();
    let max = topic.config().max_message_bytes();
    if let Some(r) = by_partition
        .values()
        .flatten()
        .find(|r| r.encoded_size() + BATCH_OVERHEAD > max)
    {
        return Err(too_large(r.encoded_size() + BATCH_OVERHEAD, max));
    }
    let mut offsets = Vec::new();
    let mut syncs = Vec::new();
    for (p, records) in by_partition {
        let log = topic
            .partition(p)
            .ok_or_else(|| ApiError::internal(format!("partition {p} of {name} vanished")))?;
        let (first, last) = append_records(&log, &records)?;
        offsets.push(json!({"partition": p, "base_offset": first, "last_offset": last}));
        syncs.push((log, last + 1));
    }
    for (log, offset) in syncs {
        log.sync_to(offset)
            .await
            .map_err(|e| ApiError::internal(format!("cannot fsync {name}: {e}")))?;
    }
    Ok(Json(
        json!({"topic": name, "records": total, "offsets": offsets}),
    ))
}

/// A v2 batch's header.
const BATCH_OVERHEAD: usize = fluxo_log::batch::BATCH_HEADER_LEN;

fn too_large(size: usize, max: usize) -> ApiError {
    ApiError(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("a record of {size} bytes is larger than the topic's max.message.bytes ({max})"),
    )
}

/// Appends records in batches that each fit `max.message.bytes` (the
/// log splits them); returns the first and last offsets written.
fn append_records(log: &PartitionLog, records: &[OutRecord]) -> Result<(i64, i64), ApiError> {
    match log.append_records(records, None) {
        Ok(Some(range)) => Ok((range.first_offset, range.last_offset)),
        Ok(None) => Ok((-1, -1)),
        Err(LogError::MessageTooLarge { size, max }) => Err(too_large(size, max)),
        Err(e) => Err(log_error(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_split_into_records() {
        let one = parse_records(br#"{"a": 1}"#).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].1, r#"{"a": 1}"#, "a single object is kept as sent");
        let array = parse_records(br#"[{"a": 1}, {"a": 2}]"#).unwrap();
        assert_eq!(array.len(), 2);
        assert_eq!(array[1].0["a"], 2);
        let lines = parse_records(b"{\"a\": 1}\n\n{\"a\": 2}\n{\"a\": 3}\n").unwrap();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[2].1, r#"{"a": 3}"#);
    }

    #[test]
    fn malformed_bodies_say_where() {
        let e = parse_records(b"{\"a\": 1").unwrap_err();
        assert_eq!(e.0, StatusCode::BAD_REQUEST);
        assert!(e.1.contains("not valid JSON"), "{}", e.1);
        let e = parse_records(b"{\"a\": 1}\n{oops}\n").unwrap_err();
        assert!(e.1.contains("line 2"), "{}", e.1);
        assert!(parse_records(b"  ").is_err());
        assert!(parse_records(b"[]").is_err());
    }

    #[test]
    fn big_requests_are_split_into_batches_that_fit() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(dir.path()).unwrap();
        let config = TopicConfig::from_pairs([("max.message.bytes", "8192")]).unwrap();
        let topic = store.create_topic("t", 1, config).unwrap();
        let log = topic.partition(0).unwrap();
        let records: Vec<OutRecord> = (0..100)
            .map(|i| OutRecord {
                key: None,
                value: Some(Bytes::from(vec![b'x'; 500 + i])),
                headers: Vec::new(),
                timestamp: 1,
            })
            .collect();
        // 100 records of ~550 bytes do not fit one 8 KiB batch.
        let (first, last) = append_records(&log, &records).unwrap();
        assert_eq!((first, last), (0, 99));
        assert_eq!(log.end_offset(), 100);
        let huge = vec![OutRecord {
            value: Some(Bytes::from(vec![b'x'; 20_000])),
            ..OutRecord::default()
        }];
        let e = append_records(&log, &huge).unwrap_err();
        assert_eq!(e.0, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(log.end_offset(), 100, "a refused record writes nothing");
    }
}
