//! Scoring with an exported ONNX model through ONNX Runtime: the one piece that `infer`,
//! `calibrate --patches` and the trainer's export parity check share.
//!
//! Never links libtorch, and does not link ONNX Runtime either: the library is located and
//! loaded at run time ([`runtime`]), so the same binary runs wherever a compatible ONNX
//! Runtime (1.24 or newer) is found. A [`Scorer`] checks that the model is one of ours (its
//! preprocessing is read from the file's `metadata_props`,
//! [`models::preprocess::Preprocess::from_metadata`], never re-typed by the user), opens a
//! session on the requested device (CUDA first with CPU fallback disabled, so a partial
//! placement is reported), and scores batches laid out as the model's input.
//!
//! Reading patches and writing outputs are the callers' business: this crate holds no file
//! formats beyond the model itself.
#![warn(clippy::unwrap_used)]

pub mod runtime;
pub use runtime::ORT_LIB_HELP;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ndarray::Array3;
use ort::ep::{self, ExecutionProvider};
use ort::session::Session;
use ort::value::TensorRef;

pub use host::device::DeviceChoice as Device;
use models::preprocess::Preprocess;

/// Errors of opening and running a model.
#[derive(Debug, thiserror::Error)]
pub enum ScorerError {
    /// A setting out of range (`--threads`).
    #[error("{0}")]
    Settings(String),
    /// The ONNX Runtime library given (`--ort-lib PATH`, `ORT_DYLIB_PATH=PATH`) is not there.
    #[error("{given}: no such file")]
    NoSuchLibrary { given: String, path: PathBuf },
    /// No ONNX Runtime library in any place it is looked for (each listed in `tried`).
    #[error(
        "ONNX Runtime shared library (libonnxruntime.so) not found. Tried: {}. \
         Fix: run `scripts/setup` (installs onnxruntime==1.31.1 into .venv), or pass --ort-lib PATH, \
         or set {}=/path/to/libonnxruntime.so",
        .tried.join("; "),
        runtime::ORT_ENV
    )]
    RuntimeNotFound { tried: Vec<String> },
    /// The library was found and could not be loaded, or its environment created (`what`).
    #[error("{library}: {what}: {source}")]
    Load {
        library: PathBuf,
        what: &'static str,
        /// ort's error (loading the library, or creating the environment).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A model of ours that the scorer cannot use as one (its inputs, outputs or metadata):
    /// the file, and what is wrong.
    #[error("{path}: {msg}")]
    Model { path: PathBuf, msg: String },
    /// CUDA was asked for and its execution provider cannot be registered: the device, what
    /// to check (`hint`), and ONNX Runtime's error as the cause.
    #[error("device: CUDA device {id} requested but the CUDA execution provider cannot be registered: {source}. {hint}")]
    Cuda {
        id: usize,
        hint: String,
        #[source]
        source: ort::Error,
    },
    /// ONNX Runtime refused a step: what was being done (with the model's path where there
    /// is one), and ONNX Runtime's own error kept as the cause.
    #[error("{what}: {source}")]
    Ort {
        what: String,
        #[source]
        source: ort::Error,
    },
    #[error(transparent)]
    Models(#[from] models::Error),
}

models::errors_through_models!(ScorerError);

impl ScorerError {
    /// ONNX Runtime's error `source`, while doing `what`.
    pub fn ort(what: impl Into<String>, source: ort::Error) -> Self {
        ScorerError::Ort {
            what: what.into(),
            source,
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
    /// Let ONNX Runtime's worker threads spin between parallel sections (its own default).
    /// Off by default: infer decodes files on the same cores, and on small hosts spinning
    /// workers take the time the decoders need; on many-core hosts spinning may pay.
    pub spin: bool,
}

impl Default for ScorerOptions {
    fn default() -> Self {
        ScorerOptions {
            device: Device::Auto,
            threads: 0,
            ort_lib: None,
            spin: false,
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
    /// Whether every node runs on that provider (`Some(false)`: some fall back to CPU).
    pub all_nodes_on_provider: Option<bool>,
    pub runtime: &'static runtime::Runtime,
    /// The tabular feature columns the model takes as its second input (`features`, raw
    /// values in this order), from its metadata; `None` for a cube-only model.
    pub features: Option<Vec<String>>,
    /// [`Scorer::score`]'s batch buffer, kept between calls: a fresh one per batch is a
    /// fresh mmap (tens of MiB) with its page faults, on the scoring thread.
    batch: Vec<f32>,
    /// The batch size the model's input fixes, if it fixes one: every run gets exactly that
    /// many cubes (more are cut into runs of it, the last run padded with copies).
    pub fixed_batch: Option<usize>,
}

/// A session being opened: the runtime, the options, the model's path and bytes.
struct Opening<'a> {
    rt: &'static runtime::Runtime,
    opts: &'a ScorerOptions,
    model: &'a Path,
    bytes: &'a [u8],
}

/// A session builder's error as ONNX Runtime's plain error (without the builder it returns).
fn plain(e: ort::Error<ort::session::builder::SessionBuilder>) -> ort::Error {
    e.into()
}

/// A session, its provider, why that provider, and whether every node runs on it.
type Opened = (Session, &'static str, String, Option<bool>);

impl Opening<'_> {
    fn model_err(&self, e: ort::Error) -> ScorerError {
        ScorerError::ort(format!("{}: ONNX Runtime cannot load it", self.model.display()), e)
    }

    /// A session builder: the thread count, and no spinning unless asked (decoding runs
    /// beside the session in infer's pipeline; ONNX Runtime's worker threads must not spin
    /// on the cores the decoders need).
    fn builder(&self) -> Result<ort::session::builder::SessionBuilder, ScorerError> {
        self.ort_builder().map_err(|e| self.model_err(e))
    }

    /// [`Opening::builder`] with ONNX Runtime's own error.
    fn ort_builder(&self) -> Result<ort::session::builder::SessionBuilder, ort::Error> {
        let b = Session::builder(&self.rt.env)?
            .with_intra_op_spinning(self.opts.spin)
            .map_err(plain)?;
        if self.opts.threads > 0 {
            return b.with_intra_threads(self.opts.threads).map_err(plain);
        }
        Ok(b)
    }

    fn cpu(&self) -> Result<Session, ScorerError> {
        self.builder()?.commit_from_memory(self.bytes).map_err(|e| self.model_err(e))
    }

    /// A CUDA session, first with CPU fallback disabled: if that commits, every node runs
    /// on CUDA; if only the fallback version commits, some nodes run on the CPU.
    fn cuda(&self, id: usize) -> Result<(Session, bool), ort::Error> {
        // Device ids are parsed as u16 (host::device), so they fit ONNX Runtime's i32.
        let with_cuda = |strict: bool| -> Result<Session, ort::Error> {
            let ep = ep::CUDA::default()
                .with_device_id(i32::try_from(id).unwrap_or(i32::MAX))
                .build()
                .error_on_failure();
            let b = self.ort_builder()?.with_execution_providers([ep]).map_err(plain)?;
            let mut b = if strict {
                b.with_disable_cpu_fallback().map_err(plain)?
            } else {
                b
            };
            b.commit_from_memory(self.bytes)
        };
        match with_cuda(true) {
            Ok(s) => Ok((s, true)),
            Err(_) => Ok((with_cuda(false)?, false)),
        }
    }

    /// The session on the requested device (`auto`: CUDA when it registers, else the CPU).
    fn session(&self) -> Result<Opened, ScorerError> {
        let rt = self.rt;
        match self.opts.device {
            Device::Cpu => Ok((self.cpu()?, "CPUExecutionProvider", "requested".to_string(), Some(true))),
            Device::Cuda(id) => {
                let preload = runtime::preload_cuda_libraries(rt);
                let (s, all) = self.cuda(id).map_err(|source| ScorerError::Cuda {
                    id,
                    hint: format!(
                        "{}{}",
                        cuda_hint(rt),
                        preload.err().map(|p| format!(" ({p})")).unwrap_or_default()
                    ),
                    source,
                })?;
                Ok((s, "CUDAExecutionProvider", format!("requested (device {id})"), Some(all)))
            }
            Device::Auto => {
                let compiled = ep::CUDA::is_available().unwrap_or(false);
                let attempt = compiled.then(|| {
                    // Failing to preload is not fatal here: the libraries may be on the
                    // loader path anyway; registration says whether CUDA works.
                    let _ = runtime::preload_cuda_libraries(rt);
                    self.cuda(0)
                });
                let note = match attempt {
                    Some(Ok((s, all))) => {
                        return Ok((
                            s,
                            "CUDAExecutionProvider",
                            "auto: CUDA provider registered".to_string(),
                            Some(all),
                        ))
                    }
                    Some(Err(why)) => format!("auto: CUDA provider failed to register ({why}); using CPU"),
                    None => "auto: this ONNX Runtime build has no CUDA provider; using CPU".to_string(),
                };
                Ok((self.cpu()?, "CPUExecutionProvider", note, Some(true)))
            }
        }
    }
}

/// Checks a session's inputs and outputs against the model's metadata: one cube input (and
/// a `features` input exactly when the metadata names tabular features) and a `logit`
/// output (a calibrated model has `probability` and `decision` beside it). Returns the
/// feature columns.
fn check_io(
    session: &Session,
    model: &Path,
    metadata: &std::collections::BTreeMap<String, String>,
) -> Result<Option<Vec<String>>, ScorerError> {
    let bad = |msg: String| ScorerError::Model {
        path: model.to_path_buf(),
        msg,
    };
    let n_in = session.inputs().len();
    let has_logit = session.outputs().iter().any(|o| o.name() == models::onnx::OUTPUT_NAME);
    let features = models::features::FeatureStats::columns_from_metadata(metadata).map_err(|e| bad(e.to_string()))?;
    let feature_input = session.inputs().iter().any(|i| i.name() == models::onnx::FEATURES_NAME);
    if features.is_some() != feature_input {
        return Err(bad(format!(
            "its metadata {} tabular features but its graph {} a `{}` input",
            if features.is_some() { "names" } else { "names no" },
            if feature_input { "has" } else { "has no" },
            models::onnx::FEATURES_NAME
        )));
    }
    if n_in != 1 + usize::from(feature_input) || !has_logit {
        return Err(bad(format!(
            "expected one input (two with tabular features) and a `{}` output, found {n_in} input(s) and outputs [{}]",
            models::onnx::OUTPUT_NAME,
            session
                .outputs()
                .iter()
                .map(|o| o.name().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(features)
}

/// A batch size the cube input fixes (an imported `torch.onnx.export` model without dynamic
/// axes): batches are then cut or padded to it; more than [`MAX_FIXED_BATCH`] is refused.
fn fixed_batch(session: &Session, model: &Path) -> Result<Option<usize>, ScorerError> {
    let fixed = session
        .inputs()
        .iter()
        .find(|i| i.name() != models::onnx::FEATURES_NAME)
        .and_then(|i| match i.dtype() {
            ort::value::ValueType::Tensor { shape, .. } => shape.first().copied().filter(|&b| b > 0),
            _ => None,
        })
        .map(|b| b as usize);
    if let Some(b) = fixed.filter(|&b| b > MAX_FIXED_BATCH) {
        return Err(ScorerError::Model {
            path: model.to_path_buf(),
            msg: format!(
                "its input fixes a batch of {b} cubes (at most {MAX_FIXED_BATCH} are scored per run); re-export it \
                 with a dynamic batch"
            ),
        });
    }
    Ok(fixed)
}

impl Scorer {
    /// Opens `model`: checks that it is an ONNX model exported by this toolchain, reads its
    /// preprocessing, and creates a session on the requested device.
    pub fn open(model: &Path, opts: &ScorerOptions) -> Result<Self, ScorerError> {
        host::check_threads("--threads", opts.threads).map_err(ScorerError::Settings)?;
        let bytes = files::read_regular(model)?;
        let proto = models::onnx::parse_model(&bytes, model)?;
        let metadata = models::onnx::metadata(&proto);
        let preprocess = Preprocess::from_metadata(&metadata).map_err(|e| ScorerError::Model {
            path: model.to_path_buf(),
            msg: e.to_string(),
        })?;
        let rt = runtime::init(opts.ort_lib.as_deref())?;
        let open = Opening {
            rt,
            opts,
            model,
            bytes: &bytes,
        };
        let (session, provider, provider_note, all_nodes) = open.session()?;
        let features = check_io(&session, model, &metadata)?;
        let fixed_batch = fixed_batch(&session, model)?;
        Ok(Scorer {
            fixed_batch,
            session,
            model_path: model.to_path_buf(),
            model_sha256: files::sha256_bytes(&bytes),
            preprocess,
            metadata,
            provider,
            provider_note,
            all_nodes_on_provider: all_nodes,
            runtime: rt,
            features,
            batch: Vec::new(),
        })
    }

    /// Scores preprocessed cubes (each `cube_size³`), returning one logit per cube.
    ///
    /// # Shapes
    /// `cubes[i]`: `[D, D, D]` → input `[N, 1, D, D, D]` → output `[N, 1]`.
    pub fn score(&mut self, cubes: &[Array3<f32>]) -> Result<Vec<f32>, ScorerError> {
        self.score_with(cubes, None)
    }

    /// [`Scorer::score`] with the tabular features a model with them takes (`F` raw values
    /// per cube).
    pub fn score_with(&mut self, cubes: &[Array3<f32>], feats: Option<&[f32]>) -> Result<Vec<f32>, ScorerError> {
        let d = self.preprocess.cube_size;
        let mut data = std::mem::take(&mut self.batch);
        data.clear();
        data.reserve(cubes.len() * d * d * d);
        for c in cubes {
            if c.shape() != [d, d, d] {
                return Err(ScorerError::Model {
                    path: self.model_path.clone(),
                    msg: format!("cube of shape {:?} given, model takes {d}³", c.shape()),
                });
            }
            match c.as_slice() {
                Some(s) => data.extend_from_slice(s),
                None => data.extend(c.iter()),
            }
        }
        let out = self.score_flat_with(&data, feats);
        self.batch = data;
        out
    }

    /// Scores a batch already laid out as the model's input: `n` preprocessed cubes one
    /// after another (z, y, x order each), `data.len() = n · cube_size³`.
    pub fn score_flat(&mut self, data: &[f32]) -> Result<Vec<f32>, ScorerError> {
        self.score_flat_with(data, None)
    }

    /// [`Scorer::score_flat`] with the tabular features a model with them takes: `n · F`
    /// raw values, `F` per cube in the order of [`Scorer::features`].
    pub fn score_flat_with(&mut self, data: &[f32], feats: Option<&[f32]>) -> Result<Vec<f32>, ScorerError> {
        let Some(b) = self.fixed_batch else {
            return self.run_batch(data, feats);
        };
        let d = self.preprocess.cube_size;
        let per = d * d * d;
        let nf = self.features.as_ref().map_or(0, Vec::len);
        if per == 0 || !data.len().is_multiple_of(per) {
            return self.run_batch(data, feats);
        }
        let n = data.len() / per;
        if feats.is_some_and(|f| f.len() != n * nf) {
            // The error of a whole run says what is wrong.
            return self.run_batch(data, feats);
        }
        let mut out = Vec::with_capacity(n);
        for start in (0..n).step_by(b) {
            let k = b.min(n - start);
            let mut cubes = data[start * per..(start + k) * per].to_vec();
            let mut f = feats.map(|f| f[start * nf..(start + k) * nf].to_vec());
            // Padded with copies of the first cube of the run; their logits are dropped.
            for _ in k..b {
                cubes.extend_from_within(..per);
                if let Some(f) = f.as_mut() {
                    f.extend_from_within(..nf);
                }
            }
            let z = self.run_batch(&cubes, f.as_deref())?;
            out.extend_from_slice(&z[..k]);
        }
        Ok(out)
    }

    /// One run of the session on `data` (and `feats`).
    fn run_batch(&mut self, data: &[f32], feats: Option<&[f32]>) -> Result<Vec<f32>, ScorerError> {
        let d = self.preprocess.cube_size;
        let per = d * d * d;
        if data.is_empty() {
            return Ok(Vec::new());
        }
        if !data.len().is_multiple_of(per) {
            return Err(ScorerError::Model {
                path: self.model_path.clone(),
                msg: format!("{} values given, not a whole number of {d}³ cubes", data.len()),
            });
        }
        let n = data.len() / per;
        let nf = self.features.as_ref().map_or(0, Vec::len);
        let given = feats.map(<[f32]>::len);
        if (nf == 0 && given.is_some()) || (nf > 0 && given != Some(n * nf)) {
            return Err(ScorerError::Model {
                path: self.model_path.clone(),
                msg: match &self.features {
                    Some(c) => format!(
                        "the model takes {nf} tabular feature(s) per patch ({}); given {} value(s) for {n} patch(es) \
                         (score with --index, whose rows hold them)",
                        c.join(", "),
                        given.unwrap_or(0)
                    ),
                    None => "the model takes no tabular features, yet some were given".into(),
                },
            });
        }
        let input = TensorRef::from_array_view(([n, 1, d, d, d], data))
            .map_err(|e| ScorerError::ort("input tensor", e))?;
        let outputs = match feats {
            // A cube-only model's one input, whatever its name.
            None => self.session.run(ort::inputs![input]),
            Some(f) => {
                let t = TensorRef::from_array_view(([n, nf], f))
                    .map_err(|e| ScorerError::ort("features tensor", e))?;
                self.session
                    .run(ort::inputs![models::onnx::INPUT_NAME => input, models::onnx::FEATURES_NAME => t])
            }
        }
        .map_err(|e| ScorerError::ort(format!("{}: inference failed", self.model_path.display()), e))?;
        let (shape, logits) = outputs[models::onnx::OUTPUT_NAME]
            .try_extract_tensor::<f32>()
            .map_err(|e| ScorerError::ort("output tensor", e))?;
        if logits.len() != n {
            return Err(ScorerError::Model {
                path: self.model_path.clone(),
                msg: format!("output of shape {shape:?} for {n} inputs"),
            });
        }
        Ok(logits.to_vec())
    }
}

/// The largest batch size a model's input may fix (import refuses more, too).
pub const MAX_FIXED_BATCH: usize = 256;

/// Runs any ONNX model (`bytes`, named `path` in errors) once on the CPU: `data` as `input`
/// of `shape`, returning `output`'s shape and values. For checking a model that is not (yet)
/// one of ours, such as one being imported.
pub fn probe(
    bytes: &[u8],
    path: &Path,
    ort_lib: Option<&Path>,
    input: &str,
    output: &str,
    shape: [usize; 5],
    data: &[f32],
) -> Result<(Vec<i64>, Vec<f32>), ScorerError> {
    let rt = runtime::init(ort_lib)?;
    let model_err = |msg: String| ScorerError::Model {
        path: path.to_path_buf(),
        msg,
    };
    let mut session = Session::builder(&rt.env)
        .and_then(|mut b| b.commit_from_memory(bytes))
        .map_err(|e| ScorerError::ort(format!("{}: ONNX Runtime cannot load it", path.display()), e))?;
    let tensor =
        TensorRef::from_array_view((shape, data)).map_err(|e| ScorerError::ort("input tensor", e))?;
    let outputs = session
        .run(ort::inputs![input => tensor])
        .map_err(|e| ScorerError::ort(format!("{}: running it on a test batch failed", path.display()), e))?;
    let value = outputs
        .get(output)
        .ok_or_else(|| model_err(format!("no output `{output}`")))?;
    let (shape, values) = value
        .try_extract_tensor::<f32>()
        .map_err(|e| ScorerError::ort(format!("{}: output `{output}` is not a float tensor", path.display()), e))?;
    Ok((shape.iter().copied().collect(), values.to_vec()))
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
