//! Editing an ONNX file at the protobuf wire level, without decoding and re-encoding it.
//!
//! [`super::proto`] declares the part of ONNX this toolchain writes; decoding a model from
//! elsewhere with it and encoding it again would silently drop what it does not declare
//! (subgraphs of `If`/`Loop`, external data, functions, sparse initializers...). The edits
//! here copy every field they do not touch byte for byte, so a model keeps all it had:
//! * [`rewrite`] renames values throughout the main graph (nodes, initializers, inputs,
//!   outputs, value infos, and the subgraphs of node attributes), can drop the graph's
//!   declared outputs, appends nodes, initializers and outputs, and replaces the model's
//!   `metadata_props`.
//! * [`inline_external`] moves tensors stored as external data (PyTorch's exporter writes a
//!   model's weights into a `.onnx.data` file beside it) into the model, so it is one file.
//!
//! Written by hand: no kept crate edits protobuf without a schema, and this needs four wire
//! types and the field numbers of six ONNX messages (from `onnx.proto`).
use std::collections::HashMap;

use prost::Message;

use super::proto::{NodeProto, StringStringEntryProto, TensorProto, ValueInfoProto};

/// One field of a protobuf message: its number, wire type, and where it lies in the buffer.
struct Field {
    num: u64,
    wire: u8,
    /// The whole field, tag included.
    start: usize,
    end: usize,
    /// The payload of a length-delimited field.
    payload: Option<(usize, usize)>,
}

fn varint(buf: &[u8], at: &mut usize) -> Result<u64, String> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*at).ok_or("truncated varint")?;
        *at += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("varint longer than 10 bytes".into())
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// The fields of a message, in order.
fn fields(buf: &[u8]) -> Result<Vec<Field>, String> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let start = at;
        let tag = varint(buf, &mut at)?;
        let (num, wire) = (tag >> 3, (tag & 7) as u8);
        if num == 0 {
            return Err("field number 0".into());
        }
        let payload = match wire {
            0 => {
                varint(buf, &mut at)?;
                None
            }
            1 => {
                at = at
                    .checked_add(8)
                    .filter(|&e| e <= buf.len())
                    .ok_or("truncated fixed64")?;
                None
            }
            5 => {
                at = at
                    .checked_add(4)
                    .filter(|&e| e <= buf.len())
                    .ok_or("truncated fixed32")?;
                None
            }
            2 => {
                let len = varint(buf, &mut at)?;
                let s = at;
                at = usize::try_from(len)
                    .ok()
                    .and_then(|l| at.checked_add(l))
                    .filter(|&e| e <= buf.len())
                    .ok_or("truncated length-delimited field")?;
                Some((s, at))
            }
            w => return Err(format!("wire type {w} (protobuf groups) has no place in ONNX")),
        };
        out.push(Field {
            num,
            wire,
            start,
            end: at,
            payload,
        });
    }
    Ok(out)
}

/// Appends field `num` as length-delimited `payload`.
fn put_bytes(out: &mut Vec<u8>, num: u64, payload: &[u8]) {
    put_varint(out, (num << 3) | 2);
    put_varint(out, payload.len() as u64);
    out.extend_from_slice(payload);
}

/// Appends an encoded message as field `num`.
fn put_message(out: &mut Vec<u8>, num: u64, m: &impl Message) {
    put_bytes(out, num, &m.encode_to_vec());
}

/// How a message's length-delimited fields are edited: for each field number, what it holds.
#[derive(Clone, Copy)]
enum Kind {
    /// A value name: renamed through the map.
    Name,
    Graph,
    Node,
    Attribute,
    ValueInfo,
    Tensor,
    SparseTensor,
    TensorAnnotation,
}

