//! Confluent's Schema Registry REST API on axum.
//!
//! Bodies are parsed as JSON whatever their content type (Confluent's
//! clients send `application/vnd.schemaregistry.v1+json`, curl users often
//! send none); answers carry the registry media type, or plain
//! `application/json` for a client that asks only for that. Errors are
//! Confluent's `{"error_code": ..., "message": ...}` with the matching
//! status, so its clients raise the errors their users expect.

use std::collections::HashMap;
use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::compat::CompatibilityLevel;
use crate::error::RegistryError;
use crate::registry::{NewSchema, SchemaRegistry, SubjectVersion};
use crate::schema::{SchemaReference, SchemaType};
use crate::state::VersionSpec;

const REGISTRY_JSON: &str = "application/vnd.schemaregistry.v1+json";

type Params = Query<HashMap<String, String>>;
type Reply = Result<Response, RegistryError>;

impl IntoResponse for RegistryError {
    fn into_response(self) -> Response {
        if matches!(self, RegistryError::Log(_) | RegistryError::Internal(_)) {
            tracing::error!("schema registry: {self}");
        }
        let status =
            StatusCode::from_u16(self.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = json!({"error_code": self.error_code(), "message": self.to_string()});
        (status, Json(body)).into_response()
    }
}

pub fn router(registry: SchemaRegistry) -> Router {
    Router::new()
        .route("/", get(|| async { Json(json!({})) }))
        .route("/subjects", get(list_subjects))
        .route("/subjects/{subject}", post(lookup).delete(delete_subject))
        .route(
            "/subjects/{subject}/versions",
            get(list_versions).post(register),
        )
        .route(
            "/subjects/{subject}/versions/{version}",
            get(get_version).delete(delete_version),
        )
        .route(
            "/subjects/{subject}/versions/{version}/schema",
            get(get_version_schema),
        )
        .route(
            "/subjects/{subject}/versions/{version}/referencedby",
            get(referenced_by),
        )
        .route(
            "/schemas/types",
            get(|| async { Json(SchemaType::SUPPORTED) }),
        )
        .route("/schemas/ids/{id}", get(schema_by_id))
        .route("/schemas/ids/{id}/schema", get(schema_text_by_id))
        .route("/schemas/ids/{id}/subjects", get(subjects_by_id))
        .route("/schemas/ids/{id}/versions", get(versions_by_id))
        .route(
            "/config",
            get(get_global_config)
                .put(put_global_config)
                .delete(delete_global_config),
        )
        .route(
            "/config/{subject}",
            get(get_subject_config)
                .put(put_subject_config)
                .delete(delete_subject_config),
        )
        .route(
            "/compatibility/subjects/{subject}/versions",
            post(check_all),
        )
        .route(
            "/compatibility/subjects/{subject}/versions/{version}",
            post(check_version),
        )
        .route("/mode", get(get_mode).put(put_mode))
        .route("/mode/{subject}", get(get_mode).put(put_mode))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                Json(json!({"error_code": 404, "message": "HTTP 404 Not Found"})),
            )
        })
        .method_not_allowed_fallback(|| async {
            (
                StatusCode::METHOD_NOT_ALLOWED,
                Json(json!({"error_code": 405, "message": "HTTP 405 Method Not Allowed"})),
            )
        })
        .layer(axum::middleware::from_fn(negotiate))
        .with_state(registry)
}

