//! The output folder of an evaluation and its printed summary.
use std::path::Path;

use super::evaluate::{interp, FrocReport};
use crate::EvalError;

/// The files an evaluation writes into its output folder.
pub const FILES: &[&str] = &[
    "froc_summary.yaml",
    "froc_curve.csv",
    "froc_bootstrap.csv",
    "nodules_without_candidate.csv",
    "froc.png",
];

/// A CSV file's bytes from a header and rows of already formatted fields.
fn csv_bytes(path: &Path, header: &[&str], rows: impl IntoIterator<Item = Vec<String>>) -> Result<Vec<u8>, EvalError> {
    let err = |e: csv::Error| EvalError::Output {
        path: path.to_path_buf(),
        source: Box::new(e),
    };
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(header).map_err(err)?;
    for r in rows {
        w.write_record(&r).map_err(err)?;
    }
    w.into_inner().map_err(|e| EvalError::Output {
        path: path.to_path_buf(),
        source: Box::new(e.into_error()),
    })
}

/// Writes `froc_curve.csv`, `froc_bootstrap.csv`, `nodules_without_candidate.csv`,
/// `froc.png` and, last, `froc_summary.yaml` into `out`, each atomically.
pub(crate) fn write_outputs(r: &FrocReport, out: &Path) -> Result<(), EvalError> {
    std::fs::create_dir_all(out).map_err(|e| files::Error::io(out, e))?;
    let summary = out.join("froc_summary.yaml");
    let yaml = yaml_serde::to_string(r).map_err(|e| EvalError::Output {
        path: summary.clone(),
        source: Box::new(e),
    })?;
    let f9 = |v: &f64| format!("{v:.9}");
    let p = out.join("froc_curve.csv");
    let rows = r.curve.iter().map(|(x, y, t)| vec![f9(x), f9(y), f9(t)]);
    files::write_atomic(&p, &csv_bytes(&p, &["fp_per_scan", "sensitivity", "threshold"], rows)?)?;
    let p = out.join("froc_bootstrap.csv");
    let header = [
        "fp_per_scan",
        "sensitivity_mean",
        "sensitivity_lower",
        "sensitivity_upper",
    ];
    let rows = r.band.iter().map(|(x, m, lo, hi)| vec![f9(x), f9(m), f9(lo), f9(hi)]);
    files::write_atomic(&p, &csv_bytes(&p, &header, rows)?)?;
    let p = out.join("nodules_without_candidate.csv");
    let header = ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"];
    let rows = r.missed.iter().map(|n| {
        vec![
            n.seriesuid.clone(),
            n.x.to_string(),
            n.y.to_string(),
            n.z.to_string(),
            n.value.to_string(),
        ]
    });
    files::write_atomic(&p, &csv_bytes(&p, &header, rows)?)?;
    plot(r, &out.join("froc.png"))?;
    // The summary last: a run that fails half-way leaves the earlier summary in force.
    files::write_atomic(&summary, yaml.as_bytes())?;
    Ok(())
}

fn plot(r: &FrocReport, path: &Path) -> Result<(), EvalError> {
    let clip =
        |pts: Vec<(f64, f64)>| -> Vec<(f64, f64)> { pts.into_iter().filter(|p| p.0 >= 0.125 && p.0 <= 8.0).collect() };
    let mut raw: Vec<(f64, f64)> = Vec::new();
    // The raw curve on the plotted range, with its values at the range ends.
    raw.push((0.125, interp(0.125, &r.curve)));
    raw.extend(clip(r.curve.iter().map(|p| (p.0, p.1)).collect()));
    raw.push((8.0, interp(8.0, &r.curve)));
    let mut series = vec![plots::Series {
        label: "FROC".into(),
        points: raw,
        color: (20, 60, 200),
        markers: false,
    }];
    series.push(plots::Series {
        label: format!("CPM {:.3} (7 rates)", r.cpm),
        points: r.rates.iter().map(|p| (p.fp_per_scan, p.sensitivity)).collect(),
        color: (200, 40, 40),
        markers: true,
    });
    let bands = if r.band.is_empty() {
        vec![]
    } else {
        // Every 10th grid point is plenty for the picture.
        let pick: Vec<&(f64, f64, f64, f64)> = r.band.iter().step_by(10).collect();
        vec![plots::Band {
            label: format!(
                "bootstrap {:.0}% CI ({} resamples)",
                r.confidence * 100.0,
                r.bootstrap_samples
            ),
            lower: pick.iter().map(|b| (b.0, b.2)).collect(),
            upper: pick.iter().map(|b| (b.0, b.3)).collect(),
            color: (20, 60, 200),
        }]
    };
    let chart = plots::Chart {
        title: format!("FROC: {} scans, {} nodules", r.totals.scans, r.totals.nodules),
        x_label: "average false positives per scan".into(),
        y_label: "sensitivity".into(),
        x_range: (0.125, 8.0),
        y_range: (0.0, 1.0),
        log_x: true,
        series,
        bands,
        annotations: vec![],
    };
    plots::line_chart(&chart, path).map_err(|e| EvalError::Output {
        path: path.to_path_buf(),
        source: Box::new(e),
    })
}

/// A short human summary.
pub fn summary(r: &FrocReport) -> String {
    let mut s = String::new();
    let t = &r.totals;
    s += &format!(
        "scans {}, nodules {}, candidates {} (after a cap of {}), TP {}, FP {}, FN {}, irrelevant {}, double detections {}\n",
        t.scans,
        t.nodules,
        t.candidates,
        r.max_candidates_per_scan.map_or("none".into(), |n| n.to_string()),
        t.true_positives,
        t.false_positives,
        t.false_negatives,
        t.irrelevant_candidates,
        t.double_detections
    );
    s += "FP/scan  sensitivity  bootstrap mean [95% CI]\n";
    for p in &r.rates {
        s += &format!("{:>7}  {:>11.4}", p.fp_per_scan, p.sensitivity);
        if let (Some(m), Some(lo), Some(hi)) = (p.bootstrap_mean, p.ci_lower, p.ci_upper) {
            s += &format!("  {m:.4} [{lo:.4}, {hi:.4}]");
        }
        s += "\n";
    }
    s += &format!("CPM {:.4}", r.cpm);
    if let (Some(m), Some([lo, hi])) = (r.cpm_bootstrap_mean, r.cpm_ci) {
        s += &format!("  bootstrap mean {m:.4} [{lo:.4}, {hi:.4}]");
    }
    s += "\n";
    for w in &r.warnings {
        s += &format!("warning: {w}\n");
    }
    s
}
