//! Temperature scaling and Platt scaling, fitted exactly by Newton's method on their
//! convex negative log-likelihoods (with backtracking, so every step decreases the loss),
//! and isotonic regression by pool-adjacent-violators.
pub use models::calibration::{Isotonic, Method, Platt, Temperature};

use ::metrics::{logit, sigmoid, softplus};
use crate::CalError;

const MAX_ITER: usize = 100;
const GRAD_TOL: f64 = 1e-12;

/// Mean of `softplus(u) - t*u` with `u = a z + b`: the NLL under soft targets `t`.
fn soft_nll(z: &[f64], t: &[f64], a: f64, b: f64) -> f64 {
    z.iter()
        .zip(t)
        .map(|(&z, &t)| {
            let u = a * z + b;
            softplus(u) - t * u
        })
        .sum::<f64>()
        / z.len() as f64
}

/// `sqrt(mean(v²))` of the finite values, or 1 when that is 0 or not finite.
///
/// Both fits run on logits divided by a scale like this and map the answer back. Newton from
/// a slope of 1 on raw logits stalls when they are large: every `sigmoid` is then exactly 0
/// or 1 in f64, the Hessian is 0 and no step is taken (an r3d_18 trained for one epoch gave
/// logits in the thousands, and the fit returned T = 1 and Platt a = 1, b = 0 unchanged).
/// The losses are convex, so the rescaled problem has the same minimum.
fn rms(v: &[f64]) -> f64 {
    // Scaled by the largest magnitude first, so squares of logits near f64's range do not
    // overflow to Inf (which would leave the fit unscaled).
    let big = v.iter().filter(|x| x.is_finite()).fold(0.0f64, |a, x| a.max(x.abs()));
    if big == 0.0 {
        return 1.0;
    }
    let (mut s, mut n) = (0.0, 0usize);
    for &x in v.iter().filter(|x| x.is_finite()) {
        s += (x / big) * (x / big);
        n += 1;
    }
    let r = big * (s / n.max(1) as f64).sqrt();
    if r.is_finite() && r > 0.0 {
        r
    } else {
        1.0
    }
}

/// Fits `T` minimising the NLL of `sigmoid(z / T)`. Newton on `a = 1/T` (convex in `a`),
/// over `z / rms(z)` (the logits divided by their root mean square).
pub fn fit_temperature(z: &[f64], y: &[u8]) -> Result<Temperature, CalError> {
    let s = rms(z);
    let z: &[f64] = &z.iter().map(|v| v / s).collect::<Vec<_>>();
    let t: Vec<f64> = y.iter().map(|&v| f64::from(v)).collect();
    let n = z.len() as f64;
    let mut a = 1.0;
    let mut f = soft_nll(z, &t, a, 0.0);
    for _ in 0..MAX_ITER {
        let (mut g, mut h) = (0.0, 0.0);
        for (&zi, &ti) in z.iter().zip(&t) {
            let p = sigmoid(a * zi);
            g += (p - ti) * zi;
            h += p * (1.0 - p) * zi * zi;
        }
        g /= n;
        h /= n;
        if g.abs() < GRAD_TOL || h <= 0.0 {
            break;
        }
        let mut step = g / h;
        let mut improved = false;
        for _ in 0..60 {
            let cand = a - step;
            let fc = soft_nll(z, &t, cand, 0.0);
            if fc <= f {
                improved = fc < f;
                a = cand;
                f = fc;
                break;
            }
            step /= 2.0;
        }
        if !improved {
            break;
        }
    }
    let a = a / s;
    if !(a.is_finite() && a > 0.0) {
        return Err(CalError::Fit(format!(
            "temperature scaling needs scores that rank positives higher; the best inverse temperature is {a:.4}"
        )));
    }
    Ok(Temperature { temperature: 1.0 / a })
}

