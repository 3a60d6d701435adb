//! The errors of cutting patches from scans (`prepare`, `inspect`): what failed, and in which
//! file or setting. Reading a scan fails with [`models::Error`] (the file and the fault).
use std::fmt::Display;

/// Errors of the scans crate's commands.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// Settings out of range or that do not go together.
    #[error("{0}")]
    Config(String),
    /// Input that cannot be prepared: the CSVs, the scans, the output folder's contents.
    #[error("{0}")]
    Data(String),
    /// A file operation failed; `what` names the file and the operation.
    #[error("{what}: {source}")]
    File {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// Text that could not be encoded or decoded (YAML, CSV, .npy); `what` names it.
    #[error("{what}: {source}")]
    Format {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The worker threads could not be started (the system's limits): not a bug, not bad input.
    #[error("cannot start {count} threads: {source}")]
    Threads {
        count: usize,
        #[source]
        source: rayon::ThreadPoolBuildError,
    },
    /// An invariant of the code broke: a bug, never bad input.
    #[error("internal error: {0}")]
    Internal(String),
    #[error(transparent)]
    Models(#[from] models::Error),
    #[error("{0}")]
    Csv(#[from] csv::Error),
    #[error("YAML: {0}")]
    Yaml(#[from] yaml_serde::Error),
}

models::errors_through_models!(ScanError);

impl From<csv::IntoInnerError<csv::Writer<Vec<u8>>>> for ScanError {
    fn from(e: csv::IntoInnerError<csv::Writer<Vec<u8>>>) -> Self {
        ScanError::Internal(format!("CSV buffer: {e}"))
    }
}

impl ScanError {
    /// A failed file operation, `what` naming the file and the operation.
    pub fn file(what: String, source: std::io::Error) -> Self {
        ScanError::File { what, source }
    }

    /// A mapper for encoding or decoding errors: `.map_err(ScanError::format("what"))`.
    pub fn format<E: std::error::Error + Send + Sync + 'static>(what: impl Display) -> impl FnOnce(E) -> Self {
        let what = what.to_string();
        move |e| ScanError::Format {
            what,
            source: Box::new(e),
        }
    }
}

/// The scans crate's result.
pub type Result<T, E = ScanError> = std::result::Result<T, E>;
