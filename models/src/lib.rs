//! The model contract every stage shares: what a model is, how its input is made, and what
//! travels with it.
//!
//! One [`spec::ArchSpec`] drives both the libtorch builder (in `trainer`) and the ONNX
//! writer ([`onnx::export`]); parameter names (PyTorch-style dotted paths such as
//! `features.0.weight`) are the contract between them, and [`state_dict`] matches weights to
//! a spec. [`preprocess::Preprocess`] says how a raw HU cube becomes the network input
//! ([`patch`] reads a `.npy` cube into it) and travels inside the ONNX file's
//! `metadata_props` with the rest of the model's metadata, so a scorer never asks the user
//! for it again; [`calibration`] is the calibration a model carries or is bound to.
//!
//! What is not about models lives in crates named for their job, below this one (see
//! `ARCHITECTURE.md`): `files` (reading inputs, writing outputs, locks), `tables` (CSV files
//! and the patch index), `luna16` (LUNA16's files), `metrics` (ranking metrics and
//! intervals), `host` (devices, CPU and thread limits); `cli` holds what the binaries share.

pub mod calibration;
pub mod error;
pub mod features;
pub mod onnx;
pub mod patch;
pub mod preprocess;
pub mod runfolder;
pub mod spec;
pub mod state_dict;

pub use error::{Error, Result};

/// Version of this toolchain, written into every artifact it produces.
pub const TOOL_VERSION: &str = env!("CARGO_PKG_VERSION");
