//! `model.calibrated.onnx`: the exported network with the chosen calibration and the
//! default operating point appended as ONNX nodes, so any ONNX consumer gets calibrated
//! output without our code.
//!
//! Outputs: `logit` `[batch, 1]` (unchanged), `probability` `[batch, 1]` (calibrated) and
//! `decision` `[batch, 1]` int64 (`logit >= threshold_logit`). The parameters are recorded
//! in `metadata_props` under `calibration.*`.
//!
//! Isotonic regression (linear between knots, clipped outside) is written without control
//! flow: with knots `x₀ < … < x_k`, values `y`, and slopes `sᵢ = (yᵢ₊₁ − yᵢ)/(xᵢ₊₁ − xᵢ)`,
//! `p(z) = y₀ + Σᵢ sᵢ · (clip(z, xᵢ, xᵢ₊₁) − xᵢ)`: Min/Max against the knot vectors
//! broadcast `[N, 1]` to `[N, k]`, then Sub, Mul, ReduceSum.
use models::calibration::{CalibrationFile, Method};
use models::onnx::proto::*;

use crate::CalError;

fn scalar_f32(name: &str, v: Vec<f32>) -> TensorProto {
    TensorProto {
        dims: vec![v.len() as i64],
        data_type: Some(data_type::FLOAT),
        name: Some(name.into()),
        raw_data: Some(v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        ..Default::default()
    }
}

fn node(op: &str, inputs: &[&str], output: &str, attribute: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.to_string()],
        name: Some(format!("calibration/{output}")),
        op_type: Some(op.into()),
        attribute,
        ..Default::default()
    }
}

fn output(name: &str, elem: i32) -> ValueInfoProto {
    use tensor_shape_proto::{dimension::Value as DV, Dimension};
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(elem),
                shape: Some(TensorShapeProto {
                    dim: vec![
                        Dimension {
                            value: Some(DV::DimParam("batch".into())),
                            denotation: None,
                        },
                        Dimension {
                            value: Some(DV::DimValue(1)),
                            denotation: None,
                        },
                    ],
                }),
            })),
            denotation: None,
        }),
        doc_string: None,
    }
}

/// The smallest float32 not below `t`: `logit >= t` in float32 then agrees with the f64
/// comparison `infer` makes (rounding down could admit a logit just below the cut).
fn threshold_f32(t: f64) -> f32 {
    let f = t as f32;
    if f64::from(f) < t {
        f.next_up()
    } else {
        f
    }
}

