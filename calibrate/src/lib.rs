//! Calibration of a trained model's scores, on a scoring host with no libtorch.
//!
//! Inputs: a training run's validation scores, any scores CSV, or an ONNX model plus a
//! labelled patch folder scored through ONNX Runtime (site recalibration, with
//! [`scorer::Scorer`]). Methods: temperature scaling and Platt scaling (exact Newton fits)
//! and isotonic regression (PAV); `auto` picks by series-grouped cross-validated NLL.
//! Outputs: `calibration.yaml` (every method's parameters, operating points with Wilson and
//! series-bootstrap intervals, metrics before and after, bound to the model's sha256), a
//! Markdown report with plots, and `model.calibrated.onnx` (the network with the
//! calibration and the chosen threshold appended as graph nodes).
#![warn(clippy::unwrap_used)]

pub mod bake;
pub mod bootstrap;
pub mod fit;
pub mod metrics;
pub mod report;
pub mod thresholds;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use models::calibration::{
    CalibrationFile, DataRef, Isotonic, Method, MethodSelection, Metrics, ModelRef, OperatingPoint, Platt, Temperature,
};

/// Errors of the calibrate library.
#[derive(Debug, thiserror::Error)]
pub enum CalError {
    #[error("{path}: {msg}")]
    Input { path: PathBuf, msg: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("fit: {0}")]
    Fit(String),
    /// A setting out of its range.
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Models(#[from] models::Error),
    #[error(transparent)]
    Scorer(#[from] scorer::ScorerError),
}

/// Scores with labels.
#[derive(Debug, Clone, Default)]
pub struct ScoreTable {
    pub source: PathBuf,
    pub logits: Vec<f64>,
    pub labels: Vec<u8>,
    /// Empty when the source has no series column.
    pub seriesuid: Vec<String>,
}

/// Which columns of a scores CSV hold what.
#[derive(Debug, Clone)]
pub struct Columns {
    /// Raw logit column; used unless `probability` is given.
    pub logit: String,
    /// Probability column instead of a logit (converted to a logit).
    pub probability: Option<String>,
    pub label: String,
    /// Optional series column (bootstrap and cross-validation group by it).
    pub seriesuid: String,
    /// Optional patch column: a patch listed twice is an error.
    pub patch: String,
}

impl Default for Columns {
    fn default() -> Self {
        Columns {
            logit: "logit".into(),
            probability: None,
            label: "label".into(),
            seriesuid: "seriesuid".into(),
            patch: "patch_file".into(),
        }
    }
}

fn input_err(path: &Path, msg: String) -> CalError {
    CalError::Input {
        path: path.to_path_buf(),
        msg,
    }
}

impl ScoreTable {
    /// Reads a scores CSV. Every problem names the file and line.
    pub fn read(path: &Path, cols: &Columns) -> Result<Self, CalError> {
        let (mut rdr, headers) = models::csvio::open(path, true)?;
        let find = |name: &str| headers.iter().position(|h| h == name);
        let score_col = cols.probability.as_deref().unwrap_or(&cols.logit);
        let (Some(si), Some(li)) = (find(score_col), find(&cols.label)) else {
            let missing: Vec<&str> = [score_col, cols.label.as_str()]
                .into_iter()
                .filter(|c| find(c).is_none())
                .collect();
            return Err(input_err(
                path,
                format!(
                    "missing column(s) {} (columns present: {})",
                    missing.join(", "),
                    headers.iter().collect::<Vec<_>>().join(", ")
                ),
            ));
        };
        let (ui, pi) = (find(&cols.seriesuid), find(&cols.patch));
        let mut t = ScoreTable {
            source: path.to_path_buf(),
            ..Default::default()
        };
        let mut seen = std::collections::HashMap::new();
        for (i, rec) in rdr.records().enumerate() {
            let line = i + 2;
            let rec = rec.map_err(|e| input_err(path, format!("line {line}: {e}")))?;
            let raw = rec.get(si).unwrap_or("");
            let s: f64 = raw
                .parse()
                .map_err(|_| input_err(path, format!("line {line}: `{score_col}` is not a number: {raw:?}")))?;
            if !s.is_finite() {
                return Err(input_err(
                    path,
                    format!("line {line}: `{score_col}` is not finite: {raw}"),
                ));
            }
            let z = if cols.probability.is_some() {
                if !(0.0..=1.0).contains(&s) {
                    return Err(input_err(path, format!("line {line}: probability {s} outside [0, 1]")));
                }
                metrics::logit(s)
            } else {
                s
            };
            let y = match rec.get(li) {
                Some("0" | "0.0") => 0,
                Some("1" | "1.0") => 1,
                other => {
                    return Err(input_err(
                        path,
                        format!("line {line}: label must be 0 or 1, got {other:?}"),
                    ))
                }
            };
            if let Some(pi) = pi {
                let p = rec.get(pi).unwrap_or("").to_string();
                if let Some(first) = seen.insert(p.clone(), line) {
                    return Err(input_err(
                        path,
                        format!("line {line}: patch {p:?} already scored on line {first}"),
                    ));
                }
            }
            t.logits.push(z);
            t.labels.push(y);
            if let Some(ui) = ui {
                t.seriesuid.push(rec.get(ui).unwrap_or("").to_string());
            }
        }
        t.check(path)?;
        Ok(t)
    }

    /// Site recalibration: scores a labelled patch index (or folder with
    /// `patch_index.csv`) with `model` through ONNX Runtime. Unreadable patches are
    /// errors here: calibrating on a silently shrunken set would mislead.
    pub fn from_patches(model: &Path, index: &Path, opts: &scorer::ScorerOptions) -> Result<Self, CalError> {
        let (root, has_label, rows) = models::index::read_scoring_index(index)?;
        if !has_label {
            return Err(input_err(
                index,
                "the index has no `label` column: calibration needs labelled patches".into(),
            ));
        }
        let mut scorer = scorer::Scorer::open(model, opts)?;
        let pre = scorer.preprocess.clone();
        let mut t = ScoreTable {
            source: index.to_path_buf(),
            ..Default::default()
        };
        let mut errors = Vec::new();
        let per = pre.cube_size.pow(3);
        let mut batch = Vec::new();
        for chunk in rows.chunks(32) {
            batch.clear();
            let mut good = Vec::with_capacity(chunk.len());
            for r in chunk {
                let path = root.join(&r.patch_file);
                let at = batch.len();
                batch.resize(at + per, 0.0);
                match models::patch::load_patch_into(&path, &pre, &mut batch[at..]) {
                    Ok(()) => good.push(r),
                    Err(e) => {
                        batch.truncate(at);
                        errors.push(e.to_string());
                    }
                }
            }
            for (r, z) in good.into_iter().zip(scorer.score_flat(&batch)?) {
                if !z.is_finite() {
                    errors.push(format!(
                        "{}: the model's logit is {z} (not finite)",
                        root.join(&r.patch_file).display()
                    ));
                    continue;
                }
                let y = r
                    .label
                    .ok_or_else(|| input_err(index, format!("{}: no label", r.patch_file)))?;
                t.logits.push(f64::from(z));
                t.labels.push(y);
                t.seriesuid.push(r.seriesuid.clone());
            }
        }
        if !errors.is_empty() {
            return Err(input_err(
                index,
                format!(
                    "{} patch(es) could not be scored:\n  {}",
                    errors.len(),
                    errors.join("\n  ")
                ),
            ));
        }
        t.check(index)?;
        Ok(t)
    }

    fn check(&self, path: &Path) -> Result<(), CalError> {
        let n_pos = self.labels.iter().filter(|&&l| l == 1).count();
        if n_pos == 0 || n_pos == self.labels.len() {
            return Err(input_err(
                path,
                format!(
                    "calibration needs both classes; found {n_pos} positive(s) among {} row(s)",
                    self.labels.len()
                ),
            ));
        }
        Ok(())
    }

    /// Group ids for cross-validation and bootstrap: series when known, else each patch.
    pub fn groups(&self) -> (Vec<usize>, usize, &'static str) {
        let by_series = self.seriesuid.len() == self.logits.len() && self.seriesuid.iter().all(|u| !u.is_empty());
        if !by_series {
            return (
                (0..self.logits.len()).collect(),
                self.logits.len(),
                "patch (no seriesuid column)",
            );
        }
        let mut ids = BTreeMap::new();
        let g = self
            .seriesuid
            .iter()
            .map(|u| {
                let n = ids.len();
                *ids.entry(u.as_str()).or_insert(n)
            })
            .collect();
        (g, ids.len(), "seriesuid")
    }
}

/// A fitted set of calibrations.
#[derive(Debug, Clone)]
pub struct Fitted {
    pub temperature: Temperature,
    pub platt: Platt,
    pub isotonic: Isotonic,
}

impl Fitted {
    pub fn fit(z: &[f64], y: &[u8], smoothing: bool) -> Result<Self, CalError> {
        Ok(Fitted {
            temperature: fit::fit_temperature(z, y)?,
            platt: fit::fit_platt(z, y, smoothing)?,
            isotonic: fit::fit_isotonic(z, y)?,
        })
    }

    pub fn probability(&self, m: Method, z: f64) -> f64 {
        models::calibration::calibrated(m, &self.temperature, &self.platt, &self.isotonic, z)
    }

    /// The log-odds method `m` gives logit `z`: `z / T`, `a z + b`, or the logit of the
    /// isotonic probability. Taken directly for the first two rather than back from a
    /// probability, which in f64 is exactly 0 or 1 beyond |log-odds| ≈ 37 and would tie
    /// patches that the model ranks apart.
    pub fn log_odds(&self, m: Method, z: f64) -> f64 {
        match m {
            Method::Temperature => z / self.temperature.temperature,
            Method::Platt => self.platt.a * z + self.platt.b,
            Method::Isotonic => metrics::logit(self.isotonic.apply(z)),
        }
    }
}

/// Every metric of one set of probabilities `p` whose log-odds are `lp`
/// (`auroc_bootstrap_ci95` is filled later). The ranking metrics and the calibration slope
/// use `lp`, the probability metrics `p`: saturated probabilities would tie patches.
pub fn compute_metrics(p: &[f64], lp: &[f64], y: &[u8]) -> Metrics {
    let (slope, intercept) = match fit::fit_platt(lp, y, false) {
        Ok(f) => (f.a, f.b),
        Err(_) => (f64::NAN, f64::NAN),
    };
    Metrics {
        auroc: metrics::auroc(lp, y).unwrap_or(f64::NAN),
        auroc_delong_ci95: metrics::auroc_delong_ci95(lp, y),
        auroc_bootstrap_ci95: None,
        auprc: metrics::average_precision(lp, y),
        brier: metrics::brier(p, y),
        nll: metrics::nll_from_probs(p, y),
        ece_15: metrics::ece(p, y, 15),
        adaptive_ece_15: metrics::adaptive_ece(p, y, 15),
        mce_15: metrics::mce(p, y, 15),
        calibration_slope: slope,
        calibration_intercept: intercept,
    }
}

/// Held-out NLL of every method, `k` folds grouped by series (patches of one scan never
/// split between fitting and evaluation). Errors when the data cannot support it.
pub fn cross_validate(t: &ScoreTable, smoothing: bool, k: usize) -> Result<MethodSelection, CalError> {
    let (groups, n_groups, unit) = t.groups();
    if n_groups < k {
        return Err(CalError::Fit(format!(
            "--method auto needs {k}-fold cross-validation grouped by {unit}, but there are only {n_groups} group(s); \
             give more data or choose a method with --method"
        )));
    }
    // A deterministic shuffle: order groups by the hash of their index, deal round-robin.
    let mut order: Vec<usize> = (0..n_groups).collect();
    order.sort_by_cached_key(|g| models::fsutil::sha256_bytes(g.to_string().as_bytes()));
    let mut fold_of = vec![0; n_groups];
    for (i, &g) in order.iter().enumerate() {
        fold_of[g] = i % k;
    }
    // Folds are independent: fit and evaluate them in parallel.
    use rayon::prelude::*;
    let per_fold: Vec<Option<(Vec<f64>, usize)>> = (0..k)
        .into_par_iter()
        .map(|fold| {
            let (mut zf, mut yf, mut ze, mut ye) = (vec![], vec![], vec![], vec![]);
            for (i, &g) in groups.iter().enumerate() {
                if fold_of[g] == fold {
                    ze.push(t.logits[i]);
                    ye.push(t.labels[i]);
                } else {
                    zf.push(t.logits[i]);
                    yf.push(t.labels[i]);
                }
            }
            if !(yf.contains(&0) && yf.contains(&1)) {
                return None;
            }
            let f = Fitted::fit(&zf, &yf, smoothing).ok()?;
            let nll = Method::ALL
                .iter()
                .map(|&m| {
                    let p: Vec<f64> = ze.iter().map(|&z| f.probability(m, z)).collect();
                    metrics::nll_from_probs(&p, &ye) * ze.len() as f64
                })
                .collect();
            Some((nll, ze.len()))
        })
        .collect();
    let mut sums: BTreeMap<String, f64> = BTreeMap::new();
    let (mut n_eval, mut used) = (0usize, 0usize);
    for (nll, n) in per_fold.into_iter().flatten() {
        for (m, v) in Method::ALL.iter().zip(nll) {
            *sums.entry(m.name().to_string()).or_default() += v;
        }
        n_eval += n;
        used += 1;
    }
    if used == 0 {
        return Err(CalError::Fit(format!(
            "--method auto: no cross-validation fold (grouped by {unit}) had both classes to fit on; choose a method with --method"
        )));
    }
    Ok(MethodSelection {
        criterion: format!("mean held-out NLL, {k}-fold cross-validation grouped by {unit}"),
        folds_used: used,
        cv_nll: sums.into_iter().map(|(k, v)| (k, v / n_eval as f64)).collect(),
        chosen_by: "auto".into(),
    })
}

/// Options of a calibration run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Scores CSV; ignored when `patches` is given.
    pub scores: PathBuf,
    pub columns: Columns,
    /// Labelled patch index scored through ONNX Runtime (site recalibration).
    pub patches: Option<PathBuf>,
    pub scorer: scorer::ScorerOptions,
    pub model: PathBuf,
    /// `calibration.yaml`; the report, plots and calibrated model go beside it.
    pub out: PathBuf,
    /// `None`: auto.
    pub method: Option<Method>,
    pub platt_smoothing: bool,
    pub min_sensitivity: f64,
    pub min_specificity: f64,
    pub operating_point: String,
    pub folds: usize,
    pub bootstrap: usize,
    pub seed: u64,
    /// Write the Markdown report with plots.
    pub report: bool,
    /// Write `model.calibrated.onnx`.
    pub bake: bool,
}

impl Settings {
    /// Settings for a training run folder: its `val_scores.csv` and `model.onnx`, outputs
    /// beside them.
    pub fn for_run(run: &Path) -> Self {
        Settings {
            scores: run.join("val_scores.csv"),
            columns: Columns::default(),
            patches: None,
            scorer: scorer::ScorerOptions::default(),
            model: run.join("model.onnx"),
            out: run.join("calibration.yaml"),
            method: None,
            platt_smoothing: false,
            min_sensitivity: 0.95,
            min_specificity: 0.95,
            operating_point: "youden_j".into(),
            folds: 5,
            bootstrap: 1000,
            seed: 0,
            report: true,
            bake: true,
        }
    }

