//! The contract shared by every stage of the nodule-patch toolchain.
//!
//! The workspace is split along the data flow, each crate depending only on what sits below
//! it (see `ARCHITECTURE.md`), so that a scoring host never needs libtorch:
//!
//! | crate       | links            | does                                                          |
//! |-------------|------------------|---------------------------------------------------------------|
//! | `models`    | nothing heavy    | specs, preprocessing, file formats, ONNX writer, metrics, files |
//! | `plots`     | nothing heavy    | PNG charts                                                    |
//! | `scorer`    | ONNX Runtime     | opening a model of ours and scoring batches                   |
//! | `froc`      | nothing heavy    | LUNA16 FROC and CPM                                           |
//! | `calibrate` | ONNX Runtime     | temperature/Platt/isotonic, thresholds, calibration metrics   |
//! | `infer`     | ONNX Runtime     | batch scoring of `.npy` folders, the shipped bundle           |
//! | `trainer`   | libtorch + ORT   | builds the spec in tch, trains, exports through [`onnx`]       |
//!
//! One [`spec::ArchSpec`] drives both the libtorch builder (in `trainer`) and the ONNX
//! writer ([`onnx::export`]); parameter names (PyTorch-style dotted paths such as
//! `features.0.weight`) are the contract between them. [`preprocess::Preprocess`] says how
//! a raw HU cube becomes the network input and travels inside the ONNX file's
//! `metadata_props`, so a scorer never asks the user for it again. The file formats every
//! stage reads are here once ([`patch`], [`index`], [`metaimage`], [`luna16`],
//! [`calibration`]), and so is how files are read and written ([`fsutil`]: regular files
//! only, atomic outputs, locks, and the output policy every binary applies).

pub mod calibration;
pub mod cli;
pub mod csvio;
pub mod device;
pub mod error;
pub mod features;
pub mod fsutil;
pub mod index;
pub mod luna16;
pub mod metrics;
pub mod onnx;
pub mod patch;
pub mod preprocess;
pub mod runfolder;
pub mod spec;
pub mod state_dict;

pub use error::{Error, Result};

/// Version of this toolchain, written into every artifact it produces.
pub const TOOL_VERSION: &str = env!("CARGO_PKG_VERSION");
