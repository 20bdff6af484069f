//! [`SchemaRegistry`]: the operations of Confluent's API on the state,
//! made durable through `_schemas`.
//!
//! Writers take one async lock, held across the fsync, so two concurrent
//! registrations of one schema cannot both get a new version; the state
//! itself sits behind a short-lived read/write lock that readers (and the
//! SQL engine's decoders) take without waiting for disks. A change is
//! applied in memory only after it is on disk, and through the same
//! function the replay uses.

use std::sync::Arc;

use fluxo_log::LogStore;
use parking_lot::RwLock;

use crate::compat::CompatibilityLevel;
use crate::error::{RegistryError, Result};
use crate::log::{Change, SchemasLog, VersionRecord};
use crate::schema::{ParsedSchema, RegisteredSchema, SchemaReference, SchemaType};
use crate::state::{State, VersionEntry, VersionSpec};

/// A schema as a client submits it.
#[derive(Debug, Clone, Default)]
pub struct NewSchema {
    pub schema_type: SchemaType,
    pub text: String,
    pub references: Vec<SchemaReference>,
}

impl NewSchema {
    pub fn avro(text: impl Into<String>) -> NewSchema {
        NewSchema {
            schema_type: SchemaType::Avro,
            text: text.into(),
            references: Vec::new(),
        }
    }
}

/// One version of a subject.
#[derive(Debug, Clone)]
pub struct SubjectVersion {
    pub subject: String,
    pub version: i32,
    pub deleted: bool,
    pub schema: Arc<RegisteredSchema>,
}

/// A cheaply cloneable handle on the registry: clones share one state.
#[derive(Clone)]
pub struct SchemaRegistry {
    inner: Arc<Inner>,
}

struct Inner {
    state: RwLock<State>,
    log: SchemasLog,
    writer: tokio::sync::Mutex<()>,
}

impl SchemaRegistry {
    /// Opens (creating if needed) `_schemas` in `store` and replays it.
    /// Blocking: reads the whole topic.
    pub fn open(store: &LogStore) -> Result<SchemaRegistry> {
        let log = SchemasLog::open(store)?;
        let mut state = State::default();
        for change in log.load()? {
            state.apply(change);
        }
        Ok(SchemaRegistry {
            inner: Arc::new(Inner {
                state: RwLock::new(state),
                log,
                writer: tokio::sync::Mutex::new(()),
            }),
        })
    }

    // ---- reads -------------------------------------------------------

    /// The schema with `id`, as a Confluent-framed message names it. Still
    /// there after its versions are soft-deleted (old messages need it).
    pub fn schema_by_id(&self, id: i32) -> Option<Arc<RegisteredSchema>> {
        self.inner.state.read().schemas.get(&id).cloned()
    }

    /// The newest live version of `subject`.
    pub fn latest(&self, subject: &str) -> Option<SubjectVersion> {
        self.version(subject, VersionSpec::Latest, false).ok()
    }

    /// One version of `subject`: 40401 if the subject has no (live, unless
    /// `deleted`) versions, 40402 if this version is not among them.
    pub fn version(
        &self,
        subject: &str,
        spec: VersionSpec,
        deleted: bool,
    ) -> Result<SubjectVersion> {
        let state = self.inner.state.read();
        if state.versions(subject, deleted).next().is_none() {
            return Err(RegistryError::SubjectNotFound(subject.to_string()));
        }
        let found = match spec {
            VersionSpec::Latest => state.versions(subject, deleted).last(),
            VersionSpec::Number(n) => state.versions(subject, deleted).find(|(v, _)| *v == n),
        };
        let (version, entry) =
            found.ok_or_else(|| RegistryError::VersionNotFound(spec.to_string()))?;
        subject_version(&state, subject, version, entry)
    }

    /// The version numbers of `subject`, oldest first.
    pub fn versions(&self, subject: &str, deleted: bool) -> Result<Vec<i32>> {
        let versions: Vec<i32> = self
            .inner
            .state
            .read()
            .versions(subject, deleted)
            .map(|(v, _)| v)
            .collect();
        if versions.is_empty() {
            return Err(RegistryError::SubjectNotFound(subject.to_string()));
        }
        Ok(versions)
    }

