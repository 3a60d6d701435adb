//! `trainer train`: a training run from a config and flags.
use std::path::PathBuf;

use anyhow::{Context, Result};

use trainer::config::TrainConfig;
use trainer::train::RunOptions;

use crate::export_cmd::set_arch;

/// Settings come from --config (YAML), then these flags override, then defaults.
#[derive(clap::Args, Debug)]
pub(crate) struct TrainArgs {
    /// YAML training config.
    #[arg(short, long)]
    pub(crate) config: Option<PathBuf>,
    /// Patch folder (with patch_index.csv) or index CSV.
    #[arg(long)]
    pub(crate) data: Option<PathBuf>,
    /// Run folder to create.
    #[arg(short, long)]
    pub(crate) out: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) arch: cli::ArchFlags,
    /// Cube side fed to the network, in voxels (8 to 512).
    #[arg(long)]
    pub(crate) cube_size: Option<usize>,
    /// Epochs (1 to 100000).
    #[arg(long)]
    pub(crate) epochs: Option<usize>,
    /// Patches per step (2 to 4096; BatchNorm needs two).
    #[arg(long)]
    pub(crate) batch_size: Option<usize>,
    /// Peak learning rate of AdamW, in (0, 1].
    #[arg(long)]
    pub(crate) lr: Option<f64>,
    #[arg(long)]
    pub(crate) seed: Option<u64>,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long)]
    pub(crate) device: Option<String>,
    /// auto (fp16 mixed precision on CUDA, fp32 on CPU), fp32 or fp16.
    #[arg(long, value_parser = ["auto", "fp32", "fp16"])]
    pub(crate) precision: Option<String>,
    /// Fraction of series held out for validation, in (0, 1).
    #[arg(long)]
    pub(crate) val_fraction: Option<f64>,
    /// libtorch intra-op threads (0: its default; no more than max(8, 4 x CPUs)). A resume
    /// may change it.
    #[arg(long)]
    pub(crate) threads: Option<usize>,
    /// Memory for preprocessed patches in MiB; the rest are read from disk for each batch
    /// (default: all in memory).
    #[arg(long)]
    pub(crate) cache_mb: Option<u64>,
    /// k-fold cross-validation over series, 2 to 100 folds (one run folder per fold and
    /// cv_summary.yaml).
    #[arg(long)]
    pub(crate) folds: Option<usize>,
    /// Start from these weights (safetensors with torchvision's names: a run's
    /// best.safetensors or a PyTorch state dict) instead of a random initialisation.
    #[arg(long, value_name = "WEIGHTS")]
    pub(crate) init: Option<PathBuf>,
    /// With --init: initialise the head afresh, leaving the file's head out (another
    /// number of classes, such as Kinetics-400's).
    #[arg(long)]
    pub(crate) reinit_head: bool,
    /// With --init: initialise the first convolution afresh, leaving the file's out
    /// (torchvision's Kinetics r3d_18 stem is 3x7x7 over 3 channels; the notebook's is 7³).
    #[arg(long)]
    pub(crate) reinit_stem: bool,
    /// Replace the files of an existing run folder.
    #[arg(long)]
    pub(crate) force: bool,
    /// Continue the run in this folder from its last finished epoch (its config.yaml is used;
    /// other settings given must match it).
    #[arg(long, value_name = "RUN_DIR")]
    pub(crate) resume: Option<PathBuf>,
    /// Pause after this epoch, leaving the run resumable with --resume.
    #[arg(long, value_name = "EPOCH")]
    pub(crate) stop_after: Option<usize>,
    /// Track the run on this MLflow tracking server (http://HOST:PORT; else
    /// MLFLOW_TRACKING_URI; experiment from MLFLOW_EXPERIMENT_NAME, else `nodule`): params,
    /// every epoch's metrics as they happen, the run's files at the end. A server that is down
    /// never fails or slows the run: what was not sent is kept (`trainer mlflow-sync RUN`).
    #[arg(long, value_name = "URI")]
    pub(crate) mlflow: Option<String>,
    #[arg(long, help = scorer::ORT_LIB_HELP)]
    pub(crate) ort_lib: Option<PathBuf>,
    #[arg(short, long)]
    pub(crate) quiet: bool,
}

