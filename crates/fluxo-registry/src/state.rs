//! The registry's state in memory, changed only by [`State::apply`], the
//! one function both a live write and the replay of `_schemas` go through,
//! so a restart rebuilds exactly what was acknowledged.
//!
//! Invariants:
//! - every version entry's id is in `schemas`, and every id in `schemas` is
//!   used by at least one version entry (live or soft-deleted);
//! - `by_identity` maps each schema in `schemas` to its id and back;
//! - `max_id` is at least every id ever given, so new ids are never reused.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::compat::CompatibilityLevel;
use crate::error::{RegistryError, Result};
use crate::log::{Change, VersionRecord};
use crate::schema::{ParsedSchema, RegisteredSchema, SchemaReference, SchemaType};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct VersionEntry {
    pub(crate) id: i32,
    pub(crate) deleted: bool,
}

/// A version asked for: a number or the latest live one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionSpec {
    Latest,
    Number(i32),
}

impl VersionSpec {
    /// Confluent's forms: `latest`, `-1` (also latest) or 1..=2^31-1.
    pub fn parse(s: &str) -> Result<VersionSpec> {
        if s.eq_ignore_ascii_case("latest") {
            return Ok(VersionSpec::Latest);
        }
        match s.parse::<i32>() {
            Ok(-1) => Ok(VersionSpec::Latest),
            Ok(n) if n >= 1 => Ok(VersionSpec::Number(n)),
            _ => Err(RegistryError::InvalidVersion(s.to_string())),
        }
    }
}

impl std::fmt::Display for VersionSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VersionSpec::Latest => f.write_str("latest"),
            VersionSpec::Number(n) => write!(f, "{n}"),
        }
    }
}

#[derive(Default)]
pub(crate) struct State {
    pub(crate) subjects: BTreeMap<String, BTreeMap<i32, VersionEntry>>,
    pub(crate) schemas: HashMap<i32, Arc<RegisteredSchema>>,
    pub(crate) by_identity: HashMap<String, i32>,
    pub(crate) max_id: i32,
    pub(crate) global_level: Option<CompatibilityLevel>,
    pub(crate) subject_levels: BTreeMap<String, CompatibilityLevel>,
}

impl State {
    /// Applies one change. A version whose schema is not known yet is
    /// parsed here (on replay); a live write inserts its parsed schema with
    /// [`State::insert_schema`] first. A schema that no longer parses is
    /// logged and skipped rather than stopping the server.
    pub(crate) fn apply(&mut self, change: Change) {
        match change {
            Change::PutVersion(v) => {
                if !self.schemas.contains_key(&v.id) {
                    match self.parse_record(&v) {
                        Ok(parsed) => self.insert_schema(parsed.with_id(v.id)),
                        Err(e) => {
                            tracing::warn!(
                                subject = %v.subject,
                                version = v.version,
                                id = v.id,
                                "skipping a stored schema that does not parse: {e}"
                            );
                            self.max_id = self.max_id.max(v.id);
                            return;
                        }
                    }
                }
                self.max_id = self.max_id.max(v.id);
                self.subjects.entry(v.subject).or_default().insert(
                    v.version,
                    VersionEntry {
                        id: v.id,
                        deleted: v.deleted,
                    },
                );
            }
            Change::RemoveVersion { subject, version } => {
                let Some(versions) = self.subjects.get_mut(&subject) else {
                    return;
                };
                let Some(entry) = versions.remove(&version) else {
                    return;
                };
                if versions.is_empty() {
                    self.subjects.remove(&subject);
                }
                if !self.id_in_use(entry.id) {
                    if let Some(schema) = self.schemas.remove(&entry.id) {
                        self.by_identity.remove(&schema.identity);
                    }
                }
            }
            Change::SetConfig {
                subject: None,
                level,
            } => self.global_level = level,
            Change::SetConfig {
                subject: Some(subject),
                level: Some(level),
            } => {
                self.subject_levels.insert(subject, level);
            }
            Change::SetConfig {
                subject: Some(subject),
                level: None,
            } => {
                self.subject_levels.remove(&subject);
            }
            Change::MaxId(id) => self.max_id = self.max_id.max(id),
        }
    }

    pub(crate) fn insert_schema(&mut self, schema: RegisteredSchema) {
        self.max_id = self.max_id.max(schema.id);
        self.by_identity.insert(schema.identity.clone(), schema.id);
        self.schemas.insert(schema.id, Arc::new(schema));
    }

    fn id_in_use(&self, id: i32) -> bool {
        self.subjects
            .values()
            .any(|versions| versions.values().any(|e| e.id == id))
    }

    fn parse_record(&self, v: &VersionRecord) -> Result<ParsedSchema> {
        let dependencies = self.dependencies(&v.references)?;
        ParsedSchema::parse(
            v.schema_type,
            &v.schema,
            v.references.clone(),
            &dependencies,
        )
    }

