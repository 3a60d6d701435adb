//! A scoring run: inputs → output plan → bounded decode pipeline → session → streamed,
//! atomic output.
//!
//! Before any work the run collects its inputs ([`crate::inputs`]), checks its outputs
//! against them and against each other, and takes the output's lock
//! ([`files::RunIo`], [`files::Lock`]). A producer thread then decodes and
//! preprocesses the next batch (in parallel, rayon) straight into a batch buffer laid out
//! as the model's input, while the session scores the current one; the scoring thread only
//! runs the session and formats rows. A channel of capacity one and three recycled batch
//! buffers bound what is in flight, so peak memory does not depend on the folder size.
//! Output rows are streamed to a temporary file beside the output and renamed into place at
//! the end; the order is the input order. A logit that is not finite is that file's error,
//! never a probability or a decision.
use std::collections::HashMap;
use std::io::{Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;
use std::time::Instant;

use ndarray::{Array3, ArrayView3, Axis};
use rayon::prelude::*;

use files::{Lock, RunIo, Sink, Target};
use metrics::sigmoid;
use scorer::{Scorer, ScorerOptions};

use crate::calib::{self, Cal};
use crate::inputs::{collect_index, collect_inputs, Decoded, Inputs, Item};
use crate::output::{csv_header, format_rows, Format, OutRow};
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

/// Where a run writes, decided before any work.
struct OutputPlan {
    /// `None`: standard output.
    out: Option<Target>,
    errors: Option<(PathBuf, Target)>,
    /// Held for the whole run: one per output file.
    _locks: Vec<Lock>,
}

/// The errors file: `--errors`, else `OUT.errors.csv` beside a regular output (none for
/// standard output, a device or a FIFO: the reasons are on stderr).
fn errors_path(s: &Settings, out: Option<&Target>) -> Option<PathBuf> {
    s.errors.clone().or_else(|| {
        matches!(out, Some(Target::File(_))).then(|| {
            let mut p = s.out.clone().into_os_string();
            p.push(".errors.csv");
            PathBuf::from(p)
        })
    })
}

/// The header line of an errors file (`candidate,error` for LUNA16's candidates scored from
/// scans).
pub(crate) const ERRORS_HEADER: &str = "patch_file,error";

/// Whether the first bytes of a file are one of our errors files.
fn is_errors(head: &[u8]) -> bool {
    head.starts_with(format!("{ERRORS_HEADER}\n").as_bytes()) || head.starts_with(b"candidate,error\n")
}

/// Declares the run's inputs and outputs (no output may name an input or another output;
/// devices and FIFOs are written through; an existing file is replaced only if it is one of
/// ours of that kind) and locks each output file against a second run.
fn plan_outputs(s: &Settings, inputs: &Inputs) -> Result<OutputPlan, InferError> {
    let mut io = RunIo::new();
    io.input("model", &s.model);
    if let Some(c) = &s.calibration {
        io.input("calibration", c);
    }
    if let Some(i) = &inputs.index {
        io.input("index", i);
    }
    if let Some(f) = &s.features_csv {
        io.input("features CSV", f);
    }
    match &inputs.scans {
        Some(set) => {
            io.inputs("scan", crate::from_scans::scan_files(set).iter().map(PathBuf::as_path));
        }
        None => {
            io.inputs("patch", inputs.items.iter().map(|it| it.path.as_path()));
        }
    }
    let out = if s.out.as_os_str() == "-" {
        None
    } else {
        let t = io.output("output", &s.out)?;
        files::check_replaceable(&s.out, "scores output", &crate::output::is_scores)?;
        Some(t)
    };
    let mut locks = Vec::new();
    if let Some(Target::File(p)) = &out {
        locks.push(Lock::beside(p, &format!("output {}", s.out.display()))?);
    }
    if let Some(sh) = s.shard {
        if !matches!(out, Some(Target::File(_))) {
            return Err(InferError::Usage(format!(
                "--shard {}/{} needs -o a file: its record (OUT.shard.yaml) goes beside it for `infer merge`",
                sh.k, sh.n
            )));
        }
        let rec = crate::shard::record_path(&s.out);
        io.output("shard record", &rec)?;
        files::check_replaceable(&rec, "shard record", &|h| h.starts_with(b"shard:"))?;
    }
    if s.held_out.is_some() {
        if !matches!(out, Some(Target::File(_))) {
            return Err(InferError::Usage(
                "--held-out needs -o a file: its record (OUT.fold.yaml) goes beside it for `infer merge --folds`"
                    .into(),
            ));
        }
        let rec = crate::folds::record_path(&s.out);
        io.output("fold record", &rec)?;
        files::check_replaceable(&rec, "fold record", &|h| h.starts_with(b"fold:"))?;
    }
    let errors = match errors_path(s, out.as_ref()) {
        Some(p) => {
            let t = io.output("errors file", &p)?;
            files::check_replaceable(&p, "errors list", &is_errors)?;
            if let Target::File(f) = &t {
                locks.push(Lock::beside(f, &format!("errors file {}", p.display()))?);
            }
            Some((p, t))
        }
        None => None,
    };
    Ok(OutputPlan {
        out,
        errors,
        _locks: locks,
    })
}

/// The output being written. With `--fail-fast`, an output that cannot be replaced
/// atomically (standard output, a device, a FIFO) is spooled to an anonymous temporary file
/// and copied there only when the run succeeds, so a failed run writes nothing.
enum Out {
    Direct(Sink),
    Spooled {
        spool: std::io::BufWriter<std::fs::File>,
        then: Sink,
    },
}

impl Out {
    fn open(target: Option<&Target>, shown: &Path, fail_fast: bool) -> Result<Out, InferError> {
        let sink = match target {
            Some(t) => Sink::to(t, shown)?,
            None => Sink::stdout(),
        };
        if !fail_fast || matches!(target, Some(Target::File(_))) {
            return Ok(Out::Direct(sink));
        }
        let spool = tempfile::tempfile().map_err(|e| files::Error::io(std::env::temp_dir(), e))?;
        Ok(Out::Spooled {
            spool: std::io::BufWriter::new(spool),
            then: sink,
        })
    }

    fn commit(self) -> Result<(), InferError> {
        match self {
            Out::Direct(s) => Ok(s.commit()?),
            Out::Spooled { spool, mut then } => {
                let shown = then.shown().to_path_buf();
                let io = |e: std::io::Error| InferError::from(files::Error::io(&shown, e));
                let mut f = spool.into_inner().map_err(|e| io(e.into_error()))?;
                f.rewind().map_err(io)?;
                std::io::copy(&mut f, &mut then).map_err(io)?;
                Ok(then.commit()?)
            }
        }
    }
}

impl Write for Out {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Out::Direct(s) => s.write(buf),
            Out::Spooled { spool, .. } => spool.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Out::Direct(s) => s.flush(),
            Out::Spooled { spool, .. } => spool.flush(),
        }
    }
}

