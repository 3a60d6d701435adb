//! Reading the model to import: its bytes and external data, checksummed ([`Source`]), its
//! input and output picked and checked against what a patch classifier takes and gives.
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use models::onnx::proto::{data_type, tensor_shape_proto, type_proto, ValueInfoProto};

use super::{ImportSettings, OutputKind, TEST_CUBES};
use crate::InferError;

/// A value's element type and shape: `None` per symbolic dimension; no shape when unknown.
pub(super) fn tensor_type(v: &ValueInfoProto) -> Option<(i32, Option<Vec<Option<i64>>>)> {
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

pub(super) fn shape_text(dims: &Option<Vec<Option<i64>>>) -> String {
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
pub(super) fn pick<'a>(path: &Path, values: &[&'a ValueInfoProto], named: Option<&str>) -> Result<&'a ValueInfoProto, InferError> {
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
pub(super) fn check_input(path: &Path, v: &ValueInfoProto) -> Result<(Option<usize>, Option<usize>), InferError> {
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
pub(super) const MAX_FIXED_BATCH: usize = scorer::MAX_FIXED_BATCH;

/// The output: float, `[N]` or `[N, 1]` (two classes: `[N, 2]`), or of unknown shape,
/// checked on the test batch.
pub(super) fn check_output(path: &Path, v: &ValueInfoProto, kind: OutputKind) -> Result<(), InferError> {
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

/// The source model, read and checked: its one input and the output to use.
pub(super) struct Source {
    /// The model, its external data (if any) inline.
    pub(super) bytes: Vec<u8>,
    /// The sha256 of the source file as it is on disk.
    pub(super) sha256: String,
    /// External data files made inline: (name, sha256).
    pub(super) external: Vec<(String, String)>,
    /// Their paths (inputs of the run: no output may be one).
    pub(super) external_paths: Vec<PathBuf>,
    pub(super) proto: models::onnx::proto::ModelProto,
    pub(super) input: String,
    pub(super) output: String,
    /// The input's fixed cube side, if it is fixed.
    pub(super) fixed_cube: Option<usize>,
    /// The input's fixed batch size, if it is fixed.
    pub(super) fixed_batch: Option<usize>,
    /// Warnings about what was declared.
    pub(super) warnings: Vec<String>,
}

/// Files by name with their sha256.
pub(super) type FileSums = Vec<(String, String)>;

/// The most external data made inline: a protobuf message, so an ONNX file, holds at most
/// 2 GiB.
pub(super) const MAX_INLINE: u64 = (2 << 30) - (16 << 20);

/// Reads the tensors a model stores as external data (`torch.onnx.export` writes the weights
/// to `MODEL.onnx.data` beside the model): only files in the model's own folder (a relative
/// location without `..`, as the ONNX specification requires), regular files, each range
/// within its file, 2 GiB in all. Returns the loader's files (name, sha256) after use.
pub(super) struct ExternalData {
    pub(super) dir: PathBuf,
    pub(super) source: PathBuf,
    pub(super) files: BTreeMap<String, std::fs::File>,
    pub(super) total: u64,
}

impl ExternalData {
    pub(super) fn new(source: &Path) -> Self {
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

    pub(super) fn load(&mut self, r: &models::onnx::wire::ExternalRef) -> Result<Vec<u8>, String> {
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
    pub(super) fn inline(mut self, bytes: Vec<u8>) -> Result<(Vec<u8>, FileSums), InferError> {
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
    pub(super) fn read(s: &ImportSettings) -> Result<Source, InferError> {
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
    pub(super) fn probe(&self, s: &ImportSettings, c: usize, data: &[f32]) -> Result<Vec<f64>, InferError> {
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
