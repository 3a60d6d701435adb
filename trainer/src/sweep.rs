//! `trainer sweep`: a base training config and a grid (or list) of overrides, each
//! configuration run as a k-fold cross-validation over series, one run folder per
//! configuration and fold; resumable, and spreadable over a job array (one task per
//! configuration and fold); then one summary.
//!
//! The sweep file:
//! ```yaml
//! base: base.yaml        # a training config (relative to this file), or `config:` inline
//! out: sweeps/width      # the sweep folder
//! folds: 3               # k of the k-fold cross-validation (2 to 100)
//! grid:                  # every combination; or `cells:` a list of override maps
//!   model.width: [8, 16]
//!   train.lr: [0.001, 0.003]
//! ```
//! Configuration 0 is the base itself; the others are the grid's combinations in order (a
//! combination equal to an earlier configuration is run once). Each configuration is
//! `OUT/cell_NN/` with `fold_K/` run folders (`split.fold = K`, the same series split for
//! every configuration, so out-of-fold scores pair up across configurations) and, once all
//! its folds are done, `oof_scores.csv` (every patch's out-of-fold score). Tasks are
//! (configuration, fold) pairs, configuration-major; `--task I` runs one, a plain run does
//! every task not done yet (a fold is done when its `summary.yaml` exists and its
//! `config.yaml` is the task's), and `--collect` (or the end of a plain run) writes
//! `sweep_summary.csv`, `sweep_summary.md` and `forest.png`, naming any task not done.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use statrs::distribution::{ContinuousCDF, StudentsT};
use yaml_serde::Value;

use metrics::{auroc_delong, paired_delong, z_for};

use crate::config::TrainConfig;
use crate::train::{train, RunOptions};
use crate::{Result, TrainError};

/// The sweep file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepFile {
    /// A training config file, relative to the sweep file.
    #[serde(default)]
    pub base: Option<PathBuf>,
    /// Or the base config inline.
    #[serde(default)]
    pub config: Option<Value>,
    pub out: PathBuf,
    #[serde(default = "default_folds")]
    pub folds: usize,
    /// Every combination of these values (keys: dotted config paths).
    #[serde(default)]
    pub grid: BTreeMap<String, Vec<Value>>,
    /// Or these override maps, each a configuration.
    #[serde(default)]
    pub cells: Vec<BTreeMap<String, Value>>,
}

/// The most configurations a sweep may have.
pub const MAX_CONFIGURATIONS: usize = 10_000;

fn default_folds() -> usize {
    3
}

/// One configuration.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    pub index: usize,
    /// `base`, or the overrides as `key=value, ...`.
    pub label: String,
    pub overrides: BTreeMap<String, Value>,
    #[serde(skip)]
    pub config: TrainConfig,
}

/// A planned sweep.
#[derive(Debug, Clone)]
pub struct Plan {
    pub out: PathBuf,
    pub folds: usize,
    pub cells: Vec<Cell>,
}

impl Plan {
    /// Tasks: (configuration, fold from 1), configuration-major.
    pub fn tasks(&self) -> Vec<(usize, usize)> {
        (0..self.cells.len())
            .flat_map(|c| (1..=self.folds).map(move |f| (c, f)))
            .collect()
    }

    /// The config of one task.
    pub fn task_config(&self, cell: usize, fold: usize) -> TrainConfig {
        let mut c = self.cells[cell].config.clone();
        c.split.fold = Some(fold);
        c.out = self.cell_dir(cell).join(format!("fold_{fold}"));
        c
    }

    pub fn cell_dir(&self, cell: usize) -> PathBuf {
        self.out.join(format!("cell_{cell:02}"))
    }
}

fn cfg_err(path: &Path, msg: impl std::fmt::Display) -> TrainError {
    TrainError::Config(format!("{}: {msg}", path.display()))
}

/// Sets `key` (dotted) in a YAML mapping, creating mappings on the way.
fn set(v: &mut Value, key: &str, to: Value) -> std::result::Result<(), String> {
    let mut at = v;
    let parts: Vec<&str> = key.split('.').collect();
    for (i, p) in parts.iter().enumerate() {
        if p.is_empty() {
            return Err(format!("override key {key:?} has an empty part"));
        }
        let Value::Mapping(m) = at else {
            return Err(format!("override {key}: {} is not a mapping", parts[..i].join(".")));
        };
        let k = Value::String((*p).to_string());
        if i + 1 == parts.len() {
            m.insert(k, to);
            return Ok(());
        }
        at = m.entry(k).or_insert_with(|| Value::Mapping(Default::default()));
    }
    Ok(())
}