/// The 8 flip combinations of a cube (identity first).
fn flips(c: ArrayView3<f32>) -> Vec<Array3<f32>> {
    (0..8u8)
        .map(|mask| {
            let mut v = c.view();
            for axis in 0..3 {
                if mask & (1 << axis) != 0 {
                    v.invert_axis(Axis(axis));
                }
            }
            v.as_standard_layout().into_owned()
        })
        .collect()
}

/// What the scoring loop did.
#[derive(Default)]
struct Tally {
    scored: usize,
    positives: usize,
    /// (name, reason) of every file that could not be scored.
    errors: Vec<(String, String)>,
    pipeline_seconds: f64,
    model_seconds: f64,
    /// When the first batch reached the scoring thread, from the pipeline's start.
    first_batch_seconds: Option<f64>,
    /// The last line printed: the same reason for the same path (every candidate of a scan
    /// that cannot be read) is printed once, and listed for each in the errors file.
    last_shown: String,
}

impl Tally {
    /// Records a file that could not be scored (printed as `path: reason`).
    fn fail(&mut self, name: &str, shown: &Path, why: String) {
        let line = format!("{}: {why}", shown.display());
        if line != self.last_shown {
            eprintln!("{line}");
            self.last_shown = line;
        }
        self.errors.push((name.to_string(), why));
    }
}

