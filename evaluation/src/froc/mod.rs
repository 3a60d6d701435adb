//! LUNA16 FROC and CPM (the `froc` command), computed as the challenge's evaluation script
//! (`noduleCADEvaluationLUNA16.py`, with `NoduleFinding.py`) computes them. Implemented
//! independently from a study of that script's behaviour; each rule below says what the
//! script does and where we state a deviation.
//!
//! # Inputs
//! * R1. `annotations.csv`, `annotations_excluded.csv` and the results CSV have a header
//!   row and are read by column name (`seriesuid, coordX, coordY, coordZ, diameter_mm`;
//!   results: `probability` instead of `diameter_mm`); other columns are ignored.
//! * R2. The series list (`seriesuids.csv`) has no header: column 0 of every row is a
//!   scan, and the number of scans (the FP/scan divisor) is the number of rows. *Stated
//!   deviation:* a first row that reads `seriesuid` is taken as a header and reported in
//!   the warnings (the script would count it as a scan without nodules).
//! * R3. Annotations and results of series not in the list are ignored (the script does
//!   so silently; we count the result rows and report them). A listed series without
//!   results is a scan whose nodules are all missed.
//!
//! # Per scan, in list order
//! * R4. Cap: if a scan has more than `max_candidates` (the script's entry point passes
//!   100) candidates, let `t` be the (N+1)-th highest probability; only candidates with
//!   `probability > t` (strictly) are kept. Ties at `t` are all dropped, so a scan can keep
//!   fewer than N. Counts after the cap are the "candidates" totals.
//! * R5. Hit: squared world-mm distance `d² < r²` (strict; a candidate exactly on the
//!   radius is not a hit), `r = diameter_mm / 2`; a negative diameter (the −1 of excluded
//!   findings without a size) becomes 10 mm, so `r = 5`. A diameter of 0 is never hit.
//! * R6. Included nodules first, in file order: every candidate of the (capped) scan
//!   within the radius matches, including one already matched by an earlier nodule (one
//!   candidate can make two nodules true positives). A nodule with matches is one TP with
//!   the maximum probability among them; the other matches are neither TP nor FP ("double
//!   detections"). A nodule without matches is a miss.
//! * R7. Then excluded findings (`annotations_excluded.csv`), in file order: candidates
//!   within their radius that no included nodule claimed are ignored: neither TP nor FP
//!   ("irrelevant candidates"). A candidate on both an included nodule and an excluded
//!   finding is a TP (R6 comes first).
//! * R8. Every remaining candidate is a false positive with its probability.
//!
//! # The curve
//! * R9. Over all scans: TPs (one per detected nodule, its max probability) and FPs, sorted
//!   by probability descending, ties forming one step. At each distinct threshold `t`:
//!   `x = fpr·N_fp / N_scans` with `fpr = #FP(p ≥ t) / N_fp`, and
//!   `y = tpr·N_det / N_nodules` with `tpr = #TP(p ≥ t) / N_det` (the script's
//!   `roc_curve` then rescaling, in that floating-point order), from (0, 0). Missed
//!   nodules are in `N_nodules` only, so the curve tops out at `N_det / N_nodules`. With no
//!   false positives at all every x is 0 (the script's special case).
//! * R10. Sensitivity at a rate `r` is `np.interp(r, x, y)`: linear in FP/scan; beyond the
//!   curve the end value holds; at an x shared by several points, the last (highest) y.
//! * R11. CPM: mean sensitivity at 1/8, 1/4, 1/2, 1, 2, 4, 8 FP/scan. The official script
//!   only plots the curve; the CPM of the challenge's papers is this average. We evaluate
//!   the raw curve exactly at the seven rates (derived copies of the script read it off a
//!   10001-point grid and land slightly off the rates).
//!
//! # Bootstrap (`computeFROC_bootstrap`)
//! * R12. Each of B resamples (script: 1000) draws `N_scans` scans from the list with
//!   replacement; a scan drawn k times contributes its TPs, FPs and misses k times; the
//!   divisor stays `N_scans` and `N_nodules` is recounted over the drawn scans. The script
//!   has no seed; ours is configurable.
//! * R13. Each resampled curve is interpolated (R10) on `linspace(0.125, 8, 10000)` (the
//!   band) and at the seven rates; per point the mean is the average and the interval is
//!   `sorted[floor(Pz·B)]`, `sorted[floor((1−Pz)·B)]` with `Pz = (1 − confidence)/2`
//!   (indices 25 and 975 for B = 1000). The script stores float32; we keep f64.
//!
//! # Layout
//! [`luna16`] reads the CSV files (shared with `scans prepare`), [`evaluate`](mod@evaluate)
//! matches candidates and computes the curve, the CPM and the bootstrap, [`write`](mod@write) writes
//! the output folder and the summary. This crate links neither libtorch nor ONNX Runtime:
//! it scores a results file, whatever made it.
pub mod evaluate;
pub mod write;

