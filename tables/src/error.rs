use std::path::PathBuf;

/// A CSV file that cannot be read as the table it should be. Every variant names the file
/// (and, in `msg`, the line and column at fault).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Opening or reading the file failed, or it is not a regular file.
    #[error(transparent)]
    Files(#[from] files::Error),
    /// A CSV that is malformed or lacks what the reader needs.
    #[error("{path}: {msg}")]
    BadCsv { path: PathBuf, msg: String },
    /// A patch index (or scoring index) that is not one.
    #[error("{path}: {msg}")]
    BadIndex { path: PathBuf, msg: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