/// What the scoring loop needs besides the items.
struct Scoring<'a> {
    s: &'a Settings,
    /// Each item's tabular features (a model with them), by output name.
    feats: Option<&'a HashMap<String, Vec<f32>>>,
    cal: Option<&'a Cal>,
    has_label: bool,
    sha: &'a str,
    pb: &'a indicatif::ProgressBar,
    /// Cutting from scans (`--scans`), else decoding files.
    feed: Option<crate::from_scans::Feed<'a>>,
}

/// Decodes on a producer thread, scores on this one, formats rows into `out`. Returns an
/// error only for what stops the whole run (fail-fast, the session failing, the output).
fn score_all(todo: &[&Item], scorer: &mut Scorer, c: &Scoring, out: &mut Out, t: &mut Tally) -> Result<(), InferError> {
    let s = c.s;
    let op = c.cal.and_then(Cal::operating_point);
    // Rows name LUNA16's candidates in a `candidate` column, anything else as `patch_file`.
    let scan_candidate = c.feed.as_ref().is_some_and(|f| f.set.name_column() == "candidate");
    let pre = scorer.preprocess.clone();
    let io = |e: std::io::Error| InferError::from(files::Error::io(&s.out, e));
    std::thread::scope(|scope| -> Result<(), InferError> {
        let (tx, rx) = sync_channel::<Decoded>(1);
        // Buffers the scoring thread is done with come back: no fresh tens of MiB (and their
        // page faults) per batch.
        let (back_tx, back_rx) = std::sync::mpsc::channel::<Vec<f32>>();
        let feed = c.feed.as_ref();
        scope.spawn(move || {
            if let Some(f) = feed {
                crate::from_scans::produce(todo, f, &tx, &back_rx);
                return;
            }
            decode_patches(todo, s.batch_size, &pre, &tx, &back_rx);
        });
        let t_pipeline = Instant::now();
        let mut text = Vec::new();
        for dec in rx {
            if t.first_batch_seconds.is_none() {
                t.first_batch_seconds = Some(t_pipeline.elapsed().as_secs_f64());
            }
            for (it, e) in dec.bad {
                if s.fail_fast {
                    return Err(e.into());
                }
                let msg = e.to_string();
                let reason = msg
                    .strip_prefix(&format!("{}: ", it.path.display()))
                    .unwrap_or(&msg)
                    .to_string();
                t.fail(&it.name, &it.path, reason);
            }
            let t_model = Instant::now();
            let feats = c.feats.map(|m| batch_features(m, &dec.good));
            let logits = score_batch(scorer, s.tta, &dec.data, feats.as_deref(), dec.good.len())?;
            t.model_seconds += t_model.elapsed().as_secs_f64();
            let mut rows = Vec::with_capacity(dec.good.len());
            let digests: Vec<String> = dec
                .good
                .iter()
                .zip(&dec.digests)
                .map(|(it, d)| input_digest(d, s.tta, c.feats.and_then(|m| m.get(&it.name)).map(Vec::as_slice)))
                .collect();
            for ((it, &logit), digest) in dec.good.iter().zip(&logits).zip(&digests) {
                if !logit.is_finite() {
                    let why = format!(
                        "the model's logit is {logit} (not finite): no probability or decision is given for it"
                    );
                    if s.fail_fast {
                        return Err(crate::bad_input(&it.path, why));
                    }
                    t.fail(&it.name, &it.path, why);
                    continue;
                }
                let z = f64::from(logit);
                let decision = op.map(|(_, threshold)| u8::from(z >= threshold));
                t.positives += usize::from(decision.unwrap_or(0));
                let r = it.row.as_ref();
                rows.push(OutRow {
                    patch_file: (!scan_candidate).then_some(it.name.as_str()),
                    candidate: scan_candidate.then_some(it.name.as_str()),
                    seriesuid: r.map(|r| r.seriesuid.as_str()),
                    diam_mm: r.map(|r| r.diam_mm),
                    center_x: r.map(|r| r.center_x),
                    center_y: r.map(|r| r.center_y),
                    center_z: r.map(|r| r.center_z),
                    label: if c.has_label { r.map(|r| r.label) } else { None },
                    logit,
                    probability: sigmoid(z),
                    calibrated_probability: c.cal.map(|c| c.probability(z)),
                    decision,
                    operating_point: op.map(|(name, _)| name),
                    model_sha256: c.sha,
                    input_sha256: digest,
                });
            }
            // This batch's text goes to the output in one write; memory stays at one batch.
            text.clear();
            format_rows(s.format, &rows, &mut text).map_err(|e| crate::bad_input(&s.out, e))?;
            out.write_all(&text).map_err(io)?;
            t.scored += rows.len();
            c.pb.inc(dec.good.len() as u64);
            let _ = back_tx.send(dec.data);
        }
        t.pipeline_seconds = t_pipeline.elapsed().as_secs_f64();
        Ok(())
    })
}

