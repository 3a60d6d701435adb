//! `trainer ensemble`: models averaged in one ONNX model.
use std::path::{Path, PathBuf};

use anyhow::Result;

/// `trainer ensemble`.
pub(crate) fn ensemble(members: &[PathBuf], out: &Path, ort_lib: Option<&Path>) -> Result<()> {
    let b = trainer::ensemble::build(members, out, ort_lib)?;
    println!(
        "ensemble of {} models -> {}; max |Δlogit| against the mean of the members in ONNX Runtime {} = {:.2e} over {} test cubes",
        b.members.len(),
        out.display(),
        b.onnxruntime_version,
        b.max_abs_diff,
        b.cubes
    );
    Ok(())
}