    /// Parses a schema a client sent: references are checked and pinned to
    /// concrete versions (`-1` means the latest at registration, and a
    /// replay must find the same one).
    pub(crate) fn parse_new(
        &self,
        schema_type: SchemaType,
        text: &str,
        references: Vec<SchemaReference>,
    ) -> Result<ParsedSchema> {
        let references = references
            .into_iter()
            .map(|r| {
                let version = if r.version == -1 {
                    self.latest_live(&r.subject)
                        .map(|(v, _)| v)
                        .ok_or_else(|| {
                            RegistryError::InvalidSchema(format!(
                                "reference {} names subject '{}', which has no versions",
                                r.name, r.subject
                            ))
                        })?
                } else {
                    r.version
                };
                Ok(SchemaReference { version, ..r })
            })
            .collect::<Result<Vec<_>>>()?;
        let dependencies = self.dependencies(&references)?;
        ParsedSchema::parse(schema_type, text, references, &dependencies)
    }

    /// The texts of every schema `references` reach, each once.
    fn dependencies(&self, references: &[SchemaReference]) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        self.collect_dependencies(references, &mut out, &mut seen, 0)?;
        Ok(out)
    }

    fn collect_dependencies(
        &self,
        references: &[SchemaReference],
        out: &mut Vec<String>,
        seen: &mut std::collections::HashSet<i32>,
        depth: usize,
    ) -> Result<()> {
        // References only point to older schemas, so there are no cycles;
        // the bound guards against a hand-written `_schemas` record.
        if depth > 64 {
            return Err(RegistryError::InvalidSchema(
                "references are nested more than 64 deep".to_string(),
            ));
        }
        for r in references {
            let schema = self
                .subjects
                .get(&r.subject)
                .and_then(|versions| versions.get(&r.version))
                .and_then(|e| self.schemas.get(&e.id))
                .ok_or_else(|| {
                    RegistryError::InvalidSchema(format!(
                        "reference {} names subject '{}' version {}, which does not exist",
                        r.name, r.subject, r.version
                    ))
                })?;
            if seen.insert(schema.id) {
                self.collect_dependencies(&schema.references, out, seen, depth + 1)?;
                out.push(schema.text.clone());
            }
        }
        Ok(())
    }

    pub(crate) fn level(&self, subject: &str) -> CompatibilityLevel {
        self.subject_levels
            .get(subject)
            .copied()
            .or(self.global_level)
            .unwrap_or_default()
    }

    /// Versions of `subject`, oldest first; soft-deleted ones only when asked.
    pub(crate) fn versions(
        &self,
        subject: &str,
        deleted: bool,
    ) -> impl Iterator<Item = (i32, VersionEntry)> + '_ {
        self.subjects
            .get(subject)
            .into_iter()
            .flat_map(|v| v.iter())
            .filter(move |(_, e)| deleted || !e.deleted)
            .map(|(v, e)| (*v, *e))
    }

    pub(crate) fn latest_live(&self, subject: &str) -> Option<(i32, VersionEntry)> {
        self.versions(subject, false).last()
    }

    /// The number the next version of `subject` gets: versions are never
    /// reused while any record of the subject remains, soft-deleted or not.
    pub(crate) fn next_version(&self, subject: &str) -> Result<i32> {
        let last = self
            .subjects
            .get(subject)
            .and_then(|v| v.keys().next_back().copied())
            .unwrap_or(0);
        last.checked_add(1).ok_or_else(|| {
            RegistryError::Internal(format!("subject '{subject}' ran out of versions"))
        })
    }

    /// The schemas (ids) that reference `subject` `version` and are still
    /// used by a version entry (a live one unless `deleted`).
    pub(crate) fn referrers(&self, subject: &str, version: i32, deleted: bool) -> Vec<i32> {
        let mut ids: Vec<i32> = self
            .schemas
            .values()
            .filter(|s| {
                s.references
                    .iter()
                    .any(|r| r.subject == subject && r.version == version)
            })
            .map(|s| s.id)
            .filter(|id| {
                self.subjects
                    .values()
                    .flat_map(|v| v.values())
                    .any(|e| e.id == *id && (deleted || !e.deleted))
            })
            .collect();
        ids.sort_unstable();
        ids
    }

    /// A text summary of everything a replay must rebuild, for tests.
    #[cfg(test)]
    pub(crate) fn snapshot(&self) -> String {
        let mut schemas: Vec<_> = self
            .schemas
            .values()
            .map(|s| {
                (
                    s.id,
                    s.text.clone(),
                    s.references.clone(),
                    s.identity.clone(),
                )
            })
            .collect();
        schemas.sort_by_key(|s| s.0);
        format!(
            "subjects={:?}\nschemas={schemas:?}\nmax_id={}\nglobal={:?}\nlevels={:?}",
            self.subjects, self.max_id, self.global_level, self.subject_levels
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_like_confluent() {
        assert_eq!(VersionSpec::parse("latest").unwrap(), VersionSpec::Latest);
        assert_eq!(VersionSpec::parse("-1").unwrap(), VersionSpec::Latest);
        assert_eq!(VersionSpec::parse("3").unwrap(), VersionSpec::Number(3));
        for bad in ["0", "-2", "x", "2147483648", ""] {
            assert_eq!(
                VersionSpec::parse(bad).unwrap_err().error_code(),
                42202,
                "{bad}"
            );
        }
    }
}