/// Answers in the first registry or JSON media type the client accepts.
async fn negotiate(request: Request, next: Next) -> Response {
    let wants_plain_json = request
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .map(|accept| {
            let first = accept
                .split(',')
                .map(|t| {
                    t.split(';')
                        .next()
                        .unwrap_or("")
                        .trim()
                        .to_ascii_lowercase()
                })
                .find(|t| {
                    matches!(
                        t.as_str(),
                        "application/vnd.schemaregistry.v1+json"
                            | "application/vnd.schemaregistry+json"
                            | "application/json"
                            | "application/*"
                            | "*/*"
                    )
                });
            first.as_deref() == Some("application/json")
        })
        .unwrap_or(false);
    let mut response = next.run(request).await;
    let content_type = if wants_plain_json {
        "application/json"
    } else {
        REGISTRY_JSON
    };
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Confluent's clients send booleans as `true`, Python's as `True`.
fn flag(params: &HashMap<String, String>, name: &str) -> bool {
    params
        .get(name)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

fn parse_body<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, RegistryError> {
    serde_json::from_slice(body)
        .map_err(|e| RegistryError::BadRequest(format!("invalid JSON body: {e}")))
}

#[derive(Deserialize)]
struct SchemaRequest {
    schema: Option<String>,
    #[serde(rename = "schemaType")]
    schema_type: Option<String>,
    references: Option<Vec<SchemaReference>>,
}

impl SchemaRequest {
    fn into_new(self) -> Result<NewSchema, RegistryError> {
        let schema_type = match self.schema_type.as_deref() {
            None | Some("") => SchemaType::Avro,
            Some(t) => t.parse()?,
        };
        let text = self
            .schema
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| RegistryError::InvalidSchema("the request has no schema".into()))?;
        Ok(NewSchema {
            schema_type,
            text,
            references: self.references.unwrap_or_default(),
        })
    }
}

/// A version as Confluent shows it; `schemaType` only when not AVRO, and
/// `references` only when there are some, as Confluent does.
#[derive(Serialize)]
struct VersionView {
    subject: String,
    version: i32,
    id: i32,
    #[serde(rename = "schemaType", skip_serializing_if = "Option::is_none")]
    schema_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    references: Vec<SchemaReference>,
    schema: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    deleted: bool,
}

fn version_view(v: SubjectVersion) -> VersionView {
    VersionView {
        subject: v.subject,
        version: v.version,
        id: v.schema.id,
        schema_type: schema_type_field(v.schema.schema_type),
        references: v.schema.references.clone(),
        schema: v.schema.text.clone(),
        deleted: v.deleted,
    }
}

fn schema_type_field(t: SchemaType) -> Option<&'static str> {
    match t {
        SchemaType::Avro => None,
    }
}

fn version_param(s: &str) -> Result<VersionSpec, RegistryError> {
    VersionSpec::parse(s)
}

fn id_param(s: &str) -> Result<i32, RegistryError> {
    s.parse::<i32>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or(RegistryError::SchemaNotFound(None))
}

/// A raw schema is sent as the JSON it is; a stored text that somehow is
/// not JSON goes as a JSON string rather than breaking the response.
fn raw_schema(text: &str) -> Response {
    match serde_json::from_str::<Value>(text) {
        Ok(v) => Json(v).into_response(),
        Err(_) => Json(Value::String(text.to_string())).into_response(),
    }
}

async fn list_subjects(State(r): State<SchemaRegistry>, Query(p): Params) -> Reply {
    let mut subjects = r.subjects(flag(&p, "deleted"), flag(&p, "deleted_only"));
    if let Some(prefix) = p.get("subjectPrefix").filter(|s| !s.is_empty()) {
        subjects.retain(|s| s.starts_with(prefix.as_str()));
    }
    Ok(Json(paginate(subjects, &p)).into_response())
}

/// Confluent's `offset` and `limit` (negative: no limit).
fn paginate<T>(items: Vec<T>, p: &HashMap<String, String>) -> Vec<T> {
    let offset = p
        .get("offset")
        .and_then(|o| o.parse::<usize>().ok())
        .unwrap_or(0);
    let limit = p
        .get("limit")
        .and_then(|l| l.parse::<i64>().ok())
        .filter(|l| *l >= 0)
        .map(|l| usize::try_from(l).unwrap_or(usize::MAX));
    let rest = items.into_iter().skip(offset);
    match limit {
        Some(l) => rest.take(l).collect(),
        None => rest.collect(),
    }
}

async fn list_versions(
    State(r): State<SchemaRegistry>,
    Path(subject): Path<String>,
    Query(p): Params,
) -> Reply {
    let mut versions = r.versions(&subject, flag(&p, "deleted") || flag(&p, "deleted_only"))?;
    if flag(&p, "deleted_only") {
        let live = r.versions(&subject, false).unwrap_or_default();
        versions.retain(|v| !live.contains(v));
    }
    Ok(Json(paginate(versions, &p)).into_response())
}

