//! Batch scoring: inputs → bounded decode pipeline → session → streamed, atomic output.
//!
//! A producer thread decodes and preprocesses the next batch (in parallel, rayon) straight
//! into a batch buffer laid out as the model's input, while the session scores the current
//! one; the scoring thread only runs the session and formats rows. A channel of capacity one
//! and three recycled batch buffers bound what is in flight, so peak memory does not depend
//! on the folder size. Output rows are
//! streamed to a temporary file beside the output and renamed into place at the end; the
//! order is the input order.
use std::collections::HashSet;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;
use std::time::Instant;

use ndarray::{Array3, ArrayView3, Axis};
use rayon::prelude::*;

use models::calibration::{Baked, CalibrationFile};
use models::metrics::sigmoid;

use scorer::{Scorer, ScorerOptions};

use crate::InferError;

/// One patch to score: its path, the name it gets in the output, and its index row when
/// the inputs came from an index CSV.
#[derive(Debug, Clone)]
pub struct Item {
    pub path: PathBuf,
    pub name: String,
    pub row: Option<models::index::ScoringRow>,
}

fn input_err(path: &Path, msg: impl Into<String>) -> InferError {
    InferError::Input {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// A folder entry that could not be listed: (path, reason).
pub type Unlisted = (String, String);

/// Every `.npy` under the inputs in a stable (sorted) order, with the name each gets in the
/// output, plus the entries that could not be listed (`path, reason`; a symlink loop under
/// `--recursive`, an unreadable folder). Folders are listed, or walked with `recursive`
/// (following symlinks, loops detected). A folder without patches is an error.
pub fn collect_inputs(inputs: &[PathBuf], recursive: bool) -> Result<(Vec<Item>, Vec<Unlisted>), InferError> {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let mut files = Vec::new();
            let walker = walkdir::WalkDir::new(input)
                .follow_links(true)
                .max_depth(if recursive { usize::MAX } else { 1 })
                .sort_by_file_name();
            for entry in walker {
                match entry {
                    Ok(e) if e.file_type().is_file() && e.path().extension().is_some_and(|x| x == "npy") => {
                        files.push(e.into_path())
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let p = e
                            .path()
                            .map_or_else(|| input.display().to_string(), |p| p.display().to_string());
                        let why = if e.loop_ancestor().is_some() {
                            "symlink loop".to_string()
                        } else {
                            e.to_string()
                        };
                        problems.push((p, why));
                    }
                }
            }
            if files.is_empty() {
                return Err(input_err(
                    input,
                    if recursive {
                        "no .npy files under this folder"
                    } else {
                        "no .npy files in this folder (--recursive to descend)"
                    },
                ));
            }
            // One folder: names relative to it (they match its patch_index.csv); several
            // inputs: paths as given, so two folders' equal names stay distinct.
            out.extend(files.into_iter().map(|p| {
                let name = if inputs.len() == 1 {
                    p.strip_prefix(input).unwrap_or(&p).to_string_lossy().into_owned()
                } else {
                    p.to_string_lossy().into_owned()
                };
                Item {
                    path: p,
                    name,
                    row: None,
                }
            }));
        } else if input.exists() {
            out.push(Item {
                path: input.clone(),
                name: input.to_string_lossy().into_owned(),
                row: None,
            });
        } else {
            return Err(input_err(input, "no such file or folder"));
        }
    }
    Ok((out, problems))
}

/// The rows of an index CSV as items; output rows then carry the index's columns.
pub fn collect_index(index: &Path) -> Result<(Vec<Item>, bool), InferError> {
    let (root, has_label, rows) = models::index::read_scoring_index(index)?;
    let items = rows
        .into_iter()
        .map(|r| Item {
            path: root.join(&r.patch_file),
            name: r.patch_file.clone(),
            row: Some(r),
        })
        .collect();
    Ok((items, has_label))
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One row per patch with every column.
    Csv,
    /// One JSON object per line with the same fields.
    Jsonl,
    /// LUNA16 submission format `seriesuid,coordX,coordY,coordZ,probability` (needs an
    /// index with world coordinates; probability is the calibrated one when calibrated).
    Luna16,
}

