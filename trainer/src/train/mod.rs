//! The training run: split, load, train, keep the best checkpoint by validation AUROC,
//! export, check parity, write the run folder.
//!
//! [`train`] is a list of named steps: [`folder::open`] (the output policy, the lock, what
//! the folder already holds), [`inputs::load`] (the patches, read and checked before
//! anything is written), [`folder::Opened::begin`] (config, split and the starting
//! state), [`epochs::start`] (model, optimizer, and the resumed state), [`epochs::run`]
//! (the epoch loop), and [`finish::finish`] (export, parity, validation scores, summary).
//! A k-fold cross-validation runs it once per fold (`kfold`, above this module).
//!
//! Run folder:
//! * `config.yaml` — the resolved config; `split.csv` — series → train/val;
//! * `metrics.csv` — per epoch: train loss, validation loss, validation AUROC (rewritten
//!   atomically after every epoch, so a run stopped half-way keeps what it finished);
//! * `best.safetensors` — weights of the best epoch by validation AUROC;
//! * `model.onnx` — those weights exported; `parity.yaml` — libtorch vs ONNX Runtime;
//! * `val_scores.csv` — the exported model's validation logits (ONNX Runtime);
//! * `summary.yaml`.
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::Result;
use serde::Serialize;

use crate::config::TrainConfig;

mod batches;
pub mod epochs;
pub mod finish;
pub mod folder;
pub mod inputs;

/// One epoch's numbers.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct EpochMetrics {
    pub epoch: usize,
    /// Learning rate at the epoch's last step.
    pub lr: f64,
    pub train_loss: f64,
    pub val_loss: f64,
    pub val_auroc: f64,
    pub val_auprc: f64,
    /// Training samples changed by augmentation, per class (both classes are augmented).
    pub augmented_positive: usize,
    pub augmented_negative: usize,
    /// Training-loop throughput of the epoch (validation excluded).
    pub train_samples_per_s: f64,
    pub seconds: f64,
    pub best: bool,
}

/// What a finished run reports.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub run_dir: PathBuf,
    pub device: String,
    pub arch: String,
    pub train_patches: usize,
    pub train_positives: usize,
    pub val_patches: usize,
    pub val_positives: usize,
    pub val_series: usize,
    pub pos_weight: f64,
    pub best_epoch: usize,
    pub best_val_auroc: f64,
    /// AUROC of the exported ONNX model on validation (ONNX Runtime logits).
    pub onnx_val_auroc: f64,
    /// DeLong 95% interval of that AUROC.
    pub onnx_val_auroc_delong_ci95: [f64; 2],
    /// The epoch early stopping ended the run at, if it did.
    pub stopped_early_at_epoch: Option<usize>,
    /// Provenance: tool version and commit, libtorch, CUDA, index and split hashes.
    pub provenance: std::collections::BTreeMap<String, String>,
    pub parity_max_abs_diff_logit: f64,
    /// The figure the parity check bounds: max |Δlogit| / max(1, max |logit|).
    pub parity_max_scaled_diff_logit: f64,
    pub seconds: f64,
    /// The process's peak resident memory when the run ended, MiB (Linux `VmHWM`; in a
    /// process that ran several runs, such as a sweep without `--task`, the largest so far).
    pub peak_rss_mib: Option<f64>,
    /// The sha256 of the files written before this summary (`model.onnx`, `parity.yaml`,
    /// `val_scores.csv`): the summary is the run's commit point
    /// ([`models::runfolder::check_outputs`]).
    pub outputs: std::collections::BTreeMap<String, String>,
}

/// Options that are not part of the reproducible config.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// The config file the settings came from (an input: no run file may overwrite it).
    pub config: Option<PathBuf>,
    /// Replace an existing run folder's files.
    pub force: bool,
    /// libonnxruntime for the parity check.
    pub ort_lib: Option<PathBuf>,
    /// No per-epoch lines.
    pub quiet: bool,
    /// Continue the run in `cfg.out` from its last finished epoch (same config required).
    pub resume: bool,
    /// Pause after this epoch, leaving the run resumable (no export yet).
    pub stop_after: Option<usize>,
    /// Track the run on an MLflow server ([`crate::track`]).
    pub mlflow: Option<tracking::Settings>,
    /// The tracking key, in the exported model's metadata (set by [`train`]).
    pub mlflow_key: Option<String>,
}

