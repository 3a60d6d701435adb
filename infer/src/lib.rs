//! Batch scoring of CT patch cubes with an exported ONNX model, through ONNX Runtime.
//!
//! Never links libtorch: a scoring host has ONNX Runtime only, loaded at run time (see
//! [`runtime`]). Preprocessing is read from the model's `metadata_props`
//! ([`models::preprocess::Preprocess::from_metadata`]), never re-typed by the user. The
//! [`Scorer`] is also what `trainer` uses for its export parity check and what
//! `calibrate` will use to score labelled folders.
#![warn(clippy::unwrap_used)]

pub mod runtime;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use ndarray::Array3;
use ort::ep::{self, ExecutionProvider};
use ort::session::Session;
use ort::value::TensorRef;
use rayon::prelude::*;

use models::calibration::{sigmoid, CalibrationFile};
use models::preprocess::Preprocess;

/// Errors of the infer library.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    #[error("{0}")]
    Runtime(String),
    #[error("{path}: {msg}")]
    Model { path: PathBuf, msg: String },
    #[error("device: {0}")]
    Device(String),
    #[error("{path}: {msg}")]
    Input { path: PathBuf, msg: String },
    #[error(transparent)]
    Models(#[from] models::Error),
}

/// Where to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// CUDA when ONNX Runtime can register it, else CPU; says which.
    Auto,
    Cpu,
    /// CUDA device N; an error when the CUDA provider cannot be registered.
    Cuda(i32),
}

impl std::str::FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Device::Auto),
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            other => match other.strip_prefix("cuda:").map(str::parse::<i32>) {
                Some(Ok(n)) if n >= 0 => Ok(Device::Cuda(n)),
                _ => Err(format!("unknown device `{other}` (expected auto, cpu, cuda or cuda:N)")),
            },
        }
    }
}

/// How to open a [`Scorer`].
#[derive(Debug, Clone)]
pub struct ScorerOptions {
    pub device: Device,
    /// Intra-op threads (0: ONNX Runtime's default).
    pub threads: usize,
    /// Explicit path of libonnxruntime.
    pub ort_lib: Option<PathBuf>,
}

impl Default for ScorerOptions {
    fn default() -> Self {
        ScorerOptions {
            device: Device::Auto,
            threads: 0,
            ort_lib: None,
        }
    }
}

/// An ONNX model opened in ONNX Runtime with its preprocessing.
pub struct Scorer {
    session: Session,
    pub model_path: PathBuf,
    pub model_sha256: String,
    pub preprocess: Preprocess,
    pub metadata: BTreeMap<String, String>,
    /// The execution provider the session runs on.
    pub provider: &'static str,
    /// Why that provider (for `--device auto`).
    pub provider_note: String,
    pub runtime: &'static runtime::Runtime,
}

