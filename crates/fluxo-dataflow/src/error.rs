//! The one error type of the dataflow. An operator fails either because it
//! cannot be built for what the planner asked (`Plan`), because the data it
//! runs over is not what it expects (`Execution`), on a checkpoint file
//! (`Io`), or through a bug (`Internal`); the SQL engine maps each to its
//! own kinds.

use datafusion::error::DataFusionError;

#[derive(Debug, thiserror::Error)]
pub enum DataflowError {
    /// The operator cannot run these expressions or types.
    #[error("{0}")]
    Plan(String),
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

impl DataflowError {
    pub fn io(path: impl std::fmt::Display, source: std::io::Error) -> DataflowError {
        DataflowError::Io {
            path: path.to_string(),
            source,
        }
    }
}

impl From<DataFusionError> for DataflowError {
    fn from(e: DataFusionError) -> DataflowError {
        match e {
            DataFusionError::Plan(m) => DataflowError::Plan(m),
            DataFusionError::NotImplemented(m) => {
                DataflowError::Plan(format!("not supported: {m}"))
            }
            DataFusionError::Internal(m) => DataflowError::Internal(m),
            other => DataflowError::Execution(other.strip_backtrace()),
        }
    }
}

impl From<arrow::error::ArrowError> for DataflowError {
    fn from(e: arrow::error::ArrowError) -> DataflowError {
        DataflowError::Execution(e.to_string())
    }
}

pub type Result<T, E = DataflowError> = std::result::Result<T, E>;