/// Fits Platt scaling by unregularised logistic regression of the labels on the logit
/// (Newton / IRLS), over the logits centred and divided by their spread.
/// With `smoothing`, uses Platt's smoothed targets.
pub fn fit_platt(z: &[f64], y: &[u8], smoothing: bool) -> Result<Platt, CalError> {
    let finite: Vec<f64> = z.iter().copied().filter(|v| v.is_finite()).collect();
    let m = if finite.is_empty() {
        0.0
    } else {
        finite.iter().sum::<f64>() / finite.len() as f64
    };
    if finite.iter().all(|&v| (v - m).abs() <= 1e-12 * m.abs().max(1.0)) {
        // No slope can be fitted to one value (an uncalibrated model whose probabilities
        // all round to 0 or 1 gives this).
        return Err(CalError::Fit(
            "Platt scaling needs logits that differ; these are all equal".into(),
        ));
    }
    let s = rms(&finite.iter().map(|v| v - m).collect::<Vec<_>>());
    let z: &[f64] = &z.iter().map(|v| (v - m) / s).collect::<Vec<_>>();
    let n_pos = y.iter().filter(|&&v| v == 1).count() as f64;
    let n_neg = y.len() as f64 - n_pos;
    let (tp, tn) = if smoothing {
        ((n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))
    } else {
        (1.0, 0.0)
    };
    let t: Vec<f64> = y.iter().map(|&v| if v == 1 { tp } else { tn }).collect();
    let n = z.len() as f64;
    // Start from slope 1 on the standardised logits and the targets' log-odds.
    let tbar = t.iter().sum::<f64>() / n;
    let b0 = if tbar > 0.0 && tbar < 1.0 {
        (tbar / (1.0 - tbar)).ln()
    } else {
        0.0
    };
    let (mut a, mut b) = (1.0, b0);
    let mut f = soft_nll(z, &t, a, b);
    for _ in 0..MAX_ITER {
        let (mut ga, mut gb, mut haa, mut hab, mut hbb) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for (&zi, &ti) in z.iter().zip(&t) {
            let p = sigmoid(a * zi + b);
            let r = p - ti;
            let w = p * (1.0 - p);
            ga += r * zi;
            gb += r;
            haa += w * zi * zi;
            hab += w * zi;
            hbb += w;
        }
        let (ga, gb, haa, hab, hbb) = (ga / n, gb / n, haa / n, hab / n, hbb / n);
        if ga.abs().max(gb.abs()) < GRAD_TOL {
            break;
        }
        let det = haa * hbb - hab * hab;
        // Newton direction; fall back to gradient descent if the Hessian is singular
        // (perfectly separated data drives it there).
        let (mut da, mut db) = if det > 1e-300 {
            ((hbb * ga - hab * gb) / det, (haa * gb - hab * ga) / det)
        } else {
            (ga, gb)
        };
        let mut improved = false;
        for _ in 0..60 {
            let fc = soft_nll(z, &t, a - da, b - db);
            if fc <= f {
                improved = fc < f;
                a -= da;
                b -= db;
                f = fc;
                break;
            }
            da /= 2.0;
            db /= 2.0;
        }
        if !improved {
            break;
        }
    }
    // Back to raw logits: a' (z - m) / s + b' = (a'/s) z + (b' - a' m / s).
    let (a, b) = (a / s, b - a * m / s);
    if !(a.is_finite() && b.is_finite()) {
        return Err(CalError::Fit(
            "Platt scaling diverged (are the classes perfectly separated?)".into(),
        ));
    }
    if a <= 0.0 {
        return Err(CalError::Fit(format!(
            "Platt scaling found a non-positive slope ({a:.4}): the scores do not rank positives higher"
        )));
    }
    Ok(Platt {
        a,
        b,
        target_smoothing: smoothing,
    })
}

/// Isotonic regression of the labels on the logits (pool-adjacent-violators, unit
/// weights). Equal logits are pooled first (their mean label); the knots are the distinct
/// logits with their fitted probabilities, interior points of flat runs removed (they do
/// not change the interpolation), as scikit-learn's `IsotonicRegression` keeps them.
pub fn fit_isotonic(z: &[f64], y: &[u8]) -> Result<Isotonic, CalError> {
    if z.is_empty() {
        return Err(CalError::Fit("isotonic regression needs data".into()));
    }
    let mut idx: Vec<usize> = (0..z.len()).collect();
    idx.sort_by(|&a, &b| z[a].total_cmp(&z[b]));
    // Blocks of (x, weight, mean y); equal x pooled.
    let mut xs: Vec<f64> = Vec::new();
    let mut w: Vec<f64> = Vec::new();
    let mut m: Vec<f64> = Vec::new();
    for &i in &idx {
        let yi = f64::from(y[i]);
        if xs.last() == Some(&z[i]) {
            let k = xs.len() - 1;
            m[k] = (m[k] * w[k] + yi) / (w[k] + 1.0);
            w[k] += 1.0;
        } else {
            xs.push(z[i]);
            w.push(1.0);
            m.push(yi);
        }
    }
    // PAV over the distinct-x blocks: a stack of pooled blocks (start, weight, mean).
    let mut stack: Vec<(usize, f64, f64)> = Vec::new();
    for k in 0..xs.len() {
        let mut cur = (k, w[k], m[k]);
        while let Some(&(s, ws, ms)) = stack.last() {
            if ms > cur.2 {
                stack.pop();
                let wt = ws + cur.1;
                cur = (s, wt, (ms * ws + cur.2 * cur.1) / wt);
            } else {
                break;
            }
        }
        stack.push(cur);
    }
    let mut fitted = vec![0.0; xs.len()];
    for (bi, &(start, _, mean)) in stack.iter().enumerate() {
        let end = stack.get(bi + 1).map_or(xs.len(), |b| b.0);
        for f in &mut fitted[start..end] {
            *f = mean;
        }
    }
    // Keep the first and last point of every flat run.
    let mut kx = Vec::new();
    let mut ky = Vec::new();
    for k in 0..xs.len() {
        let same_prev = k > 0 && fitted[k - 1] == fitted[k];
        let same_next = k + 1 < xs.len() && fitted[k + 1] == fitted[k];
        if !(same_prev && same_next) {
            kx.push(xs[k]);
            ky.push(fitted[k]);
        }
    }
    Ok(Isotonic { x: kx, y: ky })
}