impl Scorer {
    /// Opens `model`: checks that it is an ONNX model exported by this toolchain, reads its
    /// preprocessing, and creates a session on the requested device.
    pub fn open(model: &Path, opts: &ScorerOptions) -> Result<Self, InferError> {
        let bytes = std::fs::read(model).map_err(|e| models::Error::io(model, e))?;
        let proto = models::onnx::parse_model(&bytes, model)?;
        let metadata = models::onnx::metadata(&proto);
        let preprocess = Preprocess::from_metadata(&metadata).map_err(|e| InferError::Model {
            path: model.to_path_buf(),
            msg: e.to_string(),
        })?;
        let rt = runtime::init(opts.ort_lib.as_deref())?;
        let model_err = |e: ort::Error| InferError::Model {
            path: model.to_path_buf(),
            msg: format!("ONNX Runtime cannot load it: {e}"),
        };
        let builder = || -> Result<ort::session::builder::SessionBuilder, InferError> {
            let b = Session::builder(&rt.env).map_err(model_err)?;
            if opts.threads > 0 {
                return b.with_intra_threads(opts.threads).map_err(|e| model_err(e.into()));
            }
            Ok(b)
        };
        let cuda = |id: i32| ep::CUDA::default().with_device_id(id).build().error_on_failure();
        let (session, provider, provider_note) = match opts.device {
            Device::Cpu => (
                builder()?.commit_from_memory(&bytes).map_err(model_err)?,
                "CPUExecutionProvider",
                "requested".to_string(),
            ),
            Device::Cuda(id) => {
                let preload = runtime::preload_cuda_libraries(rt);
                let mut b = builder()?.with_execution_providers([cuda(id)]).map_err(|e| {
                    InferError::Device(format!(
                        "CUDA device {id} requested but the CUDA execution provider cannot be registered: {e}. {}{}",
                        cuda_hint(rt),
                        preload.err().map(|p| format!(" ({p})")).unwrap_or_default()
                    ))
                })?;
                (
                    b.commit_from_memory(&bytes).map_err(model_err)?,
                    "CUDAExecutionProvider",
                    format!("requested (device {id})"),
                )
            }
            Device::Auto => {
                let compiled = ep::CUDA::is_available().unwrap_or(false);
                let attempt = if compiled {
                    // Failing to preload is not fatal here: the libraries may be on the
                    // loader path anyway; registration below says whether CUDA works.
                    let _ = runtime::preload_cuda_libraries(rt);
                    builder()?
                        .with_execution_providers([cuda(0)])
                        .map_err(|e| e.to_string())
                } else {
                    Err(String::new())
                };
                match attempt {
                    Ok(mut b) => (
                        b.commit_from_memory(&bytes).map_err(model_err)?,
                        "CUDAExecutionProvider",
                        "auto: CUDA provider registered".to_string(),
                    ),
                    Err(why) => {
                        let note = if compiled {
                            format!("auto: CUDA provider failed to register ({why}); using CPU")
                        } else {
                            "auto: this ONNX Runtime build has no CUDA provider; using CPU".to_string()
                        };
                        (
                            builder()?.commit_from_memory(&bytes).map_err(model_err)?,
                            "CPUExecutionProvider",
                            note,
                        )
                    }
                }
            }
        };
        let n_in = session.inputs().len();
        // A calibrated model (calibrate's model.calibrated.onnx) has `probability` and
        // `decision` outputs beside `logit`; the scorer reads `logit`.
        let has_logit = session.outputs().iter().any(|o| o.name() == models::onnx::OUTPUT_NAME);
        if n_in != 1 || !has_logit {
            return Err(InferError::Model {
                path: model.to_path_buf(),
                msg: format!(
                    "expected one input and a `{}` output, found {n_in} input(s) and outputs {:?}",
                    models::onnx::OUTPUT_NAME,
                    session
                        .outputs()
                        .iter()
                        .map(|o| o.name().to_string())
                        .collect::<Vec<_>>()
                ),
            });
        }
        Ok(Scorer {
            session,
            model_path: model.to_path_buf(),
            model_sha256: models::fsutil::sha256_bytes(&bytes),
            preprocess,
            metadata,
            provider,
            provider_note,
            runtime: rt,
        })
    }

    /// Scores preprocessed cubes (each `cube_size³`), returning one logit per cube.
    ///
    /// # Shapes
    /// `cubes[i]`: `[D, D, D]` → input `[N, 1, D, D, D]` → output `[N, 1]`.
    pub fn score(&mut self, cubes: &[Array3<f32>]) -> Result<Vec<f32>, InferError> {
        if cubes.is_empty() {
            return Ok(Vec::new());
        }
        let d = self.preprocess.cube_size;
        let mut data: Vec<f32> = Vec::with_capacity(cubes.len() * d * d * d);
        for c in cubes {
            if c.shape() != [d, d, d] {
                return Err(InferError::Model {
                    path: self.model_path.clone(),
                    msg: format!("cube of shape {:?} given, model takes {d}³", c.shape()),
                });
            }
            data.extend(c.iter());
        }
        let input = TensorRef::from_array_view(([cubes.len(), 1, d, d, d], data.as_slice()))
            .map_err(|e| InferError::Runtime(format!("input tensor: {e}")))?;
        let outputs = self
            .session
            .run(ort::inputs![input])
            .map_err(|e| InferError::Runtime(format!("{}: inference failed: {e}", self.model_path.display())))?;
        let (shape, logits) = outputs[models::onnx::OUTPUT_NAME]
            .try_extract_tensor::<f32>()
            .map_err(|e| InferError::Runtime(format!("output tensor: {e}")))?;
        if logits.len() != cubes.len() {
            return Err(InferError::Model {
                path: self.model_path.clone(),
                msg: format!("output of shape {shape:?} for {} inputs", cubes.len()),
            });
        }
        Ok(logits.to_vec())
    }
}

