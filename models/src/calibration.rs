//! `calibration.yaml`: the artifact `calibrate` writes and `infer` applies. It lives in the
//! contract crate so that the scorer needs no fitting code and `calibrate` can use the
//! scorer (site recalibration) without a dependency cycle.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use metrics::sigmoid;
use crate::{Error, Result};

/// Which calibration maps a raw logit to a probability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    Temperature,
    Platt,
    Isotonic,
}

impl Method {
    pub const ALL: [Method; 3] = [Method::Temperature, Method::Platt, Method::Isotonic];

    pub fn name(self) -> &'static str {
        match self {
            Method::Temperature => "temperature",
            Method::Platt => "platt",
            Method::Isotonic => "isotonic",
        }
    }
}

impl std::str::FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Method::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| format!("unknown method `{s}` (temperature, platt, isotonic)"))
    }
}

/// `p = sigmoid(logit / T)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Temperature {
    pub temperature: f64,
}

/// `p = sigmoid(a * logit + b)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Platt {
    pub a: f64,
    pub b: f64,
    /// Whether Platt's (1999) smoothed targets `(N₊+1)/(N₊+2)` and `1/(N₋+2)` were used.
    pub target_smoothing: bool,
}

/// Isotonic regression of the label on the logit (pool-adjacent-violators): knots `x`
/// (increasing logits) with fitted probabilities `y` (non-decreasing); between knots the
/// probability is interpolated linearly and outside it is clipped to the end values, as
/// scikit-learn's `IsotonicRegression(out_of_bounds="clip")` predicts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Isotonic {
    pub x: Vec<f64>,
    pub y: Vec<f64>,
}

impl Isotonic {
    /// The calibrated probability at a raw logit.
    pub fn apply(&self, z: f64) -> f64 {
        let (x, y) = (&self.x, &self.y);
        if x.is_empty() {
            return f64::NAN;
        }
        if z <= x[0] {
            return y[0];
        }
        let n = x.len();
        if z >= x[n - 1] {
            return y[n - 1];
        }
        let j = x.partition_point(|&v| v <= z) - 1;
        y[j] + (y[j + 1] - y[j]) * (z - x[j]) / (x[j + 1] - x[j])
    }
}

/// A proportion with its Wilson 95% interval and the counts behind it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proportion {
    pub value: Option<f64>,
    pub ci95: Option<[f64; 2]>,
    pub successes: usize,
    pub trials: usize,
}

/// Series-level bootstrap intervals of an operating point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PointBootstrap {
    pub sensitivity_ci95: [f64; 2],
    pub specificity_ci95: [f64; 2],
}

/// One named operating point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperatingPoint {
    pub name: String,
    /// Call positive when the raw model logit is `>=` this.
    pub threshold_logit: f64,
    /// The same cut on the calibrated probability scale of the chosen method.
    pub threshold_probability: f64,
    pub tp: usize,
    pub fp: usize,
    pub tn: usize,
    #[serde(rename = "fn")]
    pub fn_: usize,
    pub sensitivity: Proportion,
    pub specificity: Proportion,
    pub ppv: Proportion,
    pub npv: Proportion,
    pub f1: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap: Option<PointBootstrap>,
}

/// Discrimination and calibration metrics of one set of probabilities.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub auroc: f64,
    /// DeLong 95% interval of the AUROC.
    pub auroc_delong_ci95: [f64; 2],
    /// Series-level bootstrap 95% interval of the AUROC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auroc_bootstrap_ci95: Option<[f64; 2]>,
    /// Average precision (area under the precision–recall curve, step-wise).
    pub auprc: f64,
    pub brier: f64,
    /// Mean negative log-likelihood (natural log), probabilities clipped to [1e-15, 1 − 1e-15].
    pub nll: f64,
    /// Expected calibration error, 15 equal-width bins.
    pub ece_15: f64,
    /// Expected calibration error, 15 equal-mass bins.
    pub adaptive_ece_15: f64,
    /// Maximum calibration error over the 15 equal-width bins.
    pub mce_15: f64,
    /// `b` of the logistic fit `y ~ a + b·logit(p)` (1 is ideal).
    pub calibration_slope: f64,
    /// `a` of the same fit (0 is ideal).
    pub calibration_intercept: f64,
}

