//! Calibration of a trained model's scores, on a scoring host with no libtorch.
//!
//! Input: validation scores (`val_scores.csv` of a training run, or any CSV with a logit
//! or probability column and a label column). Output: `calibration.yaml`, bound to one
//! model by its sha256, with temperature and Platt parameters, operating points (Youden J,
//! maximum F1, fixed sensitivity) with Wilson intervals and counts, and metrics before and
//! after calibration. `infer --calibration` reads it back.
#![warn(clippy::unwrap_used)]

pub mod fit;
pub mod froc;
pub mod metrics;
pub mod thresholds;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use fit::{Platt, Temperature};
use thresholds::OperatingPoint;

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
    #[error(transparent)]
    Models(#[from] models::Error),
}

/// Scores with labels, as read from a CSV.
#[derive(Debug, Clone, Default)]
pub struct ScoreTable {
    pub source: PathBuf,
    pub logits: Vec<f64>,
    pub labels: Vec<u8>,
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
    /// Optional series column (counted in the report).
    pub seriesuid: String,
}

impl Default for Columns {
    fn default() -> Self {
        Columns {
            logit: "logit".into(),
            probability: None,
            label: "label".into(),
            seriesuid: "seriesuid".into(),
        }
    }
}

impl ScoreTable {
    /// Reads a scores CSV. Every problem names the file; rows are numbered as lines.
    pub fn read(path: &Path, cols: &Columns) -> Result<Self, CalError> {
        let bad = |msg: String| CalError::Input {
            path: path.to_path_buf(),
            msg,
        };
        let mut rdr = csv::ReaderBuilder::new()
            .trim(csv::Trim::All)
            .from_path(path)
            .map_err(|e| match e.into_kind() {
                csv::ErrorKind::Io(source) => CalError::Io {
                    path: path.to_path_buf(),
                    source,
                },
                other => bad(format!("{other:?}")),
            })?;
        let headers = rdr.headers().map_err(|e| bad(e.to_string()))?.clone();
        let find = |name: &str| headers.iter().position(|h| h == name);
        let score_col = cols.probability.as_deref().unwrap_or(&cols.logit);
        let mut missing = Vec::new();
        let si = find(score_col);
        let li = find(&cols.label);
        if si.is_none() {
            missing.push(score_col.to_string());
        }
        if li.is_none() {
            missing.push(cols.label.clone());
        }
        let (Some(si), Some(li)) = (si, li) else {
            return Err(bad(format!(
                "missing column(s) {} (columns present: {})",
                missing.join(", "),
                headers.iter().collect::<Vec<_>>().join(", ")
            )));
        };
        let ui = find(&cols.seriesuid);
        let mut t = ScoreTable {
            source: path.to_path_buf(),
            ..Default::default()
        };
        for (i, rec) in rdr.records().enumerate() {
            let line = i + 2;
            let rec = rec.map_err(|e| bad(format!("line {line}: {e}")))?;
            let s: f64 = rec
                .get(si)
                .unwrap_or("")
                .parse()
                .map_err(|_| bad(format!("line {line}: `{score_col}` is not a number: {:?}", rec.get(si))))?;
            let z = if cols.probability.is_some() {
                if !(0.0..=1.0).contains(&s) {
                    return Err(bad(format!("line {line}: probability {s} outside [0, 1]")));
                }
                metrics::logit(s)
            } else {
                s
            };
            if !z.is_finite() {
                return Err(bad(format!("line {line}: non-finite score {s}")));
            }
            let y = match rec.get(li) {
                Some("0") | Some("0.0") => 0,
                Some("1") | Some("1.0") => 1,
                other => return Err(bad(format!("line {line}: label must be 0 or 1, got {other:?}"))),
            };
            t.logits.push(z);
            t.labels.push(y);
            if let Some(ui) = ui {
                t.seriesuid.push(rec.get(ui).unwrap_or("").to_string());
            }
        }
        let n_pos = t.labels.iter().filter(|&&l| l == 1).count();
        if n_pos == 0 || n_pos == t.labels.len() {
            return Err(bad(format!(
                "calibration needs both classes; found {n_pos} positive(s) among {} row(s)",
                t.labels.len()
            )));
        }
        Ok(t)
    }
}

/// Metrics of one set of probabilities.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub auroc: f64,
    pub brier: f64,
    pub nll: f64,
    /// Expected calibration error, 15 equal-width bins.
    pub ece_15: f64,
}

