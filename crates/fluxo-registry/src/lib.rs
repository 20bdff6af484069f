//! fluxo's schema registry: Confluent's Schema Registry REST API in front
//! of Avro schemas kept in fluxo's own log.
//!
//! Producers and consumers that use Confluent's serializers (Java, librdkafka,
//! confluent-kafka-python, ...) point their `schema.registry.url` at
//! `fluxo serve --registry-addr` and work unchanged: a schema is registered
//! under a *subject* (usually `<topic>-value`), gets a global *id* that
//! every message carries in its 5-byte prefix, and evolves through
//! *versions* checked against the subject's compatibility level.
//!
//! Main types:
//! - [`SchemaRegistry`]: a cheaply cloneable handle (an `Arc`) with the
//!   operations, used by the HTTP front ([`serve`]) and by the SQL engine
//!   to decode Avro records ([`SchemaRegistry::schema_by_id`],
//!   [`SchemaRegistry::latest`]) and to register the schema of what a sink
//!   writes ([`SchemaRegistry::register`]);
//! - [`RegisteredSchema`]: a schema with its id, text, references and the
//!   parsed `apache_avro::Schema`;
//! - [`CompatibilityLevel`] and its check, on apache-avro's
//!   reader/writer compatibility.
//!
//! Invariants:
//! - ids are global and never reused: an identical schema (same parsed
//!   form, defaults included, and same references) has one id whatever
//!   the subject, and a hard-deleted id is not handed out again;
//! - a version number is never reused while any record of its subject
//!   remains; a version is hard-deleted only after a soft delete;
//! - a change is acknowledged only after its record in `_schemas` is
//!   fsynced, and the state in memory is what replaying `_schemas` gives
//!   (both go through one `apply`), so a crash loses nothing that was
//!   acknowledged and changes no id.
//!
//! Only Avro is supported; JSON Schema and Protobuf are refused with
//! 42201.
//!
//! ```no_run
//! # async fn example(store: &fluxo_log::LogStore) -> Result<(), fluxo_registry::RegistryError> {
//! let registry = fluxo_registry::SchemaRegistry::open(store)?;
//! let id = registry
//!     .register("orders-value", r#"{"type":"record","name":"Order","fields":[{"name":"id","type":"long"}]}"#)
//!     .await?;
//! let schema = registry.schema_by_id(id).expect("just registered");
//! assert_eq!(schema.id, id);
//! # Ok(()) }
//! ```

mod compat;
mod error;
mod http;
mod log;
mod registry;
mod schema;
mod state;

pub use compat::CompatibilityLevel;
pub use error::{RegistryError, Result};
pub use http::{router, serve, RegistryServer};
pub use log::SCHEMAS_TOPIC;
pub use registry::{NewSchema, SchemaRegistry, SubjectVersion};
pub use schema::{RegisteredSchema, SchemaReference, SchemaType};
pub use state::VersionSpec;

#[cfg(test)]
mod tests;