/// Test-time augmentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
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
    /// Output file; `-` for stdout.
    pub out: PathBuf,
    pub format: Format,
    /// Where failed files are listed (`patch_file,error`); default `<out>.errors.csv`.
    pub errors: Option<PathBuf>,
    /// Skip the patches an existing output already holds, and keep its rows.
    pub resume: bool,
    pub tta: Tta,
    pub batch_size: usize,
    pub scorer: ScorerOptions,
    pub fail_fast: bool,
    /// Apply a calibration even if it was fitted for another model (warns).
    pub force_calibration: bool,
    /// Show a progress bar (on a terminal).
    pub progress: bool,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct Summary {
    pub scored: usize,
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
    /// Peak resident memory of the process (Linux `VmHWM`), KiB.
    pub peak_rss_kib: Option<u64>,
}

/// The calibration a `model.calibrated.onnx` carries. Unreadable, it is an error, unless a
/// calibration file is given (`with_file`), which replaces it: then a warning.
pub(crate) fn read_baked(
    md: &std::collections::BTreeMap<String, String>,
    model: &Path,
    with_file: bool,
) -> Result<Option<Baked>, InferError> {
    match Baked::from_metadata(md, model) {
        Ok(b) => Ok(b),
        Err(e) if with_file => {
            eprintln!("infer: warning: {e}; it is ignored, the --calibration file applies");
            Ok(None)
        }
        Err(e) => Err(InferError::Calibration(format!(
            "{e} (give its calibration.yaml with --calibration, or score the model it was made from)"
        ))),
    }
}

/// Refuses calibration `c` (read from `path`) for `model` unless it was fitted for it, or for
/// the model that a `model.calibrated.onnx` was made from (`baked`): that file's `logit`
/// output is its source model's.
pub(crate) fn check_binding(
    c: &CalibrationFile,
    path: &Path,
    model: &Path,
    model_sha256: &str,
    baked: Option<&Baked>,
) -> Result<(), models::Error> {
    if baked.and_then(|b| b.source_model_sha256.as_deref()) == Some(c.model.sha256.as_str()) {
        return Ok(());
    }
    c.check_model(path, model, model_sha256)
}

/// What gives `calibrated_probability` and `decision`.
enum Cal {
    /// `--calibration FILE`.
    File(Box<CalibrationFile>),
    /// The calibration a `model.calibrated.onnx` carries in its metadata.
    Baked(Baked),
}

impl Cal {
    fn probability(&self, z: f64) -> f64 {
        match self {
            Cal::File(c) => c.probability(z),
            Cal::Baked(b) => b.probability(z),
        }
    }

    /// Name and raw-logit threshold of the operating point behind `decision`.
    fn operating_point(&self) -> Option<(&str, f64)> {
        match self {
            Cal::File(c) => c.operating_point().map(|p| (p.name.as_str(), p.threshold_logit)),
            Cal::Baked(b) => Some((b.operating_point.as_str(), b.threshold_logit)),
        }
    }

    fn describe(&self, file: Option<&Path>) -> String {
        let (from, method) = match (self, file) {
            (Cal::File(c), Some(f)) => (f.display().to_string(), c.method),
            (Cal::File(c), None) => ("the model's own".to_string(), c.method),
            (Cal::Baked(b), _) => ("the model's own".to_string(), b.method),
        };
        let op = self
            .operating_point()
            .map_or_else(String::new, |(n, t)| format!("; decision: {n}, logit >= {t:.4}"));
        format!("{from} ({}{op})", method.name())
    }
}

/// One scored patch, with every output column.
#[derive(Debug, Clone, serde::Serialize)]
struct OutRow<'a> {
    patch_file: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    seriesuid: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    diam_mm: Option<Option<f64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    center_x: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    center_y: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    center_z: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    label: Option<Option<u8>>,
    logit: f32,
    probability: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    calibrated_probability: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    decision: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    operating_point: Option<&'a str>,
    model_sha256: &'a str,
}

/// The CSV header for the rows a run writes (the order of [`OutRow`]'s fields).
fn csv_header(format: Format, index: bool, label: bool, calibrated: bool) -> Vec<&'static str> {
    if format == Format::Luna16 {
        return vec!["seriesuid", "coordX", "coordY", "coordZ", "probability"];
    }
    let mut h = vec!["patch_file"];
    if index {
        h.extend(["seriesuid", "diam_mm", "center_x", "center_y", "center_z"]);
        if label {
            h.push("label");
        }
    }
    h.extend(["logit", "probability"]);
    if calibrated {
        h.extend(["calibrated_probability", "decision", "operating_point"]);
    }
    h.push("model_sha256");
    h
}

