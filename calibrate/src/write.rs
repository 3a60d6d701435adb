//! Writing a calibration: `calibration.yaml`, the report with its plots ([`crate::report`]),
//! `model.calibrated.onnx` ([`crate::bake`]), each atomically; and the summary printed.
use std::path::Path;

use models::calibration::CalibrationFile;
use models::onnx::proto::ModelProto;

use crate::{CalError, ScoreTable, Settings};

/// The calibrated model's file name, beside `calibration.yaml`.
pub use models::calibration::BAKED_FILE;

/// Writes the report and the calibrated model into `dir` as the settings ask, then
/// `calibration.yaml` (at `s.out`) last, with the sha256 of each of them
/// ([`CalibrationFile::outputs`]): a run that fails (or is killed) half-way leaves the
/// previous calibration file in force, and a reader that finds a calibrated model or report
/// beside it that is not the one it names refuses the pair.
pub fn write_outputs(
    cal: &CalibrationFile,
    t: &ScoreTable,
    model: ModelProto,
    s: &Settings,
    dir: &Path,
) -> Result<(), CalError> {
    let mut cal = cal.clone();
    if s.bake {
        let baked = crate::bake::calibrated_model(model, &cal)?;
        let bytes = models::onnx::to_bytes(&baked);
        files::write_atomic(&dir.join(BAKED_FILE), &bytes)?;
        cal.outputs
            .insert(BAKED_FILE.to_string(), files::sha256_bytes(&bytes));
    } else if dir.join(BAKED_FILE).exists() {
        // Not ours to delete, but it no longer matches the calibration written beside it.
        eprintln!(
            "warning: {} was left as it was (--no-bake) and still holds the previous calibration",
            dir.join(BAKED_FILE).display()
        );
    }
    if s.report {
        crate::report::write(&cal, t, dir)?;
        for name in std::iter::once(crate::report::REPORT_FILE.to_string()).chain(
            crate::report::PLOTS
                .iter()
                .map(|p| format!("{}/{p}", crate::report::PLOTS_DIR)),
        ) {
            cal.outputs
                .insert(name.clone(), files::sha256_file(&dir.join(&name))?);
        }
    }
    // The commit point: written last, naming the digest of every file above.
    let text = yaml_serde::to_string(&cal).map_err(|e| CalError::Output {
        path: s.out.clone(),
        source: Box::new(e),
    })?;
    files::write_atomic(&s.out, text.as_bytes())?;
    Ok(())
}

fn ci(v: Option<[f64; 2]>) -> String {
    v.map_or_else(String::new, |[lo, hi]| format!(" [{lo:.3}, {hi:.3}]"))
}

/// A short human summary of a calibration.
pub fn summary(cal: &CalibrationFile) -> String {
    let mut out = String::new();
    out += &format!(
        "calibrated on {} patches ({} positive, prevalence {:.3}, {} series); method: {} ({})\n",
        cal.data.n,
        cal.data.n_positive,
        cal.data.prevalence,
        cal.data.n_series,
        cal.method.name(),
        cal.method_selection.chosen_by
    );
    if !cal.method_selection.cv_nll.is_empty() {
        let nll: Vec<String> = cal
            .method_selection
            .cv_nll
            .iter()
            .map(|(k, v)| format!("{k} {v:.4}"))
            .collect();
        out += &format!("{}: {}\n", cal.method_selection.criterion, nll.join(", "));
    }
    out += &format!(
        "parameters: T = {:.4}; Platt a = {:.4}, b = {:.4}; isotonic {} knots\n",
        cal.temperature.temperature,
        cal.platt.a,
        cal.platt.b,
        cal.isotonic.x.len()
    );
    for w in &cal.warnings {
        out += &format!("warning: {w}\n");
    }
    out += "metrics on the calibration data (in-sample after calibration):\n";
    out += "               AUROC [DeLong 95%]     AUPRC   Brier   NLL     ECE15   aECE15  MCE15   slope   intercept\n";
    for k in ["uncalibrated", "temperature", "platt", "isotonic"] {
        if let Some(v) = cal.metrics.get(k) {
            out += &format!(
                "  {k:<12} {:.4} [{:.3}, {:.3}]  {:.4}  {:.4}  {:.4}  {:.4}  {:.4}  {:.4}  {:>6.3}  {:>6.3}\n",
                v.auroc,
                v.auroc_delong_ci95[0],
                v.auroc_delong_ci95[1],
                v.auprc,
                v.brier,
                v.nll,
                v.ece_15,
                v.adaptive_ece_15,
                v.mce_15,
                v.calibration_slope,
                v.calibration_intercept
            );
        }
    }
    out += "operating points (Wilson 95%; series bootstrap 95% in braces):\n";
    for p in &cal.operating_points {
        let f = |x: &models::calibration::Proportion| match (x.value, x.ci95) {
            (Some(v), Some([lo, hi])) => format!("{v:.3} [{lo:.3}, {hi:.3}]"),
            _ => "n/a".into(),
        };
        let (bs, bp) = p.bootstrap.as_ref().map_or((String::new(), String::new()), |b| {
            (ci(Some(b.sensitivity_ci95)), ci(Some(b.specificity_ci95)))
        });
        out += &format!(
            "  {:<18} p >= {:.4} (logit >= {:+.4}): sens {}{{{}}} spec {}{{{}}} PPV {} NPV {} (TP {} FP {} TN {} FN {})\n",
            p.name,
            p.threshold_probability,
            p.threshold_logit,
            f(&p.sensitivity),
            bs.trim(),
            f(&p.specificity),
            bp.trim(),
            f(&p.ppv),
            f(&p.npv),
            p.tp,
            p.fp,
            p.tn,
            p.fn_
        );
    }
    out
}