fn cuda_hint(rt: &runtime::Runtime) -> String {
    let compiled = ep::CUDA::is_available().unwrap_or(false);
    if compiled {
        "The ONNX Runtime build has the CUDA provider, so a library it needs is missing or the driver is unusable: \
         check `nvidia-smi`, and that CUDA 13 runtime, cuBLAS and cuDNN 9 libraries are on the loader path"
            .to_string()
    } else {
        format!(
            "The ONNX Runtime at {} (version {}) is a CPU-only build: install onnxruntime-gpu (scripts/setup --cuda) or point --ort-lib at a GPU build",
            rt.library.display(),
            rt.version
        )
    }
}

/// One patch to score: its path, the name it gets in the output, and its index row when
/// the inputs came from an index CSV.
#[derive(Debug, Clone)]
pub struct Item {
    pub path: PathBuf,
    pub name: String,
    pub row: Option<models::index::ScoringRow>,
}

/// Every `.npy` under the inputs (folders are listed, not recursed), in a stable order,
/// with the name each gets in the output. An empty folder is an error.
pub fn collect_inputs(inputs: &[PathBuf]) -> Result<Vec<Item>, InferError> {
    let mut out = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(input)
                .map_err(|e| models::Error::io(input, e))?
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "npy"))
                .collect();
            files.sort();
            if files.is_empty() {
                return Err(InferError::Input {
                    path: input.clone(),
                    msg: "no .npy files in this folder".into(),
                });
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
        } else if input.is_file() {
            out.push(Item {
                path: input.clone(),
                name: input.to_string_lossy().into_owned(),
                row: None,
            });
        } else {
            return Err(InferError::Input {
                path: input.clone(),
                msg: "no such file or folder".into(),
            });
        }
    }
    Ok(out)
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

