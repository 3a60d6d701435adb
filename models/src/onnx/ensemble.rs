//! One ONNX graph that averages the logits of several models of ours (the fold models of a
//! k-fold cross-validation): every member's graph under its own name prefix (`m0/`, `m1/`,
//! ...), all reading the one input, their `logit`s summed and scaled by 1/k into `logit`.
//! Averaging logits (not probabilities) keeps the output a logit that `calibrate` can
//! calibrate like any model's.
//!
//! Members must be models this toolchain wrote (`trainer train`, `trainer export`): their
//! graphs are fully described by [`super::proto`], so decoding and re-encoding them loses
//! nothing. Refused, naming the member: an imported model (`infer import`: it may hold what
//! our schema does not declare), a calibrated model (averaging calibrated outputs is not
//! the calibration of the average: use the fold's `model.onnx` and calibrate the ensemble),
//! another ensemble, preprocessing that differs from the first member's, an input or output
//! other than ours, or another cube size. Members with tabular features must all take the
//! same columns: the ensemble then takes them too (its second input `features`, raw values),
//! and each member standardises them with its own training statistics.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::build::{self, node, value_info, Dim};
use super::proto::{data_type, ModelProto, StringStringEntryProto};
use super::{metadata, FEATURES_NAME, INPUT_NAME, OUTPUT_NAME};
use crate::preprocess::Preprocess;
use crate::{Error, Result};

/// A member: where it came from (for messages and the metadata), its sha256, the model.
pub struct Member {
    pub path: PathBuf,
    pub sha256: String,
    pub model: ModelProto,
}