impl Metrics {
    pub fn of_logits(z: &[f64], y: &[u8]) -> Self {
        let p: Vec<f64> = z.iter().map(|&v| metrics::sigmoid(v)).collect();
        Metrics {
            auroc: metrics::auroc(z, y).unwrap_or(f64::NAN),
            brier: metrics::brier(&p, y),
            nll: metrics::nll_from_logits(z, y),
            ece_15: metrics::ece(&p, y, 15),
        }
    }
}

/// Which calibration `infer` applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    Temperature,
    Platt,
}

/// The model a calibration belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRef {
    pub path: PathBuf,
    pub sha256: String,
}

/// What the calibration was fitted on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataRef {
    pub scores: PathBuf,
    pub n: usize,
    pub n_positive: usize,
    pub n_series: usize,
}

/// `calibration.yaml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationFile {
    pub tool_version: String,
    pub model: ModelRef,
    pub data: DataRef,
    /// The calibration `infer` applies for `calibrated_probability`.
    pub method: Method,
    pub temperature: Temperature,
    pub platt: Platt,
    /// The operating point `infer` uses for `decision`.
    pub default_operating_point: String,
    pub operating_points: Vec<OperatingPoint>,
    /// How `method` was chosen.
    pub method_selection: MethodSelection,
    /// Keys: `uncalibrated`, `temperature`, `platt`.
    pub metrics: BTreeMap<String, Metrics>,
    /// Conditions that make the numbers less trustworthy.
    #[serde(default)]
    pub warnings: Vec<String>,
    pub note: String,
}

/// Held-out comparison of the two calibrations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MethodSelection {
    pub criterion: String,
    /// Folds in which both methods could be fitted and evaluated.
    pub folds_used: usize,
    /// Mean held-out NLL per patch, over the folds used.
    pub cv_nll_temperature: Option<f64>,
    pub cv_nll_platt: Option<f64>,
}

/// Cross-validated NLL of both methods, folds grouped by series when series are known
/// (patches of one scan are never split between fitting and evaluation). Platt nests
/// temperature scaling (b = 0), so comparing in-sample NLL would always pick Platt.
pub fn cross_validate(t: &ScoreTable, smoothing: bool, k: usize) -> MethodSelection {
    let groups: Vec<String> = if t.seriesuid.len() == t.logits.len() && t.seriesuid.iter().all(|u| !u.is_empty()) {
        t.seriesuid.clone()
    } else {
        (0..t.logits.len()).map(|i| i.to_string()).collect()
    };
    let mut uniq: Vec<&String> = groups.iter().collect();
    uniq.sort();
    uniq.dedup();
    // A deterministic shuffle: order groups by the hash of their id, deal them round-robin.
    uniq.sort_by_key(|g| models::fsutil::sha256_bytes(g.as_bytes()));
    let k = k.min(uniq.len());
    let fold_of: BTreeMap<&String, usize> = uniq.iter().enumerate().map(|(i, g)| (*g, i % k.max(1))).collect();
    let (mut sum_t, mut sum_p, mut n_eval, mut used) = (0.0, 0.0, 0usize, 0usize);
    for fold in 0..k {
        let (mut zf, mut yf, mut ze, mut ye) = (vec![], vec![], vec![], vec![]);
        for (i, g) in groups.iter().enumerate() {
            if fold_of[g] == fold {
                ze.push(t.logits[i]);
                ye.push(t.labels[i]);
            } else {
                zf.push(t.logits[i]);
                yf.push(t.labels[i]);
            }
        }
        let both = |y: &[u8]| y.contains(&0) && y.contains(&1);
        if ze.is_empty() || !both(&yf) {
            continue;
        }
        let (Ok(tm), Ok(pl)) = (fit::fit_temperature(&zf, &yf), fit::fit_platt(&zf, &yf, smoothing)) else {
            continue;
        };
        let zt: Vec<f64> = ze.iter().map(|v| v / tm.temperature).collect();
        let zp: Vec<f64> = ze.iter().map(|v| pl.a * v + pl.b).collect();
        sum_t += metrics::nll_from_logits(&zt, &ye) * ze.len() as f64;
        sum_p += metrics::nll_from_logits(&zp, &ye) * ze.len() as f64;
        n_eval += ze.len();
        used += 1;
    }
    let per = |s: f64| (used > 0).then(|| s / n_eval as f64);
    MethodSelection {
        criterion: format!(
            "mean held-out NLL, {k}-fold cross-validation grouped by {}",
            if groups == t.seriesuid {
                "seriesuid"
            } else {
                "patch (no seriesuid column)"
            }
        ),
        folds_used: used,
        cv_nll_temperature: per(sum_t),
        cv_nll_platt: per(sum_p),
    }
}

