//! fluxo's schema registry as the SQL engine sees it: the Avro codec in
//! `fluxo-connectors` asks for schemas through a trait, since the engine
//! sits below the registry's front and cannot import it.

use std::collections::HashMap;
use std::sync::Arc;

use fluxo_sql::connectors::avro::{AvroSchemas, Schema as AvroSchema};

/// The schema registry as the SQL engine's Avro sources and sinks see it.
pub struct RegistrySchemas {
    registry: fluxo_registry::SchemaRegistry,
    /// Parsed schemas by id: an id's schema never changes, and readers ask
    /// for it once per chunk of records.
    by_id: parking_lot::Mutex<HashMap<i32, Arc<AvroSchema>>>,
}

impl RegistrySchemas {
    pub fn new(registry: fluxo_registry::SchemaRegistry) -> RegistrySchemas {
        RegistrySchemas {
            registry,
            by_id: Default::default(),
        }
    }
}

impl AvroSchemas for RegistrySchemas {
    fn schema(&self, id: i32) -> Option<Arc<AvroSchema>> {
        if let Some(s) = self.by_id.lock().get(&id) {
            return Some(s.clone());
        }
        let schema = Arc::new(self.registry.schema_by_id(id)?.resolved.clone());
        self.by_id.lock().insert(id, schema.clone());
        Some(schema)
    }

    fn latest(&self, subject: &str) -> Option<(i32, Arc<AvroSchema>)> {
        let latest = self.registry.latest(subject)?;
        Some((latest.schema.id, Arc::new(latest.schema.resolved.clone())))
    }

    fn register<'a>(
        &'a self,
        subject: &'a str,
        text: &'a str,
    ) -> futures::future::BoxFuture<'a, fluxo_sql::connectors::Result<i32>> {
        Box::pin(async move {
            self.registry.register(subject, text).await.map_err(|e| {
                fluxo_sql::connectors::ConnectorError::Config(format!(
                    "the schema registry refused the schema for {subject}: {e}"
                ))
            })
        })
    }
}
