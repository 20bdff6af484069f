//! Compatibility levels and the check a new schema must pass against the
//! versions already under its subject.
//!
//! The direction follows Confluent: BACKWARD means consumers on the new
//! schema can read what the old one wrote (the new schema is the reader),
//! FORWARD that consumers still on the old schema can read what the new
//! one writes (the old schema is the reader), FULL both. Plain levels check
//! against the latest live version, `_TRANSITIVE` ones against every live
//! version. The reader/writer test itself is apache-avro's.

use std::fmt;
use std::str::FromStr;

use apache_avro::schema_compatibility::{Compatibility, SchemaCompatibility};
use apache_avro::Schema;
use serde::{Deserialize, Serialize};

use crate::error::RegistryError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CompatibilityLevel {
    None,
    #[default]
    Backward,
    BackwardTransitive,
    Forward,
    ForwardTransitive,
    Full,
    FullTransitive,
}

impl CompatibilityLevel {
    pub fn as_str(self) -> &'static str {
        use CompatibilityLevel::*;
        match self {
            None => "NONE",
            Backward => "BACKWARD",
            BackwardTransitive => "BACKWARD_TRANSITIVE",
            Forward => "FORWARD",
            ForwardTransitive => "FORWARD_TRANSITIVE",
            Full => "FULL",
            FullTransitive => "FULL_TRANSITIVE",
        }
    }

    fn transitive(self) -> bool {
        use CompatibilityLevel::*;
        matches!(
            self,
            BackwardTransitive | ForwardTransitive | FullTransitive
        )
    }

    /// Whether the new schema must read what older versions wrote.
    fn backward(self) -> bool {
        use CompatibilityLevel::*;
        matches!(self, Backward | BackwardTransitive | Full | FullTransitive)
    }

    /// Whether older versions must read what the new schema writes.
    fn forward(self) -> bool {
        use CompatibilityLevel::*;
        matches!(self, Forward | ForwardTransitive | Full | FullTransitive)
    }

    /// Checks `new` against `previous` (live versions, oldest first) and
    /// returns why it is incompatible; empty means compatible.
    pub fn check(self, new: &Schema, previous: &[&Schema]) -> Vec<String> {
        let against: &[&Schema] = if self.transitive() {
            previous
        } else {
            match previous.last() {
                Some(_) => &previous[previous.len() - 1..],
                None => &[],
            }
        };
        let mut messages = Vec::new();
        for old in against {
            if self.backward() {
                if let Err(m) = can_read(old, new) {
                    messages.push(format!(
                        "the new schema cannot read data written by an older one: {m}"
                    ));
                }
            }
            if self.forward() {
                if let Err(m) = can_read(new, old) {
                    messages.push(format!(
                        "an older schema cannot read data written by the new one: {m}"
                    ));
                }
            }
        }
        messages
    }
}

/// Whether `reader` reads everything `writer` writes. A partial match (a
/// writer's union branch the reader lacks) fails, as in Avro's Java
/// checker: some records would not decode.
fn can_read(writer: &Schema, reader: &Schema) -> Result<(), String> {
    match SchemaCompatibility::can_read(writer, reader) {
        Ok(Compatibility::Full) => Ok(()),
        Ok(Compatibility::Partial) => {
            Err("a union branch of the writer has no match in the reader".to_string())
        }
        Err(e) => Err(format!("{e:?}")),
    }
}

impl fmt::Display for CompatibilityLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CompatibilityLevel {
    type Err = RegistryError;