/// Decodes `.npy` patches batch by batch on the rayon pool and sends each batch (its good
/// cubes packed, its failures beside) to the scoring thread; a buffer the scorer is done
/// with comes back through `back_rx` and is reused.
fn decode_patches<'a>(
    todo: &[&'a Item],
    batch_size: usize,
    pre: &models::preprocess::Preprocess,
    tx: &std::sync::mpsc::SyncSender<Decoded<'a>>,
    back_rx: &std::sync::mpsc::Receiver<Vec<f32>>,
) {
    let per = pre.cube_size.pow(3);
    for chunk in todo.chunks(batch_size) {
        let mut data = back_rx.try_recv().unwrap_or_default();
        data.resize(chunk.len() * per, 0.0);
        let results: Vec<Result<String, models::Error>> = data
            .par_chunks_mut(per)
            .zip(chunk.par_iter())
            .map(|(slot, it)| models::patch::load_patch_hashed(&it.path, pre, slot))
            .collect();
        // The good cubes close ranks (this moves data only when a file failed).
        let (mut good, mut bad) = (Vec::with_capacity(chunk.len()), Vec::new());
        let mut digests = Vec::with_capacity(chunk.len());
        for (k, (it, r)) in chunk.iter().zip(results).enumerate() {
            match r {
                Ok(digest) => {
                    if good.len() != k {
                        data.copy_within(k * per..(k + 1) * per, good.len() * per);
                    }
                    good.push(*it);
                    digests.push(digest);
                }
                Err(e) => bad.push((*it, e)),
            }
        }
        data.truncate(good.len() * per);
        if tx
            .send(Decoded {
                good,
                digests,
                bad,
                data,
            })
            .is_err()
        {
            break; // the consumer stopped (fail-fast or an error)
        }
    }
}

/// The features of the decoded patches, in their order (a model with them).
fn batch_features(by_name: &HashMap<String, Vec<f32>>, good: &[&Item]) -> Vec<f32> {
    good.iter()
        .flat_map(|it| by_name.get(&it.name).map(Vec::as_slice).unwrap_or_default())
        .copied()
        .collect()
}

/// The logits of one decoded batch of `n` cubes (and their features, a model with them):
/// as they are, or with `--tta flips` the mean logit over each cube's eight flips.
fn score_batch(scorer: &mut Scorer, tta: Tta, data: &[f32], feats: Option<&[f32]>, n: usize) -> Result<Vec<f32>, InferError> {
    let d = scorer.preprocess.cube_size;
    let per = d * d * d;
    Ok(match tta {
        Tta::None => scorer.score_flat_with(data, feats)?,
        Tta::Flips => {
            let all: Vec<Array3<f32>> = data
                .chunks_exact(per)
                .filter_map(|c| ArrayView3::from_shape((d, d, d), c).ok())
                .flat_map(flips)
                .collect();
            // Each patch's features with each of its eight flips.
            let nf = feats.map_or(0, |f| f.len() / n.max(1));
            let f8: Option<Vec<f32>> = feats.map(|f| {
                f.chunks(nf.max(1))
                    .flat_map(|row| std::iter::repeat_n(row, 8).flatten().copied())
                    .collect()
            });
            scorer
                .score_with(&all, f8.as_deref())?
                .chunks(8)
                .map(|c| c.iter().sum::<f32>() / 8.0)
                .collect()
        }
    })
}

