//! Native ONNX export: an [`ArchSpec`] plus named weights → `ModelProto`.
//!
//! The graph is written for inference: BatchNormalization uses the running statistics
//! (`training_mode` = 0), Dropout is the identity and is left out. The batch dimension is
//! dynamic (`batch`); the cube size is fixed and also recorded in `metadata_props`.
pub mod build;
pub mod ensemble;
pub mod proto;
pub mod wire;

use build::{float, int, ints, node, value_info, Dim};

use std::collections::BTreeMap;
use std::path::Path;

use prost::Message;

use crate::spec::{ArchSpec, Layer};
use crate::{Error, Result};
use proto::*;

/// Opset the writer targets (ONNX Runtime ≥ 1.14 runs it).
pub const OPSET: i64 = 17;
/// IR version matching opset 17 (ONNX 1.12).
pub const IR_VERSION: i64 = 8;
/// Graph input name: `[batch, 1, D, D, D]` float32, preprocessed.
pub const INPUT_NAME: &str = "patch";
/// Second graph input of a model with tabular features: `[batch, F]` float32, raw values
/// in the order of the `features.columns` metadata (the graph standardises them).
pub const FEATURES_NAME: &str = "features";
/// Graph output name: `[batch, 1]` float32 logit of P(nodule).
pub const OUTPUT_NAME: &str = "logit";

/// A float32 tensor in row-major order, as read from a checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Named weights, sorted by name so exports are byte-for-byte deterministic.
pub type Weights = BTreeMap<String, WeightTensor>;