/// Whether a kept row's calibrated columns are what `cal` gives its logit: a resumed output
/// must not mix two calibrations (the columns and the model can be the same while the
/// calibration file is another). Probabilities are written exactly, so they are compared
/// to 1e-12.
fn same_calibration(cal: &Cal, logit: Option<f64>, p: Option<f64>, decision: Option<f64>, op: Option<&str>) -> bool {
    let (Some(z), Some(p)) = (logit, p) else {
        return false;
    };
    let z = f64::from(z as f32);
    if (cal.probability(z) - p).abs() > 1e-12 {
        return false;
    }
    match cal.operating_point() {
        Some((name, threshold)) => op == Some(name) && decision == Some(f64::from(u8::from(z >= threshold))),
        None => true,
    }
}

/// Rows of an existing output, for `--resume`: the raw text to keep and the patch names.
fn read_previous(
    path: &Path,
    format: Format,
    header: &[&str],
    model_sha256: &str,
    cal: Option<&Cal>,
) -> Result<(Vec<u8>, HashSet<String>), InferError> {
    let bytes = std::fs::read(path).map_err(|e| models::Error::io(path, e))?;
    let mut done = HashSet::new();
    let other_calibration = |line: usize| {
        input_err(
            path,
            format!(
                "--resume: line {line} was calibrated otherwise than this run calibrates \
                 (another --calibration?); not mixing two in one output"
            ),
        )
    };
    match format {
        Format::Luna16 => {
            return Err(input_err(
                path,
                "--resume needs an output that names its patches (csv or jsonl, not luna16)",
            ))
        }
        Format::Csv => {
            let mut r = csv::Reader::from_reader(bytes.as_slice());
            let got: Vec<String> = r
                .headers()
                .map_err(|e| input_err(path, e.to_string()))?
                .iter()
                .map(String::from)
                .collect();
            if got != header {
                return Err(input_err(
                    path,
                    format!(
                        "--resume: its columns ({}) differ from this run's ({})",
                        got.join(","),
                        header.join(",")
                    ),
                ));
            }
            let sha_col = got.iter().position(|h| h == "model_sha256");
            let at = |name: &str| got.iter().position(|h| h == name);
            let cal_cols = (
                at("logit"),
                at("calibrated_probability"),
                at("decision"),
                at("operating_point"),
            );
            for (i, rec) in r.records().enumerate() {
                let rec =
                    rec.map_err(|e| input_err(path, format!("line {}: {e} (a damaged output; not resuming)", i + 2)))?;
                if let (Some(cal), (Some(l), Some(p), Some(d), Some(o))) = (cal, cal_cols) {
                    let num = |c: usize| rec.get(c).and_then(|v| v.parse::<f64>().ok());
                    if !same_calibration(cal, num(l), num(p), num(d), rec.get(o)) {
                        return Err(other_calibration(i + 2));
                    }
                }
                if let Some(c) = sha_col {
                    if rec.get(c) != Some(model_sha256) {
                        return Err(input_err(
                            path,
                            format!("--resume: line {} was scored by another model", i + 2),
                        ));
                    }
                }
                done.insert(rec.get(0).unwrap_or("").to_string());
            }
        }
        Format::Jsonl => {
            for (i, line) in bytes.lines().enumerate() {
                let line = line.map_err(|e| models::Error::io(path, e))?;
                let v: serde_json::Value = serde_json::from_str(&line)
                    .map_err(|e| input_err(path, format!("line {}: {e} (a damaged output; not resuming)", i + 1)))?;
                let name = v["patch_file"]
                    .as_str()
                    .ok_or_else(|| input_err(path, format!("line {}: no patch_file", i + 1)))?;
                if v["model_sha256"].as_str() != Some(model_sha256) {
                    return Err(input_err(
                        path,
                        format!("--resume: line {} was scored by another model", i + 1),
                    ));
                }
                let keys: Vec<&str> = v
                    .as_object()
                    .map(|o| o.keys().map(String::as_str).collect())
                    .unwrap_or_default();
                if header.iter().any(|h| !keys.contains(h)) {
                    return Err(input_err(
                        path,
                        format!("--resume: line {} has other fields than this run writes", i + 1),
                    ));
                }
                if let Some(cal) = cal {
                    let (l, p, d) = (
                        v["logit"].as_f64(),
                        v["calibrated_probability"].as_f64(),
                        v["decision"].as_f64(),
                    );
                    if !same_calibration(cal, l, p, d, v["operating_point"].as_str()) {
                        return Err(other_calibration(i + 1));
                    }
                }
                done.insert(name.to_string());
            }
        }
    }
    Ok((bytes, done))
}

