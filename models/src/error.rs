use std::path::PathBuf;

/// Errors of the shared contract. Every variant that concerns a file names it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {msg}")]
    BadPatch { path: PathBuf, msg: String },
    #[error("{path}: {msg}")]
    BadIndex { path: PathBuf, msg: String },
    #[error("{path}: not a valid ONNX model: {msg}")]
    BadOnnx { path: PathBuf, msg: String },
    #[error("{path}: {msg}")]
    Calibration { path: PathBuf, msg: String },
    #[error("{path}: {msg}")]
    BadCsv { path: PathBuf, msg: String },
    #[error("model metadata: {0}")]
    Metadata(String),
    #[error("weights do not match architecture `{arch}`:\n  {}", .problems.join("\n  "))]
    WeightsMismatch { arch: String, problems: Vec<String> },
    #[error("architecture spec: {0}")]
    Spec(String),
    /// An input that cannot be read as one (a FIFO, a device, a folder, unreadable).
    #[error("{path}: {msg}")]
    BadInput { path: PathBuf, msg: String },
    /// An output the run refuses to write (it names an input, another output, a folder).
    #[error("{path}: {msg}")]
    BadOutput { path: PathBuf, msg: String },
    /// Another process holds the lock on an output.
    #[error("{path}: {msg}")]
    Busy { path: PathBuf, msg: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The one way to say "this input is bad, and here is why": the file (or folder) and
    /// what is wrong with it, for a person to act on. Every crate's bad-input errors are
    /// this variant ([`Error::BadInput`]), so a caller matches one.
    pub fn bad_input(path: &std::path::Path, msg: impl Into<String>) -> Self {
        Error::BadInput {
            path: path.to_path_buf(),
            msg: msg.into(),
        }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