    /// Confluent's clients send the names upper case; people typing curl
    /// commands do not always.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        use CompatibilityLevel::*;
        Ok(match s.to_ascii_uppercase().as_str() {
            "NONE" => None,
            "BACKWARD" => Backward,
            "BACKWARD_TRANSITIVE" => BackwardTransitive,
            "FORWARD" => Forward,
            "FORWARD_TRANSITIVE" => ForwardTransitive,
            "FULL" => Full,
            "FULL_TRANSITIVE" => FullTransitive,
            _ => return Err(RegistryError::InvalidCompatibilityLevel(s.to_string())),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use CompatibilityLevel::*;

    fn parse(s: &str) -> Schema {
        Schema::parse_str(s).unwrap()
    }

    fn record(fields: &str) -> Schema {
        parse(&format!(
            r#"{{"type":"record","name":"User","fields":[{fields}]}}"#
        ))
    }

    #[test]
    fn names_round_trip_and_bad_names_are_42203() {
        for level in [
            None,
            Backward,
            BackwardTransitive,
            Forward,
            ForwardTransitive,
            Full,
            FullTransitive,
        ] {
            assert_eq!(level.as_str().parse::<CompatibilityLevel>().unwrap(), level);
        }
        assert_eq!("full".parse::<CompatibilityLevel>().unwrap(), Full);
        let err = "SIDEWAYS".parse::<CompatibilityLevel>().unwrap_err();
        assert_eq!(err.error_code(), 42203);
        assert_eq!(CompatibilityLevel::default(), Backward);
    }

    #[test]
    fn backward_allows_an_added_field_with_a_default_but_not_without() {
        let v1 = record(r#"{"name":"id","type":"long"}"#);
        let with_default =
            record(r#"{"name":"id","type":"long"},{"name":"email","type":"string","default":""}"#);
        let without_default =
            record(r#"{"name":"id","type":"long"},{"name":"email","type":"string"}"#);
        assert!(Backward.check(&with_default, &[&v1]).is_empty());
        assert!(!Backward.check(&without_default, &[&v1]).is_empty());
        // Forward: the old schema ignores the new field, so both pass.
        assert!(Forward.check(&without_default, &[&v1]).is_empty());
        // Removing a field without a default breaks forward, not backward.
        assert!(Backward.check(&v1, &[&without_default]).is_empty());
        assert!(!Forward.check(&v1, &[&without_default]).is_empty());
        assert!(!Full.check(&v1, &[&without_default]).is_empty());
        assert!(Full.check(&with_default, &[&v1]).is_empty());
        assert!(None.check(&parse(r#""string""#), &[&v1]).is_empty());
    }

    #[test]
    fn transitive_levels_check_every_version_plain_ones_only_the_latest() {
        // v1 has no email; v2 adds it with a default; v3 drops the default.
        // v3 reads v2's data (email is always there) but not v1's.
        let v1 = record(r#"{"name":"id","type":"long"}"#);
        let v2 =
            record(r#"{"name":"id","type":"long"},{"name":"email","type":"string","default":""}"#);
        let v3 = record(r#"{"name":"id","type":"long"},{"name":"email","type":"string"}"#);
        assert!(Backward.check(&v3, &[&v1, &v2]).is_empty());
        assert!(!BackwardTransitive.check(&v3, &[&v1, &v2]).is_empty());
        assert!(Full.check(&v3, &[&v1, &v2]).is_empty());
        assert!(!FullTransitive.check(&v3, &[&v1, &v2]).is_empty());
        // Forward transitive: v1 (reader) must read what the new one writes.
        let v1_needs_name =
            record(r#"{"name":"id","type":"long"},{"name":"name","type":"string"}"#);
        let v2_keeps_name = v1_needs_name.clone();
        let v3_drops_name = record(r#"{"name":"id","type":"long"}"#);
        assert!(!Forward
            .check(&v3_drops_name, &[&v1_needs_name, &v2_keeps_name])
            .is_empty());
        assert!(ForwardTransitive
            .check(&v2_keeps_name, &[&v1_needs_name])
            .is_empty());
        assert!(
            Backward.check(&v1, &[]).is_empty(),
            "nothing to be compatible with"
        );
    }

    #[test]
    fn a_narrowed_union_is_incompatible() {
        let wide = record(r#"{"name":"v","type":["null","string"],"default":null}"#);
        let narrow = record(r#"{"name":"v","type":"string"}"#);
        assert!(!Backward.check(&narrow, &[&wide]).is_empty());
        assert!(Backward.check(&wide, &[&narrow]).is_empty());
        let int_to_long = (
            record(r#"{"name":"n","type":"int"}"#),
            record(r#"{"name":"n","type":"long"}"#),
        );
        assert!(Backward.check(&int_to_long.1, &[&int_to_long.0]).is_empty());
        assert!(!Backward.check(&int_to_long.0, &[&int_to_long.1]).is_empty());
    }
}