impl CalibrationFile {
    /// Calibrated probability of a raw logit under the chosen method.
    pub fn probability(&self, logit: f64) -> f64 {
        metrics::sigmoid(self.transform(logit))
    }

    /// Calibrated logit of a raw logit.
    pub fn transform(&self, logit: f64) -> f64 {
        match self.method {
            Method::Temperature => logit / self.temperature.temperature,
            Method::Platt => self.platt.a * logit + self.platt.b,
        }
    }

    /// The default operating point.
    pub fn operating_point(&self) -> Result<&OperatingPoint, CalError> {
        self.operating_points
            .iter()
            .find(|p| p.name == self.default_operating_point)
            .ok_or_else(|| {
                CalError::Fit(format!(
                    "default operating point `{}` is not among the calibration's operating points",
                    self.default_operating_point
                ))
            })
    }

    /// Reads a calibration file.
    pub fn load(path: &Path) -> Result<Self, CalError> {
        let text = std::fs::read_to_string(path).map_err(|source| CalError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let cal: Self = serde_yaml::from_str(&text).map_err(|e| CalError::Input {
            path: path.to_path_buf(),
            msg: format!("not a calibration file: {e}"),
        })?;
        let bad = |msg: String| CalError::Input {
            path: path.to_path_buf(),
            msg,
        };
        cal.operating_point().map_err(|e| bad(e.to_string()))?;
        let t = cal.temperature.temperature;
        if !(t.is_finite() && t > 0.0) {
            return Err(bad(format!("temperature must be a positive number, got {t}")));
        }
        if !(cal.platt.a.is_finite() && cal.platt.a > 0.0 && cal.platt.b.is_finite()) {
            return Err(bad(format!(
                "Platt parameters must be finite with a > 0, got a = {}, b = {}",
                cal.platt.a, cal.platt.b
            )));
        }
        if let Some(p) = cal.operating_points.iter().find(|p| !p.threshold_logit.is_finite()) {
            return Err(bad(format!("operating point `{}` has a non-finite threshold", p.name)));
        }
        if cal.model.sha256.len() != 64 || !cal.model.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("model.sha256 is not a sha256 hex digest".into()));
        }
        Ok(cal)
    }

    /// Refuses to apply this calibration to a model it was not fitted for.
    pub fn check_model(&self, cal_path: &Path, model_path: &Path, model_sha256: &str) -> Result<(), CalError> {
        if self.model.sha256 != model_sha256 {
            return Err(CalError::Input {
                path: cal_path.to_path_buf(),
                msg: format!(
                    "this calibration belongs to another model (sha256 {}, fitted for {}), not to {} (sha256 {}); re-run `calibrate` for this model",
                    short(&self.model.sha256),
                    self.model.path.display(),
                    model_path.display(),
                    short(model_sha256)
                ),
            });
        }
        Ok(())
    }
}

fn short(s: &str) -> &str {
    s.get(..12).unwrap_or(s)
}

/// Options of a calibration run.
#[derive(Debug, Clone)]
pub struct Settings {
    pub scores: PathBuf,
    pub columns: Columns,
    pub model: PathBuf,
    pub out: PathBuf,
    pub method: Option<Method>,
    pub platt_smoothing: bool,
    pub min_sensitivity: f64,
    pub operating_point: String,
}

impl Settings {
    /// Settings for a training run folder: its `val_scores.csv` and `model.onnx`, output
    /// `calibration.yaml` beside them.
    pub fn for_run(run: &Path) -> Self {
        Settings {
            scores: run.join("val_scores.csv"),
            columns: Columns::default(),
            model: run.join("model.onnx"),
            out: run.join("calibration.yaml"),
            method: None,
            platt_smoothing: false,
            min_sensitivity: 0.95,
            operating_point: "youden_j".into(),
        }
    }
}

