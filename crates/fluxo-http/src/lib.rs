//! fluxo's HTTP front: the REST API over the SQL engine and server-sent
//! events for live view changes.
//!
//! - `POST /api/v1/sql` with `{"sql": "..."}`: the last statement's result
//!   as `{"columns": [...], "rows": [[...]]}`; a statement the user got
//!   wrong answers 400 with `{"error": "..."}`, an engine fault 500.
//! - `GET /api/v1/pipelines`: every pipeline with its operators, rates,
//!   watermark, late events and progress.
//! - `GET /api/v1/views/{name}/changes`: an SSE stream; the first event
//!   (`snapshot`) holds the view's rows, each later event (`changes`) the
//!   rows deleted and inserted, to be applied deletes first.
//!
//! Errors are always JSON with an `error` field, including for unknown
//! routes and malformed bodies.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use fluxo_sql::dataflow::Changes;
use fluxo_sql::json::{columns_json, rows_json};
use fluxo_sql::{Engine, SqlError};
use futures::Stream;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot serve http: {0}")]
    Io(#[from] std::io::Error),
}

/// An error answer: a status and `{"error": message}`.
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1}))).into_response()
    }
}

impl From<SqlError> for ApiError {
    fn from(e: SqlError) -> ApiError {
        let status = if e.is_user_error() {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        ApiError(status, e.to_string())
    }
}

#[derive(Clone)]
struct AppState {
    engine: Arc<Engine>,
}

pub fn router(engine: Arc<Engine>) -> Router {
    Router::new()
        .route("/api/v1/sql", post(sql))
        .route("/api/v1/pipelines", get(pipelines))
        .route("/api/v1/views/{name}/changes", get(view_changes))
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such endpoint".into()) })
        .with_state(AppState { engine })
}

/// A running HTTP server.
pub struct HttpServer {
    pub local_addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl HttpServer {
    pub fn abort(&self) {
        self.task.abort();
    }
}

pub fn serve(
    listener: tokio::net::TcpListener,
    engine: Arc<Engine>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<HttpServer, HttpError> {
    let local_addr = listener.local_addr()?;
    let app = router(engine);
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "http server failed");
        }
    });
    Ok(HttpServer { local_addr, task })
}

#[derive(Deserialize)]
struct SqlRequest {
    sql: String,
}

async fn sql(
    State(state): State<AppState>,
    body: Result<Json<SqlRequest>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Json(req) = body.map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!(
                "expected a JSON body {{\"sql\": \"...\"}}: {}",
                e.body_text()
            ),
        )
    })?;
    let result = state.engine.execute_one(&req.sql).await?;
    Ok(Json(result.to_json()))
}

async fn pipelines(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({ "pipelines": state.engine.pipelines() }))
}

async fn view_changes(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let subscription = state.engine.subscribe(&name).map_err(|e| match e {
        SqlError::NotFound { .. } => ApiError(StatusCode::NOT_FOUND, e.to_string()),
        other => other.into(),
    })?;
    let engine = state.engine.clone();
    let stream = async_stream(engine, name, subscription);
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

fn snapshot_event(batch: &arrow_batch::RecordBatch) -> Event {
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

mod arrow_batch {
    pub use arrow::array::RecordBatch;
}

fn async_stream(
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