/// Lists the files that failed (`patch_file,error`), or removes the errors file an earlier
/// run left when there are none.
fn write_errors(
    errors: &[(String, String)],
    name_col: &str,
    file: Option<&(PathBuf, Target)>,
) -> Result<Option<PathBuf>, InferError> {
    let Some((path, target)) = file else {
        return Ok(None);
    };
    if errors.is_empty() {
        if let Target::File(p) = target {
            if p.is_file() {
                std::fs::remove_file(p).map_err(|e| files::Error::io(p, e))?;
            }
        }
        return Ok(None);
    }
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([name_col, "error"])
        .map_err(|e| crate::bad_input(path, e.to_string()))?;
    for (f, why) in errors {
        w.write_record([f, why]).map_err(|e| crate::bad_input(path, e.to_string()))?;
    }
    let bytes = w.into_inner().map_err(|e| crate::bad_input(path, e.to_string()))?;
    let mut sink = Sink::to(target, path)?;
    sink.write_all(&bytes).map_err(|e| files::Error::io(path, e))?;
    sink.commit()?;
    Ok(Some(path.clone()))
}

/// Settings that are wrong whatever the inputs: refused before anything is read.
fn check_settings(s: &Settings) -> Result<(), InferError> {
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

/// A model with tabular features: reads them for every item from the index (or
/// `--features-csv` by series); an item whose values are missing or not finite is reported
/// as that item's error, not scored (with `--fail-fast`, the run stops). `None` for a
/// cube-only model; a model with features scored without `--index` is refused.
fn read_features(
    s: &Settings,
    scorer: &Scorer,
    inputs: &mut Inputs,
) -> Result<Option<HashMap<String, Vec<f32>>>, InferError> {
    let Some(columns) = &scorer.features else {
        if s.features_csv.is_some() {
            return Err(InferError::Usage(format!(
                "--features-csv is given but {} takes no tabular features",
                s.model.display()
            )));
        }
        return Ok(None);
    };
    let keys: Vec<(&str, &str)> = inputs
        .items
        .iter()
        .map(|it| (it.name.as_str(), it.row.as_ref().map_or("", |r| r.seriesuid.as_str())))
        .collect();
    let values = match &inputs.scans {
        Some(set) => crate::from_scans::features(set, s.features_csv.as_deref(), &keys, columns)?,
        None => {
            let Some(index) = &inputs.index else {
                return Err(InferError::Usage(format!(
                    "{} takes tabular features ({}) beside each cube: score with --index INDEX, whose rows hold them \
                     (or --features-csv FILE for per-series values)",
                    s.model.display(),
                    columns.join(", ")
                )));
            };
            let src = models::features::FeatureSource {
                columns: columns.clone(),
                join: s.features_csv.clone(),
            };
            models::features::read(index, &keys, &src)?
        }
    };
    let mut map = HashMap::with_capacity(values.len());
    let mut kept = Vec::with_capacity(inputs.items.len());
    for (it, v) in std::mem::take(&mut inputs.items).into_iter().zip(values) {
        match v {
            Ok(v) => {
                map.insert(it.name.clone(), v);
                kept.push(it);
            }
            Err(why) if s.fail_fast => return Err(crate::bad_input(&it.path, why)),
            Err(why) => inputs.refused.push((it.name.clone(), why)),
        }
    }
    inputs.items = kept;
    Ok(Some(map))
}

/// A row's `input_sha256`: what the model was given for it. The digest of the bytes read
/// from the patch ([`models::patch::load_patch_hashed`]) as it is for a plain run; with
/// tabular features or `--tta flips`, the sha256 of that digest with the feature values
/// and the augmentation, so that `--resume` rescores a row whose features or augmentation
/// differ as it rescores a changed file.
fn input_digest(crop: &str, tta: Tta, feats: Option<&[f32]>) -> String {
    if tta == Tta::None && feats.is_none() {
        return crop.to_string();
    }
    let mut text = format!("{crop}|tta={tta:?}|");
    for v in feats.unwrap_or_default() {
        text += &format!("{:08x},", v.to_bits());
    }
    files::sha256_bytes(text.as_bytes())
}

/// The largest `--batch-size` taken.
pub const MAX_BATCH: usize = 4096;

/// The most bytes one batch buffer may take (three are in flight, and with `--tta flips`
/// eight copies of each cube go to the model).
pub const MAX_BATCH_BYTES: u64 = 2 << 30;

/// Refuses a batch size whose buffers would not fit in sensible memory for this model's cube.
fn check_batch_memory(s: &Settings, cube: usize) -> Result<(), InferError> {
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

/// What a finished run says about itself.
#[allow(clippy::too_many_arguments)]
fn summarize(
    s: &Settings,
    scorer: &Scorer,
    tally: &Tally,
    previous: Option<&crate::resume::Previous>,
    cal: Option<&Cal>,
    errors_file: Option<PathBuf>,
    notes: Vec<String>,
    t0: Instant,
) -> Summary {
    Summary {
        scored: tally.scored,
        resume_dropped: previous.map_or(0, |p| p.dropped),
        resume_changed: previous.map_or(0, |p| p.changed),
        resumed: previous.map_or(0, |p| p.done.len()),
        failed: tally.errors.len(),
        errors_file,
        predicted_positive: cal.map(|_| tally.positives),
        calibration: cal.map(|c| c.describe(s.calibration.as_deref())),
        provider: scorer.provider,
        provider_note: scorer.provider_note.clone(),
        all_nodes_on_provider: scorer.all_nodes_on_provider,
        ort_version: scorer.runtime.version.clone(),
        ort_library: scorer.runtime.library.clone(),
        seconds: t0.elapsed().as_secs_f64(),
        pipeline_seconds: tally.pipeline_seconds,
        first_batch_seconds: tally.first_batch_seconds.unwrap_or(0.0),
        model_seconds: tally.model_seconds,
        peak_rss_kib: host::peak_rss_kib(),
        notes,
    }
}

/// The output, opened for writing (replaced only when the run commits), holding what comes
/// first: the rows `--resume` keeps, or the CSV header.
fn open_output(
    s: &Settings,
    target: Option<&Target>,
    previous: Option<&crate::resume::Previous>,
    header: &[&str],
) -> Result<Out, InferError> {
    let mut out = Out::open(target, &s.out, s.fail_fast)?;
    let io = |e: std::io::Error| InferError::from(files::Error::io(&s.out, e));
    match previous {
        Some(p) => out.write_all(&p.text).map_err(io)?,
        None if s.format != Format::Jsonl => writeln!(out, "{}", header.join(",")).map_err(io)?,
        None => {}
    }
    Ok(out)
}

/// The run's inputs: candidates from scans, an index's patches, or the files and folders
/// given.
fn collect(s: &Settings, held_out: Option<&crate::folds::HeldOut>) -> Result<Inputs, InferError> {
    match (&s.scans, &s.candidates, &s.index) {
        (Some(dir), Some(cands), _) => crate::from_scans::collect(dir, cands, s.scan_format, s.missing_scans, held_out),
        (_, _, Some(idx)) => collect_index(idx),
        _ => collect_inputs(&s.inputs, s.recursive),
    }
}

/// Scans read at once from `--scan-jobs` (0: as many as there are CPUs, at most 4).
fn scan_jobs(asked: usize) -> usize {
    match asked {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()).min(4),
        j => j,
    }
}

/// Scores every input and writes the output atomically (streamed through a temporary
/// file). Bad files are reported on stderr as `path: reason`, listed in the errors file, and
/// skipped; the good rows are still written and [`Summary::failed`] counts the bad ones
/// (the binary then exits non-zero). `fail_fast` stops at the first bad file, writing no
/// output.
pub fn run(s: &Settings) -> Result<Summary, InferError> {
    let t0 = Instant::now();
    check_settings(s)?;
    let held_out = s.held_out.as_deref().map(crate::folds::HeldOut::read).transpose()?;
    let mut inputs = collect(s, held_out.as_ref())?;
    let part = s.shard.map(|sh| (sh, crate::shard::select(&mut inputs, sh)));
    let plan = plan_outputs(s, &inputs)?;
    if s.fail_fast {
        if let Some((name, why)) = inputs.refused.first() {
            return Err(crate::bad_input(Path::new(name), why.clone()));
        }
    }
    let mut scorer = Scorer::open(&s.model, &s.scorer)?;
    if let Some(h) = &held_out {
        h.check_model(&s.model, &scorer.model_sha256)?;
    }
    check_batch_memory(s, scorer.preprocess.cube_size)?;
    let feats = read_features(s, &scorer, &mut inputs)?;
    let cal = calib::choose(
        s.calibration.as_deref(),
        &s.model,
        &scorer.model_sha256,
        &scorer.metadata,
        s.force_calibration,
    )?;
    let name_col = inputs.scans.as_ref().map_or("patch_file", |set| set.name_column());
    let header = csv_header(
        s.format,
        name_col,
        crate::output::Columns {
            index: inputs.index.is_some(),
            label: inputs.has_label,
            calibrated: cal.is_some(),
        },
    );
    let grid = inputs
        .scans
        .as_ref()
        .map(|_| crate::from_scans::grid(s.size_mm, s.spacing_mm, scorer.preprocess.cube_size))
        .transpose()?;
    // --resume: keep the earlier rows of patches still among the inputs, skip those patches.
    let previous = match &plan.out {
        Some(Target::File(p)) if s.resume && p.is_file() => Some(previous_rows(
            s,
            p,
            &inputs,
            &scorer,
            &header,
            cal.as_ref(),
            feats.as_ref(),
            grid.as_ref(),
        )?),
        _ => None,
    };
    let done = previous.as_ref().map(|p| &p.done);
    let todo: Vec<&Item> = inputs
        .items
        .iter()
        .filter(|it| done.is_none_or(|d| !d.contains(&it.name)))
        .collect();
    let mut out = open_output(s, plan.out.as_ref(), previous.as_ref(), &header)?;
    let mut tally = Tally::default();
    for (name, why) in &inputs.refused {
        tally.fail(name, Path::new(name), why.clone());
    }
    let pb = progress_bar(s.progress, todo.len());
    let sha = scorer.model_sha256.clone();
    let scoring = Scoring {
        feed: inputs.scans.as_ref().zip(grid).map(|(set, grid)| crate::from_scans::Feed {
            set,
            grid,
            pre: scorer.preprocess.clone(),
            batch: s.batch_size,
            jobs: scan_jobs(s.scan_jobs),
            preload: s.preload,
        }),
        s,
        feats: feats.as_ref(),
        cal: cal.as_ref(),
        has_label: inputs.has_label,
        sha: &sha,
        pb: &pb,
    };
    let result = score_all(&todo, &mut scorer, &scoring, &mut out, &mut tally);
    pb.finish_and_clear();
    // On an error the output is dropped: nothing half-written replaces anything.
    result?;
    out.commit()?;
    let errors_file = write_errors(&tally.errors, name_col, plan.errors.as_ref())?;
    let rows = tally.scored + previous.as_ref().map_or(0, |p| p.done.len());
    let done = Done {
        rows,
        failed: tally.errors.len(),
        header: &header,
        sha: &sha,
        cal: cal.is_some(),
    };
    write_records(s, held_out.as_ref(), part, &done)?;
    Ok(summarize(s, &scorer, &tally, previous.as_ref(), cal.as_ref(), errors_file, inputs.notes.clone(), t0))
}

/// The progress bar of a run over `n` patches (hidden unless `show`).
fn progress_bar(show: bool, n: usize) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(n as u64);
    pb.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} patches  {per_sec}  ETA {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    pb
}

