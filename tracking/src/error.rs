//! What tracking can fail on, each case with its cause kept ([`Error`]).
use std::path::PathBuf;

/// Why something could not be tracked. The folder keeps what was not sent either way.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `--mlflow` / `MLFLOW_TRACKING_URI` names no server this client talks to.
    #[error("MLflow tracking URI {uri}: {why}")]
    Uri { uri: String, why: &'static str },
    /// A file of the folder (its config, metrics, state, a file to send): unreadable,
    /// unwritable, or not what it should be (the parser's error kept as the source).
    #[error(transparent)]
    Files(#[from] files::Error),
    /// The server could not be reached, or its answer could not be read (`url` without
    /// credentials). A transport failure's cause is ureq's text without its URL (which
    /// names any credentials); a read's is the I/O error.
    #[error("{url}: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The server answered with something that is not JSON: not an MLflow server, or a
    /// proxy's page.
    #[error("{url}: not JSON ({source})")]
    NotJson {
        url: String,
        #[source]
        source: serde_json::Error,
    },
    /// The server refused a request: its status and the start of its answer.
    #[error("{url}: HTTP {status}: {body}")]
    Refused { url: String, status: u16, body: String },
    /// The server answered, but not with what MLflow's API promises (no id, no such
    /// experiment or run, artifacts not served).
    #[error("{0}")]
    Server(String),
    /// The folder is not one this can be done to (a run's state where a sweep's belongs).
    #[error("{path}: {msg}")]
    Folder { path: PathBuf, msg: String },
    /// A fold run's sweep could not be sent first (its run is the fold run's parent).
    #[error("the sweep's run ({path}): {source}")]
    Sweep {
        path: PathBuf,
        #[source]
        source: Box<Error>,
    },
    /// The background thread could not be started.
    #[error("cannot start the MLflow thread: {0}")]
    Thread(#[source] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