/// Where rows go: stdout, or a temporary file renamed into place by [`Sink::finish`].
enum Sink {
    Stdout(std::io::BufWriter<std::io::Stdout>),
    File {
        tmp: tempfile::NamedTempFile,
        path: PathBuf,
    },
}

impl Sink {
    fn open(out: &Path) -> Result<Self, InferError> {
        if out.as_os_str() == "-" {
            return Ok(Sink::Stdout(std::io::BufWriter::new(std::io::stdout())));
        }
        let dir = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !dir.is_dir() {
            return Err(input_err(
                out,
                format!("the output folder {} does not exist", dir.display()),
            ));
        }
        let tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .tempfile_in(&dir)
            .map_err(|e| models::Error::io(&dir, e))?;
        Ok(Sink::File {
            tmp,
            path: out.to_path_buf(),
        })
    }

    fn finish(self) -> Result<(), InferError> {
        match self {
            Sink::Stdout(mut w) => w.flush().map_err(|e| models::Error::io("<stdout>", e).into()),
            Sink::File { tmp, path } => {
                tmp.as_file().sync_all().map_err(|e| models::Error::io(&path, e))?;
                tmp.persist(&path).map_err(|e| models::Error::io(&path, e.error))?;
                Ok(())
            }
        }
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Sink::Stdout(w) => w.write(buf),
            Sink::File { tmp, .. } => tmp.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Sink::Stdout(w) => w.flush(),
            Sink::File { tmp, .. } => tmp.flush(),
        }
    }
}