/// Where a run stands (`train_state.yaml`), for `--resume`: written when the run starts
/// (no epoch done) and after each epoch, last, as the commit point, with the hashes of the
/// files it belongs to.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct TrainState {
    pub epochs_done: usize,
    pub step: usize,
    pub best_epoch: usize,
    pub best_val_auroc: f64,
    pub best_val_loss: f64,
    /// Set when early stopping ended the run at this epoch.
    #[serde(default)]
    pub stopped_early: Option<usize>,
    pub last_sha256: String,
    pub best_sha256: String,
    pub optimizer_sha256: String,
    /// The fp16 loss scaler's state (mixed-precision runs only).
    #[serde(default)]
    pub grad_scaler: Option<crate::optim::GradScaler>,
    /// `fp16` or `fp32`: what `precision` resolved to.
    #[serde(default)]
    pub precision: Option<String>,
    /// sha256 of `config.yaml` and `split.csv` as the run wrote them, and of `metrics.csv`
    /// after the last finished epoch: a resume refuses a folder where one has changed.
    #[serde(default)]
    pub config_sha256: String,
    #[serde(default)]
    pub split_sha256: String,
    #[serde(default)]
    pub metrics_sha256: String,
}

/// Every file a run writes (what `--force` clears).
pub const RUN_FILES: &[&str] = &[
    "config.yaml",
    "split.csv",
    "metrics.csv",
    "best.safetensors",
    "last.safetensors",
    "optimizer.safetensors",
    "train_state.yaml",
    "curves.png",
    "model.onnx",
    "model.parity-failed.onnx",
    "parity.yaml",
    "val_scores.csv",
    "summary.yaml",
    "calibration.yaml",
    "calibration_report.md",
    "model.calibrated.onnx",
    tracking::STATE_FILE,
];

/// Runs a whole training job as configured.
/// `Ok(None)` when the run paused (`stop_after`) before its last epoch.
pub fn train(cfg: &TrainConfig, opts: &RunOptions) -> Result<Option<RunSummary>> {
    let t0 = Instant::now();
    cfg.validate()?;
    let found = inputs::find(cfg)?;
    let folder = folder::open(cfg, opts, &found)?;
    let mut data = match inputs::load(cfg, opts, found) {
        Ok(d) => d,
        Err(e) => {
            // Bad input leaves no folder behind (one this run created, still empty).
            folder.abandon();
            return Err(e);
        }
    };
    if !opts.quiet {
        for line in data.describe(cfg) {
            eprintln!("{line}");
        }
    }
    let folder = folder.begin(cfg, &data)?;
    // Tracking never stops the run: a tracker that cannot start is reported and left out.
    let tracker = opts
        .mlflow
        .as_ref()
        .map(|s| {
            let mut s = s.clone();
            s.tags.insert("nodule.git_commit".into(), env!("NODULE_GIT_COMMIT").into());
            s
        })
        .and_then(|s| match tracking::Tracker::start(&folder.dir, &s) {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("trainer: warning: MLflow tracking off for this run: {e}");
                None
            }
        });
    let opts = &RunOptions {
        mlflow_key: tracker.as_ref().map(tracking::Tracker::key),
        ..opts.clone()
    };
    let result = (|| {
        let init = data.found.init.take();
        let mut state = epochs::start(cfg, opts, &data, &folder, init)?;
        if epochs::run(cfg, opts, &data, &folder, &mut state)? == epochs::Outcome::Paused {
            return Ok(None);
        }
        finish::finish(cfg, opts, data, &folder, state, t0).map(Some)
    })();
    if let Some(t) = tracker {
        let end = match &result {
            Ok(Some(_)) => tracking::End::Finished,
            Ok(None) => tracking::End::Running,
            Err(_) => tracking::End::Failed,
        };
        eprintln!("{}", t.finish(end));
    }
    result
}

/// Writes rows as a CSV atomically.
pub(crate) fn write_csv<T: Serialize>(path: &Path, rows: &[T]) -> Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for r in rows {
        w.serialize(r)?;
    }
    files::write_atomic(path, &w.into_inner()?)?;
    Ok(())
}

pub(crate) fn yaml<T: Serialize>(path: &Path, v: &T) -> Result<()> {
    files::write_atomic(path, yaml_serde::to_string(v)?.as_bytes())?;
    Ok(())
}
