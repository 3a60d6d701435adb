//! Calibration at scoring time: a `calibration.yaml` given with `--calibration`, or the one
//! a `model.calibrated.onnx` carries in its metadata, checked against the model it is
//! applied to; it turns each logit into `calibrated_probability` and `decision`.
use std::path::Path;

use models::calibration::{Baked, CalibrationFile};

use crate::InferError;

/// The calibration a `model.calibrated.onnx` carries. Unreadable, it is an error, unless a
/// calibration file is given (`with_file`), which replaces it: then a warning.
pub(crate) fn read_baked(
    md: &std::collections::BTreeMap<String, String>,
    model: &Path,
    with_file: bool,
) -> Result<Option<Baked>, InferError> {
    match Baked::from_metadata(md, model) {
        Ok(b) => Ok(b),
        Err(e) if with_file => {
            eprintln!("infer: warning: {e}; it is ignored, the --calibration file applies");
            Ok(None)
        }
        Err(e) => Err(InferError::Calibration(format!(
            "{e} (give its calibration.yaml with --calibration, or score the model it was made from)"
        ))),
    }
}

/// Refuses calibration `c` (read from `path`) for `model` unless it was fitted for it, or for
/// the model that a `model.calibrated.onnx` was made from (`baked`): that file's `logit`
/// output is its source model's.
pub(crate) fn check_binding(
    c: &CalibrationFile,
    path: &Path,
    model: &Path,
    model_sha256: &str,
    baked: Option<&Baked>,
) -> Result<(), models::Error> {
    if baked.and_then(|b| b.source_model_sha256.as_deref()) == Some(c.model.sha256.as_str()) {
        return Ok(());
    }
    c.check_model(path, model, model_sha256)
}

/// What gives `calibrated_probability` and `decision`.
pub(crate) enum Cal {
    /// `--calibration FILE`.
    File(Box<CalibrationFile>),
    /// The calibration a `model.calibrated.onnx` carries in its metadata.
    Baked(Baked),
}

impl Cal {
    pub(crate) fn probability(&self, z: f64) -> f64 {
        match self {
            Cal::File(c) => c.probability(z),
            Cal::Baked(b) => b.probability(z),
        }
    }

    /// Name and raw-logit threshold of the operating point behind `decision`.
    pub(crate) fn operating_point(&self) -> Option<(&str, f64)> {
        match self {
            Cal::File(c) => c.operating_point().map(|p| (p.name.as_str(), p.threshold_logit)),
            Cal::Baked(b) => Some((b.operating_point.as_str(), b.threshold_logit)),
        }
    }

    pub(crate) fn describe(&self, file: Option<&Path>) -> String {
        let (from, method) = match (self, file) {
            (Cal::File(c), Some(f)) => (f.display().to_string(), c.method),
            (Cal::File(c), None) => ("the model's own".to_string(), c.method),
            (Cal::Baked(b), _) => ("the model's own".to_string(), b.method),
        };
        let op = self
            .operating_point()
            .map_or_else(String::new, |(n, t)| format!("; decision: {n}, logit >= {t:.4}"));
        format!("{from} ({}{op})", method.name())
    }
}

/// The calibration a run applies (`None`: uncalibrated): the file given, checked against the
/// model (refused for another model unless `force`, which warns), or the model's own.
pub(crate) fn choose(
    file: Option<&Path>,
    model: &Path,
    model_sha256: &str,
    md: &std::collections::BTreeMap<String, String>,
    force: bool,
) -> Result<Option<Cal>, InferError> {
    let baked = read_baked(md, model, file.is_some())?;
    let Some(p) = file else {
        if let Some(b) = &baked {
            models::calibration::check_beside(model, model_sha256, b)?;
        }
        return Ok(baked.map(Cal::Baked));
    };
    let c = CalibrationFile::load(p)?;
    if let Err(e) = check_binding(&c, p, model, model_sha256, baked.as_ref()) {
        if !force {
            return Err(e.into());
        }
        eprintln!("infer: warning: --force-calibration: applying it anyway: {e}");
    }
    if baked.as_ref().is_some_and(|b| !b.same_as(&c)) {
        eprintln!(
            "infer: warning: {} carries its own calibration; {} is applied instead",
            model.display(),
            p.display()
        );
    }
    Ok(Some(Cal::File(Box::new(c))))
}

/// Whether a kept row's calibrated columns are what `cal` gives its logit: a resumed output
/// must not mix two calibrations (the columns and the model can be the same while the
/// calibration file is another). Probabilities are written exactly, so they are compared
/// to 1e-12.
pub(crate) fn same_calibration(
    cal: &Cal,
    logit: Option<f64>,
    p: Option<f64>,
    decision: Option<f64>,
    op: Option<&str>,
) -> bool {
    let (Some(z), Some(p)) = (logit, p) else {
        return false;
    };
    let z = f64::from(z as f32);
    if (cal.probability(z) - p).abs() > 1e-12 {
        return false;
    }
    match cal.operating_point() {
        Some((name, threshold)) => op == Some(name) && decision == Some(f64::from(u8::from(z >= threshold))),
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_baked_calibration_errs_unless_a_file_replaces_it() {
        let m = Path::new("m.calibrated.onnx");
        let md: std::collections::BTreeMap<String, String> =
            [("calibration.method".to_string(), "sigmoid".to_string())]
                .into_iter()
                .collect();
        let e = read_baked(&md, m, false).expect_err("no file").to_string();
        assert!(e.contains("m.calibrated.onnx") && e.contains("--calibration"), "{e}");
        assert_eq!(read_baked(&md, m, true).expect("replaced"), None);
        assert_eq!(read_baked(&Default::default(), m, false).expect("none"), None);
    }
}
