//! A schema as the registry keeps it: the text a client registered, its
//! parsed Avro form, and the identity that decides when two registrations
//! are "the same schema" (and so share an id).
//!
//! Identity is apache-avro's serialization of the parsed schema, not Avro's
//! Parsing Canonical Form: the latter drops `default`, so adding a default
//! to a field (a real change for compatibility) would look like the same
//! schema. The serialization keeps defaults, docs and logical types while
//! forgetting whitespace and key order. References are part of identity:
//! the same text over different referenced versions is a different schema.

use std::fmt;
use std::str::FromStr;

use apache_avro::Schema;
use serde::{Deserialize, Serialize};

use crate::error::{RegistryError, Result};

/// Only Avro is supported; the type exists so the wire format and the
/// records in `_schemas` already carry Confluent's `schemaType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum SchemaType {
    #[default]
    Avro,
}

impl SchemaType {
    pub const SUPPORTED: &'static [&'static str] = &["AVRO"];

    pub fn as_str(self) -> &'static str {
        match self {
            SchemaType::Avro => "AVRO",
        }
    }
}

impl fmt::Display for SchemaType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SchemaType {
    type Err = RegistryError;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_uppercase().as_str() {
            "AVRO" => Ok(SchemaType::Avro),
            "JSON" | "PROTOBUF" => Err(RegistryError::InvalidSchema(format!(
                "schemaType {s} is not supported: fluxo's registry supports only AVRO"
            ))),
            _ => Err(RegistryError::InvalidSchema(format!(
                "unknown schemaType '{s}': fluxo's registry supports only AVRO"
            ))),
        }
    }
}

/// Another registered schema this one uses by name (Confluent's
/// `references`): the named type `name` is defined by `subject`'s `version`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SchemaReference {
    pub name: String,
    pub subject: String,
    pub version: i32,
}

/// A schema with an id. Identical schemas registered under several subjects
/// share one `RegisteredSchema`.
#[derive(Debug)]
pub struct RegisteredSchema {
    pub id: i32,
    pub schema_type: SchemaType,
    /// The text as first registered, returned to clients as is.
    pub text: String,
    pub references: Vec<SchemaReference>,
    /// The parsed schema; named types from references appear as
    /// `Schema::Ref`, resolved by [`referenced`](Self::referenced).
    pub avro: Schema,
    /// The schemas this one references, directly or not, parsed; pass them
    /// with [`avro`](Self::avro) to apache-avro's `*_schemata` readers.
    pub referenced: Vec<Schema>,
    /// The same schema with every reference inlined: what compatibility
    /// checks compare, and what a reader without the list can use.
    pub resolved: Schema,
    pub(crate) identity: String,
}

/// A schema parsed and ready to be compared or stored, before it has an id.
pub(crate) struct ParsedSchema {
    pub(crate) schema_type: SchemaType,
    pub(crate) text: String,
    pub(crate) references: Vec<SchemaReference>,
    pub(crate) avro: Schema,
    pub(crate) referenced: Vec<Schema>,
    pub(crate) resolved: Schema,
    pub(crate) identity: String,
}

impl ParsedSchema {
    /// Parses `text`; `dependencies` are the texts of every schema it
    /// references, directly or not, dependencies before dependents.
    pub(crate) fn parse(
        schema_type: SchemaType,
        text: &str,
        references: Vec<SchemaReference>,
        dependencies: &[String],
    ) -> Result<ParsedSchema> {
        let SchemaType::Avro = schema_type;
        if text.trim().is_empty() {
            return Err(RegistryError::InvalidSchema("empty schema".to_string()));
        }
        let (avro, referenced) = if dependencies.is_empty() {
            let avro = Schema::parse_str(text)
                .map_err(|e| RegistryError::InvalidSchema(format!("{e}")))?;
            (avro, Vec::new())
        } else {
            Schema::parse_str_with_list(text, dependencies).map_err(|e| {
                RegistryError::InvalidSchema(format!(
                    "{e} (with {} referenced schemas)",
                    dependencies.len()
                ))
            })?
        };
        let mut resolved = avro.clone();
        resolved.denormalize(&referenced).map_err(|e| {
            RegistryError::InvalidSchema(format!("cannot resolve a reference: {e}"))
        })?;
        let canonical = serde_json::to_string(&avro).map_err(|e| {
            RegistryError::Internal(format!("cannot serialize a parsed schema: {e}"))
        })?;
        let refs = serde_json::to_string(&references)
            .map_err(|e| RegistryError::Internal(format!("cannot serialize references: {e}")))?;
        let identity = format!("{}|{canonical}|{refs}", schema_type.as_str());
        Ok(ParsedSchema {
            schema_type,
            text: text.to_string(),
            references,
            avro,
            referenced,
            resolved,
            identity,
        })
    }

