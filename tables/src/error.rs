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
    /// A row the CSV reader could not read (a ragged row, bad quoting, a value of the wrong
    /// type): the file, the line (the header is line 1), and the reader's error as the cause.
    #[error("{path}: line {line}: {source}")]
    Row {
        path: PathBuf,
        line: usize,
        #[source]
        source: csv::Error,
    },
    /// The header row could not be read; the reader's error is the cause.
    #[error("{path}: {source}")]
    Header {
        path: PathBuf,
        #[source]
        source: csv::Error,
    },
    /// A patch index (or scoring index) that is not one.
    #[error("{path}: {msg}")]
    BadIndex { path: PathBuf, msg: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Line `line` of `path` could not be read: the one constructor for a CSV reader's error on
    /// a row, whichever table is read ([`Error::Row`]).
    pub fn row(path: &std::path::Path, line: usize, source: csv::Error) -> Self {
        Error::Row {
            path: path.to_path_buf(),
            line,
            source,
        }
    }
}