/// Checks that `weights` holds exactly the spec's parameters with the spec's shapes and
/// reports every missing, unexpected or mis-shaped tensor in one error.
pub fn check_weights(spec: &ArchSpec, weights: &Weights) -> Result<()> {
    let mut problems = Vec::new();
    // Counters (num_batches_tracked) are not part of the inference graph.
    let params: Vec<_> = spec
        .params()
        .into_iter()
        .filter(|p| p.kind != crate::spec::ParamKind::Counter)
        .collect();
    for p in &params {
        match weights.get(&p.name) {
            None => problems.push(format!("missing `{}` (expected shape {:?})", p.name, p.shape)),
            Some(w) if w.shape != p.shape => {
                problems.push(format!("`{}`: expected shape {:?}, got {:?}", p.name, p.shape, w.shape))
            }
            Some(w) if w.data.len() != p.shape.iter().product::<usize>() => {
                problems.push(format!("`{}`: {} values for shape {:?}", p.name, w.data.len(), p.shape))
            }
            Some(_) => {}
        }
    }
    for name in weights.keys() {
        if !params.iter().any(|p| &p.name == name) {
            problems.push(format!("unexpected tensor `{name}`"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::WeightsMismatch {
            arch: spec.name.clone(),
            problems,
        })
    }
}

/// Everything a scorer must know, for a model's `metadata_props`: the preprocessing, the
/// graph's input and output, the architecture (by name and as its spec), the tool; then
/// `extra` (provenance, training figures), which may override any of them. The trainer adds
/// its git commit; a test's model is written with the same keys.
pub fn model_metadata(
    spec: &ArchSpec,
    pre: &crate::preprocess::Preprocess,
    extra: &[(&str, String)],
) -> Result<BTreeMap<String, String>> {
    let mut md = pre.to_metadata();
    let spec_json = serde_json::to_string(spec)
        .map_err(|e| Error::Metadata(format!("the architecture spec as JSON: {e}")))?;
    let fixed = [
        ("format", "nodule-patch-classifier/1".to_string()),
        ("input.name", INPUT_NAME.into()),
        (
            "input.layout",
            "NCDHW: [batch, 1, z, y, x] float32, preprocessed as preprocess.* says".into(),
        ),
        ("output.name", OUTPUT_NAME.into()),
        ("output.meaning", "logit of P(nodule); probability = sigmoid(logit)".into()),
        ("architecture", spec.name.clone()),
        ("architecture.spec_json", spec_json),
        ("tool.name", "nodule-toolchain".into()),
        ("tool.version", crate::TOOL_VERSION.into()),
    ];
    for (k, v) in fixed.into_iter().chain(extra.iter().cloned()) {
        md.insert(k.to_string(), v);
    }
    Ok(md)
}

/// Builds the ONNX model for `spec` with `weights`, a fixed input cube of `cube` voxels a
/// side, and the given `metadata_props` (written sorted by key).
pub fn export(
    spec: &ArchSpec,
    weights: &Weights,
    cube: usize,
    metadata: &BTreeMap<String, String>,
) -> Result<ModelProto> {
    spec.validate()?;
    check_weights(spec, weights)?;
    let mut g = GraphBuilder::default();
    let out = g.layers(&spec.layers, INPUT_NAME.to_string());
    g.nodes.push(node("Identity", &[&out], OUTPUT_NAME, vec![]));
    let initializer = weights
        .iter()
        .map(|(name, w)| build::f32_tensor(name, w.shape.iter().map(|&d| d as i64).collect(), &w.data))
        .collect();
    let c = cube as i64;
    let mut input = vec![value_info(
        INPUT_NAME,
        data_type::FLOAT,
        &[
            Dim::Param("batch"),
            Dim::Value(spec.in_channels as i64),
            Dim::Value(c),
            Dim::Value(c),
            Dim::Value(c),
        ],
    )];
    if spec.feature_count() > 0 {
        input.push(value_info(
            FEATURES_NAME,
            data_type::FLOAT,
            &[Dim::Param("batch"), Dim::Value(spec.feature_count() as i64)],
        ));
    }
    let graph = GraphProto {
        node: g.nodes,
        name: Some(spec.name.clone()),
        initializer,
        input,
        output: vec![value_info(
            OUTPUT_NAME,
            data_type::FLOAT,
            &[Dim::Param("batch"), Dim::Value(1)],
        )],
        ..Default::default()
    };
    Ok(ModelProto {
        ir_version: Some(IR_VERSION),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(OPSET),
        }],
        producer_name: Some("nodule-trainer".into()),
        producer_version: Some(crate::TOOL_VERSION.into()),
        model_version: Some(1),
        doc_string: Some(format!(
            "{} 3D lung-nodule patch classifier; output `{OUTPUT_NAME}` is the logit of P(nodule)",
            spec.name
        )),
        graph: Some(graph),
        metadata_props: metadata
            .iter()
            .map(|(k, v)| StringStringEntryProto {
                key: Some(k.clone()),
                value: Some(v.clone()),
            })
            .collect(),
        ..Default::default()
    })
}

/// Serialises a model to bytes.
pub fn to_bytes(model: &ModelProto) -> Vec<u8> {
    model.encode_to_vec()
}

/// Reads and decodes an ONNX file, checking that it has a graph and an opset, so that a
/// file that is not ONNX gets a clear error before any runtime sees it.
pub fn read_model(path: &Path) -> Result<ModelProto> {
    let bytes = files::read_regular(path)?;
    parse_model(&bytes, path)
}

/// [`read_model`] on bytes already read; `path` names the file in errors.
pub fn parse_model(bytes: &[u8], path: &Path) -> Result<ModelProto> {
    let bad = |msg: String| Error::BadOnnx {
        path: path.to_path_buf(),
        msg,
    };
    let model = ModelProto::decode(bytes).map_err(|source| Error::OnnxDecode {
        path: path.to_path_buf(),
        source,
    })?;
    if model.ir_version.is_none() || model.opset_import.is_empty() {
        return Err(bad("no IR version or opset import".into()));
    }
    match &model.graph {
        Some(g) if !g.node.is_empty() && !g.input.is_empty() && !g.output.is_empty() => Ok(model),
        _ => Err(bad("no graph with nodes, inputs and outputs".into())),
    }
}