    /// Subjects with a live version; with `deleted` also those whose every
    /// version is soft-deleted; with `deleted_only` only those.
    pub fn subjects(&self, deleted: bool, deleted_only: bool) -> Vec<String> {
        let state = self.inner.state.read();
        state
            .subjects
            .iter()
            .filter(|(_, versions)| {
                let live = versions.values().any(|e| !e.deleted);
                if deleted_only {
                    versions.values().any(|e| e.deleted)
                } else {
                    live || deleted
                }
            })
            .map(|(s, _)| s.clone())
            .collect()
    }

    /// The (subject, version) pairs that use schema `id`.
    pub fn versions_of(&self, id: i32, deleted: bool) -> Result<Vec<(String, i32)>> {
        let state = self.inner.state.read();
        if !state.schemas.contains_key(&id) {
            return Err(RegistryError::SchemaNotFound(Some(id)));
        }
        Ok(state
            .subjects
            .iter()
            .flat_map(|(s, versions)| {
                versions
                    .iter()
                    .filter(|(_, e)| e.id == id && (deleted || !e.deleted))
                    .map(|(v, _)| (s.clone(), *v))
            })
            .collect())
    }

    /// Ids of the live schemas that reference `subject`'s `spec`.
    pub fn referenced_by(&self, subject: &str, spec: VersionSpec) -> Result<Vec<i32>> {
        let v = self.version(subject, spec, false)?;
        Ok(self.inner.state.read().referrers(subject, v.version, false))
    }

    /// The version of `subject` holding `schema`: 40401 without the subject,
    /// 40403 when no version holds it.
    pub fn lookup(
        &self,
        subject: &str,
        schema: NewSchema,
        deleted: bool,
    ) -> Result<SubjectVersion> {
        let state = self.inner.state.read();
        if state.versions(subject, deleted).next().is_none() {
            return Err(RegistryError::SubjectNotFound(subject.to_string()));
        }
        let parsed = state.parse_new(schema.schema_type, &schema.text, schema.references)?;
        let found = state
            .versions(subject, deleted)
            .filter(|(_, e)| state.by_identity.get(&parsed.identity) == Some(&e.id))
            .last();
        let (version, entry) = found.ok_or(RegistryError::SchemaNotFound(None))?;
        subject_version(&state, subject, version, entry)
    }

    /// Why `schema` could not be registered under `subject` (empty when it
    /// could): against `spec` only when given, else against what the
    /// subject's level asks for.
    pub fn check_compatibility(
        &self,
        subject: &str,
        spec: Option<VersionSpec>,
        schema: NewSchema,
    ) -> Result<Vec<String>> {
        let state = self.inner.state.read();
        let parsed = state.parse_new(schema.schema_type, &schema.text, schema.references)?;
        let level = state.level(subject);
        match spec {
            Some(spec) => {
                drop(state);
                let against = self.version(subject, spec, false)?;
                Ok(level.check(&parsed.resolved, &[&against.schema.resolved]))
            }
            None => Ok(incompatibilities(&state, subject, level, &parsed)),
        }
    }

    pub fn global_level(&self) -> CompatibilityLevel {
        self.inner.state.read().global_level.unwrap_or_default()
    }

    /// The subject's own level, if one is set.
    pub fn subject_level(&self, subject: &str) -> Option<CompatibilityLevel> {
        self.inner.state.read().subject_levels.get(subject).copied()
    }

    /// The level that applies to `subject`: its own, else the global one.
    pub fn effective_level(&self, subject: &str) -> CompatibilityLevel {
        self.inner.state.read().level(subject)
    }

    // ---- writes ------------------------------------------------------

    /// Registers an Avro schema text under `subject` and returns its id.
    pub async fn register(&self, subject: &str, schema_text: &str) -> Result<i32> {
        self.register_schema(subject, NewSchema::avro(schema_text))
            .await
            .map(|(id, _)| id)
    }

