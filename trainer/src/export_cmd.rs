//! `trainer export`: weights to a parity-checked ONNX model, without training.
use std::path::{Path, PathBuf};

use anyhow::Result;

use trainer::config::TrainConfig;

#[derive(clap::Args, Debug)]
pub(crate) struct ExportArgs {
    /// The weights: safetensors with torchvision's names (float32, float64, float16 or
    /// bfloat16; num_batches_tracked counters ignored).
    #[arg(long)]
    pub(crate) weights: PathBuf,
    /// The ONNX model to write.
    #[arg(short, long)]
    pub(crate) out: PathBuf,
    /// Take the architecture and preprocessing from this training config (a run folder's
    /// config.yaml); the flags below override it.
    #[arg(short, long)]
    pub(crate) config: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) arch: cli::ArchFlags,
    /// The preprocessing (default: the config's, else a 64³ cube and the defaults below).
    #[command(flatten)]
    pub(crate) pre: cli::PreprocessFlags,
    #[arg(long, help = scorer::ORT_LIB_HELP)]
    pub(crate) ort_lib: Option<PathBuf>,
}

/// `--arch NAME` or `--spec FILE` (relative to the working folder) from the command line:
/// either replaces the config's architecture; `--width` its width.
pub(crate) fn set_arch(model: &mut trainer::config::ModelConfig, flags: &cli::ArchFlags) -> Result<()> {
    if let Some(v) = &flags.arch {
        model.arch = v.clone();
        model.spec = None;
    }
    if let Some(p) = &flags.spec {
        model.arch = trainer::config::ModelConfig::default().arch;
        model.spec = Some(trainer::config::SpecRef::File(p.clone()));
        model.resolve_spec(Path::new("."))?;
    }
    if let Some(v) = flags.width {
        model.width = v;
    }
    Ok(())
}

/// `trainer export`.
pub(crate) fn export(a: &ExportArgs) -> Result<()> {
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
    set_arch(&mut model, &a.arch)?;
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