/// What a finished run wrote, for the records beside its output.
struct Done<'a> {
    /// Rows in the output (scored now and kept by --resume).
    rows: usize,
    failed: usize,
    header: &'a [&'a str],
    sha: &'a str,
    /// Whether the rows are calibrated.
    cal: bool,
}

/// The records beside a finished output: the fold's (`--held-out`) and the shard's
/// (`--shard`), which `infer merge` checks.
fn write_records(
    s: &Settings,
    held_out: Option<&crate::folds::HeldOut>,
    part: Option<(crate::shard::Shard, (usize, usize, usize, String))>,
    d: &Done,
) -> Result<(), InferError> {
    let calibration = match (&s.calibration, d.cal) {
        (Some(p), _) => files::sha256_file(p)?,
        (None, true) => "model".into(),
        (None, false) => "none".into(),
    };
    let format: &'static str = s.format.into();
    let tta: &'static str = s.tta.into();
    let header: Vec<String> = d.header.iter().map(|h| h.to_string()).collect();
    if let Some(h) = held_out {
        crate::folds::write_record(
            &s.out,
            &crate::folds::Record {
                fold: h.fold,
                folds: h.folds,
                cv_sha256: h.cv_sha256.clone(),
                series: h.series.iter().cloned().collect(),
                candidates_sha256: files::sha256_file(s.candidates.as_deref().unwrap_or(Path::new("")))?,
                rows: d.rows,
                failed: d.failed,
                model_sha256: d.sha.to_string(),
                calibration: calibration.clone(),
                format: format.into(),
                header: header.clone(),
                tta: tta.into(),
                output_sha256: files::sha256_file(&s.out)?,
            },
        )?;
    }
    if let Some((sh, (first, end, n, inputs_sha256))) = part {
        crate::shard::write_record(
            &s.out,
            &crate::shard::Record {
                shard: sh.k,
                of: sh.n,
                inputs: n,
                inputs_sha256,
                first,
                end,
                rows: d.rows,
                failed: d.failed,
                model_sha256: d.sha.to_string(),
                calibration,
                format: format.into(),
                header,
                output_sha256: files::sha256_file(&s.out)?,
                tta: tta.into(),
            },
        )?;
    }
    Ok(())
}

