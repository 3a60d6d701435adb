//! The evaluation step, at the end of the flow: what a model's scores are worth, whatever
//! made them. [`froc`]: LUNA16's FROC and CPM as the challenge's script computes them (the
//! `froc` command); [`compare`]: two or more models scored on the same patches, compared
//! with paired tests (`froc compare`), with LUNA16's files also the paired CPM bootstrap.
//! Links neither libtorch nor ONNX Runtime.
#![warn(clippy::unwrap_used)]

pub mod compare;
pub mod froc;

use std::path::{Path, PathBuf};

/// Errors of an evaluation (a FROC, a comparison of models).
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A setting out of its range.
    #[error("{0}")]
    Usage(String),
    /// The data leave the FROC undefined (no annotated nodule among the listed scans).
    #[error("{0}")]
    Undefined(String),
    #[error("{path}: cannot write: {source}")]
    Output {
        path: PathBuf,
        /// What the encoder or the chart said, kept for callers.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(transparent)]
    Models(#[from] models::Error),
}

models::errors_through_models!(EvalError);

/// "This input is bad, and here is why": [`files::Error::bad_input`], the one constructor
/// (a caller matches `EvalError::Models(models::Error::Files(files::Error::BadInput { .. }))`).
pub(crate) fn input_err(path: &Path, msg: String) -> EvalError {
    files::Error::bad_input(path, msg).into()
}