use std::path::{Path, PathBuf};

use files::{Lock, RunIo};

use crate::{input_err, EvalError};

pub use evaluate::{
    evaluate, interp, paired_cpm, CpmDiff, CpmOf, FrocReport, FrocSettings, PairedCpm, RatePoint, Totals, GRID_POINTS,
    RATES,
};
pub use luna16::Finding;
use luna16::{read_findings, read_series_list};
pub use write::{summary, FILES};

/// Files of a FROC evaluation.
#[derive(Debug, Clone)]
pub struct FrocFiles {
    pub annotations: PathBuf,
    pub excluded: Option<PathBuf>,
    pub seriesuids: PathBuf,
    pub results: PathBuf,
    pub out: PathBuf,
    /// The model the results came from (read only for its MLflow run; see
    /// [`tracked_model`]).
    pub model: Option<PathBuf>,
}

/// Where the model's training was tracked: (its MLflow run key, tracking URI, experiment)
/// from its metadata; `None` for a model trained without tracking.
pub fn tracked_model(model: &Path) -> Result<Option<(String, String, String)>, EvalError> {
    let m = models::onnx::read_model(model)?;
    let md = models::onnx::metadata(&m);
    let get = |k: &str| md.get(k).cloned();
    Ok(get("training.mlflow_run_key").map(|k| {
        (
            k,
            get("training.mlflow_tracking_uri").unwrap_or_default(),
            get("training.mlflow_experiment").unwrap_or_else(|| "nodule".into()),
        )
    }))
}

/// The evaluation's figures as MLflow metrics: `froc.cpm` (and its interval), and
/// `froc.sensitivity_at_<rate>` at each of the seven rates.
pub fn mlflow_metrics(r: &FrocReport) -> std::collections::BTreeMap<String, f64> {
    let mut m = std::collections::BTreeMap::new();
    m.insert("froc.cpm".to_string(), r.cpm);
    if let Some([lo, hi]) = r.cpm_ci {
        m.insert("froc.cpm_ci_lower".to_string(), lo);
        m.insert("froc.cpm_ci_upper".to_string(), hi);
    }
    for p in &r.rates {
        m.insert(format!("froc.sensitivity_at_{}", p.fp_per_scan), p.sensitivity);
    }
    m
}

/// The largest diameter taken as a finding's, in mm (LUNA16's largest nodule is about
/// 32 mm); a larger one is a unit or column mix-up, refused.
pub const MAX_DIAMETER_MM: f64 = 100.0;

/// Refuses diameters that are not positive or are absurd, naming the file and line; in
/// `annotations_excluded.csv` the script's −1 ("no size", read as 10 mm) is allowed.
fn check_diameters(path: &Path, v: &[Finding], minus_one_allowed: bool) -> Result<(), EvalError> {
    for (i, f) in v.iter().enumerate() {
        let d = f.value;
        if (minus_one_allowed && d == -1.0) || (d > 0.0 && d <= MAX_DIAMETER_MM) {
            continue;
        }
        let allowed = if minus_one_allowed {
            format!("in (0, {MAX_DIAMETER_MM}] mm, or -1 for a finding without a size")
        } else {
            format!("in (0, {MAX_DIAMETER_MM}] mm")
        };
        return Err(input_err(
            path,
            format!(
                "line {}: diameter_mm {d} of series {} must be {allowed}",
                i + 2,
                f.seriesuid
            ),
        ));
    }
    Ok(())
}

/// Drops rows that repeat an earlier row exactly (series, position and value), with a
/// warning: a finding listed twice would count twice (a nodule missed twice, a candidate
/// two false positives), and the CPM would silently differ from the file without the copy.
pub fn dedupe(v: Vec<Finding>, path: &Path, what: &str, warnings: &mut Vec<String>) -> Vec<Finding> {
    let mut seen = std::collections::HashSet::new();
    let n = v.len();
    let kept: Vec<Finding> = v
        .into_iter()
        .filter(|f| {
            seen.insert((
                f.seriesuid.clone(),
                f.x.to_bits(),
                f.y.to_bits(),
                f.z.to_bits(),
                f.value.to_bits(),
            ))
        })
        .collect();
    if kept.len() < n {
        warnings.push(format!(
            "{}: {} {what} row(s) repeat an earlier row exactly and were counted once",
            path.display(),
            n - kept.len()
        ));
    }
    kept
}

/// The listed series with repeats dropped (with a warning: a scan listed twice would count
/// twice in the false positives per scan).
fn dedupe_series(uids: Vec<String>, path: &Path, warnings: &mut Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    let n = uids.len();
    let kept: Vec<String> = uids.into_iter().filter(|u| seen.insert(u.clone())).collect();
    if kept.len() < n {
        warnings.push(format!(
            "{}: {} series listed more than once; each counted once ({} scans)",
            path.display(),
            n - kept.len(),
            kept.len()
        ));
    }
    kept
}