fn label(o: &BTreeMap<String, Value>) -> String {
    if o.is_empty() {
        return "base".into();
    }
    o.iter()
        .map(|(k, v)| format!("{k}={}", yaml_serde::to_string(v).unwrap_or_default().trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Reads a sweep file and plans its configurations (each validated).
pub fn plan(path: &Path) -> Result<Plan> {
    let text = files::read_regular_to_string(path)?;
    let f: SweepFile = yaml_serde::from_str(&text).map_err(|e| cfg_err(path, format!("invalid sweep file: {e}")))?;
    let here = path.parent().unwrap_or(Path::new("."));
    let base = base_config(&f, path, here)?;
    if !(2..=100).contains(&f.folds) {
        return Err(cfg_err(path, format!("folds must be from 2 to 100, got {}", f.folds)));
    }
    let mut cells: Vec<Cell> = Vec::new();
    for o in overrides(&f, path)? {
        let lbl = label(&o);
        let mut c = cell_config(&f, &base, &o, path, here)?;
        let index = cells.len();
        c.out = f.out.join(format!("cell_{index:02}"));
        // A combination equal to an earlier configuration (but for its folder) runs once.
        let same = |x: &TrainConfig| {
            TrainConfig {
                out: c.out.clone(),
                ..x.clone()
            } == c
        };
        if cells.iter().any(|x| same(&x.config)) {
            continue;
        }
        cells.push(Cell {
            index,
            label: lbl,
            overrides: o,
            config: c,
        });
    }
    Ok(Plan {
        out: f.out,
        folds: f.folds,
        cells,
    })
}

/// The base config, from `base: FILE` (relative to the sweep file) or `config:` inline, its
/// spec path made relative to the working folder.
fn base_config(f: &SweepFile, path: &Path, here: &Path) -> Result<Value> {
    match (&f.base, &f.config) {
        (Some(b), None) => {
            let p = here.join(b);
            let mut v: Value = yaml_serde::from_str(&files::read_regular_to_string(&p)?)
                .map_err(|e| cfg_err(&p, format!("invalid training config: {e}")))?;
            rebase_spec(
                v.get_mut("model").and_then(|m| m.get_mut("spec")),
                p.parent().unwrap_or(here),
            );
            Ok(v)
        }
        (None, Some(v)) => {
            let mut v = v.clone();
            rebase_spec(v.get_mut("model").and_then(|m| m.get_mut("spec")), here);
            Ok(v)
        }
        _ => Err(cfg_err(
            path,
            "give the base config as `base: FILE` or `config:` inline, one of them",
        )),
    }
}

/// Every configuration's overrides: the base's (none), the grid's combinations in order,
/// then the listed cells. Their number is counted before any is made: a grid of a few
/// lines can name more combinations than memory holds.
fn overrides(f: &SweepFile, path: &Path) -> Result<Vec<BTreeMap<String, Value>>> {
    if !f.grid.is_empty() && !f.cells.is_empty() {
        return Err(cfg_err(path, "give `grid:` or `cells:`, not both"));
    }
    let combos = f
        .grid
        .values()
        .try_fold(if f.grid.is_empty() { 0usize } else { 1 }, |n, v| {
            n.checked_mul(v.len())
        });
    let total = combos.and_then(|n| n.checked_add(f.cells.len() + 1));
    if total.is_none_or(|t| t > MAX_CONFIGURATIONS) {
        return Err(cfg_err(
            path,
            format!(
                "{} configurations: at most {MAX_CONFIGURATIONS}",
                total.map_or_else(|| "more than 2^64".to_string(), |t| t.to_string())
            ),
        ));
    }
    let mut out: Vec<BTreeMap<String, Value>> = vec![BTreeMap::new()];
    if !f.grid.is_empty() {
        let mut combos: Vec<BTreeMap<String, Value>> = vec![BTreeMap::new()];
        for (k, values) in &f.grid {
            if values.is_empty() {
                return Err(cfg_err(path, format!("grid key {k} has no values")));
            }
            combos = combos
                .iter()
                .flat_map(|c| {
                    values.iter().map(move |v| {
                        let mut c = c.clone();
                        c.insert(k.clone(), v.clone());
                        c
                    })
                })
                .collect();
        }
        out.extend(combos);
    }
    out.extend(f.cells.iter().cloned());
    Ok(out)
}

/// One configuration: the base with its overrides, the sweep's folds and folder, checked.
fn cell_config(
    f: &SweepFile,
    base: &Value,
    o: &BTreeMap<String, Value>,
    path: &Path,
    here: &Path,
) -> Result<TrainConfig> {
    let mut v = base.clone();
    for (k, val) in o {
        let mut val = val.clone();
        if k == "model.spec" {
            rebase_spec(Some(&mut val), here);
        }
        set(&mut v, k, val).map_err(|e| cfg_err(path, e))?;
    }
    set(&mut v, "split.folds", Value::from(f.folds as u64)).map_err(|e| cfg_err(path, e))?;
    set(&mut v, "out", Value::String(f.out.to_string_lossy().into_owned())).map_err(|e| cfg_err(path, e))?;
    let lbl = label(o);
    let mut c: TrainConfig =
        yaml_serde::from_value(v).map_err(|e| cfg_err(path, format!("configuration {lbl}: {e}")))?;
    // Paths were made relative to the working folder above (rebase_spec).
    c.model
        .resolve_spec(Path::new(""))
        .and_then(|()| c.validate())
        .map_err(|e| cfg_err(path, format!("configuration {lbl}: {e}")))?;
    Ok(c)
}

/// A `model.spec` file path, relative to the file that gave it, made relative to the
/// working folder as a training run reads it (a spec inline is left as it is).
fn rebase_spec(spec: Option<&mut Value>, dir: &Path) {
    if let Some(Value::String(p)) = spec {
        if Path::new(p.as_str()).is_relative() {
            *p = dir.join(p.as_str()).to_string_lossy().into_owned();
        }
    }
}

/// Whether a task's fold is done: its summary written by a run of the task's config.
fn done(c: &TrainConfig) -> bool {
    // Through the bounded, non-blocking reader: a FIFO named config.yaml is not waited on.
    let Ok(text) = files::read_regular_to_string(&c.out.join("config.yaml")) else {
        return false;
    };
    let same = yaml_serde::from_str::<TrainConfig>(&text).is_ok_and(|x| &x == c);
    same && c.out.join("summary.yaml").is_file()
}

/// Runs task `i` (or says it was done). Returns whether it ran.
pub fn run_task(plan: &Plan, i: usize, opts: &RunOptions) -> Result<bool> {
    let tasks = plan.tasks();
    let &(cell, fold) = tasks.get(i).ok_or_else(|| {
        TrainError::Config(format!(
            "--task {i}: the sweep has tasks 0 to {}",
            tasks.len().saturating_sub(1)
        ))
    })?;
    let c = plan.task_config(cell, fold);
    if done(&c) {
        return Ok(false);
    }
    // A tracked fold run is a child of the sweep's MLflow run.
    let mlflow = opts.mlflow.clone().map(|s| {
        let cell_label = &plan.cells[cell].label;
        tracking::Settings {
            // Absolute: `mlflow-sync` of a fold folder may run from another folder.
            parent: plan
                .out
                .join(tracking::STATE_FILE)
                .is_file()
                .then(|| std::path::absolute(&plan.out).unwrap_or_else(|_| plan.out.clone())),
            name: Some(format!("cell_{cell:02}/fold_{fold}")),
            tags: [
                ("nodule.sweep.cell", cell.to_string()),
                ("nodule.sweep.fold", fold.to_string()),
                ("nodule.sweep.configuration", cell_label.clone()),
                ("mlflow.source.name", "trainer sweep".to_string()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
            ..s
        }
    });
    let opts = RunOptions {
        force: true,
        config: None,
        resume: false,
        stop_after: None,
        mlflow,
        ..opts.clone()
    };
    if !opts.quiet {
        eprintln!(
            "sweep: task {i}: configuration {cell} ({}), fold {fold}/{}",
            plan.cells[cell].label, plan.folds
        );
    }
    train(&c, &opts)?;
    Ok(true)
}

/// A tracked sweep's params: its folds, each configuration's overrides, the base config
/// (dotted, as a training run's).
pub fn tracking_params(plan: &Plan) -> BTreeMap<String, String> {
    let mut p = BTreeMap::new();
    p.insert("sweep.folds".to_string(), plan.folds.to_string());
    p.insert("sweep.configurations".to_string(), plan.cells.len().to_string());
    for c in &plan.cells {
        p.insert(format!("sweep.cell_{:02}", c.index), c.label.chars().take(6000).collect());
    }
    if let Some(base) = plan.cells.first() {
        if let Ok(v) = yaml_serde::to_value(&base.config) {
            for (k, v) in tracking::flatten(&v) {
                p.insert(format!("base.{k}"), v);
            }
        }
    }
    p
}

/// One configuration's line of the summary.
#[derive(Debug, Clone, Serialize)]
pub struct CellSummary {
    pub index: usize,
    pub label: String,
    pub folds: usize,
    pub mean_val_auroc: f64,
    /// Student-t 95% interval of the mean over folds (clipped to [0, 1]).
    pub mean_val_auroc_ci95: [f64; 2],
    /// The AUROC of every patch's out-of-fold score, with DeLong's interval.
    pub pooled_oof_auroc: f64,
    pub pooled_oof_auroc_ci95: [f64; 2],
    /// Paired DeLong difference of the pooled out-of-fold AUROC against configuration 0.
    pub diff_vs_base: Option<f64>,
    pub diff_vs_base_ci95: Option<[f64; 2]>,
    pub diff_vs_base_p: Option<f64>,
    pub seconds: f64,
    pub peak_rss_mib: Option<f64>,
}

/// Reads one fold's summary figures: (validation AUROC, seconds, peak RSS).
fn fold_figures(dir: &Path) -> Result<(f64, f64, Option<f64>)> {
    let p = dir.join("summary.yaml");
    let v: Value = yaml_serde::from_str(&files::read_regular_to_string(&p)?)
        .map_err(|e| TrainError::Data(format!("{}: {e}", p.display())))?;
    let f = |k: &str| v.get(k).and_then(Value::as_f64);
    let auroc = f("onnx_val_auroc").ok_or_else(|| TrainError::Data(format!("{}: no onnx_val_auroc", p.display())))?;
    Ok((auroc, f("seconds").unwrap_or(0.0), f("peak_rss_mib")))
}

/// Out-of-fold scores: (patch, seriesuid, label, logit) rows of every fold's `val_scores.csv`.
fn oof_rows(dirs: &[PathBuf]) -> Result<Vec<(String, String, u8, f64)>> {
    let mut out = Vec::new();
    for d in dirs {
        let p = d.join("val_scores.csv");
        let (mut r, h) = tables::csvio::open(&p, true)?;
        let at = |n: &str| {
            h.iter()
                .position(|x| x == n)
                .ok_or_else(|| TrainError::Data(format!("{}: no {n} column", p.display())))
        };
        let (pi, si, li, zi) = (at("patch_file")?, at("seriesuid")?, at("label")?, at("logit")?);
        for (line, rec) in tables::csvio::rows(&mut r) {
            let rec = rec.map_err(|e| TrainError::Data(format!("{}: line {line}: {e}", p.display())))?;
            let get = |i: usize| rec.get(i).unwrap_or("");
            let z: f64 = get(zi)
                .parse()
                .map_err(|_| TrainError::Data(format!("{}: line {line}: logit {:?}", p.display(), get(zi))))?;
            out.push((get(pi).to_string(), get(si).to_string(), u8::from(get(li) == "1"), z));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// What [`collect`] wrote.
#[derive(Debug, Clone)]
pub struct Collected {
    pub cells: Vec<CellSummary>,
    pub best: usize,
    pub table: String,
}

/// Builds the summary once every task is done (else an error naming the missing ones).
pub fn collect(plan: &Plan) -> Result<Collected> {
    let missing: Vec<String> = plan
        .tasks()
        .iter()
        .enumerate()
        .filter(|(_, &(c, f))| !done(&plan.task_config(c, f)))
        .map(|(i, &(c, f))| format!("task {i} (cell_{c:02}/fold_{f})"))
        .collect();
    if !missing.is_empty() {
        return Err(TrainError::RunFolder(format!(
            "{}: {} of {} tasks not done: {}",
            plan.out.display(),
            missing.len(),
            plan.tasks().len(),
            missing.join(", ")
        )));
    }
    // sweep_summary.md is the summary's commit point (written last, with the sha256 of every
    // file it summarises): it goes first, so a collect killed half-way leaves no summary
    // that names files of another collect.
    let md = plan.out.join(SUMMARY_MD);
    if md.is_file() {
        std::fs::remove_file(&md).map_err(|e| TrainError::file(format!("{}: cannot remove", md.display()), e))?;
    }
    let k = plan.folds;
    let t = StudentsT::new(0.0, 1.0, (k - 1) as f64).map_or(f64::NAN, |d| d.inverse_cdf(0.975));
    let mut cells = Vec::new();
    let mut base_rows: Option<Vec<(String, String, u8, f64)>> = None;
    for cell in &plan.cells {
        let dirs: Vec<PathBuf> = (1..=k).map(|f| plan.task_config(cell.index, f).out).collect();
        let figs = dirs.iter().map(|d| fold_figures(d)).collect::<Result<Vec<_>>>()?;
        let aurocs: Vec<f64> = figs.iter().map(|f| f.0).collect();
        let mean = aurocs.iter().sum::<f64>() / k as f64;
        let sd = (aurocs.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / (k - 1) as f64).sqrt();
        let half = t * sd / (k as f64).sqrt();
        let rows = oof_rows(&dirs)?;
        let mut oof = csv::Writer::from_writer(Vec::new());
        let csv_err = |e: csv::Error| TrainError::Data(format!("oof_scores.csv: {e}"));
        oof.write_record(["patch_file", "seriesuid", "label", "logit"])
            .map_err(csv_err)?;
        for r in &rows {
            oof.write_record([r.0.as_str(), r.1.as_str(), &r.2.to_string(), &r.3.to_string()])
                .map_err(csv_err)?;
        }
        let oof = oof
            .into_inner()
            .map_err(|e| TrainError::Data(format!("oof_scores.csv: {e}")))?;
        files::write_atomic(&plan.cell_dir(cell.index).join("oof_scores.csv"), &oof)?;
        let y: Vec<u8> = rows.iter().map(|r| r.2).collect();
        let z: Vec<f64> = rows.iter().map(|r| r.3).collect();
        let (pooled, se) = auroc_delong(&z, &y).unwrap_or((f64::NAN, f64::NAN));
        let z95 = z_for(0.95);
        let paired = base_rows.as_ref().and_then(|b| {
            let same = b.len() == rows.len() && b.iter().zip(&rows).all(|(x, r)| x.0 == r.0 && x.2 == r.2);
            let bz: Vec<f64> = b.iter().map(|r| r.3).collect();
            same.then(|| paired_delong(&bz, &z, &y)).flatten()
        });
        cells.push(CellSummary {
            index: cell.index,
            label: cell.label.clone(),
            folds: k,
            mean_val_auroc: mean,
            mean_val_auroc_ci95: [(mean - half).max(0.0), (mean + half).min(1.0)],
            pooled_oof_auroc: pooled,
            pooled_oof_auroc_ci95: [(pooled - z95 * se).max(0.0), (pooled + z95 * se).min(1.0)],
            diff_vs_base: paired.map(|p| p.0),
            diff_vs_base_ci95: paired.map(|p| [p.0 - z95 * p.1, p.0 + z95 * p.1]),
            diff_vs_base_p: paired.map(|p| p.2),
            seconds: figs.iter().map(|f| f.1).sum(),
            peak_rss_mib: figs.iter().filter_map(|f| f.2).reduce(f64::max),
        });
        if base_rows.is_none() {
            base_rows = Some(rows);
        }
    }
    let best = cells
        .iter()
        .max_by(|a, b| a.pooled_oof_auroc.total_cmp(&b.pooled_oof_auroc))
        .map_or(0, |c| c.index);
    let table = table(&cells, best);
    write_summary(plan, &cells, &table)?;
    Ok(Collected { cells, best, table })
}

fn table(cells: &[CellSummary], best: usize) -> String {
    let mut out = String::from(
        "| # | configuration | mean val AUROC over folds [t 95%] | pooled out-of-fold AUROC [DeLong 95%] | Δ vs base (paired DeLong) | time | peak RSS |\n|---|---|---|---|---|---|---|\n",
    );
    for c in cells {
        let diff = match (c.diff_vs_base, c.diff_vs_base_ci95, c.diff_vs_base_p) {
            (Some(d), Some(ci), Some(p)) => format!("{d:+.4} [{:+.4}, {:+.4}] p={p:.3}", ci[0], ci[1]),
            _ if c.index == 0 => "reference".into(),
            _ => "- (other patches)".into(),
        };
        out += &format!(
            "| {}{} | {} | {:.4} [{:.4}, {:.4}] | {:.4} [{:.4}, {:.4}] | {} | {:.1} s | {} |\n",
            c.index,
            if c.index == best { " (best)" } else { "" },
            c.label,
            c.mean_val_auroc,
            c.mean_val_auroc_ci95[0],
            c.mean_val_auroc_ci95[1],
            c.pooled_oof_auroc,
            c.pooled_oof_auroc_ci95[0],
            c.pooled_oof_auroc_ci95[1],
            diff,
            c.seconds,
            c.peak_rss_mib.map_or_else(|| "-".into(), |m| format!("{m:.0} MiB"))
        );
    }
    out
}

/// `sweep_summary.csv`, `sweep_summary.md`, `forest.png`.
fn write_summary(plan: &Plan, cells: &[CellSummary], table: &str) -> Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for c in cells {
        w.serialize(CsvRow::from(c))
            .map_err(TrainError::format("a sweep summary row".to_string()))?;
    }
    let bytes = w
        .into_inner()
        .map_err(|e| TrainError::Data(format!("sweep summary: {e}")))?;
    files::write_atomic(&plan.out.join("sweep_summary.csv"), &bytes)?;
    let n = cells.len() as f64;
    let mut chart = plots::Chart {
        title: "Pooled out-of-fold AUROC [DeLong 95%] per configuration".into(),
        x_label: "AUROC".into(),
        y_label: "configuration (0 = base, top)".into(),
        x_range: (
            cells
                .iter()
                .map(|c| c.pooled_oof_auroc_ci95[0])
                .fold(1.0, f64::min)
                .min(0.5)
                - 0.02,
            cells
                .iter()
                .map(|c| c.pooled_oof_auroc_ci95[1])
                .fold(0.0, f64::max)
                .max(0.5)
                + 0.02,
        ),
        y_range: (-0.5, n - 0.5),
        log_x: false,
        series: vec![],
        bands: vec![],
        annotations: vec![],
    };
    for c in cells {
        let y = n - 1.0 - c.index as f64;
        let color = if c.index == 0 { (120, 120, 120) } else { (31, 119, 180) };
        chart.series.push(plots::Series {
            label: String::new(),
            points: vec![(c.pooled_oof_auroc_ci95[0], y), (c.pooled_oof_auroc_ci95[1], y)],
            color,
            markers: false,
        });
        chart.series.push(plots::Series {
            label: String::new(),
            points: vec![(c.pooled_oof_auroc, y)],
            color,
            markers: true,
        });
        chart
            .annotations
            .push((c.pooled_oof_auroc, y + 0.25, format!("{}: {}", c.index, c.label)));
    }
    plots::line_chart(&chart, &plan.out.join("forest.png"))
        .map_err(|e| TrainError::Data(format!("forest plot: {e}")))?;
    // The commit point, last: what it summarises, by digest.
    let mut files: Vec<String> = cells
        .iter()
        .map(|c| format!("cell_{:02}/oof_scores.csv", c.index))
        .collect();
    files.extend(["sweep_summary.csv".to_string(), "forest.png".to_string()]);
    let mut digests = String::new();
    for f in &files {
        digests += &format!("| `{f}` | {} |\n", files::sha256_file(&plan.out.join(f))?);
    }
    files::write_atomic(
        &plan.out.join(SUMMARY_MD),
        format!(
            "# Sweep: {} configurations × {} folds\n\nBest (highest pooled out-of-fold AUROC) marked.\n\n{table}\n\
             ![forest plot](forest.png)\n\n## Files summarised (sha256)\n\nWritten last: a file that differs from its \
             digest here comes from another `--collect`.\n\n| file | sha256 |\n|---|---|\n{digests}",
            cells.len(),
            plan.folds
        )
        .as_bytes(),
    )?;
    Ok(())
}

/// The sweep summary's commit point.
pub const SUMMARY_MD: &str = "sweep_summary.md";

#[derive(Serialize)]
struct CsvRow<'a> {
    index: usize,
    configuration: &'a str,
    folds: usize,
    mean_val_auroc: f64,
    mean_val_auroc_lo: f64,
    mean_val_auroc_hi: f64,
    pooled_oof_auroc: f64,
    pooled_oof_auroc_lo: f64,
    pooled_oof_auroc_hi: f64,
    diff_vs_base: Option<f64>,
    diff_vs_base_lo: Option<f64>,
    diff_vs_base_hi: Option<f64>,
    diff_vs_base_p: Option<f64>,
    seconds: f64,
    peak_rss_mib: Option<f64>,
}

impl<'a> From<&'a CellSummary> for CsvRow<'a> {
    fn from(c: &'a CellSummary) -> Self {
        CsvRow {
            index: c.index,
            configuration: &c.label,
            folds: c.folds,
            mean_val_auroc: c.mean_val_auroc,
            mean_val_auroc_lo: c.mean_val_auroc_ci95[0],
            mean_val_auroc_hi: c.mean_val_auroc_ci95[1],
            pooled_oof_auroc: c.pooled_oof_auroc,
            pooled_oof_auroc_lo: c.pooled_oof_auroc_ci95[0],
            pooled_oof_auroc_hi: c.pooled_oof_auroc_ci95[1],
            diff_vs_base: c.diff_vs_base,
            diff_vs_base_lo: c.diff_vs_base_ci95.map(|x| x[0]),
            diff_vs_base_hi: c.diff_vs_base_ci95.map(|x| x[1]),
            diff_vs_base_p: c.diff_vs_base_p,
            seconds: c.seconds,
            peak_rss_mib: c.peak_rss_mib,
        }
    }
}

/// The task index from `--task`, else `SLURM_ARRAY_TASK_ID`, else `JOB_COMPLETION_INDEX`.
pub fn task_from_env(flag: Option<usize>) -> Result<Option<usize>> {
    if flag.is_some() {
        return Ok(flag);
    }
    for var in ["SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX"] {
        if let Ok(v) = std::env::var(var) {
            return v
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| TrainError::Config(format!("{var}={v:?} is not a task index")));
        }
    }
    Ok(None)
}

/// The plan's record in the sweep folder (`sweep_plan.yaml`): written once; a later run with
/// another plan in the same folder is refused (its folders would mix two sweeps).
pub fn check_plan_record(plan: &Plan) -> Result<()> {
    #[derive(Serialize)]
    struct Rec<'a> {
        folds: usize,
        cells: Vec<(&'a str, String)>,
    }
    let rec = Rec {
        folds: plan.folds,
        cells: plan
            .cells
            .iter()
            .map(|c| (c.label.as_str(), yaml_serde::to_string(&c.config).unwrap_or_default()))
            .collect(),
    };
    let text = yaml_serde::to_string(&rec)?;
    std::fs::create_dir_all(&plan.out)
        .map_err(|e| TrainError::file(format!("{}: cannot create", plan.out.display()), e))?;
    let p = plan.out.join("sweep_plan.yaml");
    // The check and the write under one lock: two sweeps started together cannot both find
    // the folder free. Held for a moment only, so the tasks of an array that start together
    // wait for each other rather than fail.
    let _lock = files::Lock::beside_waiting(
        &p,
        &format!("sweep plan {}", p.display()),
        std::time::Duration::from_secs(30),
    )?;
    match std::fs::symlink_metadata(&p) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(files::write_atomic(&p, text.as_bytes())?),
        _ => {
            let before = files::read_regular_to_string(&p)?;
            if before == text {
                Ok(())
            } else {
                Err(TrainError::RunFolder(format!(
                    "{}: this folder holds another sweep (sweep_plan.yaml differs); use another `out`",
                    plan.out.display()
                )))
            }
        }
    }
}
