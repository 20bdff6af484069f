//! fluxo's connectors: how events get in and results get out.
//!
//! **Sources** bring events from outside into the source's own topic in
//! fluxo's log first (a generator, files, an MQTT broker), and pipelines
//! read that topic like any other: what a source read is durable and
//! replayable before any pipeline sees it, so checkpoints, restarts and
//! batch queries over history work the same for every source. A source
//! connector is an [`source::Ingest`] running beside the engine; the
//! `topic` connector reads an existing topic and runs nothing.
//!
//! **Sinks** ([`sink::Sink`]) write a view's changes out, driven by the
//! view's pipeline and following its checkpoints in two phases, so that
//! each sink can be exactly once where its peer allows it (Kafka
//! transactions on topics, Delta's application transactions, a progress
//! row in PostgreSQL's own transaction).
//!
//! Every connector declares itself in [`CONNECTORS`]: its name, kind and
//! options, which is what `GET /api/v1/connectors` lists and what an
//! unknown connector or option is refused against, by name.
//!
//! This crate sits below the SQL planner (which turns `CREATE SOURCE`/`CREATE
//! SINK` into calls here) and beside the dataflow (whose [`Changes`] the
//! sinks write).

pub mod avro;
pub mod delta_sink;
pub mod error;
pub mod exchange;
pub mod file_source;
pub mod json;
pub mod mqtt_source;
pub mod nexmark_source;
pub mod object_storage;
pub mod options;
pub mod parquet_sink;
pub mod postgres_sink;
pub mod registry_client;
pub mod remote_topic_sink;
pub mod shared_checkpoints;
pub mod sink;
pub mod source;
pub mod topic_sink;
pub mod topics;
pub mod webhook_sink;

use std::path::PathBuf;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
pub use error::{ConnectorError, Result};
pub use fluxo_dataflow::Changes;
pub use options::Options;
pub use sink::Sink;
pub use source::Ingest;
pub use topics::Topics;

/// Which way a connector moves events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnectorKind {
    Source,
    Sink,
}

/// One option a connector takes in `WITH (...)`.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct OptionInfo {
    pub name: &'static str,
    pub required: bool,
    pub description: &'static str,
}

/// A connector as users see it.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct ConnectorInfo {
    pub name: &'static str,
    pub kind: ConnectorKind,
    pub description: &'static str,
    pub options: &'static [OptionInfo],
}

impl ConnectorInfo {
    /// `"a topic sink"`, as error messages name it.
    pub fn what(&self) -> String {
        let kind = match self.kind {
            ConnectorKind::Source => "source",
            ConnectorKind::Sink => "sink",
        };
        format!("a {} {kind}", self.name)
    }

    pub fn option_names(&self) -> Vec<&'static str> {
        self.options.iter().map(|o| o.name).collect()
    }
}

/// Shorthand for the option tables below.
pub(crate) const fn opt(
    name: &'static str,
    required: bool,
    description: &'static str,
) -> OptionInfo {
    OptionInfo {
        name,
        required,
        description,
    }
}

/// The options every source takes besides its connector's own: they are
/// about reading the source's topic, which all sources share.
pub const SOURCE_OPTIONS: &[OptionInfo] = &[
    opt("connector", false, "the connector; 'topic' when absent"),
    opt(
        "format",
        false,
        "how records decode: 'json' (default), 'csv', 'lines' (each record's value is the one text column), or 'avro' (Confluent's format through the schema registry; columns may be left out to take the latest schema of '<topic>-value')",
    ),
    opt(
        "idle_timeout",
        false,
        "a partition without records for this long stops holding the watermark back, e.g. '30 seconds'",
    ),
];

/// The topic connector for sources: reads an existing topic of the log.
pub const TOPIC_SOURCE: ConnectorInfo = ConnectorInfo {
    name: "topic",
    kind: ConnectorKind::Source,
    description:
        "reads a topic of fluxo's log (what Kafka clients, HTTP ingest and other connectors write)",
    options: &[opt("topic", true, "the topic to read")],
};

/// Every connector there is, sources first.
pub const CONNECTORS: &[ConnectorInfo] = &[
    TOPIC_SOURCE,
    nexmark_source::CONNECTOR,
    file_source::CONNECTOR,
    mqtt_source::CONNECTOR,
    topic_sink::CONNECTOR,
    parquet_sink::CONNECTOR,
    delta_sink::CONNECTOR,
    postgres_sink::CONNECTOR,
    webhook_sink::CONNECTOR,
];

/// The connector of `kind` called `name`, or an error naming those there are.
pub fn connector(kind: ConnectorKind, name: &str) -> Result<&'static ConnectorInfo> {
    CONNECTORS
        .iter()
        .find(|c| c.kind == kind && c.name == name)
        .ok_or_else(|| {
            let known: Vec<String> = CONNECTORS
                .iter()
                .filter(|c| c.kind == kind)
                .map(|c| format!("'{}'", c.name))
                .collect();
            let kind = match kind {
                ConnectorKind::Source => "sources",
                ConnectorKind::Sink => "sinks",
            };
            ConnectorError::Config(format!(
                "connector '{name}' is not supported for {kind}; use connector = {}",
                known.join(", ")
            ))
        })
}

/// What sinks may need from the server they run in.
#[derive(Clone)]
pub struct SinkContext {
    /// Where topic sinks write (and webhook sinks their dead letters).
    pub topics: Topics,
    /// Where relative paths of file sinks are resolved.
    pub data_dir: PathBuf,
    /// The schema registry Avro sinks register their schemas in.
    pub schemas: Option<Arc<dyn avro::AvroSchemas>>,
    /// Which task of a sink this writer is, when workers split the sink
    /// into tasks over its source's partitions: `(index, count)`. Each
    /// task writes under its own transactional id, so that tasks never
    /// fence each other and a task's new owner fences its old one.
    pub task: Option<(usize, usize)>,
}

