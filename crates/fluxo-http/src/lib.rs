//! fluxo's HTTP front: the REST API, server-sent events, Prometheus
//! metrics and the embedded web console, all on one listener.
//!
//! - `/api/v1/sql`, `/api/v1/pipelines`, `/api/v1/views/{name}/changes`,
//!   `/api/v1/changes?views=a,b` (`sql.rs`): statements, pipeline status
//!   and control, live view changes (one view, or several on one stream).
//! - `/api/v1/topics` (`topics.rs`): topics with offsets, sizes and rates,
//!   the record browser, and JSON ingest.
//! - `/api/v1/groups` (`groups.rs`): consumer groups, members, lag.
//! - `/api/v1/overview` (`stats.rs`): totals and throughput history, and
//!   `/api/v1/overview/live`, a sample per second as SSE.
//! - `/api/v1/dashboards` (`dashboards.rs`): saved dashboards.
//! - `/metrics` (`metrics.rs`): Prometheus' text format.
//! - `/` (`console.rs`): the single-page console, embedded at build time.
//!
//! Errors are always JSON with an `error` field, including for unknown
//! routes and malformed bodies; a request the user got wrong is a 4xx.

mod console;
pub mod dashboards;
mod groups;
mod metrics;
mod sql;
mod stats;
mod topics;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use fluxo_groups::GroupCoordinator;
use fluxo_kafka::metrics::BrokerMetrics;
use fluxo_log::LogStore;
use fluxo_sql::{Engine, SqlError};
use serde_json::json;

pub use dashboards::DashboardStore;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot serve http: {0}")]
    Io(#[from] std::io::Error),
    #[error("cannot read or write dashboards in {path}: {message}")]
    Dashboards { path: String, message: String },
}

/// An error answer: a status and `{"error": message}`.
#[derive(Debug)]
pub struct ApiError(pub StatusCode, pub String);

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError(StatusCode::BAD_REQUEST, message.into())
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError(StatusCode::NOT_FOUND, message.into())
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, message.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1}))).into_response()
    }
}

/// A statement's error: 400 for what the user got wrong (whatever it was:
/// the SQL endpoint answers one way), 500 for engine faults.
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

impl ApiError {
    /// An engine error on a REST resource (`/pipelines/{name}`,
    /// `/views/{name}/...`): an unknown name is a 404 there.
    fn from_resource(e: SqlError) -> ApiError {
        match e {
            SqlError::NotFound { .. } => ApiError::not_found(e.to_string()),
            other => other.into(),
        }
    }
}

impl From<HttpError> for ApiError {
    fn from(e: HttpError) -> ApiError {
        ApiError::internal(e.to_string())
    }
}

/// What the HTTP front serves: the parts of the running server.
#[derive(Clone)]
pub struct Services {
    pub engine: Arc<Engine>,
    pub store: Arc<LogStore>,
    pub groups: Arc<GroupCoordinator>,
    pub broker_metrics: Arc<BrokerMetrics>,
    pub transactions: Arc<fluxo_txn::TxnCoordinator>,
    pub dashboards: Arc<DashboardStore>,
}

#[derive(Clone)]
struct AppState {
    services: Services,
    stats: Arc<stats::Stats>,
    ingest: Arc<topics::IngestState>,
}

impl std::ops::Deref for AppState {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.services
    }
}

/// The largest body `POST /api/v1/topics/{topic}/records` takes.
const MAX_INGEST_BODY: usize = 64 * 1024 * 1024;

fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/v1/sql", post(sql::sql))
        .route("/api/v1/pipelines", get(sql::pipelines))
        .route("/api/v1/connectors", get(sql::connectors))
        .route("/api/v1/pipelines/{name}", get(sql::pipeline))
        .route("/api/v1/pipelines/{name}/stop", post(sql::stop_pipeline))
        .route("/api/v1/pipelines/{name}/start", post(sql::start_pipeline))
        .route("/api/v1/views/{name}/changes", get(sql::view_changes))
        .route("/api/v1/changes", get(sql::many_view_changes))
        .route("/api/v1/topics", get(topics::list).post(topics::create))
        .route(
            "/api/v1/topics/{topic}",
            get(topics::describe).delete(topics::delete),
        )
        .route(
            "/api/v1/topics/{topic}/records",
            get(topics::browse)
                .post(topics::ingest)
                .layer(DefaultBodyLimit::max(MAX_INGEST_BODY)),
        )
        .route("/api/v1/groups", get(groups::list))
        .route("/api/v1/groups/{group}", get(groups::describe))
        .route("/api/v1/overview", get(stats::overview))
        .route("/api/v1/overview/live", get(stats::live))
        .route(
            "/api/v1/dashboards",
            get(dashboards::list).post(dashboards::create),
        )
        .route(
            "/api/v1/dashboards/{id}",
            get(dashboards::get)
                .put(dashboards::replace)
                .delete(dashboards::delete),
        )
        .route("/metrics", get(metrics::render))
        .route("/", get(console::index))
        .route("/{file}", get(console::asset))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .with_state(state)
}

/// A running HTTP server.
pub struct HttpServer {
    pub local_addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
    sampler: tokio::task::JoinHandle<()>,
}

impl HttpServer {
    pub fn abort(&self) {
        self.task.abort();
        self.sampler.abort();
    }
}

pub fn serve(
    listener: tokio::net::TcpListener,
    services: Services,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<HttpServer, HttpError> {
    let local_addr = listener.local_addr()?;
    let stats = Arc::new(stats::Stats::new());
    let sampler = stats.clone().spawn_sampler(services.clone());
    let app = router(AppState {
        services,
        stats,
        ingest: Arc::new(topics::IngestState::default()),
    });
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "http server failed");
        }
    });
    Ok(HttpServer {
        local_addr,
        task,
        sampler,
    })
}

/// Parses a JSON body whatever its content type (`curl -d` sends
/// form-encoded), answering a malformed one with a 400 that says what was
/// expected and where the text went wrong.
fn json_body<T: serde::de::DeserializeOwned>(
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
    expected: &str,
) -> Result<T, ApiError> {
    let bytes = body.map_err(|e| ApiError(e.status(), e.body_text()))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("expected a JSON body {expected}: {e}")))
}