/// Appends the calibration and decision to `model` (the one `cal` was fitted for).
pub fn calibrated_model(mut model: ModelProto, cal: &CalibrationFile) -> Result<ModelProto, CalError> {
    let op = cal
        .operating_point()
        .ok_or_else(|| CalError::Model("the calibration has no default operating point".into()))?;
    let g = model
        .graph
        .as_mut()
        .ok_or_else(|| CalError::Model("it has no graph".into()))?;
    let logit = models::onnx::OUTPUT_NAME;
    if !g.output.iter().any(|o| o.name.as_deref() == Some(logit)) {
        return Err(CalError::Model(format!("it has no `{logit}` output to calibrate")));
    }
    if g.output.iter().any(|o| o.name.as_deref() == Some("probability")) {
        return Err(CalError::Model(
            "it is already calibrated (it has a `probability` output)".into(),
        ));
    }
    let (mut inits, mut nodes) = (Vec::new(), Vec::new());
    match cal.method {
        Method::Temperature => {
            inits.push(scalar_f32(
                "calibration.temperature",
                vec![cal.temperature.temperature as f32],
            ));
            nodes.push(node(
                "Div",
                &[logit, "calibration.temperature"],
                "calibration.z",
                vec![],
            ));
            nodes.push(node("Sigmoid", &["calibration.z"], "probability", vec![]));
        }
        Method::Platt => {
            inits.push(scalar_f32("calibration.platt_a", vec![cal.platt.a as f32]));
            inits.push(scalar_f32("calibration.platt_b", vec![cal.platt.b as f32]));
            nodes.push(node("Mul", &[logit, "calibration.platt_a"], "calibration.az", vec![]));
            nodes.push(node(
                "Add",
                &["calibration.az", "calibration.platt_b"],
                "calibration.z",
                vec![],
            ));
            nodes.push(node("Sigmoid", &["calibration.z"], "probability", vec![]));
        }
        Method::Isotonic => {
            let (x, y) = (&cal.isotonic.x, &cal.isotonic.y);
            // One knot: a constant; give it one flat segment so the graph shape is uniform.
            let (lo, hi, slope): (Vec<f32>, Vec<f32>, Vec<f32>) = if x.len() < 2 {
                (vec![x[0] as f32], vec![x[0] as f32 + 1.0], vec![0.0])
            } else {
                let k = x.len() - 1;
                (
                    (0..k).map(|i| x[i] as f32).collect(),
                    (1..=k).map(|i| x[i] as f32).collect(),
                    (0..k).map(|i| ((y[i + 1] - y[i]) / (x[i + 1] - x[i])) as f32).collect(),
                )
            };
            inits.push(scalar_f32("calibration.iso_lo", lo));
            inits.push(scalar_f32("calibration.iso_hi", hi));
            inits.push(scalar_f32("calibration.iso_slope", slope));
            inits.push(scalar_f32("calibration.iso_y0", vec![y[0] as f32]));
            inits.push(TensorProto {
                dims: vec![1],
                data_type: Some(data_type::INT64),
                name: Some("calibration.axis1".into()),
                raw_data: Some(1i64.to_le_bytes().to_vec()),
                ..Default::default()
            });
            nodes.push(node(
                "Min",
                &[logit, "calibration.iso_hi"],
                "calibration.iso_min",
                vec![],
            ));
            nodes.push(node(
                "Max",
                &["calibration.iso_min", "calibration.iso_lo"],
                "calibration.iso_clip",
                vec![],
            ));
            nodes.push(node(
                "Sub",
                &["calibration.iso_clip", "calibration.iso_lo"],
                "calibration.iso_d",
                vec![],
            ));
            nodes.push(node(
                "Mul",
                &["calibration.iso_d", "calibration.iso_slope"],
                "calibration.iso_e",
                vec![],
            ));
            let keep = AttributeProto {
                name: Some("keepdims".into()),
                r#type: Some(attribute_type::INT),
                i: Some(1),
                ..Default::default()
            };
            nodes.push(node(
                "ReduceSum",
                &["calibration.iso_e", "calibration.axis1"],
                "calibration.iso_sum",
                vec![keep],
            ));
            nodes.push(node(
                "Add",
                &["calibration.iso_sum", "calibration.iso_y0"],
                "calibration.iso_p",
                vec![],
            ));
            // f32 slopes summed over many knots can overshoot [0, 1] by ~1e-6.
            inits.push(scalar_f32("calibration.zero", vec![0.0]));
            inits.push(scalar_f32("calibration.one", vec![1.0]));
            nodes.push(node(
                "Max",
                &["calibration.iso_p", "calibration.zero"],
                "calibration.iso_lo0",
                vec![],
            ));
            nodes.push(node(
                "Min",
                &["calibration.iso_lo0", "calibration.one"],
                "probability",
                vec![],
            ));
        }
    }
    inits.push(scalar_f32(
        "calibration.threshold_logit",
        vec![threshold_f32(op.threshold_logit)],
    ));
    nodes.push(node(
        "GreaterOrEqual",
        &[logit, "calibration.threshold_logit"],
        "calibration.ge",
        vec![],
    ));
    let to = AttributeProto {
        name: Some("to".into()),
        r#type: Some(attribute_type::INT),
        i: Some(i64::from(data_type::INT64)),
        ..Default::default()
    };
    nodes.push(node("Cast", &["calibration.ge"], "decision", vec![to]));
    g.initializer.extend(inits);
    g.node.extend(nodes);
    g.output.push(output("probability", data_type::FLOAT));
    g.output.push(output("decision", data_type::INT64));
    let params = match cal.method {
        Method::Temperature => serde_json::json!({ "temperature": cal.temperature.temperature }),
        Method::Platt => serde_json::json!({ "a": cal.platt.a, "b": cal.platt.b }),
        Method::Isotonic => serde_json::json!({ "x": cal.isotonic.x, "y": cal.isotonic.y }),
    };
    let mut md = models::onnx::metadata(&model);
    for (k, v) in [
        ("calibration.method", cal.method.name().to_string()),
        ("calibration.parameters_json", params.to_string()),
        ("calibration.operating_point", op.name.clone()),
        ("calibration.threshold_logit", op.threshold_logit.to_string()),
        (
            "calibration.threshold_probability",
            op.threshold_probability.to_string(),
        ),
        ("calibration.source_model_sha256", cal.model.sha256.clone()),
        ("calibration.n", cal.data.n.to_string()),
        ("calibration.prevalence", cal.data.prevalence.to_string()),
        ("output.probability", "calibrated probability of a nodule".to_string()),
        (
            "output.decision",
            format!("1 when logit >= {} ({}), else 0", op.threshold_logit, op.name),
        ),
    ] {
        md.insert(k.to_string(), v);
    }
    model.metadata_props = md
        .into_iter()
        .map(|(k, v)| StringStringEntryProto {
            key: Some(k),
            value: Some(v),
        })
        .collect();
    Ok(model)
}
