//! `infer import`: any ONNX binary classifier of CT cubes made into a model our tools score,
//! calibrate and bundle.
//!
//! What is taken: one float input `[N, 1, D, D, D]` (any name; sizes fixed or symbolic) and
//! one output `[N, 1]` or `[N]` (any name; `--output` picks one of several) that the user
//! declares a logit or a probability.
//! What is made: the same file, edited at the protobuf wire level so that everything it
//! holds is kept byte for byte ([`models::onnx::wire`]), with
//! * a `logit` output `[batch, 1]`: the declared output reshaped, or for a probability its
//!   log-odds `log(p) − log(1 − p)` with `p` clipped to `[2⁻²⁴, 1 − 2⁻²⁴]` — a float32
//!   probability rounds to 0 or 1 beyond |logit| ≈ 16.6, so the derived logit saturates
//!   there and the ranking among near-certain patches is lost;
//! * the graph's other outputs dropped, and any value the source already called `logit`,
//!   `probability` or `decision` renamed (`source.NAME`), so calibrate can append its own;
//! * our metadata: the preprocessing (from flags, or copied from a model of ours with
//!   `--like`), the source's file name and sha256, what was declared.
//!
//! Before the file is written, the source runs in ONNX Runtime on a test batch (its output's
//! shape and, for a probability, its range are checked), and so does the imported model,
//! whose logits must equal the source's (or their log-odds).
use std::path::{Path, PathBuf};

use models::onnx::wire::rewrite;
use models::preprocess::Preprocess;

use crate::InferError;

mod plan;
mod source;

use plan::plan;
use source::Source;

/// What the imported model's output means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::VariantArray, strum::IntoStaticStr, strum::EnumMessage)]
#[strum(serialize_all = "kebab-case")]
pub enum OutputKind {
    /// Log-odds of a nodule (no sigmoid at the end), `[N, 1]` or `[N]`.
    Logit,
    /// Probability of a nodule in [0, 1] (a sigmoid at the end), `[N, 1]` or `[N]`.
    Probability,
    /// Two class scores before a softmax, `[N, 2]` (MONAI's and torchvision's default
    /// classifiers): the logit is l[positive] − l[other].
    TwoClassLogits,
    /// Two class probabilities after a softmax, `[N, 2]`: the logit is
    /// log(p[positive] / p[other]).
    Softmax,
}

impl OutputKind {
    /// The name `--output-kind` takes (and the metadata records).
    pub fn name(self) -> &'static str {
        self.into()
    }

    /// Values per patch in the output.
    fn width(self) -> usize {
        match self {
            OutputKind::Logit | OutputKind::Probability => 1,
            OutputKind::TwoClassLogits | OutputKind::Softmax => 2,
        }
    }

    /// Whether the values are probabilities (in [0, 1]).
    fn probabilities(self) -> bool {
        matches!(self, OutputKind::Probability | OutputKind::Softmax)
    }

    /// The logit of one patch's output values `v` (`width` of them).
    fn logit(self, v: &[f32], positive: usize) -> f64 {
        let clip = |p: f32| f64::from(p.clamp(2f32.powi(-24), 1.0 - 2f32.powi(-24)));
        match self {
            OutputKind::Logit => f64::from(v[0]),
            OutputKind::Probability => {
                let p = clip(v[0]);
                (p / (1.0 - p)).ln()
            }
            OutputKind::TwoClassLogits => f64::from(v[positive]) - f64::from(v[1 - positive]),
            OutputKind::Softmax => clip(v[positive]).ln() - clip(v[1 - positive]).ln(),
        }
    }
}

/// An import.
#[derive(Debug, Clone)]
pub struct ImportSettings {
    pub source: PathBuf,
    pub out: PathBuf,
    pub kind: OutputKind,
    /// For two-class outputs: the index (0 or 1) of the nodule class.
    pub positive_class: usize,
    /// The output to use when the model has several.
    pub output: Option<String>,
    /// A model of ours whose preprocessing to copy (flags below override it).
    pub like: Option<PathBuf>,
    /// Preprocessing given on the command line (over `like`'s or the defaults).
    pub pre: models::preprocess::Overrides,
    pub ort_lib: Option<PathBuf>,
}

/// What an import made.
#[derive(Debug, Clone)]
pub struct Imported {
    pub out: PathBuf,
    pub input: String,
    pub output: String,
    pub preprocess: Preprocess,
    pub source_sha256: String,
    /// External data files made inline: (name, sha256).
    pub external: Vec<(String, String)>,
    /// Values the source called `logit`, `probability` or `decision`, renamed.
    pub renamed: Vec<(String, String)>,
    /// Largest difference between the imported model's logits and the source's output
    /// (or its log-odds) on the test batch.
    pub max_abs_diff: f64,
    pub onnxruntime_version: String,
    /// The batch size the source's input fixes, if it fixes one (scored in batches of it).
    pub fixed_batch: Option<usize>,
    /// What looks wrong but was done as declared (a logit declared on a Sigmoid's output).
    pub warnings: Vec<String>,
}