async fn register(
    State(r): State<SchemaRegistry>,
    Path(subject): Path<String>,
    body: Bytes,
) -> Reply {
    let request: SchemaRequest = parse_body(&body)?;
    let (id, _version) = r.register_schema(&subject, request.into_new()?).await?;
    Ok(Json(json!({"id": id})).into_response())
}

async fn lookup(
    State(r): State<SchemaRegistry>,
    Path(subject): Path<String>,
    Query(p): Params,
    body: Bytes,
) -> Reply {
    let request: SchemaRequest = parse_body(&body)?;
    let found = r.lookup(&subject, request.into_new()?, flag(&p, "deleted"))?;
    Ok(Json(version_view(found)).into_response())
}

async fn get_version(
    State(r): State<SchemaRegistry>,
    Path((subject, version)): Path<(String, String)>,
    Query(p): Params,
) -> Reply {
    let v = r.version(&subject, version_param(&version)?, flag(&p, "deleted"))?;
    Ok(Json(version_view(v)).into_response())
}

async fn get_version_schema(
    State(r): State<SchemaRegistry>,
    Path((subject, version)): Path<(String, String)>,
    Query(p): Params,
) -> Reply {
    let v = r.version(&subject, version_param(&version)?, flag(&p, "deleted"))?;
    Ok(raw_schema(&v.schema.text))
}

async fn referenced_by(
    State(r): State<SchemaRegistry>,
    Path((subject, version)): Path<(String, String)>,
) -> Reply {
    Ok(Json(r.referenced_by(&subject, version_param(&version)?)?).into_response())
}

async fn delete_subject(
    State(r): State<SchemaRegistry>,
    Path(subject): Path<String>,
    Query(p): Params,
) -> Reply {
    Ok(Json(r.delete_subject(&subject, flag(&p, "permanent")).await?).into_response())
}

async fn delete_version(
    State(r): State<SchemaRegistry>,
    Path((subject, version)): Path<(String, String)>,
    Query(p): Params,
) -> Reply {
    let spec = version_param(&version)?;
    Ok(Json(
        r.delete_version(&subject, spec, flag(&p, "permanent"))
            .await?,
    )
    .into_response())
}

async fn schema_by_id(State(r): State<SchemaRegistry>, Path(id): Path<String>) -> Reply {
    let id = id_param(&id)?;
    let schema = r
        .schema_by_id(id)
        .ok_or(RegistryError::SchemaNotFound(Some(id)))?;
    let mut body = json!({"schema": schema.text});
    if let Some(t) = schema_type_field(schema.schema_type) {
        body["schemaType"] = json!(t);
    }
    if !schema.references.is_empty() {
        body["references"] = json!(schema.references);
    }
    Ok(Json(body).into_response())
}

async fn schema_text_by_id(State(r): State<SchemaRegistry>, Path(id): Path<String>) -> Reply {
    let id = id_param(&id)?;
    let schema = r
        .schema_by_id(id)
        .ok_or(RegistryError::SchemaNotFound(Some(id)))?;
    Ok(raw_schema(&schema.text))
}

async fn subjects_by_id(
    State(r): State<SchemaRegistry>,
    Path(id): Path<String>,
    Query(p): Params,
) -> Reply {
    let mut subjects: Vec<String> = r
        .versions_of(id_param(&id)?, flag(&p, "deleted"))?
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    subjects.dedup();
    if let Some(subject) = p.get("subject") {
        subjects.retain(|s| s == subject);
    }
    Ok(Json(paginate(subjects, &p)).into_response())
}

async fn versions_by_id(
    State(r): State<SchemaRegistry>,
    Path(id): Path<String>,
    Query(p): Params,
) -> Reply {
    let mut pairs = r.versions_of(id_param(&id)?, flag(&p, "deleted"))?;
    if let Some(subject) = p.get("subject") {
        pairs.retain(|(s, _)| s == subject);
    }
    let views: Vec<Value> = pairs
        .into_iter()
        .map(|(subject, version)| json!({"subject": subject, "version": version}))
        .collect();
    Ok(Json(paginate(views, &p)).into_response())
}

#[derive(Deserialize)]
struct ConfigRequest {
    compatibility: Option<String>,
    #[serde(rename = "compatibilityLevel")]
    compatibility_level: Option<String>,
}

