//! The one error type of the connectors. Its variants say whose fault an
//! error is, as the SQL engine's do, so the engine can map them: a wrong
//! option is the user's (HTTP 400), an unreachable peer or a full disk is
//! the run's.

#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// A connector's options are wrong: unknown, missing or malformed.
    #[error("{0}")]
    Config(String),
    /// Writing or reading failed while running (a peer refused, a disk is full).
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

impl ConnectorError {
    pub(crate) fn io(path: impl std::fmt::Display, source: std::io::Error) -> ConnectorError {
        ConnectorError::Io {
            path: path.to_string(),
            source,
        }
    }
}

impl From<arrow::error::ArrowError> for ConnectorError {
    fn from(e: arrow::error::ArrowError) -> ConnectorError {
        ConnectorError::Execution(e.to_string())
    }
}

pub type Result<T, E = ConnectorError> = std::result::Result<T, E>;

impl From<fluxo_dataflow::error::DataflowError> for ConnectorError {
    fn from(e: fluxo_dataflow::error::DataflowError) -> ConnectorError {
        ConnectorError::Execution(e.to_string())
    }
}