/// Logits so far from the rest that no fit over them means anything: more than
/// [`EXTREME_SPREADS`] robust spreads from the median. A mislabelled one would decide a
/// temperature or Platt fit on its own (its loss grows with its size), while a correctly
/// labelled one adds nothing to it; so the fits (temperature, Platt, isotonic, and the
/// cross-validation that chooses among them) leave them out, with a warning, unless that
/// would leave a class without examples; the metrics and thresholds keep them (their probabilities are 0 or 1 either way).
#[derive(Debug, Clone)]
pub struct Extremes {
    /// Indices of the extreme logits.
    pub indices: Vec<usize>,
    /// The range outside which a logit is extreme.
    pub bounds: [f64; 2],
}

/// How many robust spreads (1.4826 × the median absolute deviation, or the root mean
/// square deviation when that is 0) from the median make a logit extreme.
pub const EXTREME_SPREADS: f64 = 1000.0;

impl Extremes {
    /// The warning a calibration file carries: how many, the most extreme and its line.
    pub fn warning(&self, z: &[f64], source: &std::path::Path, lines: &[usize]) -> String {
        let worst = self
            .indices
            .iter()
            .copied()
            .max_by(|&a, &b| z[a].abs().total_cmp(&z[b].abs()))
            .unwrap_or(0);
        let at = lines.get(worst).map_or_else(String::new, |l| format!(", on line {l}"));
        format!(
            "{} logit(s) in {} lie more than {EXTREME_SPREADS} robust spreads from the median, outside [{:.4e}, {:.4e}] \
             (the most extreme: {:e}{at}); the temperature, Platt and isotonic fits and the method \
             cross-validation leave them out, since one of them mislabelled would decide the fit alone; \
             metrics and thresholds include them",
            self.indices.len(),
            source.display(),
            self.bounds[0],
            self.bounds[1],
            z[worst]
        )
    }
}

/// The extreme logits of `z`, if any (the usual case: none).
pub fn extremes(z: &[f64]) -> Option<Extremes> {
    if z.len() < 3 {
        return None;
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n % 2 == 1 {
            v[n / 2]
        } else {
            v[n / 2 - 1] / 2.0 + v[n / 2] / 2.0
        }
    };
    let m = median(&mut z.to_vec());
    let mad = 1.4826 * median(&mut z.iter().map(|v| (v - m).abs()).collect());
    let spread = if mad > 0.0 {
        mad
    } else {
        rms(&z.iter().map(|v| v - m).collect::<Vec<_>>())
    };
    let (lo, hi) = (m - EXTREME_SPREADS * spread, m + EXTREME_SPREADS * spread);
    if !(lo.is_finite() && hi.is_finite()) {
        return None;
    }
    let indices: Vec<usize> = (0..z.len()).filter(|&i| z[i] < lo || z[i] > hi).collect();
    (!indices.is_empty()).then_some(Extremes {
        indices,
        bounds: [lo, hi],
    })
}

/// A fitted set of calibrations.
#[derive(Debug, Clone)]
pub struct Fitted {
    pub temperature: Temperature,
    pub platt: Platt,
    pub isotonic: Isotonic,
}

impl Fitted {
    pub fn fit(z: &[f64], y: &[u8], smoothing: bool) -> Result<Self, CalError> {
        Ok(Fitted {
            temperature: fit_temperature(z, y)?,
            platt: fit_platt(z, y, smoothing)?,
            isotonic: fit_isotonic(z, y)?,
        })
    }

    pub fn probability(&self, m: Method, z: f64) -> f64 {
        models::calibration::calibrated(m, &self.temperature, &self.platt, &self.isotonic, z)
    }