/// The preprocessing: `--like`'s, else the defaults, with the flags on top; the cube side
/// must agree with a fixed input size.
fn preprocessing(s: &ImportSettings, fixed_cube: Option<usize>) -> Result<Preprocess, InferError> {
    let mut pre = match &s.like {
        Some(like) => {
            let bytes = files::read_regular(like)?;
            let md = models::onnx::metadata(&models::onnx::parse_model(&bytes, like)?);
            Preprocess::from_metadata(&md).map_err(|e| crate::bad_input(like, format!("--like: {e}")))?
        }
        None => Preprocess {
            cube_size: 0,
            ..Preprocess::default()
        },
    };
    s.pre.apply(&mut pre);
    match (fixed_cube, pre.cube_size) {
        (None, 0) => {
            return Err(crate::bad_input(
                &s.source,
                "the input's spatial size is symbolic: give --cube-size (or --like a model of ours)",
            ))
        }
        (Some(f), 0) => pre.cube_size = f,
        (Some(f), c) if f != c => {
            return Err(InferError::Usage(format!(
                "--cube-size {c} (or --like's) differs from the input's fixed size {f}"
            )))
        }
        _ => {}
    }
    pre.validate().map_err(|e| {
        let why = e.to_string();
        let why = why
            .split_once("invalid preprocessing: ")
            .map_or(why.as_str(), |(_, w)| w)
            .to_string();
        InferError::Usage(format!("the preprocessing flags (or --like's): {why}"))
    })?;
    Ok(pre)
}

/// Two test cubes, preprocessed: air, and a pseudo-random HU field over the window.
fn test_batch(pre: &Preprocess) -> Vec<f32> {
    let n = pre.cube_size.pow(3);
    let mut st: u64 = 0x2545_f491_4f6c_dd1d;
    let mut out = vec![pre.scale(pre.pad_hu); n];
    out.extend((0..n).map(|_| {
        st ^= st << 13;
        st ^= st >> 7;
        st ^= st << 17;
        pre.scale(-1000.0 + 1400.0 * (st >> 11) as f32 / (1u64 << 53) as f32)
    }));
    out
}

/// Cubes in the test batch.
pub(super) const TEST_CUBES: usize = 2;

/// Scores the imported model at `path` on `data` and compares its logits with the source's
/// output `want` (or its log-odds). Returns the largest difference and the runtime version.
fn verify(s: &ImportSettings, path: &Path, data: &[f32], want: &[f64]) -> Result<(f64, String), InferError> {
    let mut sc = scorer::Scorer::open(
        path,
        &scorer::ScorerOptions {
            device: scorer::Device::Cpu,
            threads: 0,
            ort_lib: s.ort_lib.clone(),
            spin: false,
        },
    )?;
    let got = sc.score_flat(data)?;
    let mut max_abs_diff = 0.0f64;
    for (&g, &w) in got.iter().zip(want) {
        let d = (f64::from(g) - w).abs();
        // NaN-safe: a NaN difference must fail, and f64::max would drop it.
        max_abs_diff = if d.is_nan() { d } else { max_abs_diff.max(d) };
    }
    let scale = want.iter().fold(1.0f64, |a, v| a.max(v.abs()));
    if max_abs_diff.is_nan() || max_abs_diff > 1e-4 * scale || got.len() != want.len() {
        return Err(crate::bad_input(
            &s.out,
            format!("internal: the imported model's logits differ from the source's by {max_abs_diff:e}"),
        ));
    }
    Ok((max_abs_diff, sc.runtime.version.clone()))
}

/// Imports `s.source` into `s.out` (see the module documentation).
pub fn import(s: &ImportSettings) -> Result<Imported, InferError> {
    if s.positive_class > 1 {
        return Err(InferError::Usage(format!(
            "--positive-class {}: two classes are numbered 0 and 1",
            s.positive_class
        )));
    }
    // The source first (reading writes nothing): its external data files are inputs too.
    let src = Source::read(s)?;
    let mut io = files::RunIo::new();
    io.input("source model", &s.source);
    io.inputs(
        "external data file of the source",
        src.external_paths.iter().map(PathBuf::as_path),
    );
    if let Some(l) = &s.like {
        io.input("--like model", l);
    }
    files::create_parent(&s.out)?;
    let target = io.output("imported model", &s.out)?;
    files::check_replaceable(&s.out, "model", &models::onnx::looks_like_onnx)?;
    let _lock = match &target {
        files::Target::File(p) => {
            Some(files::Lock::beside(p, &format!("output {}", s.out.display()))?)
        }
        files::Target::Stream(_) => None,
    };
    let pre = preprocessing(s, src.fixed_cube)?;
    let g = src
        .proto
        .graph
        .as_ref()
        .ok_or_else(|| crate::bad_input(&s.source, "the model has no graph"))?;
    let plan = plan(s, &src, g, &pre);
    let data = test_batch(&pre);
    let want = src.probe(s, pre.cube_size, &data)?;
    let imported = rewrite(&src.bytes, &plan.edit).map_err(|e| crate::bad_input(&s.source, format!("not an ONNX model: {e}")))?;
    let mut checked = (0.0, String::new());
    let mut check = |tmp: &Path| -> Result<(), InferError> {
        std::fs::write(tmp, &imported).map_err(|e| files::Error::io(tmp, e))?;
        checked = verify(s, tmp, &data, &want)?;
        Ok(())
    };
    match &target {
        files::Target::File(_) => files::replace_with(&s.out, &mut check)?,
        files::Target::Stream(_) => {
            let tmp = tempfile::NamedTempFile::new().map_err(|e| files::Error::io(std::env::temp_dir(), e))?;
            check(tmp.path())?;
            files::write_atomic(&s.out, &imported)?;
        }
    }
    Ok(Imported {
        out: s.out.clone(),
        input: plan.input,
        output: plan.source_output,
        preprocess: pre,
        source_sha256: src.sha256.clone(),
        external: src.external.clone(),
        renamed: plan.renamed,
        max_abs_diff: checked.0,
        onnxruntime_version: checked.1,
        fixed_batch: src.fixed_batch,
        warnings: src.warnings.clone(),
    })
}
