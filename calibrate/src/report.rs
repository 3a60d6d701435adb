//! The calibration report: PNG plots (reliability before/after with bin counts, ROC with
//! the operating points, precision–recall, decision curve) and a Markdown file embedding
//! them with the tables of `calibration.yaml`.
use std::fmt::Write as _;
use std::path::Path;

use models::calibration::{CalibrationFile, Method};

use crate::{metrics, CalError, ScoreTable};

/// The report's file name, beside `calibration.yaml`.
pub const REPORT_FILE: &str = "calibration_report.md";
/// The plots' folder, beside the report.
pub const PLOTS_DIR: &str = "calibration_plots";
/// The plots, in that folder.
pub const PLOTS: [&str; 4] = [
    "reliability.png",
    "roc.png",
    "precision_recall.png",
    "decision_curve.png",
];

const BLUE: (u8, u8, u8) = (30, 80, 200);
const RED: (u8, u8, u8) = (200, 50, 40);
const GREY: (u8, u8, u8) = (120, 120, 120);
const GREEN: (u8, u8, u8) = (40, 150, 60);

pub(crate) fn draw(chart: &plots::Chart, path: &Path) -> Result<(), CalError> {
    plots::line_chart(chart, path).map_err(|e| CalError::Output {
        path: path.to_path_buf(),
        source: Box::new(e),
    })
}

/// Writes `calibration_report.md` and `calibration_plots/*.png` into `dir`.
pub fn write(cal: &CalibrationFile, t: &ScoreTable, dir: &Path) -> Result<(), CalError> {
    let plots_dir = dir.join(PLOTS_DIR);
    std::fs::create_dir_all(&plots_dir).map_err(|source| files::Error::Io {
        path: plots_dir.clone(),
        source,
    })?;
    let (z, y) = (&t.logits, &t.labels);
    let raw: Vec<f64> = z.iter().map(|&v| metrics::sigmoid(v)).collect();
    let cal_p: Vec<f64> = z.iter().map(|&v| cal.probability(v)).collect();
    let method = cal.method.name();

    // Reliability diagram: 15 equal-width bins, counts written above the calibrated points.
    let mut c = plots::Chart::unit(
        "Reliability (15 equal-width bins)",
        "mean predicted probability",
        "observed frequency",
    );
    c.series.push(plots::Series::line("ideal", vec![(0.0, 0.0), (1.0, 1.0)], GREY));
    for (label, p, color) in [("uncalibrated", &raw, RED), (method, &cal_p, BLUE)] {
        let bins = metrics::reliability_bins(p, y, 15);
        let pts: Vec<(f64, f64)> = bins.iter().filter(|b| b.0 > 0).map(|&(_, mp, my)| (mp, my)).collect();
        c.series.push(plots::Series::line(label, pts.clone(), color));
        c.series.push(plots::Series::marks(&format!("{label} bins"), pts, color));
        if label == method {
            c.annotations = bins
                .iter()
                .filter(|b| b.0 > 0)
                .map(|&(n, mp, my)| (mp, (my + 0.04).min(0.97), format!("n={n}")))
                .collect();
        }
    }
    draw(&c, &plots_dir.join("reliability.png"))?;

    // ROC with the operating points.
    let mut c = plots::Chart::unit("ROC", "1 - specificity", "sensitivity");
    c.series.push(plots::Series::line("chance", vec![(0.0, 0.0), (1.0, 1.0)], GREY));
    c.series.push(plots::Series::line(
        &format!("ROC (AUROC {:.3})", cal.metrics["uncalibrated"].auroc),
        ::metrics::roc_points(z, y),
        BLUE,
    ));
    for (i, p) in cal.operating_points.iter().enumerate() {
        let (Some(sens), Some(spec)) = (p.sensitivity.value, p.specificity.value) else {
            continue;
        };
        let colors = [RED, GREEN, (150, 60, 160), (200, 140, 20)];
        c.series
            .push(plots::Series::marks(&p.name, vec![(1.0 - spec, sens)], colors[i % colors.len()]));
    }
    draw(&c, &plots_dir.join("roc.png"))?;

    // Precision–recall.
    let prev = cal.data.prevalence;
    let mut c = plots::Chart::unit("Precision-recall", "recall (sensitivity)", "precision (PPV)");
    c.series.push(plots::Series::line(
        &format!("prevalence {prev:.3}"),
        vec![(0.0, prev), (1.0, prev)],
        GREY,
    ));
    c.series.push(plots::Series::line(
        &format!("PR (AP {:.3})", cal.metrics["uncalibrated"].auprc),
        ::metrics::pr_points(z, y),
        BLUE,
    ));
    draw(&c, &plots_dir.join("precision_recall.png"))?;

    // Decision curve on the calibrated probabilities.
    let ts: Vec<f64> = (1..=99).map(|i| i as f64 / 100.0).collect();
    let nb: Vec<(f64, f64)> = ts.iter().map(|&th| (th, metrics::net_benefit(&cal_p, y, th))).collect();
    let all: Vec<(f64, f64)> = ts
        .iter()
        .map(|&th| (th, prev - (1.0 - prev) * th / (1.0 - th)))
        .collect();
    let lo = nb.iter().chain(&all).map(|p| p.1).fold(0.0, f64::min).max(-0.1);
    let mut c = plots::Chart::unit("Decision curve", "threshold probability", "net benefit");
    c.y_range = (lo - 0.02, prev.max(0.05) + 0.05);
    c.series.push(plots::Series::line(&format!("model ({method})"), nb, BLUE));
    c.series.push(plots::Series::line(
        "treat all",
        all.into_iter().filter(|p| p.1 >= lo - 0.02).collect(),
        RED,
    ));
    c.series.push(plots::Series::line("treat none", vec![(0.0, 0.0), (1.0, 0.0)], GREY));
    draw(&c, &plots_dir.join("decision_curve.png"))?;

    files::write_atomic(&dir.join(REPORT_FILE), markdown(cal).as_bytes())?;
    Ok(())
}