/// What each message's fields hold (onnx.proto), for the fields renaming reaches.
fn schema(kind: Kind, num: u64) -> Option<Kind> {
    use Kind::*;
    match (kind, num) {
        // GraphProto: node, initializer, input, output, value_info, quantization_annotation,
        // sparse_initializer.
        (Graph, 1) => Some(Node),
        (Graph, 5) => Some(Tensor),
        (Graph, 11..=13) => Some(ValueInfo),
        (Graph, 14) => Some(TensorAnnotation),
        (Graph, 15) => Some(SparseTensor),
        // NodeProto: input, output, attribute.
        (Node, 1 | 2) => Some(Name),
        (Node, 5) => Some(Attribute),
        // AttributeProto: g, graphs (subgraphs may read outer values by name).
        (Attribute, 6 | 11) => Some(Graph),
        // ValueInfoProto: name; TensorProto: name; TensorAnnotation: tensor_name.
        (ValueInfo, 1) | (Tensor, 8) | (TensorAnnotation, 1) => Some(Name),
        // SparseTensorProto: values (its name is the initializer's).
        (SparseTensor, 1) => Some(Tensor),
        _ => None,
    }
}

/// How deep messages may nest (graph → node → attribute → subgraph is three levels): real
/// models nest a few subgraphs; 3,000 nested `If`s would otherwise overflow the stack.
pub const MAX_NESTING: usize = 96;

fn too_deep(depth: usize) -> Result<(), String> {
    if depth > MAX_NESTING {
        return Err(format!(
            "subgraphs nested more than {} deep (If/Loop/Scan bodies inside each other): not read",
            MAX_NESTING / 3
        ));
    }
    Ok(())
}

/// `msg` (of `kind`) with value names renamed through `map`; untouched fields are copied.
fn renamed(msg: &[u8], kind: Kind, map: &HashMap<String, String>, depth: usize) -> Result<Vec<u8>, String> {
    if map.is_empty() {
        return Ok(msg.to_vec());
    }
    too_deep(depth)?;
    let mut out = Vec::with_capacity(msg.len());
    for f in fields(msg)? {
        match (f.payload, schema(kind, f.num)) {
            (Some((s, e)), Some(Kind::Name)) => {
                let name = std::str::from_utf8(&msg[s..e]).map_err(|_| "a value name is not UTF-8")?;
                match map.get(name) {
                    Some(new) => put_bytes(&mut out, f.num, new.as_bytes()),
                    None => out.extend_from_slice(&msg[f.start..f.end]),
                }
            }
            (Some((s, e)), Some(k)) => put_bytes(&mut out, f.num, &renamed(&msg[s..e], k, map, depth + 1)?),
            _ => out.extend_from_slice(&msg[f.start..f.end]),
        }
    }
    Ok(out)
}

/// An edit of a model's main graph and metadata (see [`rewrite`]).
#[derive(Debug, Default)]
pub struct Edit {
    /// Value names to change throughout the main graph and its subgraphs.
    pub rename: HashMap<String, String>,
    /// Drop the graph's declared outputs (before `outputs` are added).
    pub drop_outputs: bool,
    pub nodes: Vec<NodeProto>,
    pub initializers: Vec<TensorProto>,
    pub outputs: Vec<ValueInfoProto>,
    /// Replaces every `metadata_props` entry when `Some`.
    pub metadata: Option<Vec<(String, String)>>,
}