    pub(crate) fn with_id(self, id: i32) -> RegisteredSchema {
        RegisteredSchema {
            id,
            schema_type: self.schema_type,
            text: self.text,
            references: self.references,
            avro: self.avro,
            referenced: self.referenced,
            resolved: self.resolved,
            identity: self.identity,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(text: &str) -> String {
        ParsedSchema::parse(SchemaType::Avro, text, Vec::new(), &[])
            .unwrap()
            .identity
    }

    #[test]
    fn identity_ignores_layout_but_not_defaults() {
        let a = r#"{"type":"record","name":"U","fields":[{"name":"a","type":"int"}]}"#;
        let spaced = r#"{ "name": "U", "type": "record",
            "fields": [ { "type": "int", "name": "a" } ] }"#;
        let defaulted =
            r#"{"type":"record","name":"U","fields":[{"name":"a","type":"int","default":0}]}"#;
        assert_eq!(identity(a), identity(spaced));
        assert_ne!(identity(a), identity(defaulted));
        assert_eq!(identity(r#""string""#), identity(r#"{"type":"string"}"#));
    }

    #[test]
    fn invalid_and_unsupported_schemas_are_42201() {
        for bad in ["", "{", r#"{"type":"record","name":"U"}"#, r#""nope""#] {
            let err = ParsedSchema::parse(SchemaType::Avro, bad, Vec::new(), &[])
                .err()
                .unwrap_or_else(|| panic!("{bad:?} parsed"));
            assert_eq!(err.error_code(), 42201, "{bad:?}");
        }
        for t in ["JSON", "PROTOBUF", "XML"] {
            let err = t.parse::<SchemaType>().unwrap_err();
            assert_eq!(err.error_code(), 42201);
            assert!(err.to_string().contains("only AVRO"), "{err}");
        }
        assert_eq!("avro".parse::<SchemaType>().unwrap(), SchemaType::Avro);
    }

    #[test]
    fn references_resolve_and_are_part_of_identity() {
        let address = r#"{"type":"record","name":"Address","namespace":"shop","fields":[{"name":"city","type":"string"}]}"#;
        let user = r#"{"type":"record","name":"User","namespace":"shop","fields":[{"name":"home","type":"Address"}]}"#;
        let reference = SchemaReference {
            name: "shop.Address".into(),
            subject: "address".into(),
            version: 1,
        };
        let parsed = ParsedSchema::parse(
            SchemaType::Avro,
            user,
            vec![reference.clone()],
            &[address.to_string()],
        )
        .unwrap();
        assert_eq!(parsed.referenced.len(), 1);
        let inlined = serde_json::to_string(&parsed.resolved).unwrap();
        assert!(inlined.contains("city"), "{inlined}");
        let other = ParsedSchema::parse(
            SchemaType::Avro,
            user,
            vec![SchemaReference {
                version: 2,
                ..reference
            }],
            &[address.to_string()],
        )
        .unwrap();
        assert_ne!(parsed.identity, other.identity);
        // Without the referenced text the name is unknown.
        assert!(ParsedSchema::parse(SchemaType::Avro, user, Vec::new(), &[]).is_err());
    }
}
