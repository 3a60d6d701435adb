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
//!
//! # Layout
//! [`read`] turns a scores CSV or a scored patch index into a [`ScoreTable`]; [`fit`],
//! [`select`], [`thresholds`], [`metrics`] and [`bootstrap`] compute ([`calibrate`] puts
//! them together); [`write`](mod@write) writes `calibration.yaml`, with [`report`] and [`bake`] for
//! the report and the calibrated model. [`run`] checks the settings and the outputs, then
//! reads, computes and writes.
#![warn(clippy::unwrap_used)]

pub mod bake;
pub mod bootstrap;
pub mod fit;
pub mod metrics;
pub mod read;
pub mod report;
pub mod select;
pub mod thresholds;
pub mod write;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use files::{Lock, RunIo};

pub use fit::Fitted;
pub use tables::scores::{Columns, ScoreTable};
pub use select::cross_validate;

pub use models::calibration::{
    CalibrationFile, DataRef, Isotonic, Method, MethodSelection, Metrics, ModelRef, OperatingPoint, Platt, Temperature,
};

/// Errors of the calibrate library.
#[derive(Debug, thiserror::Error)]
pub enum CalError {
    /// The data do not support a fit (one class, too few groups, no ranking).
    #[error("fit: {0}")]
    Fit(String),
    /// A model the calibrated graph cannot be made from.
    #[error("the model cannot be calibrated: {0}")]
    Model(String),
    /// An output that could not be made (YAML, a plot, the calibrated ONNX graph).
    #[error("{path}: cannot write: {source}")]
    Output {
        path: PathBuf,
        /// What the encoder or the chart said, kept for callers.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A setting out of its range.
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Models(#[from] models::Error),
    #[error(transparent)]
    Scorer(#[from] scorer::ScorerError),
}

models::errors_through_models!(CalError);

/// Options of a calibration run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Scores CSV; ignored when `patches` is given.
    pub scores: PathBuf,
    pub columns: Columns,
    /// Labelled patch index scored through ONNX Runtime (site recalibration).
    pub patches: Option<PathBuf>,
    /// For a model with tabular features: per-series values (joined on `seriesuid`) of the
    /// columns the index lacks.
    pub features_csv: Option<PathBuf>,
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
            features_csv: None,
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

    /// Checks every setting, all problems at once, before anything is read.
    pub fn check(&self) -> Result<(), CalError> {
        let mut problems = Vec::new();
        if let Err(e) = ::metrics::check_bootstrap(self.bootstrap) {
            problems.push(e);
        }
        if !(2..=MAX_FOLDS).contains(&self.folds) {
            problems.push(format!("--folds {} must be from 2 to {MAX_FOLDS}", self.folds));
        }
        for (flag, v) in [
            ("--min-sensitivity", self.min_sensitivity),
            ("--min-specificity", self.min_specificity),
        ] {
            if !(v > 0.0 && v <= 1.0) {
                problems.push(format!("{flag} {v} must be in (0, 1]"));
            }
        }
        let points = operating_point_names(self.min_sensitivity, self.min_specificity);
        if !points.contains(&self.operating_point) {
            problems.push(format!(
                "operating point `{}` is not one of {}",
                self.operating_point,
                points.join(", ")
            ));
        }
        if self.patches.is_none() {
            let c = &self.columns;
            let names = [
                Some(&c.logit),
                c.probability.as_ref(),
                Some(&c.label),
                Some(&c.seriesuid),
            ];
            if names.iter().flatten().any(|n| n.is_empty()) {
                problems.push("column names must not be empty".into());
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(CalError::Usage(problems.join("; ")))
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

/// The most cross-validation folds taken.
pub const MAX_FOLDS: usize = 100;

/// The operating points every calibration reports, by name.
pub fn operating_point_names(min_sensitivity: f64, min_specificity: f64) -> Vec<String> {
    vec![
        "youden_j".into(),
        "max_f1".into(),
        format!("sensitivity_{min_sensitivity}"),
        format!("specificity_{min_specificity}"),
    ]
}

/// An error unless `b` is at most [`::metrics::MAX_BOOTSTRAP`].
pub fn check_bootstrap(b: usize) -> Result<(), CalError> {
    ::metrics::check_bootstrap(b).map_err(CalError::Usage)
}

/// Fits every method on a score table and builds the calibration file.
pub fn calibrate(t: &ScoreTable, s: &Settings, model: ModelRef) -> Result<CalibrationFile, CalError> {
    s.check()?;
    let (z, y) = (&t.logits, &t.labels);
    let mut warnings = Vec::new();
    let fit_table = without_extremes(t, &mut warnings);
    let cv_table = fit_table.as_ref().unwrap_or(t);
    let fitted = Fitted::fit(&cv_table.logits, &cv_table.labels, s.platt_smoothing)?;
    let selection = match s.method {
        None => cross_validate(cv_table, s.platt_smoothing, s.folds)?,
        Some(m) => MethodSelection {
            criterion: format!("requested: {}", m.name()),
            folds_used: 0,
            cv_nll: cross_validate(cv_table, s.platt_smoothing, s.folds)
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
    let (m, log_odds) = metrics_by_method(t, &fitted, &mut warnings);
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
        outputs: Default::default(),
    };
    for p in &mut cal.operating_points {
        p.threshold_probability = fitted.probability(method, p.threshold_logit);
    }
    if s.bootstrap > 0 {
        bootstrap::apply(&mut cal, t, &log_odds, s.bootstrap, s.seed);
    }
    Ok(cal)
}

/// The table the fits use: without logits so extreme that no fit over them means anything
/// (the warning names them), unless leaving them out would leave one class only (fit on
/// everything, and say so). `None`: every logit is used.
fn without_extremes(t: &ScoreTable, warnings: &mut Vec<String>) -> Option<ScoreTable> {
    let z = &t.logits;
    let extreme = fit::extremes(z);
    extreme.as_ref().and_then(|e| {
        let rest = t.without(&e.indices);
        let both = rest.labels.contains(&1) && rest.labels.contains(&0);
        if both {
            warnings.push(e.warning(z, &t.source, &t.lines));
            Some(rest)
        } else {
            // Without them one class would be gone: fit on everything, and say so.
            warnings.push(format!(
                "{} extreme logit(s) in {} are all of one class's only examples; the fits keep them",
                e.indices.len(),
                t.source.display()
            ));
            None
        }
    })
}

/// The metrics before calibration and after each method, and each method's log-odds (for
/// the bootstrap); a warning when the data are perfectly separated.
fn metrics_by_method(
    t: &ScoreTable,
    fitted: &Fitted,
    warnings: &mut Vec<String>,
) -> (BTreeMap<String, Metrics>, BTreeMap<Method, Vec<f64>>) {
    let (z, y) = (&t.logits, &t.labels);
    let mut m = BTreeMap::new();
    let raw: Vec<f64> = z.iter().map(|&v| metrics::sigmoid(v)).collect();
    m.insert("uncalibrated".to_string(), metrics::compute_metrics(&raw, z, y));
    let mut log_odds = BTreeMap::new();
    for meth in Method::ALL {
        let p: Vec<f64> = z.iter().map(|&v| fitted.probability(meth, v)).collect();
        let lp: Vec<f64> = z.iter().map(|&v| fitted.log_odds(meth, v)).collect();
        m.insert(meth.name().to_string(), metrics::compute_metrics(&p, &lp, y));
        log_odds.insert(meth, lp);
    }
    if m["uncalibrated"].auroc >= 1.0 {
        warnings.push(
            "the calibration data are perfectly separated: the fitted slopes grow without bound and the \
             calibrated probabilities are near 0 or 1; use more data or --platt-smoothing"
                .to_string(),
        );
    }
    (m, log_odds)
}

/// The outputs of a run, checked and locked before any work.
struct OutputPlan {
    dir: PathBuf,
    /// None when `-o` is a device or FIFO (written through, no folder of ours).
    lock: Option<Lock>,
    /// The folder did not exist before this run.
    created: bool,
}

/// Declares the run's inputs and outputs (none may name an input or another), creates the
/// output folder and locks it against a second run.
fn plan_outputs(s: &Settings) -> Result<OutputPlan, CalError> {
    let mut io = RunIo::new();
    io.input("model", &s.model);
    match &s.patches {
        Some(idx) => {
            io.input("patch index", idx);
            if let Some(f) = &s.features_csv {
                io.input("features CSV", f);
            }
            if let Ok(i) = tables::index::read_scoring_index(idx) {
                io.inputs(
                    "patch",
                    i.rows
                        .iter()
                        .map(|r| i.root.join(&r.patch_file))
                        .collect::<Vec<_>>()
                        .iter()
                        .map(PathBuf::as_path),
                );
            }
        }
        None => {
            io.input("scores", &s.scores);
        }
    }
    let dir = s.out_dir();
    if dir.is_dir() {
        if let files::Target::Stream(_) = io.output("calibration file", &s.out)? {
            // A device or FIFO takes the calibration file; the report and the calibrated
            // model need a folder of their own, not the device's.
            if s.report || s.bake {
                return Err(CalError::Usage(format!(
                    "-o {} is a device or FIFO: the report and model.calibrated.onnx need a folder \
                     (add --no-report --no-bake, or give -o a file path)",
                    s.out.display()
                )));
            }
            return Ok(OutputPlan {
                dir,
                lock: None,
                created: false,
            });
        }
    }
    let mut names = Vec::new();
    if s.report {
        names.push(report::REPORT_FILE.to_string());
        names.extend(report::PLOTS.iter().map(|p| format!("{}/{p}", report::PLOTS_DIR)));
    }
    if s.bake {
        names.push(write::BAKED_FILE.to_string());
    }
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    io.outputs_in("calibration output", &dir, &names)?;
    // What an earlier calibration wrote is replaced; a file of another kind at those paths
    // is not.
    files::check_replaceable(&s.out, "calibration file", &|h| h.starts_with(b"tool_version:"))?;
    files::check_replaceable(&dir.join(report::REPORT_FILE), "calibration report", &|h| {
        h.starts_with(b"# Calibration report")
    })?;
    files::check_replaceable(&dir.join(write::BAKED_FILE), "model", &models::onnx::looks_like_onnx)?;
    let created = !dir.exists();
    std::fs::create_dir_all(&dir).map_err(|e| files::Error::io(&dir, e))?;
    let lock = Lock::within(&dir, &format!("output folder {}", dir.display()))?;
    Ok(OutputPlan {
        dir,
        lock: Some(lock),
        created,
    })
}

/// Checks the settings and the outputs, reads the scores (or scores the patches), fits, and
/// writes `calibration.yaml`, the report and `model.calibrated.onnx`, each atomically.
/// Returns the calibration.
pub fn run(s: &Settings) -> Result<CalibrationFile, CalError> {
    // Before any patch is scored or file read.
    s.check()?;
    if !s.model.exists() {
        return Err(read::input_err(
            &s.model,
            "model file not found: a calibration is bound to the model it calibrates (run `trainer train` first, or pass --model)"
                .into(),
        ));
    }
    // A training run folder's scores and model are used together only if its summary (the
    // run's commit point) says they are one run's.
    if s.patches.is_none() && s.scores.file_name().is_some_and(|n| n == "val_scores.csv") {
        let folder = |p: &Path| {
            let d = match p.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            std::fs::canonicalize(d).ok()
        };
        let dir = folder(&s.scores);
        if dir.is_some() && dir == folder(&s.model) {
            let dir = dir.unwrap_or_default();
            if dir.join("config.yaml").exists() {
                let model_name = s
                    .model
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                models::runfolder::check_outputs(&dir, &["val_scores.csv", &model_name])?;
            }
        }
    }
    let plan = plan_outputs(s)?;
    let done = (|| {
        let bytes = files::read_regular(&s.model)?;
        let proto = models::onnx::parse_model(&bytes, &s.model)?;
        let table = match &s.patches {
            Some(idx) => read::from_patches(&s.model, idx, s.features_csv.as_deref(), &s.scorer)?,
            None => ScoreTable::read(&s.scores, &s.columns)?,
        };
        let model = ModelRef {
            path: s.model.clone(),
            sha256: files::sha256_bytes(&bytes),
        };
        let cal = calibrate(&table, s, model)?;
        write::write_outputs(&cal, &table, proto, s, &plan.dir)?;
        Ok(cal)
    })();
    if done.is_err() && plan.created {
        // Bad input leaves no folder behind (this run's, still empty).
        drop(plan.lock);
        let _ = std::fs::remove_dir(&plan.dir);
    }
    done
}

pub use write::summary;

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
        std::fs::write(&p, yaml_serde::to_string(&cal).expect("yaml")).expect("write");
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
        std::fs::write(&p, yaml_serde::to_string(&broken).expect("yaml")).expect("write");
        assert!(CalibrationFile::load(&p)
            .expect_err("bad")
            .to_string()
            .contains("temperature"));
    }

    /// One absurd, mislabelled logit (1e30 among logits of a few units) would decide a
    /// temperature or Platt fit on its own; the fits leave it out, say so, and equal the fits
    /// without it, while the metrics still count it.
    #[test]
    fn an_extreme_logit_does_not_decide_the_fit() {
        let clean = table(0.7, -1.5);
        let mut odd = clean.clone();
        odd.logits.push(1e30);
        odd.labels.push(0);
        odd.seriesuid.push("S_odd".into());
        odd.lines = (2..odd.logits.len() + 2).collect();
        let s = Settings {
            method: Some(Method::Platt),
            ..quick()
        };
        let m = ModelRef {
            path: "m.onnx".into(),
            sha256: "ab".repeat(32),
        };
        let (a, b) = (
            calibrate(&clean, &s, m.clone()).expect("clean"),
            calibrate(&odd, &s, m).expect("odd"),
        );
        assert_eq!(a.platt, b.platt);
        assert_eq!(a.temperature, b.temperature);
        assert!(
            b.warnings
                .iter()
                .any(|w| w.contains("1 logit(s)") && w.contains("line 2002") && w.contains("leave them out")),
            "{:?}",
            b.warnings
        );
        assert_eq!(b.data.n, clean.logits.len() + 1);
        // Where the extremes are all of one class, leaving them out would leave nothing to
        // fit that class: the fits keep them and say so.
        let mut lone = clean.clone();
        let positives: Vec<usize> = (0..lone.labels.len()).filter(|&i| lone.labels[i] == 1).collect();
        let keep: Vec<usize> = positives[1..].to_vec();
        lone = lone.without(&keep);
        let p = (0..lone.labels.len())
            .find(|&i| lone.labels[i] == 1)
            .expect("one positive");
        lone.logits[p] = 1e30;
        let c = calibrate(
            &lone,
            &quick(),
            ModelRef {
                path: "m.onnx".into(),
                sha256: "ab".repeat(32),
            },
        )
        .expect("lone");
        assert!(
            c.warnings.iter().any(|w| w.contains("the fits keep them")),
            "{:?}",
            c.warnings
        );
    }
}
