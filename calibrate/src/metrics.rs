//! Calibration metrics on binary labels (Brier, log-loss, ECE, MCE, net benefit); the
//! ranking metrics (AUROC, DeLong, average precision) live in [`metrics`], shared
//! with the trainer, and are re-exported here.
//!
//! All functions take probabilities (or logits) and 0/1 labels of the same length; callers
//! check lengths and that both classes are present.
use models::calibration::Metrics;
pub use ::metrics::{
    auroc, auroc_delong, auroc_delong_ci95, average_precision, logit, sigmoid, softplus, z_for, EPS,
};

/// Mean squared error of probabilities against labels.
pub fn brier(probs: &[f64], labels: &[u8]) -> f64 {
    probs
        .iter()
        .zip(labels)
        .map(|(&p, &y)| (p - f64::from(y)).powi(2))
        .sum::<f64>()
        / probs.len() as f64
}

/// Mean negative log-likelihood of labels under `sigmoid(logits)` (natural log).
pub fn nll_from_logits(logits: &[f64], labels: &[u8]) -> f64 {
    logits
        .iter()
        .zip(labels)
        .map(|(&z, &y)| if y == 1 { softplus(-z) } else { softplus(z) })
        .sum::<f64>()
        / logits.len() as f64
}

/// Mean negative log-likelihood of probabilities clipped to `[EPS, 1 − EPS]` (as
/// scikit-learn's `log_loss`).
pub fn nll_from_probs(probs: &[f64], labels: &[u8]) -> f64 {
    probs
        .iter()
        .zip(labels)
        .map(|(&p, &y)| {
            let p = p.clamp(EPS, 1.0 - EPS);
            if y == 1 {
                -p.ln()
            } else {
                -(1.0 - p).ln()
            }
        })
        .sum::<f64>()
        / probs.len() as f64
}

/// Per-bin (count, mean predicted, observed rate) with `bins` equal-width bins on [0, 1];
/// empty bins have count 0.
pub fn reliability_bins(probs: &[f64], labels: &[u8], bins: usize) -> Vec<(usize, f64, f64)> {
    let mut count = vec![0usize; bins];
    let mut sum_p = vec![0.0; bins];
    let mut sum_y = vec![0.0; bins];
    for (&p, &y) in probs.iter().zip(labels) {
        let b = ((p * bins as f64) as usize).min(bins - 1);
        count[b] += 1;
        sum_p[b] += p;
        sum_y[b] += f64::from(y);
    }
    (0..bins)
        .map(|b| {
            let c = count[b].max(1) as f64;
            (count[b], sum_p[b] / c, sum_y[b] / c)
        })
        .collect()
}

/// Expected calibration error with equal-width bins: Σ n_b/N · |mean p − observed rate|.
pub fn ece(probs: &[f64], labels: &[u8], bins: usize) -> f64 {
    let n = probs.len() as f64;
    reliability_bins(probs, labels, bins)
        .iter()
        .filter(|b| b.0 > 0)
        .map(|&(c, p, y)| c as f64 / n * (p - y).abs())
        .sum()
}

/// Maximum calibration error over the non-empty equal-width bins.
pub fn mce(probs: &[f64], labels: &[u8], bins: usize) -> f64 {
    reliability_bins(probs, labels, bins)
        .iter()
        .filter(|b| b.0 > 0)
        .map(|&(_, p, y)| (p - y).abs())
        .fold(0.0, f64::max)
}

/// Expected calibration error with `bins` equal-mass bins: the samples sorted by
/// probability and split as `numpy.array_split` does (the first `N mod bins` bins one
/// larger).
pub fn adaptive_ece(probs: &[f64], labels: &[u8], bins: usize) -> f64 {
    let mut idx: Vec<usize> = (0..probs.len()).collect();
    idx.sort_by(|&a, &b| probs[a].total_cmp(&probs[b]));
    let n = probs.len();
    let (base, extra) = (n / bins, n % bins);
    let mut start = 0;
    let mut total = 0.0;
    for b in 0..bins {
        let size = base + usize::from(b < extra);
        if size == 0 {
            continue;
        }
        let part = &idx[start..start + size];
        let mp = part.iter().map(|&i| probs[i]).sum::<f64>() / size as f64;
        let my = part.iter().map(|&i| f64::from(labels[i])).sum::<f64>() / size as f64;
        total += size as f64 / n as f64 * (mp - my).abs();
        start += size;
    }
    total
}

