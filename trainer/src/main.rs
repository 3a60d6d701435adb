//! `trainer`: synthetic data (the `synth` crate), training with libtorch, native ONNX export.
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

mod doctor_cmd;
mod ensemble_cmd;
mod export_cmd;
mod mlflow_cmd;
mod spec_cmd;
mod sweep_cmd;
mod synth_cmd;
mod train_cmd;

use doctor_cmd::doctor;
use ensemble_cmd::ensemble;
use export_cmd::{export, ExportArgs};
use mlflow_cmd::mlflow_sync;
use spec_cmd::show_spec;
use sweep_cmd::{sweep, SweepMode};
use synth_cmd::{synth, SynthArgs};
use train_cmd::{train, TrainArgs};

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
