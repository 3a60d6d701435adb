//! Operating points chosen on purpose, with the counts behind them and Wilson intervals.
//!
//! A threshold is a raw logit `t`: a patch is called positive when `logit >= t`; `t` lies
//! midway between the lowest score called positive and the next lower score. Every
//! calibration here is non-decreasing in the logit, so the same cut is also stated as a
//! calibrated probability (filled in by the caller).
pub use models::calibration::{OperatingPoint, Proportion};

use ::metrics::z_for;
pub use ::metrics::{sweep, Sweep};

/// A proportion with its Wilson 95% interval.
pub fn proportion(successes: usize, trials: usize) -> Proportion {
    if trials == 0 {
        return Proportion {
            value: None,
            ci95: None,
            successes,
            trials,
        };
    }
    Proportion {
        value: Some(successes as f64 / trials as f64),
        ci95: Some(wilson(successes, trials, 0.95)),
        successes,
        trials,
    }
}

/// Wilson score interval for a binomial proportion at the given confidence level.
pub fn wilson(k: usize, n: usize, level: f64) -> [f64; 2] {
    let z = z_for(level);
    let (k, n) = (k as f64, n as f64);
    let p = k / n;
    let z2 = z * z;
    let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
    let half = z / (1.0 + z2 / n) * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    // The bounds are exactly 0 and 1 at k = 0 and k = n; rounding would leave ±1e-17.
    let lo = if k == 0.0 { 0.0 } else { (centre - half).max(0.0) };
    let hi = if k == n { 1.0 } else { (centre + half).min(1.0) };
    [lo, hi]
}

/// The point at raw-logit threshold `t` on these data.
pub fn point_at(name: &str, t: f64, logits: &[f64], labels: &[u8]) -> OperatingPoint {
    let (mut tp, mut fp, mut n_pos) = (0, 0, 0);
    for (&z, &y) in logits.iter().zip(labels) {
        n_pos += usize::from(y == 1);
        if z >= t {
            if y == 1 {
                tp += 1
            } else {
                fp += 1
            }
        }
    }
    point(name, t, tp, fp, n_pos, labels.len() - n_pos)
}

fn point(name: &str, t: f64, tp: usize, fp: usize, n_pos: usize, n_neg: usize) -> OperatingPoint {
    let (fn_, tn) = (n_pos - tp, n_neg - fp);
    let f1 = if tp == 0 {
        0.0
    } else {
        2.0 * tp as f64 / (2 * tp + fp + fn_) as f64
    };
    OperatingPoint {
        name: name.into(),
        threshold_logit: t,
        threshold_probability: f64::NAN,
        tp,
        fp,
        tn,
        fn_,
        sensitivity: proportion(tp, n_pos),
        specificity: proportion(tn, n_neg),
        ppv: proportion(tp, tp + fp),
        npv: proportion(tn, tn + fn_),
        f1,
        bootstrap: None,
    }
}