/// The model a calibration belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRef {
    pub path: PathBuf,
    pub sha256: String,
}

/// What the calibration was fitted on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataRef {
    pub scores: PathBuf,
    pub n: usize,
    pub n_positive: usize,
    pub prevalence: f64,
    pub n_series: usize,
}

/// How the applied method was chosen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MethodSelection {
    pub criterion: String,
    pub folds_used: usize,
    /// Mean held-out NLL per patch of each method over the folds used.
    pub cv_nll: BTreeMap<String, f64>,
    /// `auto` or `requested`.
    pub chosen_by: String,
}

/// The calibration file's name in a run folder.
pub const CALIBRATION_FILE: &str = "calibration.yaml";
/// The calibrated model's name, beside the calibration file.
pub const BAKED_FILE: &str = "model.calibrated.onnx";

/// Refuses a calibrated model (`model`, sha256 `sha`) used while the `calibration.yaml`
/// beside it names another file of that name (or, written without digests, another
/// calibration): the two come from different calibrate runs, one of them killed half-way or
/// run with `--no-bake`. Nothing to check when no calibration file lies beside it.
pub fn check_beside(model: &Path, sha: &str, baked: &Baked) -> Result<()> {
    let Some(name) = model.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return Ok(());
    };
    let yaml = model.with_file_name(CALIBRATION_FILE);
    if !yaml.exists() {
        return Ok(());
    }
    let cal = CalibrationFile::load(&yaml)?;
    let mismatch = match cal.outputs.get(&name) {
        Some(want) => want != sha,
        None => !baked.same_as(&cal),
    };
    if mismatch {
        return Err(Error::Calibration {
            path: model.to_path_buf(),
            msg: format!(
                "its calibration is not the one {} beside it records (the two come from different calibrate runs: \
                 one killed half-way, or run with --no-bake); run `calibrate` again, or give the calibration to \
                 apply with --calibration",
                yaml.display()
            ),
        });
    }
    Ok(())
}

/// `calibration.yaml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationFile {
    pub tool_version: String,
    pub model: ModelRef,
    pub data: DataRef,
    /// The calibration applied for `calibrated_probability`.
    pub method: Method,
    pub temperature: Temperature,
    pub platt: Platt,
    pub isotonic: Isotonic,
    pub method_selection: MethodSelection,
    /// The operating point used for `decision`.
    pub default_operating_point: String,
    pub operating_points: Vec<OperatingPoint>,
    /// Keys: `uncalibrated`, `temperature`, `platt`, `isotonic`.
    pub metrics: BTreeMap<String, Metrics>,
    /// Series-level bootstrap settings (resamples 0: none).
    pub bootstrap_resamples: usize,
    pub bootstrap_seed: u64,
    #[serde(default)]
    pub warnings: Vec<String>,
    pub note: String,
    /// The files this calibration was written with, beside it (`model.calibrated.onnx`, the
    /// report), by name, with their sha256. `calibration.yaml` is written last: it is the
    /// commit point, and a reader that uses one of these files with it checks the digest,
    /// so files of two calibrate runs (one killed half-way) are never used together.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub outputs: BTreeMap<String, String>,
}

fn bad(path: &Path, msg: String) -> Error {
    Error::Calibration {
        path: path.to_path_buf(),
        msg,
    }
}

impl CalibrationFile {
    /// Calibrated probability of a raw logit under `method`.
    pub fn probability_with(&self, method: Method, z: f64) -> f64 {
        calibrated(method, &self.temperature, &self.platt, &self.isotonic, z)
    }

    /// Calibrated probability of a raw logit under the chosen method.
    pub fn probability(&self, z: f64) -> f64 {
        self.probability_with(self.method, z)
    }

    /// The default operating point.
    pub fn operating_point(&self) -> Option<&OperatingPoint> {
        self.operating_points
            .iter()
            .find(|p| p.name == self.default_operating_point)
    }

