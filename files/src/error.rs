use std::path::{Path, PathBuf};

/// What can go wrong reading an input or writing an output. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An input that cannot be read as one (a FIFO, a device, a folder, unreadable), or that
    /// says something wrong: the one variant for "this input is bad, and here is why".
    #[error("{path}: {msg}")]
    BadInput { path: PathBuf, msg: String },
    /// A file that could not be read as what it should be (YAML, JSON, safetensors…): `what`
    /// says what it should be, `source` is the parser's error, kept for callers.
    #[error("{path}: {what}: {source}")]
    Parse {
        path: PathBuf,
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
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
    pub fn bad_input(path: &Path, msg: impl Into<String>) -> Self {
        Error::BadInput {
            path: path.to_path_buf(),
            msg: msg.into(),
        }
    }

    /// `path` is not `what` (a parser said why: `source`). Displayed as
    /// `PATH: WHAT: REASON`, the reason also kept as the error's source.
    pub fn parse(path: &Path, what: impl Into<String>, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Error::Parse {
            path: path.to_path_buf(),
            what: what.into(),
            source: Box::new(source),
        }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