    /// The log-odds method `m` gives logit `z`: `z / T`, `a z + b`, or the logit of the
    /// isotonic probability. Taken directly for the first two rather than back from a
    /// probability, which in f64 is exactly 0 or 1 beyond |log-odds| ≈ 37 and would tie
    /// patches that the model ranks apart.
    pub fn log_odds(&self, m: Method, z: f64) -> f64 {
        match m {
            Method::Temperature => z / self.temperature.temperature,
            Method::Platt => self.platt.a * z + self.platt.b,
            Method::Isotonic => logit(self.isotonic.apply(z)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::nll_from_logits;

    /// Deterministic pseudo-random data: labels drawn from sigmoid(0.5 * z - 1).
    fn data() -> (Vec<f64>, Vec<u8>) {
        let mut s: u64 = 12345;
        let mut next = || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (s >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut z = Vec::new();
        let mut y = Vec::new();
        for _ in 0..4000 {
            let zi = (next() - 0.5) * 12.0;
            let p = sigmoid(0.5 * zi - 1.0);
            z.push(zi);
            y.push(u8::from(next() < p));
        }
        (z, y)
    }

    #[test]
    fn platt_recovers_generating_parameters() {
        let (z, y) = data();
        let p = fit_platt(&z, &y, false).expect("fit");
        assert!((p.a - 0.5).abs() < 0.06, "{p:?}");
        assert!((p.b + 1.0).abs() < 0.15, "{p:?}");
    }

    #[test]
    fn temperature_is_the_nll_minimiser() {
        let (z, y) = data();
        let t = fit_temperature(&z, &y).expect("fit").temperature;
        let nll = |t: f64| nll_from_logits(&z.iter().map(|v| v / t).collect::<Vec<_>>(), &y);
        assert!(nll(t) <= nll(t * 1.01) && nll(t) <= nll(t * 0.99), "T = {t}");
        assert!(t > 1.0, "overconfident logits need T > 1, got {t}");
    }

    /// Logits a thousand times larger and shifted, as an undertrained network gives: the fits
    /// move with them instead of stalling at their starting point.
    #[test]
    fn fits_follow_logits_of_any_size() {
        let (z, y) = data();
        let t = fit_temperature(&z, &y).expect("fit").temperature;
        let p = fit_platt(&z, &y, false).expect("fit");
        for (k, c) in [(1000.0, -5000.0), (1e-3, 0.0), (1.0, 300.0)] {
            let big: Vec<f64> = z.iter().map(|v| k * v + c).collect();
            let pb = fit_platt(&big, &y, false).expect("fit");
            // The same probabilities: a' (k z + c) + b' = a z + b.
            assert!((pb.a * k / p.a - 1.0).abs() < 1e-6, "{k} {c}: {pb:?} vs {p:?}");
            assert!((pb.a * c + pb.b - p.b).abs() < 1e-6, "{k} {c}: {pb:?} vs {p:?}");
            if c == 0.0 {
                let tb = fit_temperature(&big, &y).expect("fit").temperature;
                assert!((tb / (k * t) - 1.0).abs() < 1e-6, "{k}: T {tb} vs {}", k * t);
            }
        }
        let tb = fit_temperature(&z.iter().map(|v| 1000.0 * v).collect::<Vec<_>>(), &y)
            .expect("fit")
            .temperature;
        assert!(tb > 900.0, "T = {tb}");
    }

    #[test]
    fn isotonic_pav_by_hand() {
        // Labels along increasing logits: 0 1 0 1 1 → PAV pools (1, 0) into 0.5.
        let iso = fit_isotonic(&[1.0, 2.0, 3.0, 4.0, 5.0], &[0, 1, 0, 1, 1]).expect("fit");
        assert_eq!(iso.x, vec![1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(iso.y, vec![0.0, 0.5, 0.5, 1.0, 1.0]);
        // Tied logits are pooled first; flat interiors are dropped.
        let iso = fit_isotonic(&[1.0, 1.0, 2.0, 3.0, 4.0], &[1, 0, 0, 0, 1]).expect("fit");
        assert_eq!(iso.x, vec![1.0, 3.0, 4.0]);
        assert_eq!(iso.y, vec![0.25, 0.25, 1.0]);
        assert!(iso.y.windows(2).all(|p| p[0] <= p[1]));
    }

    #[test]
    fn anti_ranking_scores_are_refused() {
        let (z, y) = data();
        let neg: Vec<f64> = z.iter().map(|v| -v).collect();
        assert!(fit_platt(&neg, &y, false).is_err());
        assert!(fit_temperature(&neg, &y).is_err());
    }
}
