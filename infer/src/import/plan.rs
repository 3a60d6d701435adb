//! The edit an import makes: the nodes that turn the source's output into a logit
//! ([`logit_of_output`]), names the source holds renamed out of the way, and the metadata
//! the imported model carries ([`metadata`]).
use std::collections::{HashMap, HashSet};

use models::onnx::build::{self, node, Dim};
use models::onnx::proto::{data_type, GraphProto, NodeProto, TensorProto};
use models::onnx::wire::Edit;
use models::preprocess::Preprocess;

use super::source::Source;
use super::{ImportSettings, OutputKind};

/// Every value name the main graph uses.
pub(super) fn value_names(g: &GraphProto) -> HashSet<String> {
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
pub(super) fn fresh(used: &mut HashSet<String>, base: &str) -> String {
    let mut name = base.to_string();
    let mut k = 1;
    while used.contains(&name) {
        k += 1;
        name = format!("{base}.{k}");
    }
    used.insert(name.clone());
    name
}

pub(super) fn f32_const(name: &str, v: f32) -> TensorProto {
    build::f32_tensor(name, vec![1], &[v])
}

/// The edit that adds the `logit` output and our metadata.
pub(super) struct Plan {
    pub(super) edit: Edit,
    pub(super) input: String,
    pub(super) source_output: String,
    pub(super) renamed: Vec<(String, String)>,
}

pub(super) fn plan(s: &ImportSettings, src: &Source, g: &GraphProto, pre: &Preprocess) -> Plan {
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
pub(super) fn logit_of_output(
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
pub(super) fn metadata(s: &ImportSettings, src: &Source, pre: &Preprocess, input: &str, output: &str) -> Vec<(String, String)> {
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