    /// Registers `schema` under `subject`; returns (id, version). A schema
    /// already live under the subject returns its id and version unchanged;
    /// one registered elsewhere (or soft-deleted here) keeps its id and
    /// gets a new version, after the compatibility check.
    pub async fn register_schema(&self, subject: &str, schema: NewSchema) -> Result<(i32, i32)> {
        if subject.is_empty() {
            return Err(RegistryError::BadRequest(
                "the subject name is empty".into(),
            ));
        }
        let _writer = self.inner.writer.lock().await;
        let (parsed, id, version, changes) = {
            let state = self.inner.state.read();
            let parsed = state.parse_new(schema.schema_type, &schema.text, schema.references)?;
            let existing = state.by_identity.get(&parsed.identity).copied();
            if let Some(id) = existing {
                if let Some((version, _)) = state
                    .versions(subject, false)
                    .filter(|(_, e)| e.id == id)
                    .last()
                {
                    return Ok((id, version));
                }
            }
            let level = state.level(subject);
            let messages = incompatibilities(&state, subject, level, &parsed);
            if !messages.is_empty() {
                return Err(RegistryError::Incompatible {
                    subject: subject.to_string(),
                    messages,
                });
            }
            let id = match existing {
                Some(id) => id,
                None => state.max_id.checked_add(1).ok_or_else(|| {
                    RegistryError::Internal("the registry ran out of schema ids".into())
                })?,
            };
            let version = state.next_version(subject)?;
            let mut changes = vec![Change::PutVersion(VersionRecord {
                subject: subject.to_string(),
                version,
                id,
                schema_type: parsed.schema_type,
                schema: parsed.text.clone(),
                references: parsed.references.clone(),
                deleted: false,
            })];
            if id > state.max_id {
                changes.push(Change::MaxId(id));
            }
            (parsed, id, version, changes)
        };
        self.commit(changes, Some((id, parsed))).await?;
        Ok((id, version))
    }

    /// Deletes `subject`. Soft (the default) hides every live version and
    /// drops the subject's level; permanent removes versions already
    /// soft-deleted. Returns the versions deleted.
    pub async fn delete_subject(&self, subject: &str, permanent: bool) -> Result<Vec<i32>> {
        let _writer = self.inner.writer.lock().await;
        let (versions, changes) = {
            let state = self.inner.state.read();
            let all: Vec<(i32, VersionEntry)> = state.versions(subject, true).collect();
            if all.is_empty() {
                return Err(RegistryError::SubjectNotFound(subject.to_string()));
            }
            let live: Vec<(i32, VersionEntry)> =
                all.iter().filter(|(_, e)| !e.deleted).copied().collect();
            if permanent {
                if !live.is_empty() {
                    return Err(RegistryError::SubjectNotSoftDeleted(subject.to_string()));
                }
                for (v, _) in &all {
                    refuse_if_referenced(&state, subject, *v, true)?;
                }
                let changes = all
                    .iter()
                    .map(|(v, _)| Change::RemoveVersion {
                        subject: subject.to_string(),
                        version: *v,
                    })
                    .collect();
                (all.iter().map(|(v, _)| *v).collect::<Vec<_>>(), changes)
            } else {
                if live.is_empty() {
                    return Err(RegistryError::SubjectSoftDeleted(subject.to_string()));
                }
                for (v, _) in &live {
                    refuse_if_referenced(&state, subject, *v, false)?;
                }
                let mut changes = live
                    .iter()
                    .map(|(v, e)| soft_deleted(&state, subject, *v, *e))
                    .collect::<Result<Vec<_>>>()?;
                if state.subject_levels.contains_key(subject) {
                    changes.push(Change::SetConfig {
                        subject: Some(subject.to_string()),
                        level: None,
                    });
                }
                (live.iter().map(|(v, _)| *v).collect::<Vec<_>>(), changes)
            }
        };
        self.commit(changes, None).await?;
        Ok(versions)
    }

    /// Deletes one version: soft by default; permanent only after a soft
    /// delete. Returns the version number.
    pub async fn delete_version(
        &self,
        subject: &str,
        spec: VersionSpec,
        permanent: bool,
    ) -> Result<i32> {
        let _writer = self.inner.writer.lock().await;
        let (version, change) = {
            let state = self.inner.state.read();
            if state.versions(subject, true).next().is_none() {
                return Err(RegistryError::SubjectNotFound(subject.to_string()));
            }
            let found = match spec {
                // The latest a soft delete can hide is the latest live one.
                VersionSpec::Latest => state.versions(subject, permanent).last(),
                VersionSpec::Number(n) => state.versions(subject, true).find(|(v, _)| *v == n),
            };
            let (version, entry) =
                found.ok_or_else(|| RegistryError::VersionNotFound(spec.to_string()))?;
            if permanent {
                if !entry.deleted {
                    return Err(RegistryError::VersionNotSoftDeleted {
                        subject: subject.to_string(),
                        version,
                    });
                }
                refuse_if_referenced(&state, subject, version, true)?;
                (
                    version,
                    Change::RemoveVersion {
                        subject: subject.to_string(),
                        version,
                    },
                )
            } else {
                if entry.deleted {
                    return Err(RegistryError::VersionSoftDeleted {
                        subject: subject.to_string(),
                        version,
                    });
                }
                refuse_if_referenced(&state, subject, version, false)?;
                (version, soft_deleted(&state, subject, version, entry)?)
            }
        };
        self.commit(vec![change], None).await?;
        Ok(version)
    }

