//! `infer bundle`: infer, ONNX Runtime, a model and its calibration packed for a host with neither Rust nor Python.
use std::process::ExitCode;

/// `infer bundle`.
pub(crate) fn bundle(s: &infer::bundle::BundleSettings) -> ExitCode {
    match infer::bundle::make(s) {
        Ok((p, size)) => {
            println!(
                "wrote {} ({:.1} MiB); on the target: tar -xzf {} && ./{}/run PATCH_FOLDER -o scores.csv",
                p.display(),
                size as f64 / 1048576.0,
                p.file_name()
                    .map_or(String::new(), |n| n.to_string_lossy().into_owned()),
                infer::bundle::TOP
            );
            ExitCode::SUCCESS
        }
        Err(e) => cli::fail("infer bundle", &e),
    }
}
