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
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use models::onnx::build::{self, node, Dim};
use models::onnx::proto::{data_type, tensor_shape_proto, type_proto, GraphProto, NodeProto, TensorProto, ValueInfoProto};
use models::onnx::wire::{rewrite, Edit};
use models::preprocess::Preprocess;

use crate::InferError;

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

/// A value's element type and shape: `None` per symbolic dimension; no shape when unknown.
fn tensor_type(v: &ValueInfoProto) -> Option<(i32, Option<Vec<Option<i64>>>)> {
    let Some(type_proto::Value::TensorType(t)) = v.r#type.as_ref()?.value.as_ref() else {
        return None;
    };
    let dims = t.shape.as_ref().map(|s| {
        s.dim
            .iter()
            .map(|d| match d.value {
                Some(tensor_shape_proto::dimension::Value::DimValue(v)) => Some(v),
                _ => None,
            })
            .collect()
    });
    Some((t.elem_type.unwrap_or(0), dims))
}

fn shape_text(dims: &Option<Vec<Option<i64>>>) -> String {
    match dims {
        None => "unknown".into(),
        Some(d) => format!(
            "[{}]",
            d.iter()
                .map(|x| x.map_or("?".to_string(), |v| v.to_string()))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Picks the one output (or the one named), or says which there are.
fn pick<'a>(path: &Path, values: &[&'a ValueInfoProto], named: Option<&str>) -> Result<&'a ValueInfoProto, InferError> {
    let names: Vec<&str> = values.iter().map(|v| v.name.as_deref().unwrap_or("")).collect();
    match named {
        Some(n) => values
            .iter()
            .copied()
            .find(|v| v.name.as_deref() == Some(n))
            .ok_or_else(|| {
                crate::bad_input(
                    path,
                    format!("--output {n}: the model's outputs are {}", names.join(", ")),
                )
            }),
        None if values.len() == 1 => Ok(values[0]),
        None => Err(crate::bad_input(
            path,
            format!(
                "the model has {} outputs ({}); a patch classifier has one: choose it with --output",
                values.len(),
                names.join(", ")
            ),
        )),
    }
}

/// The input: float, `[N, 1, D, D, D]`; returns its fixed cube side and batch size, if
/// fixed.
fn check_input(path: &Path, v: &ValueInfoProto) -> Result<(Option<usize>, Option<usize>), InferError> {
    let name = v.name.as_deref().unwrap_or("");
    let (elem, dims) = tensor_type(v).ok_or_else(|| crate::bad_input(path, format!("input `{name}` is not a tensor")))?;
    if elem != data_type::FLOAT {
        return Err(crate::bad_input(
            path,
            format!("input `{name}` is not float32 (ONNX type {elem})"),
        ));
    }
    let shape = shape_text(&dims);
    let Some(d) = dims else {
        return Ok((None, None));
    };
    if d.len() != 5 {
        return Err(crate::bad_input(
            path,
            format!("input `{name}` has shape {shape}: a patch classifier takes [N, 1, D, D, D] (rank 5)"),
        ));
    }
    if d[1].is_some_and(|c| c != 1) {
        return Err(crate::bad_input(
            path,
            format!(
                "input `{name}` has shape {shape}: one channel expected, not {}",
                d[1].unwrap_or(0)
            ),
        ));
    }
    let fixed: Vec<i64> = d[2..].iter().flatten().copied().collect();
    if fixed.iter().any(|&x| x != fixed[0]) {
        return Err(crate::bad_input(path, format!("input `{name}` has shape {shape}: not a cube")));
    }
    let batch = match d[0] {
        Some(b) if !(1..=MAX_FIXED_BATCH as i64).contains(&b) => {
            return Err(crate::bad_input(
                path,
                format!(
                    "input `{name}` has shape {shape}: a fixed batch of {b} is not scored (1 to {MAX_FIXED_BATCH}); \
                     re-export with a dynamic batch (torch.onnx.export(..., dynamic_axes={{\"{name}\": {{0: \"batch\"}}}}))"
                ),
            ))
        }
        b => b.map(|b| b as usize),
    };
    Ok((fixed.first().map(|&x| x as usize), batch))
}