pub(crate) fn resolve(a: &TrainArgs) -> Result<TrainConfig> {
    let mut cfg = match (&a.resume, &a.config) {
        (Some(run), None) => TrainConfig::load(&run.join("config.yaml"))
            .with_context(|| format!("{}: not a run folder to resume", run.display()))?,
        (_, Some(p)) => TrainConfig::load(p)?,
        (None, None) => {
            let data = a.data.clone().context("give --config FILE or --data FOLDER")?;
            let out = a.out.clone().context("give --config FILE or --out RUN_FOLDER")?;
            yaml_serde::from_str::<TrainConfig>(&format!(
                "data: {}\nout: {}\n",
                yaml_serde::to_string(&data)?.trim(),
                yaml_serde::to_string(&out)?.trim()
            ))?
        }
    };
    if let Some(v) = &a.data {
        cfg.data = v.clone();
    }
    if let Some(v) = &a.out {
        cfg.out = v.clone();
    }
    if let Some(run) = &a.resume {
        cfg.out = run.clone();
    }
    set_arch(&mut cfg.model, &a.arch)?;
    if let Some(v) = a.cube_size {
        cfg.preprocess.cube_size = v;
    }
    if let Some(v) = a.epochs {
        cfg.train.epochs = v;
    }
    if let Some(v) = a.batch_size {
        cfg.train.batch_size = v;
    }
    if let Some(v) = a.lr {
        cfg.train.lr = v;
    }
    if let Some(v) = a.seed {
        cfg.train.seed = v;
    }
    if let Some(v) = &a.device {
        cfg.train.device = v.clone();
    }
    if let Some(v) = a.val_fraction {
        cfg.split.val_fraction = v;
    }
    if let Some(v) = a.threads {
        cfg.train.threads = v;
    }
    if let Some(v) = a.cache_mb {
        cfg.train.cache_mb = Some(v);
    }
    if let Some(v) = &a.precision {
        cfg.train.precision = yaml_serde::from_str(v)?;
    }
    if let Some(v) = a.folds {
        cfg.split.folds = v;
    }
    if let Some(v) = &a.init {
        cfg.train.init = Some(v.clone());
    }
    if a.reinit_head {
        cfg.train.reinit_head = true;
    }
    if a.reinit_stem {
        cfg.train.reinit_stem = true;
    }
    Ok(cfg)
}

/// `trainer train`.
pub(crate) fn train(a: &TrainArgs) -> Result<()> {
    let cfg = resolve(a)?;
    let (runs, cv) = trainer::run(
        &cfg,
        &RunOptions {
            config: a.config.clone(),
            force: a.force,
            ort_lib: a.ort_lib.clone(),
            quiet: a.quiet,
            resume: a.resume.is_some(),
            stop_after: a.stop_after,
            mlflow: tracking::Settings::from_env(a.mlflow.as_deref())?,
            mlflow_key: None,
        },
    )?;
    if runs.is_empty() && cv.is_none() {
        println!("paused; continue with: trainer train --resume {}", cfg.out.display());
    }
    for s in &runs {
        println!(
            "best epoch {} with validation AUROC {:.4} (exported model: {:.4}, {} val patches / {} series); parity max |Δlogit| {:.2e}; run folder {}",
            s.best_epoch,
            s.best_val_auroc,
            s.onnx_val_auroc,
            s.val_patches,
            s.val_series,
            s.parity_max_abs_diff_logit,
            s.run_dir.display()
        );
    }
    if let Some(cv) = cv {
        println!(
            "{}-fold cross-validation: validation AUROC {:.4} ± {:.4} (mean ± sd over folds) -> {}",
            cv.folds.len(),
            cv.mean_val_auroc,
            cv.sd_val_auroc,
            cfg.out.join("cv_summary.yaml").display()
        );
    }
    Ok(())
}
