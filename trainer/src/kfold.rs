//! k-fold cross-validation over series: one training run per fold (`OUT/fold_N`, each a
//! complete run folder) and `OUT/cv_summary.yaml` with the mean and spread of the folds'
//! validation AUROC.
use std::path::PathBuf;

use crate::{Result, TrainError};
use serde::Serialize;

use files::{Lock, RunIo};

use crate::config::TrainConfig;
use crate::train::{train, yaml, RunOptions, RunSummary};

/// One fold's line of `cv_summary.yaml`.
#[derive(Debug, Clone, Serialize)]
pub struct FoldResult {
    pub fold: usize,
    pub run_dir: PathBuf,
    pub best_epoch: usize,
    pub val_series: usize,
    pub val_patches: usize,
    pub onnx_val_auroc: f64,
    pub onnx_val_auroc_delong_ci95: [f64; 2],
}

/// `cv_summary.yaml`.
#[derive(Debug, Clone, Serialize)]
pub struct CvSummary {
    pub folds: Vec<FoldResult>,
    pub mean_val_auroc: f64,
    pub sd_val_auroc: f64,
}

/// Runs every fold, then writes `cv_summary.yaml`. The folder `OUT` is locked for the whole
/// cross-validation (each fold's folder for its own run).
pub fn run(cfg: &TrainConfig, opts: &RunOptions) -> Result<(Vec<RunSummary>, Option<CvSummary>)> {
    let k = cfg.split.folds;
    if opts.resume || opts.stop_after.is_some() {
        return Err(TrainError::Config(
            "--resume and --stop-after work on one run: give split.fold to resume one fold".to_string(),
        ));
    }
    cfg.validate()?;
    let summary_path = cfg.out.join("cv_summary.yaml");
    let mut io = RunIo::new();
    io.input("index", &cfg.data);
    if let Some(c) = &opts.config {
        io.input("config", c);
    }
    io.outputs_in("cross-validation summary", &cfg.out, &["cv_summary.yaml"])?;
    std::fs::create_dir_all(&cfg.out)
        .map_err(|e| TrainError::file(format!("{}: cannot create", cfg.out.display()), e))?;
    let _lock = Lock::within(&cfg.out, &format!("cross-validation folder {}", cfg.out.display()))?;
    if summary_path.exists() && !opts.force {
        return Err(TrainError::run_folder(
            &cfg.out,
            "a cross-validation already lives here; choose another --out or pass --force",
        ));
    }
    if summary_path.exists() {
        // --force: the old summary must not sit beside new folds if one of them fails.
        std::fs::remove_file(&summary_path)
            .map_err(|e| TrainError::file(format!("{}: cannot remove", summary_path.display()), e))?;
    }
    let mut runs = Vec::new();
    for f in 1..=k {
        let mut c = cfg.clone();
        c.split.fold = Some(f);
        c.out = cfg.out.join(format!("fold_{f}"));
        if !opts.quiet {
            eprintln!("trainer: fold {f}/{k}");
        }
        runs.extend(train(&c, opts)?);
    }
    let aurocs: Vec<f64> = runs.iter().map(|r| r.onnx_val_auroc).collect();
    let mean = aurocs.iter().sum::<f64>() / k as f64;
    let sd = (aurocs.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / (k - 1) as f64).sqrt();
    let cv = CvSummary {
        folds: runs
            .iter()
            .enumerate()
            .map(|(i, r)| FoldResult {
                fold: i + 1,
                run_dir: r.run_dir.clone(),
                best_epoch: r.best_epoch,
                val_series: r.val_series,
                val_patches: r.val_patches,
                onnx_val_auroc: r.onnx_val_auroc,
                onnx_val_auroc_delong_ci95: r.onnx_val_auroc_delong_ci95,
            })
            .collect(),
        mean_val_auroc: mean,
        sd_val_auroc: sd,
    };
    yaml(&summary_path, &cv)?;
    Ok((runs, Some(cv)))
}