/// Fits both calibrations on a score table and builds the calibration file.
pub fn calibrate(t: &ScoreTable, s: &Settings, model: ModelRef) -> Result<CalibrationFile, CalError> {
    if !(0.0..=1.0).contains(&s.min_sensitivity) {
        return Err(CalError::Fit(format!(
            "minimum sensitivity {} outside [0, 1]",
            s.min_sensitivity
        )));
    }
    let (z, y) = (&t.logits, &t.labels);
    let temp = fit::fit_temperature(z, y)?;
    let platt = fit::fit_platt(z, y, s.platt_smoothing)?;
    let zt: Vec<f64> = z.iter().map(|v| v / temp.temperature).collect();
    let zp: Vec<f64> = z.iter().map(|v| platt.a * v + platt.b).collect();
    let mut m = BTreeMap::new();
    m.insert("uncalibrated".to_string(), Metrics::of_logits(z, y));
    m.insert("temperature".to_string(), Metrics::of_logits(&zt, y));
    m.insert("platt".to_string(), Metrics::of_logits(&zp, y));
    // Without a requested method, the lower cross-validated NLL wins; temperature scaling
    // (one parameter) when cross-validation was not possible.
    let selection = cross_validate(t, s.platt_smoothing, 5);
    let method = s
        .method
        .unwrap_or(match (selection.cv_nll_temperature, selection.cv_nll_platt) {
            (Some(nt), Some(np)) if np < nt => Method::Platt,
            _ => Method::Temperature,
        });
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
    if selection.folds_used == 0 && s.method.is_none() {
        warnings.push(
            "cross-validation was not possible (too few series with both classes); chose temperature scaling".into(),
        );
    }
    let mut series: Vec<&String> = t.seriesuid.iter().collect();
    series.sort();
    series.dedup();
    let mut cal = CalibrationFile {
        tool_version: models::TOOL_VERSION.into(),
        model,
        data: DataRef {
            scores: t.source.clone(),
            n: y.len(),
            n_positive: n_pos,
            n_series: series.len(),
        },
        method,
        temperature: temp,
        platt,
        default_operating_point: s.operating_point.clone(),
        operating_points: thresholds::operating_points(z, y, s.min_sensitivity),
        method_selection: selection,
        metrics: m,
        warnings,
        note: "Parameters, thresholds and the metrics after calibration are all computed on the same \
               calibration data (in-sample); judge them on held-out data."
            .into(),
    };
    for p in &mut cal.operating_points {
        p.threshold_probability = metrics::sigmoid(match method {
            Method::Temperature => p.threshold_logit / temp.temperature,
            Method::Platt => platt.a * p.threshold_logit + platt.b,
        });
    }
    cal.operating_point()?;
    Ok(cal)
}

/// Reads the scores, fits, writes `calibration.yaml` atomically. Returns the file.
pub fn run(s: &Settings) -> Result<CalibrationFile, CalError> {
    let table = ScoreTable::read(&s.scores, &s.columns)?;
    if !s.model.is_file() {
        return Err(CalError::Input {
            path: s.model.clone(),
            msg: "model file not found: a calibration is bound to the model it calibrates (run `trainer train` first, or pass --model)".into(),
        });
    }
    models::onnx::read_model(&s.model)?;
    let sha = models::fsutil::sha256_file(&s.model)?;
    let cal = calibrate(
        &table,
        s,
        ModelRef {
            path: s.model.clone(),
            sha256: sha,
        },
    )?;
    let text = serde_yaml::to_string(&cal).map_err(|e| CalError::Fit(e.to_string()))?;
    models::fsutil::write_atomic(&s.out, text.as_bytes())?;
    Ok(cal)
}