/// What a sink reads: the view's name, its columns, and whether its rows
/// only ever get inserted (windows without lateness, plain projections) or
/// also change.
pub struct SinkInput<'a> {
    pub from: &'a str,
    pub schema: &'a SchemaRef,
    pub append_only: bool,
}

/// Opens the sink `name` that `options` describe, checking every option
/// (and what the sink's peer says, where it can be asked now) so that a
/// mistake fails the statement, not the pipeline later.
pub async fn open_sink(
    context: &SinkContext,
    name: &str,
    options: &Options,
    input: SinkInput<'_>,
) -> Result<Box<dyn Sink>> {
    let info = connector(
        ConnectorKind::Sink,
        options.get("connector").unwrap_or("topic"),
    )?;
    options.check_known(&info.what(), &info.option_names())?;
    let updating = |why: &str| {
        ConnectorError::Config(format!(
            "view {} is updating (its rows change as events arrive), and {why}",
            input.from
        ))
    };
    Ok(match info.name {
        "topic" => {
            let config =
                topic_sink::TopicSinkConfig::from_options(options, input.from, input.schema)?;
            if config.key.is_empty() && !input.append_only {
                return Err(updating(
                    "a topic sink needs a key to write updates as upserts and deletes as \
                     tombstones: add key = '<columns>' to WITH",
                ));
            }
            let avro = match config.avro {
                false => None,
                true => {
                    let schemas = context.schemas.as_ref().ok_or_else(|| {
                        ConnectorError::Config(
                            "format 'avro' needs the schema registry, which this server does not run"
                                .into(),
                        )
                    })?;
                    // Registered now, so that a schema the subject's
                    // compatibility level refuses fails the statement.
                    let text = avro::schema_for(input.from, input.schema)?;
                    let subject = avro::value_subject(&config.topic);
                    let id = schemas.register(&subject, &text).await?;
                    Some(avro::AvroEncoder::new(id, &text)?)
                }
            };
            let identity = match context.task {
                Some((index, count)) if count > 1 => format!("{name}.task{index}"),
                _ => name.to_string(),
            };
            context
                .topics
                .topic_sink(name.to_string(), &identity, config, avro)
        }
        "parquet" => {
            let config = parquet_sink::ParquetSinkConfig::from_options(options, &context.data_dir)?;
            if !input.append_only {
                return Err(updating(
                    "Parquet files cannot take rows back; a parquet sink needs an append-only \
                     view: windows without allowed_lateness, or no aggregation",
                ));
            }
            if let object_storage::Location::S3(s3) = &config.location {
                s3.check().await?;
            }
            let sink =
                parquet_sink::ParquetSink::new(name.to_string(), config, input.schema.clone());
            Box::new(match context.task {
                Some((index, count)) if count > 1 => sink.for_task(index),
                _ => sink,
            })
        }
        "delta" => {
            let config = delta_sink::DeltaSinkConfig::from_options(
                options,
                input.from,
                &context.data_dir,
                input.schema,
            )?;
            if !input.append_only {
                return Err(updating(
                    "the delta sink writes appends only; it needs an append-only view: windows \
                     without allowed_lateness, or no aggregation",
                ));
            }
            // Made (or checked against the view) now, so that a wrong
            // path or schema fails the statement, not the pipeline.
            delta_sink::open_or_create(&config, input.schema, name).await?;
            Box::new(delta_sink::DeltaSink::new(
                name.to_string(),
                config,
                input.schema.clone(),
            ))
        }
        "postgres" => {
            let config = postgres_sink::PostgresSinkConfig::from_options(
                options,
                input.from,
                input.schema,
                input.append_only,
            )?;
            // Connects now, so that a wrong URL, password or table fails
            // the statement.
            postgres_sink::prepare_tables(&config, input.schema)
                .await
                .map_err(|e| ConnectorError::Config(e.to_string()))?;
            Box::new(postgres_sink::PostgresSink::new(
                name.to_string(),
                config,
                input.schema.clone(),
            )?)
        }
        "webhook" => {
            let config = webhook_sink::WebhookSinkConfig::from_options(name, options)?;
            Box::new(webhook_sink::WebhookSink::new(
                name.to_string(),
                config,
                context
                    .topics
                    .require_local("a webhook sink (its dead letters)")?
                    .clone(),
            ))
        }
        other => {
            return Err(ConnectorError::Internal(format!(
                "sink connector {other} is listed but not opened"
            )))
        }
    })
}

/// Wall-clock milliseconds since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_connector_is_refused_naming_the_known_ones() {
        let e = connector(ConnectorKind::Sink, "kafka")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("'kafka'") && e.contains("'topic'") && e.contains("'delta'"),
            "{e}"
        );
        assert!(
            !e.contains("'nexmark'"),
            "a source is not offered for sinks: {e}"
        );
    }

    #[test]
    fn every_connector_is_listed_once_and_takes_its_own_name() {
        let mut seen = std::collections::HashSet::new();
        for c in CONNECTORS {
            assert!(seen.insert((c.name, c.kind)), "{} listed twice", c.name);
            if c.kind == ConnectorKind::Sink {
                assert!(
                    c.options.iter().any(|o| o.name == "connector"),
                    "{}",
                    c.name
                );
            }
        }
    }
}
