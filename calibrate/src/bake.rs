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
use models::calibration::{Baked, CalibrationFile, Method};
use models::onnx::build::{self, int, node, Dim};
use models::onnx::proto::*;

use crate::CalError;

/// A float32 vector initializer.
fn scalar_f32(name: &str, v: Vec<f32>) -> TensorProto {
    build::f32_tensor(name, vec![v.len() as i64], &v)
}

/// A `[batch, 1]` graph output.
fn output(name: &str, elem: i32) -> ValueInfoProto {
    build::value_info(name, elem, &[Dim::Param("batch"), Dim::Value(1)])
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

/// Initializers and nodes appended to the graph.
#[derive(Default)]
struct Nodes {
    inits: Vec<TensorProto>,
    nodes: Vec<NodeProto>,
}

impl Nodes {
    fn init(&mut self, name: &str, v: Vec<f32>) {
        self.inits.push(scalar_f32(name, v));
    }

    fn op(&mut self, op: &str, inputs: &[&str], out: &str) {
        self.nodes.push(node(op, inputs, out, vec![]));
    }
}

/// `probability = sigmoid(logit / T)`.
fn temperature(n: &mut Nodes, cal: &CalibrationFile, logit: &str) {
    n.init("calibration.temperature", vec![cal.temperature.temperature as f32]);
    n.op("Div", &[logit, "calibration.temperature"], "calibration.z");
    n.op("Sigmoid", &["calibration.z"], "probability");
}

/// `probability = sigmoid(a · logit + b)`.
fn platt(n: &mut Nodes, cal: &CalibrationFile, logit: &str) {
    n.init("calibration.platt_a", vec![cal.platt.a as f32]);
    n.init("calibration.platt_b", vec![cal.platt.b as f32]);
    n.op("Mul", &[logit, "calibration.platt_a"], "calibration.az");
    n.op("Add", &["calibration.az", "calibration.platt_b"], "calibration.z");
    n.op("Sigmoid", &["calibration.z"], "probability");
}

/// The isotonic map without control flow (see the module documentation), clipped to [0, 1].
fn isotonic(n: &mut Nodes, cal: &CalibrationFile, logit: &str) {
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
    n.init("calibration.iso_lo", lo);
    n.init("calibration.iso_hi", hi);
    n.init("calibration.iso_slope", slope);
    n.init("calibration.iso_y0", vec![y[0] as f32]);
    n.inits.push(TensorProto {
        dims: vec![1],
        data_type: Some(data_type::INT64),
        name: Some("calibration.axis1".into()),
        raw_data: Some(1i64.to_le_bytes().to_vec()),
        ..Default::default()
    });
    n.op("Min", &[logit, "calibration.iso_hi"], "calibration.iso_min");
    n.op(
        "Max",
        &["calibration.iso_min", "calibration.iso_lo"],
        "calibration.iso_clip",
    );
    n.op(
        "Sub",
        &["calibration.iso_clip", "calibration.iso_lo"],
        "calibration.iso_d",
    );
    n.op(
        "Mul",
        &["calibration.iso_d", "calibration.iso_slope"],
        "calibration.iso_e",
    );
    n.nodes.push(node(
        "ReduceSum",
        &["calibration.iso_e", "calibration.axis1"],
        "calibration.iso_sum",
        vec![int("keepdims", 1)],
    ));
    n.op(
        "Add",
        &["calibration.iso_sum", "calibration.iso_y0"],
        "calibration.iso_p",
    );
    // f32 slopes summed over many knots can overshoot [0, 1] by ~1e-6.
    n.init("calibration.zero", vec![0.0]);
    n.init("calibration.one", vec![1.0]);
    n.op("Max", &["calibration.iso_p", "calibration.zero"], "calibration.iso_lo0");
    n.op("Min", &["calibration.iso_lo0", "calibration.one"], "probability");
}

/// `decision = int64(logit >= threshold)`.
fn decision(n: &mut Nodes, threshold_logit: f64, logit: &str) {
    n.init("calibration.threshold_logit", vec![threshold_f32(threshold_logit)]);
    n.op(
        "GreaterOrEqual",
        &[logit, "calibration.threshold_logit"],
        "calibration.ge",
    );
    n.nodes.push(node(
        "Cast",
        &["calibration.ge"],
        "decision",
        vec![int("to", i64::from(data_type::INT64))],
    ));
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
    let mut n = Nodes::default();
    match cal.method {
        Method::Temperature => temperature(&mut n, cal, logit),
        Method::Platt => platt(&mut n, cal, logit),
        Method::Isotonic => isotonic(&mut n, cal, logit),
    }
    decision(&mut n, op.threshold_logit, logit);
    g.initializer.extend(n.inits);
    g.node.extend(n.nodes);
    g.output.push(output("probability", data_type::FLOAT));
    g.output.push(output("decision", data_type::INT64));
    let mut md = models::onnx::metadata(&model);
    md.extend(Baked::metadata_of(cal, op));
    md.insert("output.probability".into(), "calibrated probability of a nodule".into());
    md.insert(
        "output.decision".into(),
        format!("1 when logit >= {} ({}), else 0", op.threshold_logit, op.name),
    );
    model.metadata_props = md
        .into_iter()
        .map(|(k, v)| StringStringEntryProto {
            key: Some(k),
            value: Some(v),
        })
        .collect();
    Ok(model)
}