    /// Reads and checks a calibration file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = files::read_regular_to_string(path)?;
        let cal: Self = yaml_serde::from_str(&text).map_err(|e| files::Error::parse(path, "not a calibration file", e))?;
        cal.check().map_err(|m| bad(path, m))?;
        Ok(cal)
    }

    /// Internal consistency: parameters finite and valid, the default point present.
    pub fn check(&self) -> std::result::Result<(), String> {
        if self.operating_point().is_none() {
            return Err(format!(
                "default operating point `{}` is not among the operating points",
                self.default_operating_point
            ));
        }
        check_parameters(&self.temperature, &self.platt, &self.isotonic)?;
        if let Some(p) = self.operating_points.iter().find(|p| !p.threshold_logit.is_finite()) {
            return Err(format!("operating point `{}` has a non-finite threshold", p.name));
        }
        if self.model.sha256.len() != 64 || !self.model.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("model.sha256 is not a sha256 hex digest".into());
        }
        Ok(())
    }

    /// Refuses to apply this calibration to a model it was not fitted for.
    pub fn check_model(&self, cal_path: &Path, model_path: &Path, model_sha256: &str) -> Result<()> {
        if self.model.sha256 != model_sha256 {
            return Err(bad(
                cal_path,
                format!(
                    "this calibration belongs to another model (sha256 {}, fitted for {}), not to {} (sha256 {}); \
                     re-run `calibrate` for this model, or pass --force-calibration if you are sure",
                    short(&self.model.sha256),
                    self.model.path.display(),
                    model_path.display(),
                    short(model_sha256)
                ),
            ));
        }
        Ok(())
    }
}

fn short(s: &str) -> &str {
    s.get(..12).unwrap_or(s)
}

/// The probability `method` gives raw logit `z`, with these parameters.
pub fn calibrated(method: Method, t: &Temperature, p: &Platt, iso: &Isotonic, z: f64) -> f64 {
    match method {
        Method::Temperature => sigmoid(z / t.temperature),
        Method::Platt => sigmoid(p.a * z + p.b),
        Method::Isotonic => iso.apply(z),
    }
}

/// Every method's parameters can be applied: `T > 0`, `a > 0`, finite; isotonic knots finite,
/// `x` increasing, `y` non-decreasing in [0, 1].
fn check_parameters(t: &Temperature, p: &Platt, iso: &Isotonic) -> std::result::Result<(), String> {
    let t = t.temperature;
    if !(t.is_finite() && t > 0.0) {
        return Err(format!("temperature must be a positive number, got {t}"));
    }
    if !(p.a.is_finite() && p.a > 0.0 && p.b.is_finite()) {
        return Err(format!(
            "Platt parameters must be finite with a > 0, got a = {}, b = {}",
            p.a, p.b
        ));
    }
    let increasing = iso.x.windows(2).all(|w| w[0] < w[1]) && iso.y.windows(2).all(|w| w[0] <= w[1]);
    if iso.x.is_empty()
        || iso.x.len() != iso.y.len()
        || !increasing
        || iso.x.iter().any(|v| !v.is_finite())
        || iso.y.iter().any(|v| !(0.0..=1.0).contains(v))
    {
        return Err("isotonic knots must be finite, x increasing, y non-decreasing in [0, 1]".into());
    }
    Ok(())
}

/// The calibration and default operating point that `calibrate` appends to
/// `model.calibrated.onnx` and records in its `metadata_props` (`calibration.*`). `infer`
/// reads them back, so scoring that file gives the calibrated columns by itself: its
/// `logit` output is the raw logit, and a `probability` column alone would be the
/// uncalibrated one.
#[derive(Debug, Clone, PartialEq)]
pub struct Baked {
    pub method: Method,
    pub temperature: Temperature,
    pub platt: Platt,
    pub isotonic: Isotonic,
    pub operating_point: String,
    pub threshold_logit: f64,
    /// sha256 of the model it was fitted for (the same network without these nodes).
    pub source_model_sha256: Option<String>,
}

/// The `metadata_props` keys of a calibration baked into a model: written by
/// [`Baked::metadata_of`] (for `calibrate`'s `model.calibrated.onnx`) and read by
/// [`Baked::from_metadata`] (for `infer`), one list for both.
pub mod keys {
    pub const METHOD: &str = "calibration.method";
    /// The applied method's parameters as JSON (`temperature`; `a`, `b`; `x`, `y`).
    pub const PARAMETERS_JSON: &str = "calibration.parameters_json";
    pub const OPERATING_POINT: &str = "calibration.operating_point";
    pub const THRESHOLD_LOGIT: &str = "calibration.threshold_logit";
    pub const THRESHOLD_PROBABILITY: &str = "calibration.threshold_probability";
    /// sha256 of the model the calibration was fitted for.
    pub const SOURCE_MODEL_SHA256: &str = "calibration.source_model_sha256";
    pub const N: &str = "calibration.n";
    pub const PREVALENCE: &str = "calibration.prevalence";
}

