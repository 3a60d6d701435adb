//! Building ONNX graph pieces: nodes, attributes, typed values and initializers. Shared by
//! the exporter ([`super::export`]) and the calibrated model `calibrate` appends nodes to,
//! so both write the protobuf one way.
use super::proto::*;

/// One dimension of a value's shape: fixed, or named (symbolic, e.g. `batch`).
#[derive(Debug, Clone, Copy)]
pub enum Dim<'a> {
    Value(i64),
    Param(&'a str),
}

/// A graph input or output: `name`, element type `elem` (a [`data_type`] code), shape `dims`.
pub fn value_info(name: &str, elem: i32, dims: &[Dim]) -> ValueInfoProto {
    use tensor_shape_proto::{dimension::Value as DV, Dimension};
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Dim::Value(v) => DV::DimValue(*v),
                Dim::Param(p) => DV::DimParam((*p).to_string()),
            }),
            denotation: None,
        })
        .collect();
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(elem),
                shape: Some(TensorShapeProto { dim }),
            })),
            denotation: None,
        }),
        doc_string: None,
    }
}

/// A node computing `output` from `inputs`, named after its output.
pub fn node(op: &str, inputs: &[&str], output: &str, attribute: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.to_string()],
        name: Some(output.to_string()),
        op_type: Some(op.to_string()),
        attribute,
        ..Default::default()
    }
}

/// An integer-list attribute.
pub fn ints(name: &str, v: Vec<i64>) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(attribute_type::INTS),
        ints: v,
        ..Default::default()
    }
}

/// An integer attribute.
pub fn int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(attribute_type::INT),
        i: Some(v),
        ..Default::default()
    }
}

/// A float attribute.
pub fn float(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(attribute_type::FLOAT),
        f: Some(v),
        ..Default::default()
    }
}

/// A float32 initializer of shape `dims` (little-endian raw data).
pub fn f32_tensor(name: &str, dims: Vec<i64>, values: &[f32]) -> TensorProto {
    TensorProto {
        dims,
        data_type: Some(data_type::FLOAT),
        name: Some(name.into()),
        raw_data: Some(values.iter().flat_map(|x| x.to_le_bytes()).collect()),
        ..Default::default()
    }
}
