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
use yaml_serde::Value;

use crate::config::TrainConfig;
use crate::train::{train, RunOptions};
use crate::{Result, TrainError};

mod collect;

pub use collect::{collect, CellSummary, Collected, SUMMARY_MD};

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
    let f: SweepFile = yaml_serde::from_str(&text).map_err(|e| files::Error::parse(path, "invalid sweep file", e))?;
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
                .map_err(|e| files::Error::parse(&p, "invalid training config", e))?;
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
        yaml_serde::from_value(v).map_err(|e| files::Error::parse(path, format!("configuration {lbl}"), e))?;
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
pub(super) fn done(c: &TrainConfig) -> bool {
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
                Err(TrainError::run_folder(
                    &plan.out,
                    "this folder holds another sweep (sweep_plan.yaml differs); use another `out`",
                ))
            }
        }
    }
}