/// What candidates are scored against: the listed scans, their nodules and the excluded
/// findings, read and checked as [`run`] reads them.
#[derive(Debug, Clone)]
pub struct Truth {
    pub uids: Vec<String>,
    pub annotations: Vec<Finding>,
    pub excluded: Vec<Finding>,
    /// Repeats dropped, a header taken as such, annotations of unlisted series.
    pub warnings: Vec<String>,
}

/// Reads `seriesuids.csv`, `annotations.csv` and (optionally) `annotations_excluded.csv`:
/// diameters checked, exact repeats counted once with a warning.
pub fn read_truth(annotations: &Path, excluded: Option<&Path>, seriesuids: &Path) -> Result<Truth, EvalError> {
    let mut warnings = Vec::new();
    let (uids, header_warning) = read_series_list(seriesuids)?;
    warnings.extend(header_warning);
    let uids = dedupe_series(uids, seriesuids, &mut warnings);
    let ann = read_findings(annotations, "diameter_mm")?;
    check_diameters(annotations, &ann, false)?;
    let ann = dedupe(ann, annotations, "annotation", &mut warnings);
    let excluded = match excluded {
        Some(p) => {
            let e = read_findings(p, "diameter_mm")?;
            check_diameters(p, &e, true)?;
            dedupe(e, p, "excluded finding", &mut warnings)
        }
        None => Vec::new(),
    };
    let listed: std::collections::HashSet<&str> = uids.iter().map(String::as_str).collect();
    let unlisted = ann.iter().filter(|a| !listed.contains(a.seriesuid.as_str())).count();
    if unlisted > 0 {
        warnings.push(format!(
            "{unlisted} annotation(s) belong to series not in {} and were not counted",
            seriesuids.display()
        ));
    }
    Ok(Truth {
        uids,
        annotations: ann,
        excluded,
        warnings,
    })
}

/// Reads the files, evaluates, writes `froc_summary.yaml`, `froc_curve.csv`,
/// `froc_bootstrap.csv`, `nodules_without_candidate.csv` and `froc.png` into `out`.
///
/// Before any work, the outputs are checked against the inputs (none may overwrite one);
/// the output folder is locked against a second run while it is written.
pub fn run(f: &FrocFiles, s: &FrocSettings) -> Result<FrocReport, EvalError> {
    // Every bad setting in one error.
    match (metrics::check_bootstrap(s.bootstrap), s.check()) {
        (Ok(()), Ok(())) => {}
        (Err(a), Ok(())) => return Err(EvalError::Usage(a)),
        (Ok(()), Err(b)) => return Err(b),
        (Err(a), Err(b)) => return Err(EvalError::Usage(format!("{a}; {b}"))),
    }
    let mut io = RunIo::new();
    io.input("annotations", &f.annotations)
        .input("series list", &f.seriesuids)
        .input("results", &f.results);
    if let Some(e) = &f.excluded {
        io.input("excluded findings", e);
    }
    if let Some(m) = &f.model {
        io.input("model", m);
    }
    io.outputs_in("FROC output", &f.out, write::FILES)?;
    let Truth {
        uids,
        annotations,
        excluded,
        mut warnings,
    } = read_truth(&f.annotations, f.excluded.as_deref(), &f.seriesuids)?;
    let results = read_findings(&f.results, "probability")?;
    if results.is_empty() {
        return Err(input_err(
            &f.results,
            "no candidates (the file has only a header)".into(),
        ));
    }
    let results = dedupe(results, &f.results, "result", &mut warnings);
    let mut report = evaluate(&uids, &annotations, &excluded, &results, s)?;
    // Created only now, so bad input leaves no folder behind.
    std::fs::create_dir_all(&f.out).map_err(|e| files::Error::io(&f.out, e))?;
    let _lock = Lock::within(&f.out, &format!("output folder {}", f.out.display()))?;
    report.warnings.splice(0..0, warnings);
    if f.excluded.is_none() {
        report
            .warnings
            .push("no annotations_excluded.csv given: no candidate is ignored as irrelevant".into());
    }
    write::write_outputs(&report, &f.out)?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_many_resamples_are_refused_before_reading() {
        let nowhere = PathBuf::from("/nonexistent/x.csv");
        let files = FrocFiles {
            annotations: nowhere.clone(),
            excluded: None,
            seriesuids: nowhere.clone(),
            results: nowhere.clone(),
            out: nowhere,
            model: None,
        };
        let s = FrocSettings {
            bootstrap: metrics::MAX_BOOTSTRAP + 1,
            ..Default::default()
        };
        let e = run(&files, &s).expect_err("refused").to_string();
        assert!(
            e.starts_with(&format!("--bootstrap {}", metrics::MAX_BOOTSTRAP + 1)),
            "{e}"
        );
        let s = FrocSettings {
            bootstrap: metrics::MAX_BOOTSTRAP,
            ..Default::default()
        };
        assert!(run(&files, &s)
            .expect_err("no files")
            .to_string()
            .contains("/nonexistent"));
    }
}
