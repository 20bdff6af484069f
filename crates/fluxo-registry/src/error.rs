//! The registry's one error type. Each variant carries Confluent's error
//! code, so the HTTP front answers what Confluent's clients expect and the
//! Rust API tells the engine the same thing in the same words.

use fluxo_log::LogError;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("Subject '{0}' not found.")]
    SubjectNotFound(String),
    #[error("Version {0} not found.")]
    VersionNotFound(String),
    /// With the id asked for, or none for a lookup by content.
    #[error("{}", schema_not_found(.0))]
    SchemaNotFound(Option<i32>),
    #[error("Subject '{0}' was soft deleted.Set permanent=true to delete permanently")]
    SubjectSoftDeleted(String),
    #[error("Subject '{0}' was not deleted first before being permanently deleted")]
    SubjectNotSoftDeleted(String),
    #[error("Subject '{subject}' Version {version} was soft deleted.Set permanent=true to delete permanently")]
    VersionSoftDeleted { subject: String, version: i32 },
    #[error("Subject '{subject}' Version {version} was not deleted first before being permanently deleted")]
    VersionNotSoftDeleted { subject: String, version: i32 },
    #[error("Subject '{0}' does not have subject-level compatibility configured")]
    SubjectConfigNotFound(String),
    #[error("Invalid schema: {0}")]
    InvalidSchema(String),
    #[error(
        "The specified version '{0}' is not a valid version id. Allowed values are between [1, 2^31-1] and the string \"latest\""
    )]
    InvalidVersion(String),
    #[error(
        "Invalid compatibility level '{0}'. Valid values are NONE, BACKWARD, BACKWARD_TRANSITIVE, FORWARD, FORWARD_TRANSITIVE, FULL and FULL_TRANSITIVE"
    )]
    InvalidCompatibilityLevel(String),
    #[error("Invalid mode '{0}': fluxo's registry is always READWRITE")]
    InvalidMode(String),
    #[error("One or more references exist to the schema {{subject={subject},version={version}}}")]
    ReferenceExists { subject: String, version: i32 },
    #[error("Schema being registered is incompatible with an earlier schema for subject \"{subject}\", details: [{}]", .messages.join(", "))]
    Incompatible {
        subject: String,
        messages: Vec<String>,
    },
    /// A request the registry cannot make sense of (malformed JSON, a bad id).
    #[error("{0}")]
    BadRequest(String),
    #[error("Error in the backend data store: {0}")]
    Log(#[from] LogError),
    /// A broken invariant of the registry itself; please report it.
    #[error("Internal error in the schema registry (please report a bug): {0}")]
    Internal(String),
}

fn schema_not_found(id: &Option<i32>) -> String {
    match id {
        Some(id) => format!("Schema {id} not found"),
        None => "Schema not found".to_string(),
    }
}

pub type Result<T, E = RegistryError> = std::result::Result<T, E>;

impl RegistryError {
    /// Confluent's `error_code`: the HTTP status, or the status followed by
    /// two digits that say which kind of that status it is.
    pub fn error_code(&self) -> u32 {
        use RegistryError::*;
        match self {
            SubjectNotFound(_) => 40401,
            VersionNotFound(_) => 40402,
            SchemaNotFound(_) => 40403,
            SubjectSoftDeleted(_) => 40404,
            SubjectNotSoftDeleted(_) => 40405,
            VersionSoftDeleted { .. } => 40406,
            VersionNotSoftDeleted { .. } => 40407,
            SubjectConfigNotFound(_) => 40408,
            InvalidSchema(_) => 42201,
            InvalidVersion(_) => 42202,
            InvalidCompatibilityLevel(_) => 42203,
            InvalidMode(_) => 42204,
            ReferenceExists { .. } => 42206,
            Incompatible { .. } => 409,
            BadRequest(_) => 400,
            Log(_) | Internal(_) => 50001,
        }
    }

    /// The HTTP status that goes with [`error_code`](Self::error_code).
    pub fn http_status(&self) -> u16 {
        let code = self.error_code();
        let status = if code >= 10_000 { code / 100 } else { code };
        // Every code above is built from a valid status; the fallback only
        // guards against a future variant with a typo.
        u16::try_from(status).unwrap_or(500)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_statuses_follow_confluent() {
        let e = RegistryError::SubjectNotFound("s".into());
        assert_eq!((e.error_code(), e.http_status()), (40401, 404));
        assert_eq!(e.to_string(), "Subject 's' not found.");
        let e = RegistryError::Incompatible {
            subject: "s".into(),
            messages: vec!["a".into()],
        };
        assert_eq!((e.error_code(), e.http_status()), (409, 409));
        let e = RegistryError::InvalidSchema("x".into());
        assert_eq!((e.error_code(), e.http_status()), (42201, 422));
        let e = RegistryError::Internal("x".into());
        assert_eq!((e.error_code(), e.http_status()), (50001, 500));
        assert_eq!(
            RegistryError::SchemaNotFound(Some(7)).to_string(),
            "Schema 7 not found"
        );
    }
}
