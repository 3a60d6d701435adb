//! Batch scoring of CT patch cubes with an exported ONNX model, through ONNX Runtime.
//!
//! Never links libtorch: a scoring host has ONNX Runtime only, loaded at run time by the
//! [`scorer`] crate, which also serves `calibrate --patches` and the trainer's parity check.
//! This crate is what lies around the scorer: collecting inputs (folders, files, an index),
//! the decode pipeline, calibration and decisions, the output formats, `--resume`, and the
//! shipped bundle ([`bundle`]) and `infer doctor` ([`doctor`]).
#![warn(clippy::unwrap_used)]


/// Errors of the infer library.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    /// A setting out of its range, or settings that do not go together.
    #[error("{0}")]
    Usage(String),
    /// A calibration that cannot be applied (unreadable, or made for another model).
    #[error("{0}")]
    Calibration(String),
    /// An output of ours that could not be encoded (a record, the errors file, a bundle's
    /// description); the encoder's error kept as the source.
    #[error("{path}: cannot write: {source}")]
    Output {
        path: std::path::PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(transparent)]
    Scorer(#[from] scorer::ScorerError),
    #[error(transparent)]
    Models(#[from] models::Error),
}

models::errors_through_models!(InferError);

/// "This input is bad, and here is why" ([`files::Error::bad_input`], the one constructor
/// every crate uses): a caller matches
/// `InferError::Models(models::Error::Files(files::Error::BadInput { .. }))`.
pub(crate) fn bad_input(path: &std::path::Path, msg: impl Into<String>) -> InferError {
    files::Error::bad_input(path, msg).into()
}

/// An output of ours at `path` that could not be encoded ([`InferError::Output`]).
pub(crate) fn output_err(path: &std::path::Path, source: impl std::error::Error + Send + Sync + 'static) -> InferError {
    InferError::Output {
        path: path.to_path_buf(),
        source: Box::new(source),
    }
}

mod batch;
mod pipeline;
mod settings;
mod sink;
pub mod bundle;
mod calib;
pub mod doctor;
pub mod folds;
pub mod gallery;
pub mod from_scans;
pub mod import;
pub mod inputs;
pub mod output;
mod resume;
pub mod shard;

pub use batch::run;
pub use settings::{Settings, Summary, Tta, MAX_BATCH};
pub use output::Format;