/// `--resume`: the earlier output's rows to keep. A row is kept only for the same input: its
/// patch file (or, from scans, its cube cut from the scan now) still gives the digest the
/// row records; another file of the same name, or a scan changed since, is scored again.
#[allow(clippy::too_many_arguments)]
fn previous_rows(
    s: &Settings,
    p: &Path,
    inputs: &Inputs,
    scorer: &Scorer,
    header: &[&str],
    cal: Option<&Cal>,
    feats: Option<&HashMap<String, Vec<f32>>>,
    grid: Option<&scans::resample::PatchGrid>,
) -> Result<crate::resume::Previous, InferError> {
    let items: HashMap<&str, &Path> = inputs
        .items
        .iter()
        .map(|it| (it.name.as_str(), it.path.as_path()))
        .collect();
    let pre = scorer.preprocess.clone();
    let wanted = |name: &str| items.contains_key(name);
    let read = |same: &(dyn Fn(&str, &str) -> bool + Sync)| {
        crate::resume::read_previous(p, s.format, header, &scorer.model_sha256, cal, &wanted, same)
    };
    let with_feats = |name: &str, d: &str| input_digest(d, s.tta, feats.and_then(|m| m.get(name)).map(Vec::as_slice));
    if let (Some(set), Some(grid)) = (&inputs.scans, grid) {
        // First the names the output holds, then their cubes cut again, scan by scan.
        let named = std::sync::Mutex::new(std::collections::HashSet::new());
        read(&|name: &str, _: &str| {
            named
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(name.to_string());
            false
        })?;
        let names = named.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = crate::from_scans::digests_now(&names, &inputs.items, set, grid, &pre);
        return read(&|name: &str, digest: &str| now.get(name).is_some_and(|d| with_feats(name, d) == digest));
    }
    // A kept row must be of the same input: its file still gives the digest the row records
    // (a file of the same name with other contents is scored again).
    read(&|name: &str, digest: &str| {
        let mut scratch = vec![0f32; pre.cube_size.pow(3)];
        items.get(name).is_some_and(|f| {
            models::patch::load_patch_hashed(f, &pre, &mut scratch).is_ok_and(|d| with_feats(name, &d) == digest)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flips_are_the_eight_distinct_mirrors() {
        let c = Array3::from_shape_fn((2, 3, 4), |(z, y, x)| (z * 100 + y * 10 + x) as f32);
        let f = flips(c.view());
        assert_eq!(f.len(), 8);
        assert_eq!(f[0], c);
        assert_eq!(f[1][[0, 0, 0]], c[[1, 0, 0]]);
        assert_eq!(f[7][[0, 0, 0]], c[[1, 2, 3]]);
        for i in 0..8 {
            for j in 0..i {
                assert_ne!(f[i], f[j], "flip {i} equals flip {j}");
            }
        }
    }
}
