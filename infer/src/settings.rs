//! What a scoring run is asked to do ([`Settings`]), checked before any work
//! ([`check_settings`], [`check_batch_memory`]), and what it reports ([`Summary`]).
use std::path::PathBuf;

use scorer::ScorerOptions;

use crate::output::Format;
use crate::InferError;

/// Test-time augmentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::VariantArray, strum::IntoStaticStr, strum::EnumMessage)]
#[strum(serialize_all = "kebab-case")]
pub enum Tta {
    None,
    /// Mean logit over the 8 combinations of flips along z, y and x.
    Flips,
}

/// A batch scoring run.
#[derive(Debug, Clone)]
pub struct Settings {
    pub model: PathBuf,
    pub calibration: Option<PathBuf>,
    /// Folders or files; ignored when `index` is given.
    pub inputs: Vec<PathBuf>,
    pub recursive: bool,
    /// Index CSV (or a folder holding `patch_index.csv`) listing the patches to score.
    pub index: Option<PathBuf>,
    /// A CSV of per-series values (`seriesuid` and feature columns) for the tabular
    /// features of a model with them that the index lacks.
    pub features_csv: Option<PathBuf>,
    /// Output file; `-` for stdout.
    pub out: PathBuf,
    pub format: crate::output::Format,
    /// Where failed files are listed (`patch_file,error`); default `<out>.errors.csv`.
    pub errors: Option<PathBuf>,
    /// Skip the patches an existing output already holds, and keep its rows.
    pub resume: bool,
    /// Score only this part of the inputs ([`crate::shard`]).
    pub shard: Option<crate::shard::Shard>,
    pub tta: Tta,
    pub batch_size: usize,
    pub scorer: ScorerOptions,
    pub fail_fast: bool,
    /// Apply a calibration even if it was fitted for another model (warns).
    pub force_calibration: bool,
    /// Show a progress bar (on a terminal).
    pub progress: bool,
    /// Score candidates straight from the scans under this folder (with `candidates`).
    pub scans: Option<PathBuf>,
    /// The points to score in `scans` (LUNA16's candidates format or a patch index).
    pub candidates: Option<PathBuf>,
    /// Read only scans of this format.
    pub scan_format: Option<scans::Format>,
    /// Cube edge cut from scans, mm (default: the model's cube at `spacing_mm`).
    pub size_mm: Option<f64>,
    /// Voxel size of the cubes cut from scans, mm.
    pub spacing_mm: f64,
    /// Scans read at once (0: by the cores, at most 4); each is in memory while read and cut.
    pub scan_jobs: usize,
    pub missing_scans: crate::from_scans::MissingScans,
    /// Score only the series this fold of a k-fold run held out, with its model, and write
    /// `OUT.fold.yaml` for `infer merge --folds` ([`crate::folds`]).
    pub held_out: Option<PathBuf>,
    /// Benchmarks only: cut every cube from the scans into memory before scoring starts (the
    /// ceiling of scoring from scans: the model alone on cubes in memory).
    pub preload: bool,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct Summary {
    pub scored: usize,
    /// Rows of an earlier output dropped by `--resume` because their patch is no longer
    /// among the inputs.
    pub resume_dropped: usize,
    /// Rows of an earlier output scored again because their patch file changed since
    /// (`--resume`).
    pub resume_changed: usize,
    /// Rows kept from an earlier output (`--resume`).
    pub resumed: usize,
    pub failed: usize,
    pub errors_file: Option<PathBuf>,
    pub predicted_positive: Option<usize>,
    /// Which calibration gave `calibrated_probability` and `decision`, if any.
    pub calibration: Option<String>,
    pub provider: &'static str,
    pub provider_note: String,
    pub all_nodes_on_provider: Option<bool>,
    pub ort_version: String,
    pub ort_library: PathBuf,
    pub seconds: f64,
    /// Seconds from the first batch's decoding to the last row, and of those the seconds
    /// spent scoring on the scoring thread (ONNX Runtime's `run`, plus making the flips with
    /// `--tta flips`): their ratio says whether decoding kept the model fed (near 1) or the
    /// model waited on files.
    pub pipeline_seconds: f64,
    pub model_seconds: f64,
    /// Seconds from the pipeline's start to the first batch's arrival at the scoring thread
    /// (reading the first scan or files): the pipeline's fill time.
    pub first_batch_seconds: f64,
    /// Peak resident memory of the process (Linux `VmHWM`), KiB.
    pub peak_rss_kib: Option<u64>,
    /// What the run says about its inputs besides errors (left-out candidates…).
    pub notes: Vec<String>,
}

/// Settings that are wrong whatever the inputs: refused before anything is read.
pub(crate) fn check_settings(s: &Settings) -> Result<(), InferError> {
    // Every bad setting in one error, not the first only.
    let mut bad: Vec<String> = Vec::new();
    if s.batch_size == 0 {
        bad.push("--batch-size must be at least 1".into());
    }
    if s.batch_size > MAX_BATCH {
        bad.push(format!(
            "--batch-size {} is more than {MAX_BATCH} (a batch of 64³ cubes that size takes {:.0} GiB before the model runs)",
            s.batch_size,
            s.batch_size as f64 * 64f64.powi(3) * 4.0 / f64::from(1u32 << 30)
        ));
    }
    if let Err(e) = host::check_threads("--threads", s.scorer.threads) {
        bad.push(e);
    }
    if s.format == Format::Luna16 && s.index.is_none() && s.scans.is_none() {
        bad.push(format!(
            "{}: --format luna16 needs --index (or --scans): the submission format carries each patch's seriesuid and world coordinates",
            s.out.display()
        ));
    }
    if s.scans.is_some() != s.candidates.is_some() {
        bad.push("--scans DIR and --candidates FILE go together: the candidates say where to cut the scans".into());
    }
    if s.held_out.is_some() && (s.scans.is_none() || s.shard.is_some()) {
        bad.push("--held-out scores a fold's held-out scans: it takes --scans and --candidates, and no --shard".into());
    }
    if s.scans.is_some() {
        if let Err(e) = host::check_threads("--scan-jobs", s.scan_jobs) {
            bad.push(e);
        }
        if !(s.spacing_mm.is_finite() && s.spacing_mm > 0.0) {
            bad.push(format!("--spacing-mm must be positive, got {}", s.spacing_mm));
        }
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(InferError::Usage(bad.join("; ")))
    }
}

/// The largest `--batch-size` taken.
pub const MAX_BATCH: usize = 4096;

/// The most bytes one batch buffer may take (three are in flight, and with `--tta flips`
/// eight copies of each cube go to the model).
pub const MAX_BATCH_BYTES: u64 = 2 << 30;

/// Refuses a batch size whose buffers would not fit in sensible memory for this model's cube.
pub(crate) fn check_batch_memory(s: &Settings, cube: usize) -> Result<(), InferError> {
    let per_cube = (cube as u64).pow(3) * 4 * if s.tta == Tta::Flips { 8 } else { 1 };
    let bytes = per_cube * s.batch_size as u64;
    if bytes > MAX_BATCH_BYTES {
        return Err(InferError::Usage(format!(
            "--batch-size {} with this model's {cube}³ cubes{} takes {:.1} GiB per batch (three are in flight); \
             at most {} for it",
            s.batch_size,
            if s.tta == Tta::Flips { " and --tta flips" } else { "" },
            bytes as f64 / f64::from(1u32 << 30),
            (MAX_BATCH_BYTES / per_cube).max(1)
        )));
    }
    Ok(())
}