    /// The folder the outputs go to.
    pub fn out_dir(&self) -> PathBuf {
        match self.out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }
}

/// An error unless `b` is at most [`models::cli::MAX_BOOTSTRAP`].
pub fn check_bootstrap(b: usize) -> Result<(), CalError> {
    models::cli::check_bootstrap(b).map_err(CalError::Usage)
}

/// Fits every method on a score table and builds the calibration file.
pub fn calibrate(t: &ScoreTable, s: &Settings, model: ModelRef) -> Result<CalibrationFile, CalError> {
    check_bootstrap(s.bootstrap)?;
    for (name, v) in [("sensitivity", s.min_sensitivity), ("specificity", s.min_specificity)] {
        if !(0.0..=1.0).contains(&v) {
            return Err(CalError::Fit(format!("minimum {name} {v} outside [0, 1]")));
        }
    }
    let (z, y) = (&t.logits, &t.labels);
    let fitted = Fitted::fit(z, y, s.platt_smoothing)?;
    let selection = match s.method {
        None => cross_validate(t, s.platt_smoothing, s.folds)?,
        Some(m) => MethodSelection {
            criterion: format!("requested: {}", m.name()),
            folds_used: 0,
            cv_nll: cross_validate(t, s.platt_smoothing, s.folds)
                .map(|c| c.cv_nll)
                .unwrap_or_default(),
            chosen_by: "requested".into(),
        },
    };
    let method = s.method.unwrap_or_else(|| {
        Method::ALL
            .into_iter()
            .min_by(|a, b| {
                let na = selection.cv_nll.get(a.name()).copied().unwrap_or(f64::INFINITY);
                let nb = selection.cv_nll.get(b.name()).copied().unwrap_or(f64::INFINITY);
                na.total_cmp(&nb)
            })
            .unwrap_or(Method::Temperature)
    });
    let mut m = BTreeMap::new();
    let raw: Vec<f64> = z.iter().map(|&v| metrics::sigmoid(v)).collect();
    m.insert("uncalibrated".to_string(), compute_metrics(&raw, z, y));
    let mut log_odds = BTreeMap::new();
    for meth in Method::ALL {
        let p: Vec<f64> = z.iter().map(|&v| fitted.probability(meth, v)).collect();
        let lp: Vec<f64> = z.iter().map(|&v| fitted.log_odds(meth, v)).collect();
        m.insert(meth.name().to_string(), compute_metrics(&p, &lp, y));
        log_odds.insert(meth, lp);
    }
    let mut warnings = Vec::new();
    if m["uncalibrated"].auroc >= 1.0 {
        warnings.push(
            "the calibration data are perfectly separated: the fitted slopes grow without bound and the \
             calibrated probabilities are near 0 or 1; use more data or --platt-smoothing"
                .to_string(),
        );
    }
    let n_pos = y.iter().filter(|&&v| v == 1).count();
    if n_pos < 10 || y.len() - n_pos < 10 {
        warnings.push(format!(
            "only {n_pos} positive(s) and {} negative(s): the intervals are wide",
            y.len() - n_pos
        ));
    }
    let (_, n_series, _) = t.groups();
    let mut cal = CalibrationFile {
        tool_version: models::TOOL_VERSION.into(),
        model,
        data: DataRef {
            scores: t.source.clone(),
            n: y.len(),
            n_positive: n_pos,
            prevalence: n_pos as f64 / y.len() as f64,
            n_series: if t.seriesuid.is_empty() { 0 } else { n_series },
        },
        method,
        temperature: fitted.temperature,
        platt: fitted.platt,
        isotonic: fitted.isotonic.clone(),
        method_selection: selection,
        default_operating_point: s.operating_point.clone(),
        operating_points: thresholds::operating_points(z, y, s.min_sensitivity, s.min_specificity),
        metrics: m,
        bootstrap_resamples: s.bootstrap,
        bootstrap_seed: s.seed,
        warnings,
        note: "Parameters, thresholds and the metrics after calibration are computed on the same calibration data \
               (in-sample); the method choice uses held-out folds. Judge the operating points on new data."
            .into(),
    };
    for p in &mut cal.operating_points {
        p.threshold_probability = fitted.probability(method, p.threshold_logit);
    }
    if s.bootstrap > 0 {
        bootstrap::apply(&mut cal, t, &log_odds, s.bootstrap, s.seed);
    }
    if cal.operating_point().is_none() {
        let names: Vec<&str> = cal.operating_points.iter().map(|p| p.name.as_str()).collect();
        return Err(CalError::Fit(format!(
            "operating point `{}` is not one of {}",
            s.operating_point,
            names.join(", ")
        )));
    }
    Ok(cal)
}

/// Reads the scores (or scores the patches), fits, and writes `calibration.yaml`, the
/// report and `model.calibrated.onnx`, each atomically. Returns the calibration.
pub fn run(s: &Settings) -> Result<CalibrationFile, CalError> {
    // Before any patch is scored or file read.
    check_bootstrap(s.bootstrap)?;
    if !s.model.is_file() {
        return Err(input_err(
            &s.model,
            "model file not found: a calibration is bound to the model it calibrates (run `trainer train` first, or pass --model)"
                .into(),
        ));
    }
    let bytes = std::fs::read(&s.model).map_err(|source| CalError::Io {
        path: s.model.clone(),
        source,
    })?;
    let proto = models::onnx::parse_model(&bytes, &s.model)?;
    let table = match &s.patches {
        Some(idx) => ScoreTable::from_patches(&s.model, idx, &s.scorer)?,
        None => ScoreTable::read(&s.scores, &s.columns)?,
    };
    let sha = models::fsutil::sha256_bytes(&bytes);
    let cal = calibrate(
        &table,
        s,
        ModelRef {
            path: s.model.clone(),
            sha256: sha,
        },
    )?;
    let text = serde_yaml::to_string(&cal).map_err(|e| CalError::Fit(e.to_string()))?;
    let dir = s.out_dir();
    std::fs::create_dir_all(&dir).map_err(|source| CalError::Io {
        path: dir.clone(),
        source,
    })?;
    models::fsutil::write_atomic(&s.out, text.as_bytes())?;
    if s.report {
        report::write(&cal, &table, &dir)?;
    }
    if s.bake {
        let baked = bake::calibrated_model(proto, &cal)?;
        models::fsutil::write_atomic(&dir.join("model.calibrated.onnx"), &models::onnx::to_bytes(&baked))?;
    }
    Ok(cal)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write");
        p
    }

