//! A Confluent-compatible schema registry reached over HTTP, for an
//! engine-only server whose cluster has its registry elsewhere (Confluent's,
//! Redpanda's, Apicurio's Confluent API, or another fluxo's). Schemas are
//! fetched by id and kept (an id's schema never changes); the latest
//! version of a subject is asked each time, since it moves.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use apache_avro::Schema;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use serde::Deserialize;
use tokio::runtime::Handle;

use crate::avro::AvroSchemas;
use crate::error::{ConnectorError, Result};

pub struct HttpSchemas {
    base: String,
    client: reqwest::Client,
    runtime: Handle,
    by_id: Mutex<HashMap<i32, Arc<Schema>>>,
}

/// What the registry answers for a schema (by id, or a subject's version).
#[derive(Deserialize)]
struct Registered {
    schema: String,
    #[serde(default)]
    id: Option<i32>,
    #[serde(default, rename = "schemaType")]
    schema_type: Option<String>,
    #[serde(default)]
    references: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct RegisterResponse {
    id: i32,
}

impl HttpSchemas {
    /// The registry at `url` (`http://host:8081`); requests run on `runtime`.
    pub fn new(url: &str, runtime: Handle) -> Result<HttpSchemas> {
        let base = url.trim_end_matches('/').to_string();
        let parsed = url::Url::parse(&base)
            .map_err(|e| ConnectorError::Config(format!("schema registry URL '{url}': {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(ConnectorError::Config(format!(
                "schema registry URL '{url}' must start with http:// or https://"
            )));
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| ConnectorError::Config(format!("cannot make an HTTP client: {e}")))?;
        Ok(HttpSchemas {
            base,
            client,
            runtime,
            by_id: Mutex::default(),
        })
    }

    async fn get(&self, path: &str) -> Result<Option<Registered>> {
        let url = format!("{}{path}", self.base);
        let resp = self
            .client
            .get(&url)
            .header("accept", "application/vnd.schemaregistry.v1+json")
            .send()
            .await
            .map_err(|e| ConnectorError::Execution(format!("schema registry {url}: {e}")))?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            return Err(ConnectorError::Execution(format!(
                "schema registry {url}: {status}: {body}"
            )));
        }
        let body = resp
            .bytes()
            .await
            .map_err(|e| ConnectorError::Execution(format!("schema registry {url}: {e}")))?;
        serde_json::from_slice::<Registered>(&body)
            .map(Some)
            .map_err(|e| ConnectorError::Execution(format!("schema registry {url}: {e}")))
    }

    /// The Avro schema in `r`, refusing what fluxo cannot use.
    fn parse(what: &str, r: &Registered) -> Result<Arc<Schema>> {
        if r.schema_type.as_deref().is_some_and(|t| t != "AVRO") {
            return Err(ConnectorError::Execution(format!(
                "{what} is a {} schema; fluxo reads Avro",
                r.schema_type.as_deref().unwrap_or("")
            )));
        }
        if !r.references.is_empty() {
            return Err(ConnectorError::Execution(format!(
                "{what} refers to other schemas, which fluxo does not resolve from a remote registry"
            )));
        }
        Schema::parse_str(&r.schema)
            .map(Arc::new)
            .map_err(|e| ConnectorError::Execution(format!("{what} is not valid Avro: {e}")))
    }
}

impl AvroSchemas for HttpSchemas {
    fn schema(&self, id: i32) -> Option<Arc<Schema>> {
        if let Some(s) = self.by_id.lock().get(&id) {
            return Some(s.clone());
        }
        let fetched = fluxo_client::remote::block_on(&self.runtime, async {
            self.get(&format!("/schemas/ids/{id}")).await
        });
        let schema = match fetched {
            Ok(Some(r)) => Self::parse(&format!("schema {id}"), &r),
            Ok(None) => return None,
            Err(e) => Err(e),
        };
        match schema {
            Ok(s) => {
                self.by_id.lock().insert(id, s.clone());
                Some(s)
            }
            Err(e) => {
                tracing::warn!("{e}");
                None
            }
        }
    }

    fn latest(&self, subject: &str) -> Option<(i32, Arc<Schema>)> {
        let fetched = fluxo_client::remote::block_on(&self.runtime, async {
            self.get(&format!("/subjects/{subject}/versions/latest"))
                .await
        });
        let r = match fetched {
            Ok(Some(r)) => r,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!("{e}");
                return None;
            }
        };
        let id = r.id?;
        match Self::parse(&format!("the latest schema of {subject}"), &r) {
            Ok(s) => {
                self.by_id.lock().insert(id, s.clone());
                Some((id, s))
            }
            Err(e) => {
                tracing::warn!("{e}");
                None
            }
        }
    }

    fn register<'a>(&'a self, subject: &'a str, text: &'a str) -> BoxFuture<'a, Result<i32>> {
        Box::pin(async move {
            let url = format!("{}/subjects/{subject}/versions", self.base);
            let resp = self
                .client
                .post(&url)
                .header("content-type", "application/vnd.schemaregistry.v1+json")
                .body(serde_json::json!({ "schema": text }).to_string())
                .send()
                .await
                .map_err(|e| ConnectorError::Config(format!("schema registry {url}: {e}")))?;
            if !resp.status().is_success() {
                let status = resp.status();
                let body = resp.text().await.unwrap_or_default();
                return Err(ConnectorError::Config(format!(
                    "the schema registry refused the schema for {subject}: {status}: {body}"
                )));
            }
            let body = resp
                .bytes()
                .await
                .map_err(|e| ConnectorError::Config(format!("schema registry {url}: {e}")))?;
            serde_json::from_slice::<RegisterResponse>(&body)
                .map(|r| r.id)
                .map_err(|e| ConnectorError::Config(format!("schema registry {url}: {e}")))
        })
    }
}