/// A batch scoring run.
#[derive(Debug, Clone)]
pub struct Settings {
    pub model: PathBuf,
    pub calibration: Option<PathBuf>,
    /// Folders or files; ignored when `index` is given.
    pub inputs: Vec<PathBuf>,
    /// Index CSV (or a folder holding `patch_index.csv`) listing the patches to score.
    pub index: Option<PathBuf>,
    /// Output file; `-` for stdout.
    pub out: PathBuf,
    pub format: Format,
    pub batch_size: usize,
    pub scorer: ScorerOptions,
    pub fail_fast: bool,
    /// Apply a calibration even if it was fitted for another model (warns).
    pub force_calibration: bool,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct Summary {
    pub scored: usize,
    pub failed: usize,
    pub predicted_positive: Option<usize>,
    pub provider: &'static str,
    pub provider_note: String,
    pub ort_version: String,
    pub ort_library: PathBuf,
    pub seconds: f64,
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

/// LUNA16 submission row.
#[derive(serde::Serialize)]
struct Luna16Row<'a> {
    seriesuid: &'a str,
    #[serde(rename = "coordX")]
    coord_x: f64,
    #[serde(rename = "coordY")]
    coord_y: f64,
    #[serde(rename = "coordZ")]
    coord_z: f64,
    probability: f64,
}

/// Scores every input and writes the output atomically. Bad files are reported on stderr as
/// `path: reason` and skipped, the good rows are still written, and [`Summary::failed`]
/// counts them (the binary then exits non-zero); `fail_fast` stops at the first bad file,
/// writing nothing.
pub fn run(s: &Settings) -> Result<Summary, InferError> {
    let t0 = Instant::now();
    if s.batch_size == 0 {
        return Err(InferError::Input {
            path: s.model.clone(),
            msg: "--batch-size must be at least 1".into(),
        });
    }
    let (items, has_label) = match &s.index {
        Some(idx) => collect_index(idx)?,
        None => (collect_inputs(&s.inputs)?, false),
    };
    if s.format == Format::Luna16 && s.index.is_none() {
        return Err(InferError::Input {
            path: s.out.clone(),
            msg: "--format luna16 needs --index: the submission format carries each patch's seriesuid and world coordinates".into(),
        });
    }
    let mut scorer = Scorer::open(&s.model, &s.scorer)?;
    let cal = match &s.calibration {
        Some(p) => {
            let c = CalibrationFile::load(p)?;
            if s.force_calibration {
                if let Err(e) = c.check_model(p, &s.model, &scorer.model_sha256) {
                    eprintln!("infer: warning: --force-calibration: applying it anyway: {e}");
                }
            } else {
                c.check_model(p, &s.model, &scorer.model_sha256)?;
            }
            Some(c)
        }
        None => None,
    };
    let pre = scorer.preprocess.clone();
    let mut scored: Vec<(&Item, f32)> = Vec::with_capacity(items.len());
    let mut failed = 0;
    for chunk in items.chunks(s.batch_size) {
        // Decode and preprocess in parallel; the session scores the batch.
        let loaded: Vec<_> = chunk
            .par_iter()
            .map(|it| models::patch::load_patch(&it.path, &pre))
            .collect();
        let mut cubes = Vec::with_capacity(chunk.len());
        let mut good = Vec::with_capacity(chunk.len());
        for (it, r) in chunk.iter().zip(loaded) {
            match r {
                Ok(c) => {
                    cubes.push(c);
                    good.push(it);
                }
                Err(e) => {
                    if s.fail_fast {
                        return Err(e.into());
                    }
                    eprintln!("{e}");
                    failed += 1;
                }
            }
        }
        let logits = scorer.score(&cubes)?;
        scored.extend(good.into_iter().zip(logits));
    }
    let op = cal.as_ref().and_then(|c| c.operating_point());
    let mut positives = 0;
    let sha = scorer.model_sha256.clone();
    let rows: Vec<OutRow> = scored
        .iter()
        .map(|(it, logit)| {
            let z = f64::from(*logit);
            let decision = op.map(|op| u8::from(z >= op.threshold_logit));
            positives += usize::from(decision.unwrap_or(0));
            let r = it.row.as_ref();
            OutRow {
                patch_file: &it.name,
                seriesuid: r.map(|r| r.seriesuid.as_str()),
                diam_mm: r.map(|r| r.diam_mm),
                center_x: r.map(|r| r.center_x),
                center_y: r.map(|r| r.center_y),
                center_z: r.map(|r| r.center_z),
                label: if has_label { r.map(|r| r.label) } else { None },
                logit: *logit,
                probability: sigmoid(z),
                calibrated_probability: cal.as_ref().map(|c| c.probability(z)),
                decision,
                operating_point: op.map(|op| op.name.as_str()),
                model_sha256: &sha,
            }
        })
        .collect();
    let out_err = |msg: String| InferError::Input {
        path: s.out.clone(),
        msg,
    };
    let bytes = match s.format {
        Format::Csv => {
            let mut w = csv::Writer::from_writer(Vec::new());
            if rows.is_empty() {
                // serde writes the header with the first row; an empty result still gets one.
                w.write_record(["patch_file", "logit", "probability", "model_sha256"])
                    .map_err(|e| out_err(e.to_string()))?;
            }
            for r in &rows {
                w.serialize(r).map_err(|e| out_err(e.to_string()))?;
            }
            w.into_inner().map_err(|e| out_err(e.to_string()))?
        }
        Format::Jsonl => {
            let mut buf = Vec::new();
            for r in &rows {
                serde_json::to_writer(&mut buf, r).map_err(|e| out_err(e.to_string()))?;
                buf.push(b'\n');
            }
            buf
        }
        Format::Luna16 => {
            let mut w = csv::Writer::from_writer(Vec::new());
            w.write_record(["seriesuid", "coordX", "coordY", "coordZ", "probability"])
                .map_err(|e| out_err(e.to_string()))?;
            w.flush().map_err(|e| out_err(e.to_string()))?;
            let mut w = csv::WriterBuilder::new()
                .has_headers(false)
                .from_writer(w.into_inner().map_err(|e| out_err(e.to_string()))?);
            for r in &rows {
                w.serialize(Luna16Row {
                    seriesuid: r.seriesuid.unwrap_or_default(),
                    coord_x: r.center_x.unwrap_or(f64::NAN),
                    coord_y: r.center_y.unwrap_or(f64::NAN),
                    coord_z: r.center_z.unwrap_or(f64::NAN),
                    probability: r.calibrated_probability.unwrap_or(r.probability),
                })
                .map_err(|e| out_err(e.to_string()))?;
            }
            w.into_inner().map_err(|e| out_err(e.to_string()))?
        }
    };
    if s.out.as_os_str() == "-" {
        std::io::stdout()
            .write_all(&bytes)
            .map_err(|e| models::Error::io("<stdout>", e))?;
    } else {
        models::fsutil::write_atomic(&s.out, &bytes)?;
    }
    Ok(Summary {
        scored: rows.len(),
        failed,
        predicted_positive: cal.as_ref().map(|_| positives),
        provider: scorer.provider,
        provider_note: scorer.provider_note.clone(),
        ort_version: scorer.runtime.version.clone(),
        ort_library: scorer.runtime.library.clone(),
        seconds: t0.elapsed().as_secs_f64(),
    })
}
