//! `calibration.yaml`: the artifact `calibrate` writes and `infer` applies. It lives in the
//! contract crate so that the scorer needs no fitting code and `calibrate` can use the
//! scorer (site recalibration) without a dependency cycle.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Numerically stable logistic function.
#[inline]
pub fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

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
        match method {
            Method::Temperature => sigmoid(z / self.temperature.temperature),
            Method::Platt => sigmoid(self.platt.a * z + self.platt.b),
            Method::Isotonic => self.isotonic.apply(z),
        }
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
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let cal: Self = serde_yaml::from_str(&text).map_err(|e| bad(path, format!("not a calibration file: {e}")))?;
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
        let t = self.temperature.temperature;
        if !(t.is_finite() && t > 0.0) {
            return Err(format!("temperature must be a positive number, got {t}"));
        }
        if !(self.platt.a.is_finite() && self.platt.a > 0.0 && self.platt.b.is_finite()) {
            return Err(format!(
                "Platt parameters must be finite with a > 0, got a = {}, b = {}",
                self.platt.a, self.platt.b
            ));
        }
        let iso = &self.isotonic;
        let increasing = iso.x.windows(2).all(|w| w[0] < w[1]) && iso.y.windows(2).all(|w| w[0] <= w[1]);
        if iso.x.is_empty()
            || iso.x.len() != iso.y.len()
            || !increasing
            || iso.x.iter().any(|v| !v.is_finite())
            || iso.y.iter().any(|v| !(0.0..=1.0).contains(v))
        {
            return Err("isotonic knots must be finite, x increasing, y non-decreasing in [0, 1]".into());
        }
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

#[cfg(test)]
mod tests {
    use super::*;

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