fn markdown(cal: &CalibrationFile) -> String {
    let mut s = String::new();
    let d = &cal.data;
    let _ = writeln!(s, "# Calibration report\n");
    let _ = writeln!(
        s,
        "Model `{}` (sha256 `{}`).",
        cal.model.path.display(),
        cal.model.sha256
    );
    let _ = writeln!(
        s,
        "Calibration data: `{}`, {} patches, {} positive (prevalence {:.3}), {} series.\n",
        d.scores.display(),
        d.n,
        d.n_positive,
        d.prevalence,
        d.n_series
    );
    let _ = writeln!(
        s,
        "Applied method: **{}** ({}; {}).\n",
        cal.method.name(),
        cal.method_selection.chosen_by,
        cal.method_selection.criterion
    );
    if !cal.method_selection.cv_nll.is_empty() {
        let _ = writeln!(s, "| method | held-out NLL |\n|---|---|");
        for (k, v) in &cal.method_selection.cv_nll {
            let _ = writeln!(s, "| {k} | {v:.4} |");
        }
        let _ = writeln!(s);
    }
    let _ = writeln!(
        s,
        "Parameters: temperature T = {:.4}; Platt a = {:.4}, b = {:.4}{}; isotonic {} knots.\n",
        cal.temperature.temperature,
        cal.platt.a,
        cal.platt.b,
        if cal.platt.target_smoothing {
            " (smoothed targets)"
        } else {
            ""
        },
        cal.isotonic.x.len()
    );
    metrics_table(&mut s, cal);
    operating_points_table(&mut s, cal);
    if !cal.warnings.is_empty() {
        let _ = writeln!(s, "\n## Warnings\n");
        for w in &cal.warnings {
            let _ = writeln!(s, "- {w}");
        }
    }
    let _ = writeln!(s, "\n## Plots\n");
    for (title, file) in [
        (
            "Reliability before and after (bin counts above the calibrated points)",
            "reliability.png",
        ),
        ("ROC with the operating points", "roc.png"),
        ("Precision–recall", "precision_recall.png"),
        (
            "Decision curve (net benefit of the calibrated probabilities)",
            "decision_curve.png",
        ),
    ] {
        let _ = writeln!(s, "### {title}\n\n![{title}](calibration_plots/{file})\n");
    }
    let _ = writeln!(s, "{}", cal.note);
    s
}

/// The report's metrics section: a row per method (and before calibration).
fn metrics_table(s: &mut String, cal: &CalibrationFile) {
    let _ = writeln!(
        s,
        "## Metrics (on the calibration data; after-calibration values are in-sample)\n"
    );
    let _ = writeln!(
        s,
        "| | AUROC | DeLong 95% | bootstrap 95% | AUPRC | Brier | NLL | ECE₁₅ | adaptive ECE₁₅ | MCE₁₅ | slope | intercept |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    let order = ["uncalibrated"].into_iter().chain(Method::ALL.iter().map(|m| m.name()));
    for k in order {
        if let Some(m) = cal.metrics.get(k) {
            let b = m
                .auroc_bootstrap_ci95
                .map_or("—".into(), |[lo, hi]| format!("[{lo:.3}, {hi:.3}]"));
            let _ = writeln!(
                s,
                "| {k} | {:.4} | [{:.3}, {:.3}] | {b} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} | {:.3} | {:.3} |",
                m.auroc,
                m.auroc_delong_ci95[0],
                m.auroc_delong_ci95[1],
                m.auprc,
                m.brier,
                m.nll,
                m.ece_15,
                m.adaptive_ece_15,
                m.mce_15,
                m.calibration_slope,
                m.calibration_intercept
            );
        }
    }
}

/// The report's operating points section, with Wilson and bootstrap intervals.
fn operating_points_table(s: &mut String, cal: &CalibrationFile) {
    let _ = writeln!(s, "\n## Operating points\n");
    let _ = writeln!(
        s,
        "`infer` uses **{}**. Intervals: Wilson 95%; braces: series-level bootstrap 95% ({} resamples, seed {}).\n",
        cal.default_operating_point, cal.bootstrap_resamples, cal.bootstrap_seed
    );
    let _ = writeln!(s, "| point | logit ≥ | calibrated p ≥ | sensitivity | specificity | PPV | NPV | F1 | TP | FP | TN | FN |\n|---|---|---|---|---|---|---|---|---|---|---|---|");
    let f = |x: &models::calibration::Proportion| match (x.value, x.ci95) {
        (Some(v), Some([lo, hi])) => format!("{v:.3} [{lo:.3}, {hi:.3}]"),
        _ => "n/a".into(),
    };
    for p in &cal.operating_points {
        let (bs, bp) = p.bootstrap.as_ref().map_or((String::new(), String::new()), |b| {
            (
                format!(" {{{:.3}, {:.3}}}", b.sensitivity_ci95[0], b.sensitivity_ci95[1]),
                format!(" {{{:.3}, {:.3}}}", b.specificity_ci95[0], b.specificity_ci95[1]),
            )
        });
        let _ = writeln!(
            s,
            "| {} | {:.4} | {:.4} | {}{bs} | {}{bp} | {} | {} | {:.3} | {} | {} | {} | {} |",
            p.name,
            p.threshold_logit,
            p.threshold_probability,
            f(&p.sensitivity),
            f(&p.specificity),
            f(&p.ppv),
            f(&p.npv),
            p.f1,
            p.tp,
            p.fp,
            p.tn,
            p.fn_
        );
    }
}
