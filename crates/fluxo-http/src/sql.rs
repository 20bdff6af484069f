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
use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::Json;
use fluxo_sql::dataflow::Changes;
use fluxo_sql::json::{columns_json, rows_json};
use fluxo_sql::Engine;
use futures::Stream;
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
    let stream = change_events(state.engine.clone(), name, subscription);
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

fn snapshot_event(batch: &RecordBatch) -> Event {
    let data = json!({"columns": columns_json(&batch.schema()), "rows": rows_json(batch)});
    Event::default().event("snapshot").data(data.to_string())
}

fn changes_event(changes: &Changes) -> Event {
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
    Event::default().event("changes").data(data.to_string())
}

fn change_events(
    engine: Arc<Engine>,
    name: String,
    subscription: fluxo_sql::view::Subscription,
) -> impl Stream<Item = Result<Event, Infallible>> {
    futures::stream::unfold(
        (
            Some(snapshot_event(&subscription.snapshot)),
            subscription.changes,
            engine,
            name,
        ),
        |(first, mut rx, engine, name)| async move {
            if let Some(ev) = first {
                return Some((Ok(ev), (None, rx, engine, name)));
            }
            loop {
                match rx.recv().await {
                    Ok(changes) => {
                        return Some((Ok(changes_event(&changes)), (None, rx, engine, name)))
                    }
                    // Fell behind: start over from a fresh snapshot, so the
                    // client's copy is right again.
                    Err(RecvError::Lagged(_)) => match engine.subscribe(&name) {
                        Ok(s) => {
                            let ev = snapshot_event(&s.snapshot);
                            return Some((Ok(ev), (None, s.changes, engine, name)));
                        }
                        Err(_) => return None,
                    },
                    Err(RecvError::Closed) => return None,
                }
            }
        },
    )
}
