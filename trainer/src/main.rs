//! `trainer`: synthetic data, training with libtorch, native ONNX export.
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use trainer::config::TrainConfig;
use trainer::synth::SynthConfig;
use trainer::train::RunOptions;

mod sweep_cmd;
use sweep_cmd::{sweep, SweepMode};

#[derive(Parser, Debug)]
#[command(
    name = "trainer",
    version,
    about = "Train a 3D lung-nodule patch classifier with libtorch and export it to ONNX"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Write a synthetic CT-like patch folder (float32 .npy cubes + patch_index.csv).
    Synth(SynthArgs),
    /// Train, keep the best epoch by validation AUROC, export model.onnx, check parity.
    Train(Box<TrainArgs>),
    /// Export weights (a safetensors state dict with torchvision's names: a run's
    /// best.safetensors or one saved from PyTorch) to a parity-checked ONNX model with our
    /// metadata, without training.
    Export(Box<ExportArgs>),
    /// Run a sweep: a base config and a grid (or list) of overrides, each a k-fold
    /// cross-validation; resumable; one task per configuration and fold for a job array
    /// (--task, or SLURM_ARRAY_TASK_ID / JOB_COMPLETION_INDEX); then sweep_summary.csv/.md
    /// and forest.png.
    Sweep {
        /// The sweep file (base, out, folds, grid or cells).
        file: PathBuf,
        /// Run only this task (from 0; see --list); else SLURM_ARRAY_TASK_ID or
        /// JOB_COMPLETION_INDEX when set; else every task not done, then the summary.
        #[arg(long)]
        task: Option<usize>,
        /// Only build the summary (every task must be done).
        #[arg(long, conflicts_with = "task")]
        collect: bool,
        /// Print the configurations and tasks, and do nothing.
        #[arg(long, conflicts_with_all = ["task", "collect"])]
        list: bool,
        #[arg(long, help = scorer::ORT_LIB_HELP)]
        ort_lib: Option<PathBuf>,
        /// Track in this MLflow server (else MLFLOW_TRACKING_URI): the sweep as a parent run,
        /// each configuration's fold as a child run, the summary on the parent.
        #[arg(long)]
        mlflow: Option<String>,
        #[arg(short, long)]
        quiet: bool,
    },
    /// Average models' logits in one ONNX model (the fold models of a k-fold run: `trainer
    /// ensemble RUN/fold_* -o ensemble.onnx`), checked against the members' mean in ONNX
    /// Runtime; members must share preprocessing. calibrate, infer and infer bundle take it.
    Ensemble {
        /// Member models (.onnx files, or run folders: their model.onnx); two or more.
        #[arg(required = true, num_args = 2..)]
        members: Vec<PathBuf>,
        /// The ensemble model to write.
        #[arg(short, long)]
        out: PathBuf,
        #[arg(long, help = scorer::ORT_LIB_HELP)]
        ort_lib: Option<PathBuf>,
    },
    /// Print an architecture as a spec file (YAML) with its parameter count, checked for a
    /// cube size: a built-in's name (a starting point for one of your own) or a spec file
    /// (validated, each problem naming its layer). Train it with `model: { spec: FILE }` or
    /// `--spec FILE`.
    Spec {
        /// baseline_cnn, r3d_18, mc3_18, r2plus1d_18, or a spec file.
        arch: String,
        /// Cube side to check the network against, in voxels.
        #[arg(long, default_value_t = 64)]
        cube_size: usize,
    },
    /// Print what this trainer links and sees: libtorch, CUDA.
    Doctor,
    /// Send a run folder to its MLflow tracking server: what the run could not send while it
    /// trained (the server was down or slow), or a run trained without tracking.
    MlflowSync {
        /// The run folder.
        run: PathBuf,
        /// The tracking server (else MLFLOW_TRACKING_URI, else the one the run used).
        #[arg(long)]
        mlflow: Option<String>,
    },
}

/// `trainer synth`'s flags.
#[derive(clap::Args, Debug)]
struct SynthArgs {
    /// Output folder (must not already hold an index).
    #[arg(short, long)]
    out: PathBuf,
    /// Series (2 to 100000).
    #[arg(long, default_value_t = SynthConfig::default().series)]
    series: usize,
    /// Patches per series (1 to 100000; 10 million in all at most).
    #[arg(long, default_value_t = SynthConfig::default().patches_per_series)]
    patches_per_series: usize,
    /// Chance of a patch being a nodule, in (0, 1).
    #[arg(long, default_value_t = SynthConfig::default().positive_fraction)]
    positive_fraction: f64,
    /// Cube side in voxels (1 mm each; 8 to 512).
    #[arg(long, default_value_t = SynthConfig::default().cube_size)]
    cube_size: usize,
    #[arg(long, default_value_t = SynthConfig::default().seed)]
    seed: u64,
    /// Also write tabular features: `suv_max` in the index (carries signal) and
    /// clinical.csv with per-series `pack_years` (no signal), for model.features.
    #[arg(long)]
    features: bool,
}