/// Net benefit of treating patients with `p >= threshold` (Vickers & Elkin 2006):
/// `TP/N − FP/N · t/(1 − t)`.
pub fn net_benefit(probs: &[f64], labels: &[u8], threshold: f64) -> f64 {
    let n = probs.len() as f64;
    let (mut tp, mut fp) = (0.0, 0.0);
    for (&p, &y) in probs.iter().zip(labels) {
        if p >= threshold {
            if y == 1 {
                tp += 1.0
            } else {
                fp += 1.0
            }
        }
    }
    tp / n - fp / n * threshold / (1.0 - threshold)
}

/// Every metric of one set of probabilities `p` whose log-odds are `lp`
/// (`auroc_bootstrap_ci95` is filled later). The ranking metrics and the calibration slope
/// use `lp`, the probability metrics `p`: saturated probabilities would tie patches.
pub fn compute_metrics(p: &[f64], lp: &[f64], y: &[u8]) -> Metrics {
    let (slope, intercept) = match crate::fit::fit_platt(lp, y, false) {
        Ok(f) => (f.a, f.b),
        Err(_) => (f64::NAN, f64::NAN),
    };
    Metrics {
        auroc: auroc(lp, y).unwrap_or(f64::NAN),
        auroc_delong_ci95: auroc_delong_ci95(lp, y),
        auroc_bootstrap_ci95: None,
        auprc: average_precision(lp, y),
        brier: brier(p, y),
        nll: nll_from_probs(p, y),
        ece_15: ece(p, y, 15),
        adaptive_ece_15: adaptive_ece(p, y, 15),
        mce_15: mce(p, y, 15),
        calibration_slope: slope,
        calibration_intercept: intercept,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nll_forms_agree_and_do_not_overflow() {
        let z = [-3.0, 0.5, 2.0];
        let y = [0u8, 1, 1];
        let p: Vec<f64> = z.iter().map(|&v| sigmoid(v)).collect();
        assert!((nll_from_logits(&z, &y) - nll_from_probs(&p, &y)).abs() < 1e-12);
        assert!(nll_from_logits(&[800.0, -800.0], &[1, 0]).abs() < 1e-12);
        assert!((nll_from_probs(&[0.0], &[1]) + (EPS).ln()).abs() < 1e-9);
    }

    #[test]
    fn calibration_errors_by_hand() {
        let p = [0.25; 4];
        assert!(ece(&p, &[1, 0, 0, 0], 15).abs() < 1e-12);
        assert!((ece(&p, &[1, 1, 0, 0], 15) - 0.25).abs() < 1e-12);
        // Two bins: [0.1, 0.1] with labels [0, 0] (error .1) and [0.9, 0.9] with [1, 0]
        // (error .4): ECE = .25, MCE = .4; equal-mass with 2 bins gives the same split.
        let p = [0.1, 0.1, 0.9, 0.9];
        let y = [0, 0, 1, 0];
        assert!((ece(&p, &y, 15) - 0.25).abs() < 1e-12);
        assert!((mce(&p, &y, 15) - 0.4).abs() < 1e-12);
        assert!((adaptive_ece(&p, &y, 2) - 0.25).abs() < 1e-12);
        assert!((brier(&[1.0, 0.0], &[1, 0])).abs() < 1e-12);
    }

    #[test]
    fn net_benefit_by_hand() {
        // At t = .5: TP 1, FP 1 of N 4 → 1/4 − 1/4 · 1 = 0.
        assert_eq!(net_benefit(&[0.9, 0.6, 0.2, 0.1], &[1, 0, 1, 0], 0.5), 0.0);
    }

    /// Every routine ends on NaN input (a NaN score or probability gives NaN or a number,
    /// never a hang or a panic).
    #[test]
    fn every_metric_terminates_on_nan() {
        let p = [0.2, f64::NAN, 0.9, 0.4];
        let y = [0u8, 1, 1, 0];
        let _ = (brier(&p, &y), nll_from_probs(&p, &y), nll_from_logits(&p, &y));
        let _ = (
            ece(&p, &y, 15),
            mce(&p, &y, 15),
            adaptive_ece(&p, &y, 15),
            net_benefit(&p, &y, 0.5),
        );
        let _ = reliability_bins(&p, &y, 15);
        let m = compute_metrics(&p, &p, &y);
        assert!(m.auroc.is_nan() && m.auprc.is_nan(), "{m:?}");
        assert!(net_benefit(&p, &y, f64::NAN).is_nan());
    }
}