/// One batch from the decoding thread: the files that decoded, their cubes one after
/// another in `data` (the model's input layout), and the files that failed.
struct Decoded<'a> {
    good: Vec<&'a Item>,
    bad: Vec<(&'a Item, models::Error)>,
    data: Vec<f32>,
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

fn peak_rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Scores every input and writes the output atomically (streamed through a temporary
/// file). Bad files are reported on stderr as `path: reason`, listed in the errors file, and
/// skipped; the good rows are still written and [`Summary::failed`] counts the bad ones
/// (the binary then exits non-zero). `fail_fast` stops at the first bad file, writing no
/// output.
pub fn run(s: &Settings) -> Result<Summary, InferError> {
    let t0 = Instant::now();
    if s.batch_size == 0 {
        return Err(InferError::Usage("--batch-size must be at least 1".into()));
    }
    let (items, has_label, listing_problems) = match &s.index {
        Some(idx) => {
            let (items, has_label) = collect_index(idx)?;
            (items, has_label, Vec::new())
        }
        None => {
            let (items, problems) = collect_inputs(&s.inputs, s.recursive)?;
            (items, false, problems)
        }
    };
    if s.format == Format::Luna16 && s.index.is_none() {
        return Err(input_err(
            &s.out,
            "--format luna16 needs --index: the submission format carries each patch's seriesuid and world coordinates",
        ));
    }
    let mut sink = Sink::open(&s.out)?;
    let mut scorer = Scorer::open(&s.model, &s.scorer)?;
    let baked = read_baked(&scorer.metadata, &s.model, s.calibration.is_some())?;
    let cal = match &s.calibration {
        Some(p) => {
            let c = CalibrationFile::load(p)?;
            if let Err(e) = check_binding(&c, p, &s.model, &scorer.model_sha256, baked.as_ref()) {
                if !s.force_calibration {
                    return Err(e.into());
                }
                eprintln!("infer: warning: --force-calibration: applying it anyway: {e}");
            }
            if baked.as_ref().is_some_and(|b| !b.same_as(&c)) {
                eprintln!(
                    "infer: warning: {} carries its own calibration; {} is applied instead",
                    s.model.display(),
                    p.display()
                );
            }
            Some(Cal::File(Box::new(c)))
        }
        None => baked.map(Cal::Baked),
    };
    let op = cal.as_ref().and_then(Cal::operating_point);
    let header = csv_header(s.format, s.index.is_some(), has_label, cal.is_some());
    // --resume: keep the earlier rows, skip their patches.
    let (previous, done) = if s.resume && s.out.as_os_str() != "-" && s.out.is_file() {
        read_previous(&s.out, s.format, &header, &scorer.model_sha256, cal.as_ref())?
    } else {
        (Vec::new(), HashSet::new())
    };
    let resumed = done.len();
    let todo: Vec<&Item> = items.iter().filter(|it| !done.contains(&it.name)).collect();
    let io = |e: std::io::Error| InferError::from(models::Error::io(&s.out, e));
    if previous.is_empty() {
        match s.format {
            Format::Jsonl => {}
            _ => writeln!(sink, "{}", header.join(",")).map_err(io)?,
        }
    } else {
        sink.write_all(&previous).map_err(io)?;
    }
    let mut errors: Vec<(String, String)> = listing_problems;
    for (p, why) in &errors {
        eprintln!("{p}: {why}");
    }
    let pb = if s.progress {
        let pb = indicatif::ProgressBar::new(todo.len() as u64);
        pb.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} patches  {per_sec}  ETA {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        pb
    } else {
        indicatif::ProgressBar::hidden()
    };
    let pre = scorer.preprocess.clone();
    let sha = scorer.model_sha256.clone();
    let (mut scored, mut positives) = (0usize, 0usize);
    let batch = s.batch_size;
    let mut fatal: Option<InferError> = None;
    let (mut pipeline_seconds, mut model_seconds) = (0.0f64, 0.0f64);
    let d = pre.cube_size;
    let per = d * d * d;
    std::thread::scope(|scope| {
        let (tx, rx) = sync_channel::<Decoded>(1);
        // Buffers the scoring thread is done with come back: no fresh tens of MiB (and their
        // page faults) per batch.
        let (back_tx, back_rx) = std::sync::mpsc::channel::<Vec<f32>>();
        scope.spawn(move || {
            for chunk in todo.chunks(batch) {
                let mut data = back_rx.try_recv().unwrap_or_default();
                data.resize(chunk.len() * per, 0.0);
                let results: Vec<Result<(), models::Error>> = data
                    .par_chunks_mut(per)
                    .zip(chunk.par_iter())
                    .map(|(slot, it)| models::patch::load_patch_into(&it.path, &pre, slot))
                    .collect();
                // The good cubes close ranks (this moves data only when a file failed).
                let (mut good, mut bad) = (Vec::with_capacity(chunk.len()), Vec::new());
                for (k, (it, r)) in chunk.iter().zip(results).enumerate() {
                    match r {
                        Ok(()) => {
                            if good.len() != k {
                                data.copy_within(k * per..(k + 1) * per, good.len() * per);
                            }
                            good.push(*it);
                        }
                        Err(e) => bad.push((*it, e)),
                    }
                }
                data.truncate(good.len() * per);
                if tx.send(Decoded { good, bad, data }).is_err() {
                    break; // the consumer stopped (fail-fast or an error)
                }
            }
        });
        let t_pipeline = Instant::now();
        for dec in rx {
            let mut w = csv::WriterBuilder::new().has_headers(false).from_writer(Vec::new());
            let good = dec.good;
            for (it, e) in dec.bad {
                if s.fail_fast {
                    fatal = Some(e.into());
                    return;
                }
                eprintln!("{e}");
                let msg = e.to_string();
                let reason = msg
                    .strip_prefix(&format!("{}: ", it.path.display()))
                    .unwrap_or(&msg)
                    .to_string();
                errors.push((it.name.clone(), reason));
            }
            let t_model = Instant::now();
            let logits = match s.tta {
                Tta::None => scorer.score_flat(&dec.data),
                Tta::Flips => {
                    let all: Vec<Array3<f32>> = dec
                        .data
                        .chunks_exact(per)
                        .filter_map(|c| ArrayView3::from_shape((d, d, d), c).ok())
                        .flat_map(flips)
                        .collect();
                    scorer
                        .score(&all)
                        .map(|z| z.chunks(8).map(|c| c.iter().sum::<f32>() / 8.0).collect())
                }
            };
            model_seconds += t_model.elapsed().as_secs_f64();
            let logits = match logits {
                Ok(l) => l,
                Err(e) => {
                    fatal = Some(e.into());
                    return;
                }
            };
            for (it, logit) in good.iter().zip(logits) {
                let z = f64::from(logit);
                let decision = op.map(|(_, threshold)| u8::from(z >= threshold));
                positives += usize::from(decision.unwrap_or(0));
                let r = it.row.as_ref();
                let row = OutRow {
                    patch_file: &it.name,
                    seriesuid: r.map(|r| r.seriesuid.as_str()),
                    diam_mm: r.map(|r| r.diam_mm),
                    center_x: r.map(|r| r.center_x),
                    center_y: r.map(|r| r.center_y),
                    center_z: r.map(|r| r.center_z),
                    label: if has_label { r.map(|r| r.label) } else { None },
                    logit,
                    probability: sigmoid(z),
                    calibrated_probability: cal.as_ref().map(|c| c.probability(z)),
                    decision,
                    operating_point: op.map(|(name, _)| name),
                    model_sha256: &sha,
                };
                let res = match s.format {
                    Format::Csv => w.serialize(&row).map_err(|e| e.to_string()),
                    Format::Jsonl => serde_json::to_writer(&mut sink, &row)
                        .map_err(|e| e.to_string())
                        .and_then(|()| sink.write_all(b"\n").map_err(|e| e.to_string())),
                    Format::Luna16 => w
                        .serialize((
                            row.seriesuid.unwrap_or_default(),
                            row.center_x.unwrap_or(f64::NAN),
                            row.center_y.unwrap_or(f64::NAN),
                            row.center_z.unwrap_or(f64::NAN),
                            row.calibrated_probability.unwrap_or(row.probability),
                        ))
                        .map_err(|e| e.to_string()),
                };
                if let Err(e) = res {
                    fatal = Some(input_err(&s.out, e));
                    return;
                }
                scored += 1;
            }
            // Move this batch's CSV text to the sink; memory stays at one batch.
            let text = match w.into_inner() {
                Ok(t) => t,
                Err(e) => {
                    fatal = Some(input_err(&s.out, e.to_string()));
                    return;
                }
            };
            if let Err(e) = sink.write_all(&text).map_err(io) {
                fatal = Some(e);
                return;
            }
            pb.inc(good.len() as u64);
            let _ = back_tx.send(dec.data);
        }
        pipeline_seconds = t_pipeline.elapsed().as_secs_f64();
    });
    pb.finish_and_clear();
    if let Some(e) = fatal {
        return Err(e); // the temporary output is dropped: nothing half-written remains
    }
    sink.finish()?;
    let errors_path = s.errors.clone().or_else(|| {
        (s.out.as_os_str() != "-").then(|| {
            let mut p = s.out.clone().into_os_string();
            p.push(".errors.csv");
            PathBuf::from(p)
        })
    });
    let errors_file = if errors.is_empty() {
        // A clean run leaves no errors file from an earlier one behind.
        if let Some(p) = errors_path.as_ref().filter(|p| p.is_file()) {
            std::fs::remove_file(p).map_err(|e| models::Error::io(p, e))?;
        }
        None
    } else {
        let path = errors_path;
        if let Some(p) = &path {
            let mut w = csv::Writer::from_writer(Vec::new());
            w.write_record(["patch_file", "error"])
                .map_err(|e| input_err(p, e.to_string()))?;
            for (f, why) in &errors {
                w.write_record([f, why]).map_err(|e| input_err(p, e.to_string()))?;
            }
            models::fsutil::write_atomic(p, &w.into_inner().map_err(|e| input_err(p, e.to_string()))?)?;
        }
        path
    };
    Ok(Summary {
        scored,
        resumed,
        failed: errors.len(),
        errors_file,
        predicted_positive: cal.as_ref().map(|_| positives),
        calibration: cal.as_ref().map(|c| c.describe(s.calibration.as_deref())),
        provider: scorer.provider,
        provider_note: scorer.provider_note.clone(),
        all_nodes_on_provider: scorer.all_nodes_on_provider,
        ort_version: scorer.runtime.version.clone(),
        ort_library: scorer.runtime.library.clone(),
        seconds: t0.elapsed().as_secs_f64(),
        pipeline_seconds,
        model_seconds,
        peak_rss_kib: peak_rss_kib(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_baked_calibration_errs_unless_a_file_replaces_it() {
        let m = Path::new("m.calibrated.onnx");
        let md: std::collections::BTreeMap<String, String> =
            [("calibration.method".to_string(), "sigmoid".to_string())]
                .into_iter()
                .collect();
        let e = read_baked(&md, m, false).expect_err("no file").to_string();
        assert!(e.contains("m.calibrated.onnx") && e.contains("--calibration"), "{e}");
        assert_eq!(read_baked(&md, m, true).expect("replaced"), None);
        assert_eq!(read_baked(&Default::default(), m, false).expect("none"), None);
    }

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

    #[test]
    fn header_follows_the_row_fields() {
        assert_eq!(
            csv_header(Format::Csv, false, false, false),
            ["patch_file", "logit", "probability", "model_sha256"]
        );
        assert_eq!(csv_header(Format::Csv, true, true, true).len(), 13);
    }
}