    #[test]
    fn score_table_errors_name_file_and_line() {
        let d = tempfile::tempdir().expect("tmp");
        let p = write(d.path(), "s.csv", "logit,lab\n1,1\n");
        let msg = ScoreTable::read(&p, &Columns::default()).expect_err("col").to_string();
        assert!(
            msg.contains("s.csv") && msg.contains("missing column(s) label"),
            "{msg}"
        );
        let p = write(d.path(), "s2.csv", "logit,label\n1,1\nabc,0\n");
        let msg = ScoreTable::read(&p, &Columns::default()).expect_err("num").to_string();
        assert!(msg.contains("s2.csv") && msg.contains("line 3"), "{msg}");
        let p = write(d.path(), "s3.csv", "logit,label\n1,1\n2,1\n");
        let msg = ScoreTable::read(&p, &Columns::default())
            .expect_err("one class")
            .to_string();
        assert!(msg.contains("both classes"), "{msg}");
        let p = write(d.path(), "s4.csv", "logit,label\n1,1\ninf,0\n");
        let msg = ScoreTable::read(&p, &Columns::default()).expect_err("inf").to_string();
        assert!(msg.contains("line 3") && msg.contains("not finite"), "{msg}");
        let p = write(d.path(), "s5.csv", "logit,label\nNaN,1\n0,0\n");
        assert!(ScoreTable::read(&p, &Columns::default())
            .expect_err("nan")
            .to_string()
            .contains("not finite"));
        let p = write(d.path(), "s6.csv", "patch_file,logit,label\na,1,1\nb,0,0\na,2,1\n");
        let msg = ScoreTable::read(&p, &Columns::default()).expect_err("dup").to_string();
        assert!(
            msg.contains("line 4") && msg.contains("already scored on line 2"),
            "{msg}"
        );
        let p = write(d.path(), "s7.csv", "logit,label\n1,2\n0,0\n");
        assert!(ScoreTable::read(&p, &Columns::default())
            .expect_err("label")
            .to_string()
            .contains("0 or 1"));
    }