impl SynthArgs {
    fn config(&self) -> SynthConfig {
        SynthConfig {
            series: self.series,
            patches_per_series: self.patches_per_series,
            positive_fraction: self.positive_fraction,
            cube_size: self.cube_size,
            seed: self.seed,
            features: self.features,
        }
    }
}

#[derive(clap::Args, Debug)]
struct ExportArgs {
    /// The weights: safetensors with torchvision's names (float32, float64, float16 or
    /// bfloat16; num_batches_tracked counters ignored).
    #[arg(long)]
    weights: PathBuf,
    /// The ONNX model to write.
    #[arg(short, long)]
    out: PathBuf,
    /// Take the architecture and preprocessing from this training config (a run folder's
    /// config.yaml); the flags below override it.
    #[arg(short, long)]
    config: Option<PathBuf>,
    /// baseline_cnn, r3d_18, mc3_18 or r2plus1d_18 (default: the config's, else
    /// baseline_cnn).
    #[arg(long, conflicts_with = "spec")]
    arch: Option<String>,
    /// An architecture spec file (see `trainer spec`) instead of a built-in.
    #[arg(long)]
    spec: Option<PathBuf>,
    /// Width of the baseline CNN's first stage (1 to 256).
    #[arg(long)]
    width: Option<usize>,
    /// The preprocessing (default: the config's, else a 64³ cube and the defaults below).
    #[command(flatten)]
    pre: cli::PreprocessFlags,
    #[arg(long, help = scorer::ORT_LIB_HELP)]
    ort_lib: Option<PathBuf>,
}

/// `--arch NAME` or `--spec FILE` (relative to the working folder) from the command line:
/// either replaces the config's architecture.
fn set_arch(model: &mut trainer::config::ModelConfig, arch: Option<&String>, spec: Option<&PathBuf>) -> Result<()> {
    if let Some(v) = arch {
        model.arch = v.clone();
        model.spec = None;
    }
    if let Some(p) = spec {
        model.arch = trainer::config::ModelConfig::default().arch;
        model.spec = Some(trainer::config::SpecRef::File(p.clone()));
        model.resolve_spec(Path::new("."))?;
    }
    Ok(())
}

/// `trainer spec`: prints an architecture as a spec file writes it, with its size.
fn show_spec(arch: &str, cube: usize) -> Result<()> {
    let spec = if models::spec::ARCHITECTURES.contains(&arch) {
        models::spec::ArchSpec::by_name(arch)?
    } else {
        let p = Path::new(arch);
        models::spec::ArchSpec::from_yaml(&files::read_regular_to_string(p)?, &p.display().to_string())?
    };
    if !(8..=models::preprocess::MAX_CUBE).contains(&cube) {
        anyhow::bail!(
            "--cube-size must be from 8 to {}, got {cube}",
            models::preprocess::MAX_CUBE
        );
    }
    let size = spec.check_input(cube)?;
    println!(
        "# {}: {} trainable parameters; a {cube}³ cube is {size} voxels (z, y, x) before global pooling",
        spec.name,
        spec.num_trainable()
    );
    print!("{}", spec.to_yaml()?);
    Ok(())
}

/// `trainer export`.
fn export(a: &ExportArgs) -> Result<()> {
    let (mut model, mut pre) = match &a.config {
        Some(c) => {
            let cfg = TrainConfig::load(c)?;
            (cfg.model, cfg.preprocess)
        }
        None => (
            trainer::config::ModelConfig::default(),
            models::preprocess::Preprocess::default(),
        ),
    };
    set_arch(&mut model, a.arch.as_ref(), a.spec.as_ref())?;
    if let Some(v) = a.width {
        model.width = v;
    }
    models::preprocess::Overrides::from(a.pre).apply(&mut pre);
    let job = trainer::export::WeightsExport {
        weights: a.weights.clone(),
        out: a.out.clone(),
        spec: model.spec()?,
        features: model.features.clone(),
        preprocess: pre,
        ort_lib: a.ort_lib.clone(),
    };
    let r = trainer::export::export_weights(&job)?;
    for n in &r.notes {
        println!("note: {n}");
    }
    println!(
        "exported {} ({}, {}³ cubes) -> {}; parity max |Δlogit| libtorch vs ONNX Runtime {} = {:.2e} over {} test cubes; weights sha256 {}",
        a.weights.display(),
        job.spec.name,
        job.preprocess.cube_size,
        a.out.display(),
        r.parity.onnxruntime_version,
        r.parity.max_abs_diff_logit,
        r.parity.patches,
        r.weights_sha256
    );
    Ok(())
}

