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
    #[error(transparent)]
    Scorer(#[from] scorer::ScorerError),
    #[error(transparent)]
    Models(#[from] models::Error),
}

models::errors_through_models!(InferError);

/// "This input is bad, and here is why" ([`models::Error::bad_input`], the one constructor
/// every crate uses): a caller matches `InferError::Models(models::Error::BadInput { .. })`.
pub(crate) fn bad_input(path: &std::path::Path, msg: impl Into<String>) -> InferError {
    files::Error::bad_input(path, msg).into()
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