fn bad(path: &Path, msg: impl Into<String>) -> Error {
    Error::BadOnnx {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// Checks a member and returns its preprocessing and tabular feature columns (as its
/// metadata lists them).
fn check(m: &Member) -> Result<(Preprocess, Option<String>)> {
    let md = metadata(&m.model);
    if md.keys().any(|k| k.starts_with("calibration.")) {
        return Err(bad(
            &m.path,
            "a calibrated model: average the folds' model.onnx, then calibrate the ensemble",
        ));
    }
    let arch = md.get("architecture").map(String::as_str).unwrap_or("");
    match arch {
        "imported" => {
            return Err(bad(
                &m.path,
                "an imported model (infer import): only models this toolchain wrote are averaged",
            ))
        }
        "ensemble" => return Err(bad(&m.path, "already an ensemble: give its members instead")),
        "" => return Err(bad(&m.path, "no `architecture` in its metadata: not a model of ours")),
        _ => {}
    }
    let g = m.model.graph.as_ref().ok_or_else(|| bad(&m.path, "no graph"))?;
    let names = |v: &[super::proto::ValueInfoProto]| v.iter().filter_map(|x| x.name.clone()).collect::<Vec<_>>();
    let features = md.get("features.columns").cloned();
    let inputs: &[&str] = if features.is_some() {
        &[INPUT_NAME, FEATURES_NAME]
    } else {
        &[INPUT_NAME]
    };
    if names(&g.input) != inputs || names(&g.output) != [OUTPUT_NAME] {
        return Err(bad(
            &m.path,
            format!(
                "inputs {:?} and outputs {:?}: a model of ours has inputs {inputs:?} and output `{OUTPUT_NAME}`",
                names(&g.input),
                names(&g.output)
            ),
        ));
    }
    let pre = Preprocess::from_metadata(&md).map_err(|e| bad(&m.path, format!("preprocessing: {e}")))?;
    Ok((pre, features))
}

/// The ensemble of `members` (at least two) with `extra` metadata (tool and provenance).
pub fn ensemble(members: &[Member], extra: &BTreeMap<String, String>) -> Result<ModelProto> {
    let Some(first) = members.first() else {
        return Err(Error::Metadata("an ensemble needs members".into()));
    };
    if members.len() < 2 {
        return Err(bad(&first.path, "an ensemble needs at least two members"));
    }
    let (pre, features) = agree(members)?;
    let mut nodes = Vec::new();
    let mut initializer = Vec::new();
    let mut logits = Vec::new();
    for (i, m) in members.iter().enumerate() {
        let prefix = format!("m{i}/");
        let ren = |n: &str| {
            if n == INPUT_NAME || n == FEATURES_NAME || n.is_empty() {
                n.to_string()
            } else {
                format!("{prefix}{n}")
            }
        };
        let g = m.model.graph.clone().ok_or_else(|| bad(&m.path, "no graph"))?;
        for mut n in g.node {
            n.input = n.input.iter().map(|s| ren(s)).collect();
            n.output = n.output.iter().map(|s| ren(s)).collect();
            n.name = n.name.map(|s| format!("{prefix}{s}"));
            nodes.push(n);
        }
        for mut t in g.initializer {
            t.name = t.name.map(|s| ren(&s));
            initializer.push(t);
        }
        logits.push(ren(OUTPUT_NAME));
    }
    let k = members.len();
    let refs: Vec<&str> = logits.iter().map(String::as_str).collect();
    nodes.push(node("Sum", &refs, "ensemble/sum", vec![]));
    initializer.push(build::f32_tensor("ensemble/one_over_k", vec![1], &[1.0 / k as f32]));
    nodes.push(node(
        "Mul",
        &["ensemble/sum", "ensemble/one_over_k"],
        OUTPUT_NAME,
        vec![],
    ));
    let first_graph = first.model.graph.as_ref().ok_or_else(|| bad(&first.path, "no graph"))?;
    let c = pre.cube_size as i64;
    let md = ensemble_metadata(members, features.is_some(), extra);
    let graph = super::proto::GraphProto {
        node: nodes,
        name: Some(format!("ensemble of {k}")),
        initializer,
        input: {
            let mut v = vec![value_info(
                INPUT_NAME,
                data_type::FLOAT,
                &[
                    Dim::Param("batch"),
                    Dim::Value(1),
                    Dim::Value(c),
                    Dim::Value(c),
                    Dim::Value(c),
                ],
            )];
            // The members' `features` input, as the first declares it.
            v.extend(
                first_graph
                    .input
                    .iter()
                    .filter(|i| i.name.as_deref() == Some(FEATURES_NAME))
                    .cloned(),
            );
            v
        },
        output: first_graph.output.clone(),
        ..Default::default()
    };
    Ok(ModelProto {
        graph: Some(graph),
        doc_string: Some(format!("mean of {k} patch classifiers' logits")),
        metadata_props: md
            .into_iter()
            .map(|(k, v)| StringStringEntryProto {
                key: Some(k),
                value: Some(v),
            })
            .collect(),
        ..first.model.clone()
    })
}

/// The preprocessing and feature columns every member shares (an error naming the first
/// member that differs).
fn agree(members: &[Member]) -> Result<(Preprocess, Option<String>)> {
    let first = &members[0];
    let (pre, features) = check(first)?;
    for m in &members[1..] {
        let (p, f) = check(m)?;
        if p != pre {
            return Err(bad(
                &m.path,
                format!(
                    "preprocessing ({p}) differs from {}'s ({pre}): members must see the same cubes",
                    first.path.display()
                ),
            ));
        }
        if f != features {
            return Err(bad(
                &m.path,
                format!(
                    "tabular features {} differ from {}'s {}: members must take the same columns",
                    f.as_deref().unwrap_or("(none)"),
                    first.path.display(),
                    features.as_deref().unwrap_or("(none)")
                ),
            ));
        }
    }
    Ok((pre, features))
}

/// The ensemble's metadata: the first member's preprocessing, input and output entries, what
/// the members are, and `extra`.
fn ensemble_metadata(members: &[Member], has_features: bool, extra: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let (first, k) = (&members[0], members.len());
    let mut md = metadata(&first.model);
    md.retain(|key, _| {
        key.starts_with("preprocess.")
            || key.starts_with("input.")
            || key.starts_with("output.")
            || key == "format"
            || key == "features.columns"
    });
    if has_features {
        md.insert(
            "features.meaning".into(),
            format!(
                "second input `{FEATURES_NAME}`: raw values of features.columns in that order; each member \
                 standardises them with its own training statistics (in its graph)"
            ),
        );
    }
    md.insert("architecture".into(), "ensemble".into());
    md.insert("ensemble.size".into(), k.to_string());
    md.insert(
        "ensemble.members".into(),
        members
            .iter()
            .map(|m| {
                let md = metadata(&m.model);
                format!(
                    "{} sha256:{} ({})",
                    m.path.display(),
                    m.sha256,
                    md.get("architecture").cloned().unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("; "),
    );
    md.insert(
        "output.meaning".into(),
        format!("logit of P(nodule): the mean of the {k} members' logits; probability = sigmoid(logit)"),
    );
    md.extend(extra.iter().map(|(a, b)| (a.clone(), b.clone())));
    md
}
