use std::path::PathBuf;

/// Errors of the shared contract. Every variant that concerns a file names it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading an input or writing an output failed, or the file is not one this run may
    /// read or write (see [`files::Error`]: the bad-input variant every crate matches).
    #[error(transparent)]
    Files(#[from] files::Error),
    /// A CSV file (an index, a features table) that is not the table it should be.
    #[error(transparent)]
    Tables(#[from] tables::Error),
    #[error("{path}: {msg}")]
    BadPatch { path: PathBuf, msg: String },
    #[error("{path}: not a valid ONNX model: {msg}")]
    BadOnnx { path: PathBuf, msg: String },
    /// A file that is not ONNX at all: protobuf's decoder refused it (its error is the cause).
    #[error("{path}: not a valid ONNX model: protobuf decode failed ({source})")]
    OnnxDecode {
        path: PathBuf,
        #[source]
        source: prost::DecodeError,
    },
    #[error("{path}: {msg}")]
    Calibration { path: PathBuf, msg: String },
    #[error("model metadata: {0}")]
    Metadata(String),
    #[error("weights do not match architecture `{arch}`:\n  {}", .problems.join("\n  "))]
    WeightsMismatch { arch: String, problems: Vec<String> },
    #[error("architecture spec: {0}")]
    Spec(String),
    /// A spec (a file, or a config's inline spec: `origin`) that is not YAML of an
    /// [`ArchSpec`](crate::spec::ArchSpec); the YAML reader's error is the cause.
    #[error("architecture spec: {origin}: not an architecture spec: {source}")]
    SpecParse {
        origin: String,
        #[source]
        source: yaml_serde::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Implements `From<files::Error>` and `From<tables::Error>` for a crate's error type that
/// wraps [`Error`] (`Models(#[from] models::Error)`): both convert through [`Error`], so a
/// caller matches a bad input in one place
/// (`X::Models(models::Error::Files(files::Error::BadInput { .. }))`) whichever layer found it.
#[macro_export]
macro_rules! errors_through_models {
    ($t:ty) => {
        impl From<$crate::error::lower::FilesError> for $t {
            fn from(e: $crate::error::lower::FilesError) -> Self {
                <$t>::from($crate::Error::from(e))
            }
        }
        impl From<$crate::error::lower::TablesError> for $t {
            fn from(e: $crate::error::lower::TablesError) -> Self {
                <$t>::from($crate::Error::from(e))
            }
        }
    };
}

/// The errors of the crates below this one, named for [`errors_through_models`].
#[doc(hidden)]
pub mod lower {
    pub use files::Error as FilesError;
    pub use tables::Error as TablesError;
}