/// The largest fixed batch size taken (a model exported for a batch of 1, `torch.onnx.export`'s
/// default, is scored one cube per run; a larger fixed batch is padded to fit).
const MAX_FIXED_BATCH: usize = scorer::MAX_FIXED_BATCH;

/// The output: float, `[N]` or `[N, 1]` (two classes: `[N, 2]`), or of unknown shape,
/// checked on the test batch.
fn check_output(path: &Path, v: &ValueInfoProto, kind: OutputKind) -> Result<(), InferError> {
    let name = v.name.as_deref().unwrap_or("");
    let (elem, dims) = tensor_type(v).ok_or_else(|| crate::bad_input(path, format!("output `{name}` is not a tensor")))?;
    if elem != data_type::FLOAT {
        return Err(crate::bad_input(
            path,
            format!("output `{name}` is not float32 (ONNX type {elem})"),
        ));
    }
    if let Some(d) = &dims {
        let ok = match kind.width() {
            1 => d.len() == 1 || (d.len() == 2 && d[1].is_none_or(|x| x == 1)),
            _ => d.len() == 2 && d[1].is_none_or(|x| x == 2),
        };
        if !ok {
            let hint = if d.len() == 2 && d[1] == Some(2) {
                ": two classes; import it with --output-kind two-class-logits (scores before a softmax) or softmax \
                 (probabilities), and --positive-class for the nodule's index"
                    .to_string()
            } else if kind.width() == 2 {
                format!(": --output-kind {} takes [N, 2]", kind.name())
            } else {
                ": a patch classifier gives [N, 1] or [N] (or [N, 2] with --output-kind two-class-logits or softmax)"
                    .to_string()
            };
            return Err(crate::bad_input(
                path,
                format!("output `{name}` has shape {}{hint}", shape_text(&dims)),
            ));
        }
    }
    Ok(())
}

/// Every value name the main graph uses.
fn value_names(g: &GraphProto) -> HashSet<String> {
    let mut s = HashSet::new();
    for n in &g.node {
        s.extend(n.input.iter().cloned());
        s.extend(n.output.iter().cloned());
    }
    s.extend(g.initializer.iter().filter_map(|t| t.name.clone()));
    for v in g.input.iter().chain(&g.output).chain(&g.value_info) {
        s.extend(v.name.clone());
    }
    s
}

/// A name not in `used` (and reserves it): `base`, else `base.2`, ...
fn fresh(used: &mut HashSet<String>, base: &str) -> String {
    let mut name = base.to_string();
    let mut k = 1;
    while used.contains(&name) {
        k += 1;
        name = format!("{base}.{k}");
    }
    used.insert(name.clone());
    name
}

