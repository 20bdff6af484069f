//! Statements, pipelines and live view changes.
//!
//! `GET /api/v1/views/{name}/changes` is an SSE stream: the first event
//! (`snapshot`) holds the view's rows, each later event (`changes`) the
//! rows deleted and inserted, to be applied deletes first.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::Json;
use fluxo_sql::json::{columns_json, rows_json};
use fluxo_sql::Changes;
use fluxo_sql::Engine;
use futures::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use crate::{json_body, ApiError, AppState};

#[derive(Deserialize)]
struct SqlRequest {
    sql: String,
}

pub(crate) async fn sql(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let req: SqlRequest = json_body(body, "{\"sql\": \"...\"}")?;
    let result = state.engine.execute_one(&req.sql).await?;
    Ok(Json(result.to_json()))
}

pub(crate) async fn pipelines(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({ "pipelines": state.engine.pipelines() }))
}

/// `GET /api/v1/connectors`: every source and sink connector with its
/// options, as `CREATE SOURCE`/`CREATE SINK ... WITH (...)` take them.
pub(crate) async fn connectors() -> Json<serde_json::Value> {
    Json(json!({ "connectors": fluxo_sql::connectors::CONNECTORS }))
}

pub(crate) async fn pipeline(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    state
        .engine
        .pipelines()
        .into_iter()
        .find(|p| p.name == name)
        .map(|p| Json(json!(p)))
        .ok_or_else(|| ApiError::not_found(format!("pipeline {name} does not exist")))
}

pub(crate) async fn stop_pipeline(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let status = state
        .engine
        .set_pipeline_running(&name, false)
        .map_err(ApiError::from_resource)?;
    Ok(Json(json!(status)))
}

pub(crate) async fn start_pipeline(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let status = state
        .engine
        .set_pipeline_running(&name, true)
        .map_err(ApiError::from_resource)?;
    Ok(Json(json!(status)))
}

pub(crate) async fn view_changes(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let subscription = state
        .engine
        .subscribe(&name)
        .map_err(ApiError::from_resource)?;
    let stream = change_events(state.engine.clone(), name, subscription, false);
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// Views one `GET /api/v1/changes` may follow.
const MAX_VIEWS_PER_STREAM: usize = 64;

#[derive(Deserialize)]
pub(crate) struct ChangesQuery {
    /// Comma-separated view names.
    views: String,
}

/// `GET /api/v1/changes?views=a,b`: the change streams of several views as
/// one SSE stream, each event's data naming its `view`. Browsers open at
/// most six HTTP/1.1 connections to a server, so a dashboard follows all
/// its views over one. A view that does not exist gets one `missing` event
/// (`{"view", "error"}`) and the others stream on.
pub(crate) async fn many_view_changes(
    State(state): State<AppState>,
    Query(q): Query<ChangesQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let mut names: Vec<String> = q
        .views
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect();
    names.sort();
    names.dedup();
    if names.is_empty() {
        return Err(ApiError::bad_request("name at least one view: ?views=a,b"));
    }
    if names.len() > MAX_VIEWS_PER_STREAM {
        return Err(ApiError::bad_request(format!(
            "one stream follows at most {MAX_VIEWS_PER_STREAM} views"
        )));
    }
    let mut streams = Vec::new();
    for name in names {
        match state.engine.subscribe(&name) {
            Ok(subscription) => streams.push(
                change_events(state.engine.clone(), name.clone(), subscription, true).boxed(),
            ),
            Err(e) => {
                let data = json!({"view": name, "error": e.to_string()});
                let missing = Event::default().event("missing").data(data.to_string());
                streams.push(futures::stream::once(async move { Ok(missing) }).boxed());
            }
        }
    }
    let merged = futures::stream::select_all(streams);
    Ok(Sse::new(merged).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// The event data of one view; tagged with its name on a multi-view stream.
fn event_data(mut data: serde_json::Value, view: Option<&str>) -> String {
    if let Some(v) = view {
        data["view"] = json!(v);
    }
    data.to_string()
}

fn snapshot_event(batch: &RecordBatch, view: Option<&str>) -> Event {
    let data = json!({"columns": columns_json(&batch.schema()), "rows": rows_json(batch)});
    Event::default()
        .event("snapshot")
        .data(event_data(data, view))
}

fn changes_event(changes: &Changes, view: Option<&str>) -> Event {
    let rows = rows_json(&changes.batch);
    let mut inserted = Vec::new();
    let mut deleted = Vec::new();
    for (i, row) in rows.into_iter().enumerate() {
        if changes.is_insert(i) {
            inserted.push(row);
        } else {
            deleted.push(row);
        }
    }
    let data = json!({"deleted": deleted, "inserted": inserted});
    Event::default()
        .event("changes")
        .data(event_data(data, view))
}

/// A view's snapshot, then its changes; with `tagged`, each event names
/// the view.
fn change_events(
    engine: Arc<Engine>,
    name: String,
    subscription: fluxo_sql::view::Subscription,
    tagged: bool,
) -> impl Stream<Item = Result<Event, Infallible>> + Send + 'static {
    let tag = tagged.then(|| name.clone());
    futures::stream::unfold(
        (
            Some(snapshot_event(&subscription.snapshot, tag.as_deref())),
            subscription.changes,
            engine,
            name,
        ),
        move |(first, mut rx, engine, name)| {
            let tag = tag.clone();
            async move {
                if let Some(ev) = first {
                    return Some((Ok(ev), (None, rx, engine, name)));
                }
                loop {
                    match rx.recv().await {
                        Ok(changes) => {
                            let ev = changes_event(&changes, tag.as_deref());
                            return Some((Ok(ev), (None, rx, engine, name)));
                        }
                        // Fell behind: start over from a fresh snapshot, so the
                        // client's copy is right again.
                        Err(RecvError::Lagged(_)) => match engine.subscribe(&name) {
                            Ok(s) => {
                                let ev = snapshot_event(&s.snapshot, tag.as_deref());
                                return Some((Ok(ev), (None, s.changes, engine, name)));
                            }
                            Err(_) => return None,
                        },
                        Err(RecvError::Closed) => return None,
                    }
                }
            }
        },
    )
}