    #[test]
    fn probability_column_is_converted() {
        let d = tempfile::tempdir().expect("tmp");
        let p = write(d.path(), "s.csv", "prob,y\n0.5,1\n0.25,0\n");
        let cols = Columns {
            probability: Some("prob".into()),
            label: "y".into(),
            ..Default::default()
        };
        let t = ScoreTable::read(&p, &cols).expect("read");
        assert!(t.logits[0].abs() < 1e-12 && (t.logits[1] - (1.0f64 / 3.0).ln()).abs() < 1e-12);
    }

    /// Labels drawn from `sigmoid(a z + b)`, 40 series of 50 patches.
    pub(crate) fn table(a: f64, b: f64) -> ScoreTable {
        let mut st: u64 = 99;
        let mut next = || {
            st = st.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (st >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut t = ScoreTable {
            source: "x.csv".into(),
            ..Default::default()
        };
        for i in 0..2000 {
            let z = (next() - 0.5) * 10.0;
            t.logits.push(z);
            t.labels.push(u8::from(next() < metrics::sigmoid(a * z + b)));
            t.seriesuid.push(format!("S{}", i / 50));
        }
        t
    }

    fn quick() -> Settings {
        Settings {
            bootstrap: 0,
            ..Settings::for_run(Path::new("run"))
        }
    }

    #[test]
    fn auto_picks_platt_when_the_offset_matters() {
        let sel = cross_validate(&table(0.7, -1.5), false, 5).expect("cv");
        assert_eq!(sel.folds_used, 5);
        assert!(sel.cv_nll["platt"] < sel.cv_nll["temperature"], "{sel:?}");
        assert!(sel.criterion.contains("seriesuid"));
        let cal = calibrate(
            &table(0.7, -1.5),
            &quick(),
            ModelRef {
                path: "m.onnx".into(),
                sha256: "ab".repeat(32),
            },
        )
        .expect("cal");
        assert_ne!(cal.method, Method::Temperature);
        assert_eq!(cal.method_selection.chosen_by, "auto");
        let best = cal
            .method_selection
            .cv_nll
            .values()
            .copied()
            .fold(f64::INFINITY, f64::min);
        assert_eq!(cal.method_selection.cv_nll[cal.method.name()], best);
    }

    #[test]
    fn too_few_series_for_the_folds_is_an_error() {
        let mut t = table(1.0, 0.0);
        for (i, u) in t.seriesuid.iter_mut().enumerate() {
            *u = format!("S{}", i % 3);
        }
        let msg = calibrate(
            &t,
            &quick(),
            ModelRef {
                path: "m".into(),
                sha256: "ab".repeat(32),
            },
        )
        .expect_err("3 series, 5 folds")
        .to_string();
        assert!(msg.contains("only 3 group(s)") && msg.contains("--method"), "{msg}");
        let s = Settings {
            method: Some(Method::Platt),
            ..quick()
        };
        let cal = calibrate(
            &t,
            &s,
            ModelRef {
                path: "m".into(),
                sha256: "ab".repeat(32),
            },
        )
        .expect("requested");
        assert_eq!(cal.method, Method::Platt);
        assert_eq!(cal.method_selection.chosen_by, "requested");
    }

    /// Logits in the thousands, all far below 0 (an undertrained network's): every
    /// uncalibrated probability is 0 in f64, yet discrimination is measured on the logits, the
    /// fits find their scale, and the results equal those of the same logits at a usual scale.
    #[test]
    fn logits_of_any_scale_calibrate_alike() {
        let small = table(0.7, -1.5);
        let mut big = small.clone();
        for z in &mut big.logits {
            *z = 1000.0 * *z - 10_000.0;
        }
        assert!(big.logits.iter().all(|&z| metrics::sigmoid(z) == 0.0));
        let s = Settings {
            bootstrap: 50,
            ..quick()
        };
        let m = ModelRef {
            path: "m.onnx".into(),
            sha256: "ab".repeat(32),
        };
        let (a, b) = (
            calibrate(&small, &s, m.clone()).expect("small"),
            calibrate(&big, &s, m).expect("big"),
        );
        for key in ["uncalibrated", "temperature", "platt"] {
            let (ma, mb) = (&a.metrics[key], &b.metrics[key]);
            assert_eq!(ma.auroc, mb.auroc, "{key}");
            assert_eq!(ma.auroc_bootstrap_ci95, mb.auroc_bootstrap_ci95, "{key}");
            assert!(ma.auroc > 0.7, "{key}: {}", ma.auroc);
        }
        assert!(
            (a.platt.a / (1000.0 * b.platt.a) - 1.0).abs() < 1e-6,
            "{:?} {:?}",
            a.platt,
            b.platt
        );
        assert!((a.metrics["platt"].nll - b.metrics["platt"].nll).abs() < 1e-9);
        assert!(b.temperature.temperature > 100.0, "{:?}", b.temperature);
    }

    #[test]
    fn calibration_binds_to_model_and_roundtrips() {
        let d = tempfile::tempdir().expect("tmp");
        let cal = calibrate(
            &table(0.7, -1.5),
            &quick(),
            ModelRef {
                path: "m.onnx".into(),
                sha256: "ab".repeat(32),
            },
        )
        .expect("cal");
        let p = d.path().join("c.yaml");
        std::fs::write(&p, serde_yaml::to_string(&cal).expect("yaml")).expect("write");
        let back = CalibrationFile::load(&p).expect("load");
        assert_eq!(back, cal);
        assert!(back.check_model(&p, Path::new("m.onnx"), &"ab".repeat(32)).is_ok());
        let msg = back
            .check_model(&p, Path::new("o.onnx"), &"cd".repeat(32))
            .expect_err("other")
            .to_string();
        assert!(msg.contains("c.yaml") && msg.contains("another model"), "{msg}");
        let op = cal.operating_point().expect("op");
        assert!((cal.probability(op.threshold_logit) - op.threshold_probability).abs() < 1e-12);
        let mut broken = cal.clone();
        broken.temperature.temperature = -1.0;
        std::fs::write(&p, serde_yaml::to_string(&broken).expect("yaml")).expect("write");
        assert!(CalibrationFile::load(&p)
            .expect_err("bad")
            .to_string()
            .contains("temperature"));
    }
}