fn f32_const(name: &str, v: f32) -> TensorProto {
    build::f32_tensor(name, vec![1], &[v])
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

/// The edit that adds the `logit` output and our metadata.
struct Plan {
    edit: Edit,
    input: String,
    source_output: String,
    renamed: Vec<(String, String)>,
}

fn plan(s: &ImportSettings, src: &Source, g: &GraphProto, pre: &Preprocess) -> Plan {
    let (bytes, input, output) = (&src.bytes, src.input.as_str(), src.output.as_str());
    let mut used = value_names(g);
    // Our reserved names: anything the source called so is renamed (also in subgraphs, where
    // the bytes may hold it unseen by the main graph's names).
    let mut rename = HashMap::new();
    for reserved in [models::onnx::OUTPUT_NAME, "probability", "decision"] {
        let in_bytes = bytes.windows(reserved.len()).any(|w| w == reserved.as_bytes());
        if used.contains(reserved) || in_bytes {
            let new = fresh(&mut used, &format!("source.{reserved}"));
            rename.insert(reserved.to_string(), new);
        }
    }
    let r = |n: &str| rename.get(n).cloned().unwrap_or_else(|| n.to_string());
    let (input, out) = (r(input), r(output));
    let logit = models::onnx::OUTPUT_NAME;
    used.insert(logit.into());
    let mut nodes = Vec::new();
    let mut inits = Vec::new();
    let shape = fresh(&mut used, "import.shape");
    inits.push(TensorProto {
        dims: vec![2],
        data_type: Some(data_type::INT64),
        name: Some(shape.clone()),
        raw_data: Some([-1i64, 1].iter().flat_map(|v| v.to_le_bytes()).collect()),
        ..Default::default()
    });
    let z = logit_of_output(s, &out, &mut used, &mut nodes, &mut inits);
    nodes.push(node("Reshape", &[&z, &shape], logit, vec![]));
    // Node names must be unique too (a model of ours has a node named `logit`).
    let mut node_names: HashSet<String> = g.node.iter().filter_map(|n| n.name.clone()).collect();
    node_names.extend(used.iter().cloned());
    for n in &mut nodes {
        let base = format!("import.{}", n.name.as_deref().unwrap_or("node"));
        n.name = Some(fresh(&mut node_names, &base));
    }
    let md = metadata(s, src, pre, &input, output);
    let mut renamed: Vec<(String, String)> = rename.into_iter().collect();
    renamed.sort();
    Plan {
        edit: Edit {
            rename: renamed.iter().cloned().collect(),
            drop_outputs: true,
            nodes,
            initializers: inits,
            outputs: vec![build::value_info(
                logit,
                data_type::FLOAT,
                &[Dim::Param("batch"), Dim::Value(1)],
            )],
            metadata: Some(md),
        },
        input,
        source_output: output.to_string(),
        renamed,
    }
}

/// The nodes (and constants) that turn the source's output `out` into a logit, as
/// `--output-kind` says it should be read; returns the logit's name.
fn logit_of_output(
    s: &ImportSettings,
    out: &str,
    used: &mut HashSet<String>,
    nodes: &mut Vec<NodeProto>,
    inits: &mut Vec<TensorProto>,
) -> String {
    match s.kind {
        OutputKind::Logit => out.to_string(),
        OutputKind::TwoClassLogits | OutputKind::Softmax => {
            let mut name = |n: &str| fresh(used, &format!("import.{n}"));
            let (i_pos, i_neg) = (name("positive_index"), name("other_index"));
            let (g_pos, g_neg, z) = (name("positive"), name("other"), name("z"));
            for (n, k) in [(&i_pos, s.positive_class), (&i_neg, 1 - s.positive_class)] {
                inits.push(TensorProto {
                    dims: vec![1],
                    data_type: Some(data_type::INT64),
                    name: Some(n.clone()),
                    raw_data: Some((k as i64).to_le_bytes().to_vec()),
                    ..Default::default()
                });
            }
            nodes.push(node("Gather", &[out, &i_pos], &g_pos, vec![build::int("axis", 1)]));
            nodes.push(node("Gather", &[out, &i_neg], &g_neg, vec![build::int("axis", 1)]));
            if s.kind == OutputKind::TwoClassLogits {
                nodes.push(node("Sub", &[&g_pos, &g_neg], &z, vec![]));
            } else {
                // log(p₊) − log(p₋) on probabilities clipped away from 0 and 1.
                let eps = 2f32.powi(-24);
                let (c_eps, c_hi) = (name("eps"), name("one_m_eps"));
                inits.push(f32_const(&c_eps, eps));
                inits.push(f32_const(&c_hi, 1.0 - eps));
                let mut logs = Vec::new();
                for g in [&g_pos, &g_neg] {
                    let (lo, p, l) = (name("lo"), name("p"), name("log_p"));
                    nodes.push(node("Max", &[g, &c_eps], &lo, vec![]));
                    nodes.push(node("Min", &[&lo, &c_hi], &p, vec![]));
                    nodes.push(node("Log", &[&p], &l, vec![]));
                    logs.push(l);
                }
                nodes.push(node("Sub", &[&logs[0], &logs[1]], &z, vec![]));
            }
            z
        }
        OutputKind::Probability => {
            // log(p) − log(1 − p) on p clipped away from 0 and 1 (2⁻²⁴: float32's step below 1).
            let eps = 2f32.powi(-24);
            let mut name = |n: &str| fresh(used, &format!("import.{n}"));
            let (c_eps, c_hi, c_one) = (name("eps"), name("one_m_eps"), name("one"));
            let (lo, p, q, lp, lq, z) = (
                name("lo"),
                name("p"),
                name("q"),
                name("log_p"),
                name("log_q"),
                name("z"),
            );
            inits.push(f32_const(&c_eps, eps));
            inits.push(f32_const(&c_hi, 1.0 - eps));
            inits.push(f32_const(&c_one, 1.0));
            nodes.push(node("Max", &[out, &c_eps], &lo, vec![]));
            nodes.push(node("Min", &[&lo, &c_hi], &p, vec![]));
            nodes.push(node("Sub", &[&c_one, &p], &q, vec![]));
            nodes.push(node("Log", &[&p], &lp, vec![]));
            nodes.push(node("Log", &[&q], &lq, vec![]));
            nodes.push(node("Sub", &[&lp, &lq], &z, vec![]));
            z
        }
    }
}

/// The imported model's metadata: the source's own entries (but for the keys this
/// toolchain reserves), the preprocessing, and what the import did.
fn metadata(s: &ImportSettings, src: &Source, pre: &Preprocess, input: &str, output: &str) -> Vec<(String, String)> {
    let source_md = models::onnx::metadata(&src.proto);
    let logit = models::onnx::OUTPUT_NAME;
    let reserved_prefix = |k: &str| {
        [
            "preprocess.",
            "calibration.",
            "input.",
            "output.",
            "training.",
            "tool.",
            "import.",
        ]
        .iter()
        .any(|p| k.starts_with(p))
            || ["architecture", "architecture.spec_json", "format"].contains(&k)
    };
    let mut md: Vec<(String, String)> = source_md
        .iter()
        .filter(|(k, _)| !reserved_prefix(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    md.extend(pre.to_metadata());
    let file = s
        .source
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    md.extend(
        [
            ("format", "nodule-patch-classifier/1".to_string()),
            ("input.name", input.to_string()),
            (
                "input.layout",
                "NCDHW: [batch, 1, z, y, x] float32, preprocessed as preprocess.* says".into(),
            ),
            ("output.name", logit.to_string()),
            (
                "output.meaning",
                match s.kind {
                    OutputKind::Logit => "logit of P(nodule); probability = sigmoid(logit)".to_string(),
                    OutputKind::Probability => "logit of P(nodule), derived from the source's probability \
                         (saturates beyond |logit| ≈ 16.6, where float32 probabilities round to 0 or 1)"
                        .to_string(),
                    OutputKind::TwoClassLogits => format!(
                        "logit of P(nodule) = the source's class-{} score minus its class-{} score (softmax of two \
                         classes = sigmoid of their difference)",
                        s.positive_class,
                        1 - s.positive_class
                    ),
                    OutputKind::Softmax => format!(
                        "logit of P(nodule) = log(p{} / p{}) of the source's two softmax probabilities (saturates \
                         beyond |logit| ≈ 16.6)",
                        s.positive_class,
                        1 - s.positive_class
                    ),
                },
            ),
            ("architecture", "imported".to_string()),
            ("import.source_file", file),
            ("import.source_sha256", src.sha256.clone()),
            ("import.source_output", output.to_string()),
            ("import.output_kind", s.kind.name().to_string()),
            ("import.positive_class", s.positive_class.to_string()),
            ("tool.name", "nodule-toolchain".to_string()),
            ("tool.version", models::TOOL_VERSION.to_string()),
        ]
        .map(|(k, v)| (k.to_string(), v)),
    );
    if !src.external.is_empty() {
        let files: Vec<String> = src.external.iter().map(|(n, h)| format!("{n} sha256:{h}")).collect();
        md.push(("import.source_external_data".into(), files.join("; ")));
    }
    md
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

/// The source model, read and checked: its one input and the output to use.
struct Source {
    /// The model, its external data (if any) inline.
    bytes: Vec<u8>,
    /// The sha256 of the source file as it is on disk.
    sha256: String,
    /// External data files made inline: (name, sha256).
    external: Vec<(String, String)>,
    /// Their paths (inputs of the run: no output may be one).
    external_paths: Vec<PathBuf>,
    proto: models::onnx::proto::ModelProto,
    input: String,
    output: String,
    /// The input's fixed cube side, if it is fixed.
    fixed_cube: Option<usize>,
    /// The input's fixed batch size, if it is fixed.
    fixed_batch: Option<usize>,
    /// Warnings about what was declared.
    warnings: Vec<String>,
}

/// Files by name with their sha256.
type FileSums = Vec<(String, String)>;

/// The most external data made inline: a protobuf message, so an ONNX file, holds at most
/// 2 GiB.
const MAX_INLINE: u64 = (2 << 30) - (16 << 20);

/// Reads the tensors a model stores as external data (`torch.onnx.export` writes the weights
/// to `MODEL.onnx.data` beside the model): only files in the model's own folder (a relative
/// location without `..`, as the ONNX specification requires), regular files, each range
/// within its file, 2 GiB in all. Returns the loader's files (name, sha256) after use.
struct ExternalData {
    dir: PathBuf,
    source: PathBuf,
    files: BTreeMap<String, std::fs::File>,
    total: u64,
}

impl ExternalData {
    fn new(source: &Path) -> Self {
        let dir = match source.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        ExternalData {
            dir,
            source: source.to_path_buf(),
            files: BTreeMap::new(),
            total: 0,
        }
    }

    fn load(&mut self, r: &models::onnx::wire::ExternalRef) -> Result<Vec<u8>, String> {
        use std::os::unix::fs::FileExt;
        let rel = Path::new(&r.location);
        let plain = rel.components().all(|c| matches!(c, std::path::Component::Normal(_)));
        if !plain || r.location.is_empty() {
            return Err(format!(
                "tensor `{}`: external data location {:?} is not a file name inside the model's folder",
                r.tensor, r.location
            ));
        }
        if !self.files.contains_key(&r.location) {
            let p = self.dir.join(rel);
            let f = files::open_regular(&p).map_err(|e| format!("tensor `{}`: {e}", r.tensor))?;
            // Through symbolic links too, the file must stay inside the model's folder: a
            // link named as external data must not pull /etc/passwd into the model.
            let (real, home) = (std::fs::canonicalize(&p), std::fs::canonicalize(&self.dir));
            // And the file opened is the one that path names now (no link swapped between).
            let same_file = || {
                use std::os::unix::fs::MetadataExt;
                match (f.metadata(), real.as_ref().map(std::fs::metadata)) {
                    (Ok(a), Ok(Ok(b))) => a.dev() == b.dev() && a.ino() == b.ino(),
                    _ => false,
                }
            };
            if !matches!((&real, &home), (Ok(r), Ok(h)) if r.starts_with(h)) || !same_file() {
                return Err(format!(
                    "tensor `{}`: external data file {} leads outside the model's folder{}; not read",
                    r.tensor,
                    p.display(),
                    real.map_or_else(|_| String::new(), |r| format!(" (to {})", r.display()))
                ));
            }
            self.files.insert(r.location.clone(), f);
        }
        let f = &self.files[&r.location];
        let path = self.dir.join(rel);
        let size = f.metadata().map_err(|e| format!("{}: {e}", path.display()))?.len();
        let len = r.length.unwrap_or(size.saturating_sub(r.offset));
        let end = r.offset.checked_add(len).filter(|&e| e <= size);
        if end.is_none() {
            return Err(format!(
                "tensor `{}`: bytes {}..+{len} of {} lie beyond its {size} bytes",
                r.tensor,
                r.offset,
                path.display()
            ));
        }
        self.total += len;
        if self.total > MAX_INLINE {
            return Err(format!(
                "external data of more than {MAX_INLINE} bytes: a single ONNX file holds at most 2 GiB"
            ));
        }
        let mut buf = Vec::new();
        buf.try_reserve_exact(len as usize)
            .map_err(|_| format!("cannot allocate {len} bytes for tensor `{}`", r.tensor))?;
        buf.resize(len as usize, 0);
        f.read_exact_at(&mut buf, r.offset)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(buf)
    }

    /// The source's bytes with its external data inline, and the external files' names and
    /// sha256 (for the metadata).
    fn inline(mut self, bytes: Vec<u8>) -> Result<(Vec<u8>, FileSums), InferError> {
        let (out, n) =
            models::onnx::wire::inline_external(&bytes, &mut |r| self.load(r)).map_err(|e| crate::bad_input(&self.source, e))?;
        if n == 0 {
            return Ok((bytes, Vec::new()));
        }
        let mut sums = Vec::new();
        for name in self.files.keys() {
            let p = self.dir.join(name);
            sums.push((name.clone(), files::sha256_file(&p)?));
        }
        Ok((out, sums))
    }
}

impl Source {
    fn read(s: &ImportSettings) -> Result<Source, InferError> {
        let file_bytes = files::read_regular(&s.source)?;
        let sha256 = files::sha256_bytes(&file_bytes);
        let dir = ExternalData::new(&s.source).dir.clone();
        let (bytes, external) = ExternalData::new(&s.source).inline(file_bytes)?;
        let external_paths = external.iter().map(|(n, _)| dir.join(n)).collect();
        let proto = models::onnx::parse_model(&bytes, &s.source)?;
        let opset = proto
            .opset_import
            .iter()
            .filter(|o| o.domain.as_deref().is_none_or(|d| d.is_empty() || d == "ai.onnx"))
            .filter_map(|o| o.version)
            .max();
        if opset.is_none_or(|v| v < 8) {
            return Err(crate::bad_input(
                &s.source,
                format!(
                    "default-domain opset {}: at least 8 is needed (re-export with a newer opset)",
                    opset.map_or("missing".into(), |v| v.to_string())
                ),
            ));
        }
        let g = proto
            .graph
            .as_ref()
            .ok_or_else(|| crate::bad_input(&s.source, "the model has no graph"))?;
        let inits: HashSet<&str> = g.initializer.iter().filter_map(|t| t.name.as_deref()).collect();
        let inputs: Vec<&ValueInfoProto> = g
            .input
            .iter()
            .filter(|v| !inits.contains(v.name.as_deref().unwrap_or("")))
            .collect();
        if inputs.len() != 1 {
            let names: Vec<&str> = inputs.iter().map(|v| v.name.as_deref().unwrap_or("")).collect();
            return Err(crate::bad_input(
                &s.source,
                format!(
                    "the model has {} inputs ({}); a patch classifier takes one, the cube",
                    inputs.len(),
                    names.join(", ")
                ),
            ));
        }
        let outputs: Vec<&ValueInfoProto> = g.output.iter().collect();
        let output = pick(&s.source, &outputs, s.output.as_deref())?;
        let (fixed_cube, fixed_batch) = check_input(&s.source, inputs[0])?;
        check_output(&s.source, output, s.kind)?;
        let (input, output) = (
            inputs[0].name.clone().unwrap_or_default(),
            output.name.clone().unwrap_or_default(),
        );
        // What computes the output: a logit declared on a Sigmoid (or two-class logits on a
        // Softmax) is most likely a probability.
        // (Through the ops that only reshape or copy.)
        let mut producer = String::new();
        let mut value = output.clone();
        for _ in 0..16 {
            let Some(n) = g.node.iter().find(|n| n.output.contains(&value)) else {
                break;
            };
            producer = n.op_type.clone().unwrap_or_default();
            match (producer.as_str(), n.input.first()) {
                ("Reshape" | "Flatten" | "Squeeze" | "Unsqueeze" | "Identity", Some(i)) => value = i.clone(),
                _ => break,
            }
        }
        let mut warnings = Vec::new();
        match (s.kind, producer.as_str()) {
            (OutputKind::Logit, "Sigmoid") => warnings.push(format!(
                "output `{output}` is computed by a Sigmoid, yet it was declared a logit: if it is a probability, \
                 import it with --output-kind probability"
            )),
            (OutputKind::TwoClassLogits, "Softmax") => warnings.push(format!(
                "output `{output}` is computed by a Softmax, yet it was declared two-class logits: if it holds \
                 probabilities, import it with --output-kind softmax"
            )),
            _ => {}
        }
        Ok(Source {
            bytes,
            sha256,
            external,
            external_paths,
            proto,
            input,
            output,
            fixed_cube,
            fixed_batch,
            warnings,
        })
    }

    /// The source's logits (or what the declared output gives as logits) on `data`
    /// ([`TEST_CUBES`] cubes, run in batches of the input's fixed size when it has one):
    /// finite, and for probabilities within [0, 1].
    fn probe(&self, s: &ImportSettings, c: usize, data: &[f32]) -> Result<Vec<f64>, InferError> {
        let out = &self.output;
        let per = c * c * c;
        let b = self.fixed_batch.unwrap_or(TEST_CUBES);
        let mut values = Vec::new();
        let mut k = 0;
        while k < TEST_CUBES {
            // A fixed batch larger than what is left: the rest padded with the first cubes.
            let batch: Vec<f32> = (0..b)
                .flat_map(|i| &data[((k + i) % TEST_CUBES) * per..][..per])
                .copied()
                .collect();
            let (sh, v) = scorer::probe(
                &self.bytes,
                &s.source,
                s.ort_lib.as_deref(),
                &self.input,
                out,
                [b, 1, c, c, c],
                &batch,
            )?;
            let w = s.kind.width();
            if v.len() != b * w {
                return Err(crate::bad_input(
                    &s.source,
                    format!(
                        "output `{out}` gives shape {} for a batch of {b} cube(s): [{b}, {w}]{} expected",
                        shape_text(&Some(sh.iter().map(|&x| Some(x)).collect())),
                        if w == 1 { " or [N]" } else { "" }
                    ),
                ));
            }
            values.extend(v.chunks(w).take(TEST_CUBES - k).map(<[f32]>::to_vec));
            k += b.min(TEST_CUBES - k);
        }
        for v in values.iter().flatten() {
            if !v.is_finite() {
                return Err(crate::bad_input(&s.source, format!("output `{out}` is {v} on a test batch")));
            }
            if s.kind.probabilities() && !(0.0..=1.0).contains(v) {
                return Err(crate::bad_input(
                    &s.source,
                    format!(
                        "output `{out}` was declared {} but gives {v} (logits? --output-kind {})",
                        if s.kind == OutputKind::Probability {
                            "a probability"
                        } else {
                            "softmax"
                        },
                        if s.kind == OutputKind::Softmax {
                            "two-class-logits"
                        } else {
                            "logit"
                        }
                    ),
                ));
            }
        }
        Ok(values.iter().map(|v| s.kind.logit(v, s.positive_class)).collect())
    }
}

/// Cubes in the test batch.
const TEST_CUBES: usize = 2;

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
