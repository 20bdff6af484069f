//! The one error type of the SQL engine. Its variants say whose fault an
//! error is, so that each front can map it: a user's mistake becomes HTTP 400
//! or a SQLSTATE of class 42, a missing object 404, an engine fault 500.

use datafusion::error::DataFusionError;

#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    /// The statement does not parse. The message names the position.
    #[error("syntax error: {0}")]
    Syntax(String),
    /// The statement parses but cannot be planned or is not supported.
    #[error("{0}")]
    Plan(String),
    #[error("{kind} {name} does not exist")]
    NotFound { kind: &'static str, name: String },
    #[error("{kind} {name} already exists")]
    AlreadyExists { kind: &'static str, name: String },
    /// Refused because of what depends on the object.
    #[error("{0}")]
    InUse(String),
    /// A query failed while running.
    #[error("{0}")]
    Execution(String),
    #[error("i/o error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("internal error: {0}. This is a bug in fluxo; please report it")]
    Internal(String),
}

impl SqlError {
    /// Whether the caller's statement is at fault (as opposed to the engine).
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            SqlError::Syntax(_)
                | SqlError::Plan(_)
                | SqlError::NotFound { .. }
                | SqlError::AlreadyExists { .. }
                | SqlError::InUse(_)
        )
    }

    /// The SQLSTATE a Postgres client expects for this error.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            SqlError::Syntax(_) => "42601",
            SqlError::Plan(_) => "42000",
            SqlError::NotFound { .. } => "42P01",
            SqlError::AlreadyExists { .. } => "42P07",
            SqlError::InUse(_) => "2BP01",
            SqlError::Execution(_) => "22000",
            SqlError::Io { .. } => "58030",
            SqlError::Internal(_) => "XX000",
        }
    }

    pub(crate) fn io(path: impl std::fmt::Display, source: std::io::Error) -> SqlError {
        SqlError::Io {
            path: path.to_string(),
            source,
        }
    }
}

impl From<DataFusionError> for SqlError {
    fn from(e: DataFusionError) -> SqlError {
        match e {
            DataFusionError::SQL(e, _) => SqlError::Syntax(e.to_string()),
            DataFusionError::Plan(m) => SqlError::Plan(m),
            DataFusionError::SchemaError(e, _) => SqlError::Plan(e.to_string()),
            DataFusionError::NotImplemented(m) => SqlError::Plan(format!("not supported: {m}")),
            DataFusionError::Context(ctx, inner) => match SqlError::from(*inner) {
                SqlError::Plan(m) => SqlError::Plan(format!("{ctx}: {m}")),
                SqlError::Syntax(m) => SqlError::Syntax(format!("{ctx}: {m}")),
                SqlError::Execution(m) => SqlError::Execution(format!("{ctx}: {m}")),
                other => other,
            },
            DataFusionError::Internal(m) => SqlError::Internal(m),
            DataFusionError::Diagnostic(_, inner) => SqlError::from(*inner),
            DataFusionError::Shared(inner) => match inner.as_ref() {
                DataFusionError::Plan(m) => SqlError::Plan(m.clone()),
                other => SqlError::Execution(other.to_string()),
            },
            other => SqlError::Execution(other.strip_backtrace()),
        }
    }
}

impl From<fluxo_dataflow::error::DataflowError> for SqlError {
    fn from(e: fluxo_dataflow::error::DataflowError) -> SqlError {
        use fluxo_dataflow::error::DataflowError;
        match e {
            DataflowError::Plan(m) => SqlError::Plan(m),
            DataflowError::Execution(m) => SqlError::Execution(m),
            DataflowError::Io { path, source } => SqlError::Io { path, source },
            DataflowError::Internal(m) => SqlError::Internal(m),
        }
    }
}

impl From<fluxo_connectors::ConnectorError> for SqlError {
    fn from(e: fluxo_connectors::ConnectorError) -> SqlError {
        use fluxo_connectors::ConnectorError;
        match e {
            ConnectorError::Config(m) => SqlError::Plan(m),
            ConnectorError::Execution(m) => SqlError::Execution(m),
            ConnectorError::Io { path, source } => SqlError::Io { path, source },
            ConnectorError::Internal(m) => SqlError::Internal(m),
        }
    }
}

impl From<arrow::error::ArrowError> for SqlError {
    fn from(e: arrow::error::ArrowError) -> SqlError {
        SqlError::Execution(e.to_string())
    }
}

impl From<datafusion::sql::sqlparser::parser::ParserError> for SqlError {
    fn from(e: datafusion::sql::sqlparser::parser::ParserError) -> SqlError {
        use datafusion::sql::sqlparser::parser::ParserError;
        match e {
            ParserError::ParserError(m) | ParserError::TokenizerError(m) => SqlError::Syntax(m),
            ParserError::RecursionLimitExceeded => {
                SqlError::Syntax("statement nested too deeply".into())
            }
        }
    }
}

pub type Result<T, E = SqlError> = std::result::Result<T, E>;

/// `plan_err!("...")` builds an `Err(SqlError::Plan(..))`.
#[macro_export]
macro_rules! plan_err {
    ($($arg:tt)*) => { Err($crate::SqlError::Plan(format!($($arg)*))) };
}