/// Applies `edit` to the model `bytes`; every field it does not concern is copied byte for
/// byte. An error says what in the bytes is not a protobuf ONNX model.
pub fn rewrite(bytes: &[u8], edit: &Edit) -> Result<Vec<u8>, String> {
    let top = fields(bytes)?;
    let last_graph = top.iter().rposition(|f| f.num == 7 && f.wire == 2);
    let Some(last_graph) = last_graph else {
        return Err("the model has no graph".into());
    };
    let mut out = Vec::with_capacity(bytes.len() + 4096);
    for (i, f) in top.iter().enumerate() {
        match (f.num, f.payload) {
            (7, Some((s, e))) => {
                let mut g = Vec::with_capacity(e - s + 1024);
                for gf in fields(&bytes[s..e])? {
                    let raw = &bytes[s + gf.start..s + gf.end];
                    match (gf.num, gf.payload, schema(Kind::Graph, gf.num)) {
                        (12, _, _) if edit.drop_outputs => {}
                        (_, Some((ps, pe)), Some(k)) => {
                            put_bytes(&mut g, gf.num, &renamed(&bytes[s + ps..s + pe], k, &edit.rename, 1)?)
                        }
                        _ => g.extend_from_slice(raw),
                    }
                }
                if i == last_graph {
                    for n in &edit.nodes {
                        put_message(&mut g, 1, n);
                    }
                    for t in &edit.initializers {
                        put_message(&mut g, 5, t);
                    }
                    for o in &edit.outputs {
                        put_message(&mut g, 12, o);
                    }
                }
                put_bytes(&mut out, 7, &g);
            }
            (14, _) if edit.metadata.is_some() => {}
            _ => out.extend_from_slice(&bytes[f.start..f.end]),
        }
    }
    for (k, v) in edit.metadata.iter().flatten() {
        put_message(
            &mut out,
            14,
            &StringStringEntryProto {
                key: Some(k.clone()),
                value: Some(v.clone()),
            },
        );
    }
    Ok(out)
}

/// Where one tensor's bytes lie outside the model file (`TensorProto.external_data`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalRef {
    pub tensor: String,
    /// The file, relative to the model's folder, as the model states it.
    pub location: String,
    pub offset: u64,
    /// `None`: to the end of the file.
    pub length: Option<u64>,
}

/// The fields through which tensors are reached (onnx.proto): the graph's nodes,
/// initializers and sparse initializers; a node's attributes; an attribute's tensor(s),
/// subgraph(s) and sparse tensor(s); a sparse tensor's values and indices.
fn tensor_schema(kind: Kind, num: u64) -> Option<Kind> {
    use Kind::*;
    match (kind, num) {
        (Graph, 1) => Some(Node),
        (Graph, 5) => Some(Tensor),
        (Graph, 15) => Some(SparseTensor),
        (Node, 5) => Some(Attribute),
        (Attribute, 5 | 10) => Some(Tensor),
        (Attribute, 6 | 11) => Some(Graph),
        (Attribute, 22 | 23) => Some(SparseTensor),
        (SparseTensor, 1 | 2) => Some(Tensor),
        _ => None,
    }
}

type Loader<'a> = dyn FnMut(&ExternalRef) -> Result<Vec<u8>, String> + 'a;

/// A tensor message with external data made inline: `external_data` (13) and
/// `data_location` (14) dropped, `raw_data` (9) appended; other fields copied. `None` when
/// its data are not external.
fn inline_tensor(msg: &[u8], load: &mut Loader) -> Result<Option<Vec<u8>>, String> {
    let fs = fields(msg)?;
    let mut external = false;
    let mut entries = Vec::new();
    let mut name = String::new();
    for f in &fs {
        match (f.num, f.payload) {
            (14, None) => {
                let mut at = f.start;
                varint(msg, &mut at)?;
                external = varint(msg, &mut at)? == 1;
            }
            (13, Some((s, e))) => entries
                .push(StringStringEntryProto::decode(&msg[s..e]).map_err(|e| format!("an external_data entry: {e}"))?),
            (8, Some((s, e))) => name = String::from_utf8_lossy(&msg[s..e]).into_owned(),
            _ => {}
        }
    }
    if !external {
        return Ok(None);
    }
    let get = |k: &str| {
        entries
            .iter()
            .find(|e| e.key.as_deref() == Some(k))
            .and_then(|e| e.value.clone())
    };
    let num = |k: &str| -> Result<Option<u64>, String> {
        get(k)
            .map(|v| {
                v.parse::<u64>()
                    .map_err(|_| format!("tensor `{name}`: external data {k} {v:?} is not a number"))
            })
            .transpose()
    };
    let r = ExternalRef {
        location: get("location").ok_or_else(|| format!("tensor `{name}`: external data without a location"))?,
        offset: num("offset")?.unwrap_or(0),
        length: num("length")?,
        tensor: name,
    };
    let data = load(&r)?;
    let mut out = Vec::with_capacity(msg.len() + data.len() + 8);
    for f in &fs {
        if !matches!(f.num, 9 | 13 | 14) {
            out.extend_from_slice(&msg[f.start..f.end]);
        }
    }
    put_bytes(&mut out, 9, &data);
    Ok(Some(out))
}