/// Whether the first bytes of a file look like an ONNX model (a protobuf whose first field
/// is `ir_version`, field 1, a varint): an existing file of another kind is never replaced
/// by a model ([`files::check_replaceable`]).
pub fn looks_like_onnx(head: &[u8]) -> bool {
    head.first() == Some(&0x08)
}

/// The model's `metadata_props` as a map.
pub fn metadata(model: &ModelProto) -> BTreeMap<String, String> {
    model
        .metadata_props
        .iter()
        .map(|e| (e.key.clone().unwrap_or_default(), e.value.clone().unwrap_or_default()))
        .collect()
}

#[derive(Default)]
struct GraphBuilder {
    nodes: Vec<NodeProto>,
    counter: usize,
}

impl GraphBuilder {
    fn fresh(&mut self, what: &str) -> String {
        self.counter += 1;
        format!("{what}_{}", self.counter)
    }

    /// Appends nodes for `layers` applied to the value `x`; returns the output value name.
    fn layers(&mut self, layers: &[Layer], mut x: String) -> String {
        for l in layers {
            x = self.layer(l, x);
        }
        x
    }

    fn layer(&mut self, l: &Layer, x: String) -> String {
        match l {
            Layer::Conv3d {
                name,
                kernel,
                stride,
                padding,
                bias,
                ..
            } => {
                let p = padding.i64s();
                let w = format!("{name}.weight");
                let b = format!("{name}.bias");
                let mut inputs = vec![x.as_str(), w.as_str()];
                if *bias {
                    inputs.push(b.as_str());
                }
                let out = format!("{name}.out");
                let attrs = vec![
                    ints("kernel_shape", kernel.i64s().to_vec()),
                    ints("strides", stride.i64s().to_vec()),
                    // Begin (z, y, x), then end (z, y, x): symmetric, as PyTorch pads.
                    ints("pads", [p, p].concat()),
                    ints("dilations", vec![1; 3]),
                    int("group", 1),
                ];
                self.nodes.push(node("Conv", &inputs, &out, attrs));
                out
            }
            Layer::BatchNorm3d { name, eps, .. } => {
                let names = ["weight", "bias", "running_mean", "running_var"].map(|s| format!("{name}.{s}"));
                let out = format!("{name}.out");
                self.nodes.push(node(
                    "BatchNormalization",
                    &[&x, &names[0], &names[1], &names[2], &names[3]],
                    &out,
                    vec![float("epsilon", *eps as f32)],
                ));
                out
            }
            Layer::Relu {} => {
                let out = self.fresh("relu");
                self.nodes.push(node("Relu", &[&x], &out, vec![]));
                out
            }
            Layer::MaxPool3d { kernel, stride } => {
                let out = self.fresh("maxpool");
                let attrs = vec![
                    ints("kernel_shape", kernel.i64s().to_vec()),
                    ints("strides", stride.i64s().to_vec()),
                    ints("pads", vec![0; 6]),
                ];
                self.nodes.push(node("MaxPool", &[&x], &out, attrs));
                out
            }
            Layer::GlobalAvgPool {} => {
                let pooled = self.fresh("avgpool");
                self.nodes.push(node("GlobalAveragePool", &[&x], &pooled, vec![]));
                let out = self.fresh("flatten");
                self.nodes.push(node("Flatten", &[&pooled], &out, vec![int("axis", 1)]));
                out
            }
            Layer::Linear { name, .. } => {
                let out = format!("{name}.out");
                let (w, b) = (format!("{name}.weight"), format!("{name}.bias"));
                self.nodes
                    .push(node("Gemm", &[&x, &w, &b], &out, vec![int("transB", 1)]));
                out
            }
            Layer::Dropout { .. } => x,
            Layer::Features { name, .. } => {
                let (mean, std) = (format!("{name}.mean"), format!("{name}.std"));
                let centred = format!("{name}.centred");
                self.nodes.push(node("Sub", &[FEATURES_NAME, &mean], &centred, vec![]));
                let scaled = format!("{name}.standardised");
                self.nodes.push(node("Div", &[&centred, &std], &scaled, vec![]));
                let out = format!("{name}.out");
                self.nodes
                    .push(node("Concat", &[&x, &scaled], &out, vec![int("axis", 1)]));
                out
            }
            Layer::Residual { body, shortcut } => {
                let main = self.layers(body, x.clone());
                let side = self.layers(shortcut, x);
                let sum = self.fresh("add");
                self.nodes.push(node("Add", &[&main, &side], &sum, vec![]));
                let out = self.fresh("relu");
                self.nodes.push(node("Relu", &[&sum], &out, vec![]));
                out
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes that are not protobuf are `Error::OnnxDecode` with prost's error as the source.
    #[test]
    fn bytes_that_are_not_protobuf_keep_the_decoders_error() {
        let e = parse_model(b"\xff\xff\xff\xff not protobuf", Path::new("m.onnx")).expect_err("garbage");
        assert!(matches!(&e, Error::OnnxDecode { path, .. } if path == Path::new("m.onnx")), "{e:?}");
        assert!(std::error::Error::source(&e).is_some());
        assert!(e.to_string().starts_with("m.onnx: not a valid ONNX model: protobuf decode failed"), "{e}");
    }

    fn zero_weights(spec: &ArchSpec) -> Weights {
        spec.params()
            .into_iter()
            .filter(|p| p.kind != crate::spec::ParamKind::Counter)
            .map(|p| {
                let n = p.shape.iter().product();
                (
                    p.name,
                    WeightTensor {
                        shape: p.shape,
                        data: vec![0.0; n],
                    },
                )
            })
            .collect()
    }

    #[test]
    fn export_roundtrips_and_is_deterministic() {
        let spec = ArchSpec::baseline_cnn(4);
        let w = zero_weights(&spec);
        let mut md = BTreeMap::new();
        md.insert("b".to_string(), "2".to_string());
        md.insert("a".to_string(), "1".to_string());
        let m1 = to_bytes(&export(&spec, &w, 16, &md).expect("export"));
        let m2 = to_bytes(&export(&spec, &w, 16, &md).expect("export"));
        assert_eq!(m1, m2);
        let back = ModelProto::decode(m1.as_slice()).expect("decode");
        let keys: Vec<_> = back
            .metadata_props
            .iter()
            .map(|e| e.key.clone().unwrap_or_default())
            .collect();
        assert_eq!(keys, ["a", "b"]);
        let g = back.graph.expect("graph");
        // Every parameter but the BatchNorm counters is an initializer.
        let graph_params = spec
            .params()
            .into_iter()
            .filter(|p| p.kind != crate::spec::ParamKind::Counter)
            .count();
        assert_eq!(g.initializer.len(), graph_params);
        assert!(g.node.iter().all(|n| n.op_type.as_deref() != Some("Dropout")));
    }

    #[test]
    fn weight_mismatches_are_all_reported() {
        let spec = ArchSpec::baseline_cnn(4);
        let mut w = zero_weights(&spec);
        w.remove("head.3.bias");
        w.insert(
            "extra".into(),
            WeightTensor {
                shape: vec![1],
                data: vec![0.0],
            },
        );
        if let Some(t) = w.get_mut("features.0.weight") {
            t.shape = vec![4, 1, 3, 3, 2];
        }
        let msg = check_weights(&spec, &w).expect_err("mismatch").to_string();
        assert!(msg.contains("missing `head.3.bias`"), "{msg}");
        assert!(msg.contains("unexpected tensor `extra`"), "{msg}");
        assert!(
            msg.contains("`features.0.weight`: expected shape [4, 1, 3, 3, 3]"),
            "{msg}"
        );
    }

    #[test]
    fn read_model_rejects_non_onnx() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("model.onnx");
        std::fs::write(&p, b"this is not a protobuf model at all").expect("write");
        let msg = read_model(&p).expect_err("not onnx").to_string();
        assert!(msg.contains("model.onnx: not a valid ONNX model"), "{msg}");
    }
}