/// Settings come from --config (YAML), then these flags override, then defaults.
#[derive(clap::Args, Debug)]
struct TrainArgs {
    /// YAML training config.
    #[arg(short, long)]
    config: Option<PathBuf>,
    /// Patch folder (with patch_index.csv) or index CSV.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Run folder to create.
    #[arg(short, long)]
    out: Option<PathBuf>,
    /// baseline_cnn, r3d_18, mc3_18 or r2plus1d_18.
    #[arg(long, conflicts_with = "spec")]
    arch: Option<String>,
    /// An architecture spec file (see `trainer spec`) instead of a built-in.
    #[arg(long)]
    spec: Option<PathBuf>,
    /// Width of the baseline CNN's first stage (1 to 256).
    #[arg(long)]
    width: Option<usize>,
    /// Cube side fed to the network, in voxels (8 to 512).
    #[arg(long)]
    cube_size: Option<usize>,
    /// Epochs (1 to 100000).
    #[arg(long)]
    epochs: Option<usize>,
    /// Patches per step (2 to 4096; BatchNorm needs two).
    #[arg(long)]
    batch_size: Option<usize>,
    /// Peak learning rate of AdamW, in (0, 1].
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long)]
    seed: Option<u64>,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long)]
    device: Option<String>,
    /// auto (fp16 mixed precision on CUDA, fp32 on CPU), fp32 or fp16.
    #[arg(long, value_parser = ["auto", "fp32", "fp16"])]
    precision: Option<String>,
    /// Fraction of series held out for validation, in (0, 1).
    #[arg(long)]
    val_fraction: Option<f64>,
    /// libtorch intra-op threads (0: its default; no more than max(8, 4 x CPUs)). A resume
    /// may change it.
    #[arg(long)]
    threads: Option<usize>,
    /// Memory for preprocessed patches in MiB; the rest are read from disk for each batch
    /// (default: all in memory).
    #[arg(long)]
    cache_mb: Option<u64>,
    /// k-fold cross-validation over series, 2 to 100 folds (one run folder per fold and
    /// cv_summary.yaml).
    #[arg(long)]
    folds: Option<usize>,
    /// Start from these weights (safetensors with torchvision's names: a run's
    /// best.safetensors or a PyTorch state dict) instead of a random initialisation.
    #[arg(long, value_name = "WEIGHTS")]
    init: Option<PathBuf>,
    /// With --init: initialise the head afresh, leaving the file's head out (another
    /// number of classes, such as Kinetics-400's).
    #[arg(long)]
    reinit_head: bool,
    /// With --init: initialise the first convolution afresh, leaving the file's out
    /// (torchvision's Kinetics r3d_18 stem is 3x7x7 over 3 channels; the notebook's is 7³).
    #[arg(long)]
    reinit_stem: bool,
    /// Replace the files of an existing run folder.
    #[arg(long)]
    force: bool,
    /// Continue the run in this folder from its last finished epoch (its config.yaml is used;
    /// other settings given must match it).
    #[arg(long, value_name = "RUN_DIR")]
    resume: Option<PathBuf>,
    /// Pause after this epoch, leaving the run resumable with --resume.
    #[arg(long, value_name = "EPOCH")]
    stop_after: Option<usize>,
    /// Track the run on this MLflow tracking server (http://HOST:PORT; else
    /// MLFLOW_TRACKING_URI; experiment from MLFLOW_EXPERIMENT_NAME, else `nodule`): params,
    /// every epoch's metrics as they happen, the run's files at the end. A server that is down
    /// never fails or slows the run: what was not sent is kept (`trainer mlflow-sync RUN`).
    #[arg(long, value_name = "URI")]
    mlflow: Option<String>,
    #[arg(long, help = scorer::ORT_LIB_HELP)]
    ort_lib: Option<PathBuf>,
    #[arg(short, long)]
    quiet: bool,
}