impl Baked {
    /// The metadata entries that record `cal` with operating point `op` in a model.
    pub fn metadata_of(cal: &CalibrationFile, op: &OperatingPoint) -> Vec<(String, String)> {
        let params = match cal.method {
            Method::Temperature => serde_json::json!({ "temperature": cal.temperature.temperature }),
            Method::Platt => serde_json::json!({ "a": cal.platt.a, "b": cal.platt.b }),
            Method::Isotonic => serde_json::json!({ "x": cal.isotonic.x, "y": cal.isotonic.y }),
        };
        [
            (keys::METHOD, cal.method.name().to_string()),
            (keys::PARAMETERS_JSON, params.to_string()),
            (keys::OPERATING_POINT, op.name.clone()),
            (keys::THRESHOLD_LOGIT, op.threshold_logit.to_string()),
            (keys::THRESHOLD_PROBABILITY, op.threshold_probability.to_string()),
            (keys::SOURCE_MODEL_SHA256, cal.model.sha256.clone()),
            (keys::N, cal.data.n.to_string()),
            (keys::PREVALENCE, cal.data.prevalence.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// `None` when the model carries no calibration; an error naming `model` when it
    /// carries one that cannot be read.
    pub fn from_metadata(md: &BTreeMap<String, String>, model: &Path) -> Result<Option<Self>> {
        let Some(method) = md.get(keys::METHOD) else {
            return Ok(None);
        };
        let bad = |msg: String| Error::Calibration {
            path: model.to_path_buf(),
            msg: format!("the calibration in its metadata: {msg}"),
        };
        let get = |k: &str| md.get(k).ok_or_else(|| bad(format!("`{k}` is missing")));
        let method: Method = method.parse().map_err(bad)?;
        let params: serde_json::Value = serde_json::from_str(get(keys::PARAMETERS_JSON)?)
            .map_err(|e| bad(format!("`{}`: {e}", keys::PARAMETERS_JSON)))?;
        let num = |k: &str| {
            params[k]
                .as_f64()
                .ok_or_else(|| bad(format!("`calibration.parameters_json` lacks the number `{k}`")))
        };
        let list = |k: &str| -> Result<Vec<f64>> {
            params[k]
                .as_array()
                .and_then(|a| a.iter().map(|v| v.as_f64()).collect::<Option<Vec<f64>>>())
                .ok_or_else(|| bad(format!("`calibration.parameters_json` lacks the list of numbers `{k}`")))
        };
        let threshold_text = get(keys::THRESHOLD_LOGIT)?;
        let threshold_logit: f64 = threshold_text.parse().map_err(|_| {
            bad(format!(
                "`calibration.threshold_logit` is `{threshold_text}`, not a number"
            ))
        })?;
        // Unused methods get neutral parameters; only `method`'s are read.
        let mut b = Baked {
            method,
            temperature: Temperature { temperature: 1.0 },
            platt: Platt {
                a: 1.0,
                b: 0.0,
                target_smoothing: false,
            },
            isotonic: Isotonic {
                x: vec![0.0],
                y: vec![0.5],
            },
            operating_point: get(keys::OPERATING_POINT)?.clone(),
            threshold_logit,
            source_model_sha256: md.get(keys::SOURCE_MODEL_SHA256).cloned(),
        };
        match method {
            Method::Temperature => b.temperature.temperature = num("temperature")?,
            Method::Platt => (b.platt.a, b.platt.b) = (num("a")?, num("b")?),
            Method::Isotonic => {
                b.isotonic = Isotonic {
                    x: list("x")?,
                    y: list("y")?,
                }
            }
        }
        check_parameters(&b.temperature, &b.platt, &b.isotonic).map_err(bad)?;
        if !threshold_logit.is_finite() {
            return Err(bad("`calibration.threshold_logit` is not finite".into()));
        }
        Ok(Some(b))
    }

    /// Whether `c` applies exactly this calibration and operating point (the file the model
    /// was baked from).
    pub fn same_as(&self, c: &CalibrationFile) -> bool {
        let params = match self.method {
            Method::Temperature => self.temperature == c.temperature,
            Method::Platt => (self.platt.a, self.platt.b) == (c.platt.a, c.platt.b),
            Method::Isotonic => self.isotonic == c.isotonic,
        };
        params
            && self.method == c.method
            && c.operating_point()
                .is_some_and(|p| p.name == self.operating_point && p.threshold_logit == self.threshold_logit)
    }

    /// Calibrated probability of a raw logit.
    pub fn probability(&self, z: f64) -> f64 {
        calibrated(self.method, &self.temperature, &self.platt, &self.isotonic, z)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn baked_md(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        let mut md: BTreeMap<String, String> = [
            ("calibration.method", "platt"),
            ("calibration.parameters_json", r#"{"a":0.5,"b":-1.25}"#),
            ("calibration.operating_point", "youden_j"),
            ("calibration.threshold_logit", "0.75"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for (k, v) in pairs {
            if v.is_empty() {
                md.remove(*k);
            } else {
                md.insert(k.to_string(), v.to_string());
            }
        }
        md
    }

    #[test]
    fn baked_calibration_is_read_back_or_refused_with_the_reason() {
        let m = Path::new("m.calibrated.onnx");
        assert_eq!(Baked::from_metadata(&BTreeMap::new(), m).expect("none"), None);
        let b = Baked::from_metadata(&baked_md(&[]), m).expect("ok").expect("some");
        assert_eq!(
            (b.method, b.platt.a, b.platt.b, b.threshold_logit),
            (Method::Platt, 0.5, -1.25, 0.75)
        );
        assert!((b.probability(2.0) - sigmoid(-0.25)).abs() < 1e-15);
        let iso = baked_md(&[
            ("calibration.method", "isotonic"),
            ("calibration.parameters_json", r#"{"x":[-1,2],"y":[0.1,0.9]}"#),
        ]);
        let b = Baked::from_metadata(&iso, m).expect("ok").expect("some");
        assert!((b.probability(0.5) - 0.5).abs() < 1e-12);
        for (pairs, want) in [
            (vec![("calibration.method", "sigmoid")], "unknown method"),
            (
                vec![("calibration.parameters_json", "")],
                "`calibration.parameters_json` is missing",
            ),
            (
                vec![("calibration.parameters_json", "{a:")],
                "calibration.parameters_json",
            ),
            (vec![("calibration.parameters_json", r#"{"a":0.5}"#)], "`b`"),
            (vec![("calibration.parameters_json", r#"{"a":-0.5,"b":0}"#)], "a > 0"),
            (vec![("calibration.threshold_logit", "high")], "not a number"),
            (vec![("calibration.threshold_logit", "inf")], "not finite"),
            (vec![("calibration.operating_point", "")], "operating_point"),
            (
                vec![
                    ("calibration.method", "isotonic"),
                    ("calibration.parameters_json", r#"{"x":[2,1],"y":[0.1,0.9]}"#),
                ],
                "x increasing",
            ),
        ] {
            let e = Baked::from_metadata(&baked_md(&pairs), m).expect_err("bad").to_string();
            assert!(e.contains("m.calibrated.onnx") && e.contains(want), "{pairs:?}: {e}");
        }
    }

    #[test]
    fn isotonic_interpolates_and_clips() {
        let iso = Isotonic {
            x: vec![-1.0, 0.0, 2.0],
            y: vec![0.1, 0.3, 0.7],
        };
        assert_eq!(iso.apply(-5.0), 0.1);
        assert_eq!(iso.apply(9.0), 0.7);
        assert!((iso.apply(-0.5) - 0.2).abs() < 1e-12);
        assert!((iso.apply(1.0) - 0.5).abs() < 1e-12);
        assert_eq!(iso.apply(0.0), 0.3);
    }

    #[test]
    fn sigmoid_is_stable() {
        assert_eq!(sigmoid(800.0), 1.0);
        assert_eq!(sigmoid(-800.0), 0.0);
        assert!((sigmoid(0.0) - 0.5).abs() < 1e-15);
    }
}