/// `msg` (of `kind`) with the external tensors it reaches made inline; counts them.
fn inlined(msg: &[u8], kind: Kind, load: &mut Loader, n: &mut usize, depth: usize) -> Result<Vec<u8>, String> {
    too_deep(depth)?;
    if let Kind::Tensor = kind {
        if let Some(t) = inline_tensor(msg, load)? {
            *n += 1;
            return Ok(t);
        }
        return Ok(msg.to_vec());
    }
    let mut out = Vec::with_capacity(msg.len());
    for f in fields(msg)? {
        match (f.payload, tensor_schema(kind, f.num)) {
            (Some((s, e)), Some(k)) => put_bytes(&mut out, f.num, &inlined(&msg[s..e], k, load, n, depth + 1)?),
            _ => out.extend_from_slice(&msg[f.start..f.end]),
        }
    }
    Ok(out)
}

/// The model `bytes` with every tensor of its graph (subgraphs included) that is stored as
/// external data made inline; `load` reads one tensor's bytes. Returns the bytes unchanged
/// when there is none, and how many were inlined.
pub fn inline_external(bytes: &[u8], load: &mut Loader) -> Result<(Vec<u8>, usize), String> {
    let mut n = 0;
    let mut out = Vec::with_capacity(bytes.len());
    for f in fields(bytes)? {
        match (f.num, f.payload) {
            (7, Some((s, e))) => put_bytes(&mut out, 7, &inlined(&bytes[s..e], Kind::Graph, load, &mut n, 0)?),
            _ => out.extend_from_slice(&bytes[f.start..f.end]),
        }
    }
    if n == 0 {
        return Ok((bytes.to_vec(), 0));
    }
    Ok((out, n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::proto::*;

    /// A graph with a field our schema does not declare (an attribute's subgraph `g`, field
    /// 6) reading an outer value by name.
    fn model_with_subgraph() -> Vec<u8> {
        let inner = GraphProto {
            node: vec![crate::onnx::build::node(
                "Identity",
                &["probability"],
                "inner_out",
                vec![],
            )],
            name: Some("body".into()),
            ..Default::default()
        };
        let mut attr = Vec::new();
        put_bytes(&mut attr, 1, b"then_branch");
        put_varint(&mut attr, 20 << 3);
        put_varint(&mut attr, 5);
        put_message(&mut attr, 6, &inner);
        let node = crate::onnx::build::node("Sigmoid", &["x"], "probability", vec![]);
        let mut node_bytes = node.encode_to_vec();
        put_bytes(&mut node_bytes, 5, &attr);
        let mut graph = Vec::new();
        put_bytes(&mut graph, 1, &node_bytes);
        put_message(
            &mut graph,
            12,
            &crate::onnx::build::value_info("probability", data_type::FLOAT, &[]),
        );
        let mut model = Vec::new();
        put_varint(&mut model, 1 << 3);
        put_varint(&mut model, 8);
        put_bytes(&mut model, 7, &graph);
        put_message(
            &mut model,
            14,
            &StringStringEntryProto {
                key: Some("k".into()),
                value: Some("v".into()),
            },
        );
        // An unknown top-level field (number 99) must survive too.
        put_bytes(&mut model, 99, b"keep");
        model
    }

    #[test]
    fn an_empty_edit_changes_nothing() {
        let m = model_with_subgraph();
        assert_eq!(rewrite(&m, &Edit::default()).expect("rewrite"), m);
    }

    #[test]
    fn renames_reach_subgraphs_and_unknown_fields_survive() {
        let m = model_with_subgraph();
        let edit = Edit {
            rename: [("probability".to_string(), "source.probability".to_string())].into(),
            drop_outputs: true,
            nodes: vec![crate::onnx::build::node(
                "Identity",
                &["source.probability"],
                "logit",
                vec![],
            )],
            outputs: vec![crate::onnx::build::value_info("logit", data_type::FLOAT, &[])],
            metadata: Some(vec![("a".into(), "b".into())]),
            ..Default::default()
        };
        let out = rewrite(&m, &edit).expect("rewrite");
        let text = String::from_utf8_lossy(&out);
        // Node names are another namespace: the Sigmoid node keeps its name `probability`.
        assert_eq!(
            text.matches("probability").count(),
            text.matches("source.probability").count() + 1,
            "an old value name is left"
        );
        assert_eq!(
            text.matches("source.probability").count(),
            3,
            "node output, subgraph input, new node input"
        );
        assert!(out.ends_with(&{
            let mut e = Vec::new();
            put_message(
                &mut e,
                14,
                &StringStringEntryProto {
                    key: Some("a".into()),
                    value: Some("b".into()),
                },
            );
            e
        }));
        assert!(text.contains("keep") && !text.contains("\u{1}k"));
        let back = ModelProto::decode(out.as_slice()).expect("decode");
        let g = back.graph.expect("graph");
        assert_eq!(g.output.len(), 1);
        assert_eq!(g.output[0].name.as_deref(), Some("logit"));
        assert_eq!(g.node.len(), 2);
        assert_eq!(g.node[0].output, ["source.probability"]);
    }

    #[test]
    fn malformed_bytes_are_errors_not_panics() {
        for bad in [
            &b"\xff"[..],
            b"\x3a\x05ab",
            b"\x0b",
            b"\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",
            b"",
        ] {
            assert!(rewrite(bad, &Edit::default()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn external_tensors_are_made_inline() {
        let w: Vec<u8> = (0u8..16).collect();
        let external = TensorProto {
            dims: vec![4],
            data_type: Some(data_type::FLOAT),
            name: Some("w".into()),
            ..Default::default()
        };
        let mut t = external.encode_to_vec();
        for (k, v) in [("location", "m.onnx.data"), ("offset", "4"), ("length", "16")] {
            put_message(
                &mut t,
                13,
                &StringStringEntryProto {
                    key: Some(k.into()),
                    value: Some(v.into()),
                },
            );
        }
        put_varint(&mut t, 14 << 3);
        put_varint(&mut t, 1);
        let mut graph = Vec::new();
        put_bytes(&mut graph, 5, &t);
        let inline = crate::onnx::build::f32_tensor("b", vec![1], &[1.0]);
        put_message(&mut graph, 5, &inline);
        let mut model = Vec::new();
        put_bytes(&mut model, 7, &graph);
        let mut asked = Vec::new();
        let (out, n) = inline_external(&model, &mut |r: &ExternalRef| {
            asked.push(r.clone());
            Ok(w.clone())
        })
        .expect("inline");
        assert_eq!(n, 1);
        assert_eq!(
            asked,
            [ExternalRef {
                tensor: "w".into(),
                location: "m.onnx.data".into(),
                offset: 4,
                length: Some(16),
            }]
        );
        let m = ModelProto::decode(&out[..]).expect("decode");
        let g = m.graph.expect("graph");
        assert_eq!(g.initializer[0].raw_data.as_deref(), Some(&w[..]));
        assert_eq!(g.initializer[0].name.as_deref(), Some("w"));
        assert_eq!(g.initializer[1], inline);
        assert!(!String::from_utf8_lossy(&out).contains("location"));
        // Nothing external: the bytes come back as they were, and the loader is not asked.
        let (same, n) = inline_external(&out, &mut |_: &ExternalRef| Err("asked".into())).expect("again");
        assert_eq!((same, n), (out.clone(), 0));
        // A loader's refusal is the error.
        let e = inline_external(&model, &mut |r: &ExternalRef| Err(format!("{} refused", r.location)))
            .expect_err("refused");
        assert_eq!(e, "m.onnx.data refused");
    }
}