fn resolve(a: &TrainArgs) -> Result<TrainConfig> {
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
    set_arch(&mut cfg.model, a.arch.as_ref(), a.spec.as_ref())?;
    if let Some(v) = a.width {
        cfg.model.width = v;
    }
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

/// `trainer mlflow-sync`: a run folder, a sweep folder or an evaluation's folder.
fn mlflow_sync(run: &std::path::Path, flag: Option<&str>) -> Result<()> {
    use tracking as track;
    let before = run
        .join(track::STATE_FILE)
        .is_file()
        .then(|| track::read_state(run))
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let settings = match (track::Settings::from_env(flag).map_err(anyhow::Error::msg)?, &before) {
        (Some(s), _) => s,
        (None, Some(st)) => track::Settings {
            uri: st.uri.clone(),
            experiment: st.experiment.clone(),
            ..track::Settings::default()
        },
        (None, None) => anyhow::bail!(
            "{}: never tracked, and no server given (--mlflow URI or MLFLOW_TRACKING_URI)",
            run.display()
        ),
    };
    let kind = before.as_ref().map_or(track::Kind::Run, |b| b.kind);
    if kind == track::Kind::Run && !run.join("config.yaml").is_file() {
        anyhow::bail!("{}: not a run folder (no config.yaml)", run.display());
    }
    let mut st = track::load_or_new(run, &settings).map_err(anyhow::Error::msg)?;
    let finished = match kind {
        track::Kind::Run => run.join("summary.yaml").is_file(),
        track::Kind::Sweep => run.join(trainer::sweep::SUMMARY_MD).is_file(),
        track::Kind::Evaluation => true,
    };
    let end = if finished {
        track::End::Finished
    } else {
        track::End::Running
    };
    track::sync(run, &mut st, end)
        .map_err(|e| anyhow::anyhow!("MLflow at {}: {e}; nothing is lost, run this again", settings.uri))?;
    println!(
        "MLflow: run {} in experiment {:?} at {}: {} epochs of metrics, {} artifacts{}",
        st.run_id.as_deref().unwrap_or("?"),
        st.experiment,
        st.uri,
        st.metric_rows_sent,
        st.artifacts_sent.len(),
        if end == track::End::Running {
            " (it has not finished)"
        } else {
            ""
        }
    );
    Ok(())
}

/// `trainer train`.
fn train(a: &TrainArgs) -> Result<()> {
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
            mlflow: tracking::Settings::from_env(a.mlflow.as_deref()).map_err(anyhow::Error::msg)?,
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

/// `trainer doctor`.
fn doctor() {
    let lib = std::path::Path::new(env!("NODULE_LIBTORCH_LIB"));
    let version = trainer::torch_version_in(lib).unwrap_or_else(|| "not found there now".into());
    println!(
        "libtorch built against: {} (torch {version}; tch 0.24 needs 2.11.0)",
        lib.display()
    );
    if let Some(dir) = trainer::cuda::loaded_libtorch_dir() {
        println!(
            "libtorch loaded from: {} (torch {})",
            dir.display(),
            trainer::libtorch_version()
        );
    }
    println!("CUDA library: {}", trainer::cuda::ensure_loaded());
    println!(
        "CUDA available: {} ({} device(s)); cuDNN: {}",
        tch::Cuda::is_available(),
        tch::Cuda::device_count(),
        tch::Cuda::cudnn_is_available()
    );
}

/// `trainer synth`.
fn synth(cfg: &SynthConfig, out: &Path) -> Result<()> {
    let idx = trainer::synth::generate(cfg, out)?;
    println!(
        "wrote {} patches of {}³ from {} series -> {}",
        cfg.series * cfg.patches_per_series,
        cfg.cube_size,
        cfg.series,
        idx.display()
    );
    Ok(())
}

/// `trainer ensemble`.
fn ensemble(members: &[PathBuf], out: &Path, ort_lib: Option<&Path>) -> Result<()> {
    let b = trainer::ensemble::build(members, out, ort_lib)?;
    println!(
        "ensemble of {} models -> {}; max |Δlogit| against the mean of the members in ONNX Runtime {} = {:.2e} over {} test cubes",
        b.members.len(),
        out.display(),
        b.onnxruntime_version,
        b.max_abs_diff,
        b.cubes
    );
    Ok(())
}

fn main() -> ExitCode {
    cli::default_sigpipe();
    let run = || -> Result<()> {
        match Cli::parse().cmd {
            Cmd::Synth(a) => synth(&a.config(), &a.out)?,
            Cmd::Train(a) => train(&a)?,
            Cmd::Export(a) => export(&a)?,
            Cmd::Sweep {
                file,
                task,
                collect,
                list,
                ort_lib,
                mlflow,
                quiet,
            } => sweep(
                &file,
                SweepMode::of(task, collect, list),
                ort_lib,
                mlflow.as_deref(),
                quiet,
            )?,
            Cmd::Ensemble { members, out, ort_lib } => ensemble(&members, &out, ort_lib.as_deref())?,
            Cmd::Spec { arch, cube_size } => show_spec(&arch, cube_size)?,
            Cmd::Doctor => doctor(),
            Cmd::MlflowSync { run, mlflow } => mlflow_sync(&run, mlflow.as_deref())?,
        }
        Ok(())
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => cli::fail("trainer", e.as_ref()),
    }
}