    /// Sets the global level (`subject` None) or a subject's.
    pub async fn set_level(&self, subject: Option<&str>, level: CompatibilityLevel) -> Result<()> {
        let _writer = self.inner.writer.lock().await;
        let change = Change::SetConfig {
            subject: subject.map(str::to_string),
            level: Some(level),
        };
        self.commit(vec![change], None).await
    }

    /// Removes the global level (back to BACKWARD) or a subject's (back to
    /// the global one) and returns the level it had. A subject without its
    /// own level is 40401.
    pub async fn delete_level(&self, subject: Option<&str>) -> Result<CompatibilityLevel> {
        let _writer = self.inner.writer.lock().await;
        let old = {
            let state = self.inner.state.read();
            match subject {
                None => state.global_level.unwrap_or_default(),
                Some(s) => state
                    .subject_levels
                    .get(s)
                    .copied()
                    .ok_or_else(|| RegistryError::SubjectNotFound(s.to_string()))?,
            }
        };
        let change = Change::SetConfig {
            subject: subject.map(str::to_string),
            level: None,
        };
        self.commit(vec![change], None).await?;
        Ok(old)
    }

    /// Writes `changes` durably, then applies them (with the new schema's
    /// parse, so it is not parsed twice). The caller holds the writer lock.
    async fn commit(&self, changes: Vec<Change>, new: Option<(i32, ParsedSchema)>) -> Result<()> {
        self.inner.log.write(&changes).await?;
        let mut state = self.inner.state.write();
        if let Some((id, parsed)) = new {
            if !state.schemas.contains_key(&id) {
                state.insert_schema(parsed.with_id(id));
            }
        }
        for change in changes {
            state.apply(change);
        }
        Ok(())
    }

    #[cfg(test)]
    pub(crate) fn snapshot(&self) -> String {
        self.inner.state.read().snapshot()
    }
}

fn subject_version(
    state: &State,
    subject: &str,
    version: i32,
    entry: VersionEntry,
) -> Result<SubjectVersion> {
    let schema = state.schemas.get(&entry.id).cloned().ok_or_else(|| {
        RegistryError::Internal(format!(
            "subject '{subject}' version {version} has no schema {}",
            entry.id
        ))
    })?;
    Ok(SubjectVersion {
        subject: subject.to_string(),
        version,
        deleted: entry.deleted,
        schema,
    })
}

/// Why `parsed` cannot join `subject`'s live versions under `level`.
fn incompatibilities(
    state: &State,
    subject: &str,
    level: CompatibilityLevel,
    parsed: &ParsedSchema,
) -> Vec<String> {
    let previous: Vec<&apache_avro::Schema> = state
        .versions(subject, false)
        .filter_map(|(_, e)| state.schemas.get(&e.id))
        .map(|s| &s.resolved)
        .collect();
    level.check(&parsed.resolved, &previous)
}

fn soft_deleted(state: &State, subject: &str, version: i32, entry: VersionEntry) -> Result<Change> {
    let schema = state.schemas.get(&entry.id).ok_or_else(|| {
        RegistryError::Internal(format!(
            "subject '{subject}' version {version} has no schema {}",
            entry.id
        ))
    })?;
    Ok(Change::PutVersion(VersionRecord {
        subject: subject.to_string(),
        version,
        id: entry.id,
        schema_type: schema.schema_type,
        schema: schema.text.clone(),
        references: schema.references.clone(),
        deleted: true,
    }))
}

/// A version other schemas still reference cannot go: they would no longer
/// resolve (42206, as Confluent).
fn refuse_if_referenced(state: &State, subject: &str, version: i32, permanent: bool) -> Result<()> {
    if state.referrers(subject, version, permanent).is_empty() {
        Ok(())
    } else {
        Err(RegistryError::ReferenceExists {
            subject: subject.to_string(),
            version,
        })
    }
}
