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
//!
//! In engine-only mode (no local broker) the topic and group endpoints
//! answer 404 saying where those live; the overview and `/metrics` show
//! the engine's part only.

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
    /// The broker's parts; None in engine-only mode, where topics and
    /// groups live on a remote cluster.
    pub broker: Option<BrokerServices>,
    pub dashboards: Arc<DashboardStore>,
}

/// The local broker: its log, groups, transactions and request metrics.
#[derive(Clone)]
pub struct BrokerServices {
    pub store: Arc<LogStore>,
    pub groups: Arc<GroupCoordinator>,
    pub broker_metrics: Arc<BrokerMetrics>,
    pub transactions: Arc<fluxo_txn::TxnCoordinator>,
}

impl Services {
    /// The broker, for the topic and group endpoints. Without one they
    /// answer 404 as endpoints this server does not have, with a message
    /// saying where to look instead; it is no fault of the server, so not
    /// a 5xx.
    pub fn broker(&self) -> Result<&BrokerServices, ApiError> {
        self.broker.as_ref().ok_or_else(|| {
            ApiError::not_found(
                "this server runs the SQL engine only (engine-only mode): topics and consumer \
                 groups live on the Kafka cluster it reads; use that cluster's tools",
            )
        })
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// One request over a fresh connection: the status and the body.
    async fn request(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        conn.write_all(head.as_bytes()).await.unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).await.unwrap();
        let status = answer
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP answer: {answer}"));
        let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        (status, body.to_string())
    }

    #[tokio::test]
    async fn engine_only_mode_refuses_topics_and_groups_but_serves_the_engine() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(LogStore::open(dir.path()).unwrap());
        let engine = Engine::open(store, dir.path()).await.unwrap();
        let services = Services {
            engine,
            broker: None,
            dashboards: Arc::new(DashboardStore::open(dir.path()).unwrap()),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = serve(listener, services, std::future::pending()).unwrap();
        let addr = server.local_addr;

        for (method, path) in [
            ("GET", "/api/v1/topics"),
            ("POST", "/api/v1/topics"),
            ("GET", "/api/v1/topics/orders/records"),
            ("GET", "/api/v1/groups"),
        ] {
            let (status, body) = request(addr, method, path).await;
            assert_eq!(status, 404, "{method} {path}: {body}");
            let body: serde_json::Value = serde_json::from_str(&body).unwrap();
            let error = body["error"].as_str().unwrap();
            assert!(error.contains("engine-only mode"), "{error}");
            assert!(error.contains("Kafka cluster"), "{error}");
        }

        let (status, body) = request(addr, "GET", "/metrics").await;
        assert_eq!(status, 200, "{body}");
        assert!(!body.contains("fluxo_topic_"), "{body}");
        let (status, body) = request(addr, "GET", "/api/v1/pipelines").await;
        assert_eq!(status, 200, "{body}");
        let (status, body) = request(addr, "GET", "/api/v1/overview").await;
        assert_eq!(status, 200, "{body}");
        let overview: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(overview["topics"], 0);
        assert_eq!(overview["groups"], 0);
        server.abort();
    }
}