impl ConfigRequest {
    fn level(self) -> Result<CompatibilityLevel, RegistryError> {
        let name = self
            .compatibility
            .or(self.compatibility_level)
            .unwrap_or_default();
        name.parse()
    }
}

async fn get_global_config(State(r): State<SchemaRegistry>) -> Reply {
    Ok(Json(json!({"compatibilityLevel": r.global_level().as_str()})).into_response())
}

async fn put_global_config(State(r): State<SchemaRegistry>, body: Bytes) -> Reply {
    let level = parse_body::<ConfigRequest>(&body)?.level()?;
    r.set_level(None, level).await?;
    Ok(Json(json!({"compatibility": level.as_str()})).into_response())
}

async fn delete_global_config(State(r): State<SchemaRegistry>) -> Reply {
    let old = r.delete_level(None).await?;
    Ok(Json(json!({"compatibilityLevel": old.as_str()})).into_response())
}

async fn get_subject_config(
    State(r): State<SchemaRegistry>,
    Path(subject): Path<String>,
    Query(p): Params,
) -> Reply {
    let level = match r.subject_level(&subject) {
        Some(level) => level,
        None if flag(&p, "defaultToGlobal") => r.global_level(),
        None => return Err(RegistryError::SubjectConfigNotFound(subject)),
    };
    Ok(Json(json!({"compatibilityLevel": level.as_str()})).into_response())
}

async fn put_subject_config(
    State(r): State<SchemaRegistry>,
    Path(subject): Path<String>,
    body: Bytes,
) -> Reply {
    let level = parse_body::<ConfigRequest>(&body)?.level()?;
    r.set_level(Some(&subject), level).await?;
    Ok(Json(json!({"compatibility": level.as_str()})).into_response())
}

async fn delete_subject_config(
    State(r): State<SchemaRegistry>,
    Path(subject): Path<String>,
) -> Reply {
    let old = r.delete_level(Some(&subject)).await?;
    Ok(Json(json!({"compatibilityLevel": old.as_str()})).into_response())
}

fn compatibility_reply(messages: Vec<String>, verbose: bool) -> Response {
    let mut body = json!({"is_compatible": messages.is_empty()});
    if verbose {
        body["messages"] = json!(messages);
    }
    Json(body).into_response()
}

async fn check_all(
    State(r): State<SchemaRegistry>,
    Path(subject): Path<String>,
    Query(p): Params,
    body: Bytes,
) -> Reply {
    let request: SchemaRequest = parse_body(&body)?;
    let messages = r.check_compatibility(&subject, None, request.into_new()?)?;
    Ok(compatibility_reply(messages, flag(&p, "verbose")))
}

async fn check_version(
    State(r): State<SchemaRegistry>,
    Path((subject, version)): Path<(String, String)>,
    Query(p): Params,
    body: Bytes,
) -> Reply {
    let spec = version_param(&version)?;
    let request: SchemaRequest = parse_body(&body)?;
    let messages = r.check_compatibility(&subject, Some(spec), request.into_new()?)?;
    Ok(compatibility_reply(messages, flag(&p, "verbose")))
}

/// fluxo's registry is always writable: there is no import mode to switch to.
async fn get_mode() -> Reply {
    Ok(Json(json!({"mode": "READWRITE"})).into_response())
}

#[derive(Deserialize)]
struct ModeRequest {
    mode: Option<String>,
}

async fn put_mode(body: Bytes) -> Reply {
    let mode = parse_body::<ModeRequest>(&body)?.mode.unwrap_or_default();
    if mode.eq_ignore_ascii_case("READWRITE") {
        Ok(Json(json!({"mode": "READWRITE"})).into_response())
    } else {
        Err(RegistryError::InvalidMode(mode))
    }
}

/// A running registry listener.
pub struct RegistryServer {
    pub local_addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl RegistryServer {
    pub fn abort(&self) {
        self.task.abort();
    }
}

/// Serves the REST API on `listener` until aborted.
pub fn serve(
    listener: tokio::net::TcpListener,
    registry: SchemaRegistry,
) -> std::io::Result<RegistryServer> {
    let local_addr = listener.local_addr()?;
    let app = router(registry);
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "schema registry server failed");
        }
    });
    Ok(RegistryServer { local_addr, task })
}