/// A short human summary of a calibration.
pub fn summary(cal: &CalibrationFile) -> String {
    let mut out = String::new();
    let m = &cal.metrics;
    out += &format!(
        "calibrated on {} patches ({} positive, {} series); method: {:?} (T = {:.3}; Platt a = {:.3}, b = {:.3})\n",
        cal.data.n,
        cal.data.n_positive,
        cal.data.n_series,
        cal.method,
        cal.temperature.temperature,
        cal.platt.a,
        cal.platt.b
    );
    if let (Some(t), Some(p)) = (
        cal.method_selection.cv_nll_temperature,
        cal.method_selection.cv_nll_platt,
    ) {
        out += &format!(
            "method chosen by {}: temperature {t:.4}, Platt {p:.4} ({} folds)\n",
            cal.method_selection.criterion, cal.method_selection.folds_used
        );
    }
    for w in &cal.warnings {
        out += &format!("warning: {w}\n");
    }
    out += "metrics on the calibration data (in-sample after calibration):\n";
    out += "               AUROC   Brier   NLL     ECE15\n";
    for k in ["uncalibrated", "temperature", "platt"] {
        if let Some(v) = m.get(k) {
            out += &format!(
                "  {k:<12} {:.4}  {:.4}  {:.4}  {:.4}\n",
                v.auroc, v.brier, v.nll, v.ece_15
            );
        }
    }
    for p in &cal.operating_points {
        let f = |x: &thresholds::Proportion| match (x.value, x.ci95) {
            (Some(v), Some([lo, hi])) => format!("{v:.3} [{lo:.3}, {hi:.3}]"),
            _ => "n/a".into(),
        };
        out += &format!(
            "  {:<18} p >= {:.4} (logit >= {:+.4}): sens {} spec {} (TP {} FP {} TN {} FN {})\n",
            p.name,
            p.threshold_probability,
            p.threshold_logit,
            f(&p.sensitivity),
            f(&p.specificity),
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

    #[test]
    fn calibration_binds_to_model() {
        let t = ScoreTable {
            source: "x.csv".into(),
            logits: vec![-2.0, -1.0, 0.5, 1.0, 2.0, -0.5, 3.0, 0.0],
            labels: vec![0, 0, 1, 1, 1, 0, 1, 0],
            seriesuid: vec![],
        };
        let s = Settings::for_run(Path::new("run"));
        let cal = calibrate(
            &t,
            &s,
            ModelRef {
                path: "m.onnx".into(),
                sha256: "aa".repeat(32),
            },
        )
        .expect("cal");
        assert!(cal
            .check_model(Path::new("c.yaml"), Path::new("m.onnx"), &"aa".repeat(32))
            .is_ok());
        let msg = cal
            .check_model(Path::new("c.yaml"), Path::new("other.onnx"), &"bb".repeat(32))
            .expect_err("other")
            .to_string();
        assert!(msg.contains("c.yaml") && msg.contains("another model"), "{msg}");
        // Threshold probability is the calibrated image of the logit threshold.
        let op = cal.operating_point().expect("op");
        assert!((cal.probability(op.threshold_logit) - op.threshold_probability).abs() < 1e-12);
    }

    /// Labels drawn from `sigmoid(a z + b)`, 40 series of 50 patches.
    fn table(a: f64, b: f64) -> ScoreTable {
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

    #[test]
    fn cross_validation_picks_platt_only_when_the_offset_matters() {
        let shifted = cross_validate(&table(0.7, -1.5), false, 5);
        assert_eq!(shifted.folds_used, 5);
        assert!(shifted.cv_nll_platt < shifted.cv_nll_temperature, "{shifted:?}");
        assert!(shifted.criterion.contains("seriesuid"));
        let s = Settings::for_run(Path::new("run"));
        let sha = "ab".repeat(32);
        let cal = calibrate(
            &table(0.7, -1.5),
            &s,
            ModelRef {
                path: "m.onnx".into(),
                sha256: sha.clone(),
            },
        )
        .expect("cal");
        assert_eq!(cal.method, Method::Platt);
        // With no offset, Platt's extra parameter buys nothing out of sample.
        let cal = calibrate(
            &table(0.5, 0.0),
            &s,
            ModelRef {
                path: "m.onnx".into(),
                sha256: sha,
            },
        )
        .expect("cal");
        let sel = &cal.method_selection;
        let (nt, np) = (sel.cv_nll_temperature.expect("t"), sel.cv_nll_platt.expect("p"));
        assert!((nt - np).abs() < 0.01, "{sel:?}");
    }

    #[test]
    fn load_rejects_broken_parameters() {
        let d = tempfile::tempdir().expect("tmp");
        let s = Settings::for_run(Path::new("run"));
        let mut cal = calibrate(
            &table(0.7, -1.5),
            &s,
            ModelRef {
                path: "m.onnx".into(),
                sha256: "ab".repeat(32),
            },
        )
        .expect("cal");
        let p = d.path().join("c.yaml");
        std::fs::write(&p, serde_yaml::to_string(&cal).expect("yaml")).expect("write");
        assert!(CalibrationFile::load(&p).is_ok());
        cal.temperature.temperature = -1.0;
        cal.model.sha256 = "é".repeat(40);
        std::fs::write(&p, serde_yaml::to_string(&cal).expect("yaml")).expect("write");
        let msg = CalibrationFile::load(&p).expect_err("bad").to_string();
        assert!(msg.contains("c.yaml") && msg.contains("temperature"), "{msg}");
        assert!(cal.check_model(&p, Path::new("m.onnx"), &"cd".repeat(32)).is_err());
    }
}