/// Youden's J (max sensitivity + specificity − 1), maximum F1, the highest threshold
/// keeping sensitivity ≥ `min_sensitivity`, and the lowest keeping specificity ≥
/// `min_specificity`. Ties in J or F1 go to the higher threshold. Needs both classes.
pub fn operating_points(
    logits: &[f64],
    labels: &[u8],
    min_sensitivity: f64,
    min_specificity: f64,
) -> Vec<OperatingPoint> {
    let s = sweep(logits, labels);
    let (np, nn) = (s.n_pos as f64, s.n_neg as f64);
    let best = |score: &dyn Fn(usize, usize) -> f64| {
        let mut best = s.cuts[0];
        let mut best_v = f64::NEG_INFINITY;
        for &(t, tp, fp) in &s.cuts {
            let v = score(tp, fp);
            if v > best_v + 1e-15 {
                best_v = v;
                best = (t, tp, fp);
            }
        }
        best
    };
    let youden = best(&|tp, fp| tp as f64 / np - fp as f64 / nn);
    let f1 = best(&|tp, fp| 2.0 * tp as f64 / (tp as f64 + fp as f64 + np));
    // Highest threshold with sensitivity ≥ S: the first cut (from the top) reaching it.
    let sens = *s
        .cuts
        .iter()
        .find(|&&(_, tp, _)| tp as f64 / np >= min_sensitivity)
        .unwrap_or(&s.cuts[s.cuts.len() - 1]);
    // Lowest threshold with specificity ≥ P: the last cut keeping it; if even the highest
    // cut breaks it, a threshold above every score (nothing called positive).
    let spec = s
        .cuts
        .iter()
        .rev()
        .find(|&&(_, _, fp)| (nn - fp as f64) / nn >= min_specificity)
        .copied()
        .unwrap_or_else(|| {
            let top = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            (top + 1.0, 0, 0)
        });
    vec![
        point("youden_j", youden.0, youden.1, youden.2, s.n_pos, s.n_neg),
        point("max_f1", f1.0, f1.1, f1.2, s.n_pos, s.n_neg),
        point(
            &format!("sensitivity_{min_sensitivity}"),
            sens.0,
            sens.1,
            sens.2,
            s.n_pos,
            s.n_neg,
        ),
        point(
            &format!("specificity_{min_specificity}"),
            spec.0,
            spec.1,
            spec.2,
            s.n_pos,
            s.n_neg,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_known_values() {
        // 8/10 at 95%: [0.4902, 0.9433] (Newcombe 1998).
        let [lo, hi] = wilson(8, 10, 0.95);
        assert!((lo - 0.4902).abs() < 1e-3 && (hi - 0.9433).abs() < 1e-3, "{lo} {hi}");
        let [lo, hi] = wilson(0, 10, 0.95);
        assert_eq!(lo, 0.0);
        assert!((hi - 0.2775).abs() < 1e-3, "{hi}");
    }

    #[test]
    fn picks_points_by_hand() {
        // logits: positives 3, 2, 0.5; negatives 1, -1, -2.
        let z = [3.0, 2.0, 1.0, 0.5, -1.0, -2.0];
        let y = [1, 1, 0, 1, 0, 0];
        let p = operating_points(&z, &y, 1.0, 2.0 / 3.0);
        // Youden: cut below 2 → 2/3 + 1 − 1; below 0.5 → 1 + 2/3 − 1: tie, higher wins,
        // placed midway between 2 and 1.
        assert_eq!(p[0].threshold_logit, 1.5);
        assert_eq!((p[0].tp, p[0].fp, p[0].tn, p[0].fn_), (2, 0, 3, 1));
        // F1: below 2 → 0.8; below 0.5 → 6/7 (midway to −1).
        assert_eq!(p[1].threshold_logit, -0.25);
        assert!((p[1].f1 - 6.0 / 7.0).abs() < 1e-12);
        // Sensitivity 1 first reached below 0.5.
        assert_eq!(p[2].threshold_logit, -0.25);
        assert_eq!(p[2].sensitivity.value, Some(1.0));
        // Specificity ≥ 2/3 holds down to the cut below 0.5 (FP 1 of 3), not below −1.
        assert_eq!(p[3].threshold_logit, -0.25);
        assert_eq!(p[3].specificity.successes, 2);
        // Calling every patch positive puts the cut below the lowest score.
        let all = operating_points(&[1.0, 0.0], &[0, 1], 1.0, 0.0);
        assert_eq!(all[2].threshold_logit, -0.5);
        // Specificity 1 with a negative on top: nothing called positive.
        let none = operating_points(&[2.0, 1.0], &[0, 1], 1.0, 1.0);
        assert_eq!((none[3].tp, none[3].fp), (0, 0));
        assert!(none[3].threshold_logit > 2.0);
    }

    #[test]
    fn point_at_recounts() {
        let p = point_at("x", 0.5, &[1.0, 0.2, 0.7, -1.0], &[1, 1, 0, 0]);
        assert_eq!((p.tp, p.fp, p.tn, p.fn_), (1, 1, 1, 1));
    }
}
