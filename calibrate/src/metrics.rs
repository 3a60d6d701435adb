//! Discrimination and calibration metrics on binary labels.
//!
//! All functions take scores or probabilities and 0/1 labels of the same length; callers
//! check lengths and that both classes are present. Definitions follow the textbook (and
//! scikit-learn where it has the metric): AUROC as Mann–Whitney with mid-ranks, DeLong's
//! variance by the mid-rank algorithm of Sun & Xu (2014), average precision as
//! Σ (Rₖ − Rₖ₋₁)·Pₖ over distinct thresholds.
pub use models::calibration::sigmoid;
use statrs::distribution::{ContinuousCDF, Normal};

/// Probabilities are clipped to `[EPS, 1 − EPS]` for log-likelihoods and logits.
pub const EPS: f64 = 1e-15;

/// `log(1 + exp(z))` without overflow.
#[inline]
pub fn softplus(z: f64) -> f64 {
    if z > 0.0 {
        z + (-z).exp().ln_1p()
    } else {
        z.exp().ln_1p()
    }
}

/// Inverse of [`sigmoid`], with `p` clipped to `[EPS, 1 − EPS]`.
pub fn logit(p: f64) -> f64 {
    let p = p.clamp(EPS, 1.0 - EPS);
    (p / (1.0 - p)).ln()
}

/// Mid-ranks (1-based, ties averaged) of `v`.
fn midranks(v: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut r = vec![0.0; v.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
            j += 1;
        }
        let mid = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            r[k] = mid;
        }
        i = j + 1;
    }
    r
}

/// Area under the ROC curve: the probability that a random positive scores above a random
/// negative, ties counting one half. `None` when a class is missing.
pub fn auroc(scores: &[f64], labels: &[u8]) -> Option<f64> {
    let n_pos = labels.iter().filter(|&&l| l == 1).count();
    let n_neg = labels.len() - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return None;
    }
    let r = midranks(scores);
    let rank_sum_pos: f64 = r.iter().zip(labels).filter(|(_, &l)| l == 1).map(|(r, _)| r).sum();
    let u = rank_sum_pos - (n_pos * (n_pos + 1)) as f64 / 2.0;
    Some(u / (n_pos as f64 * n_neg as f64))
}

/// AUROC with DeLong's variance: returns (AUROC, standard error). Needs both classes and at
/// least two of each for the variance.
pub fn auroc_delong(scores: &[f64], labels: &[u8]) -> Option<(f64, f64)> {
    let pos: Vec<f64> = scores
        .iter()
        .zip(labels)
        .filter(|(_, &l)| l == 1)
        .map(|(s, _)| *s)
        .collect();
    let neg: Vec<f64> = scores
        .iter()
        .zip(labels)
        .filter(|(_, &l)| l == 0)
        .map(|(s, _)| *s)
        .collect();
    let (m, n) = (pos.len(), neg.len());
    if m < 2 || n < 2 {
        return None;
    }
    let all: Vec<f64> = pos.iter().chain(&neg).copied().collect();
    let (r_all, r_pos, r_neg) = (midranks(&all), midranks(&pos), midranks(&neg));
    // Structural components: V10 for positives, V01 for negatives.
    let v10: Vec<f64> = (0..m).map(|i| (r_all[i] - r_pos[i]) / n as f64).collect();
    let v01: Vec<f64> = (0..n).map(|j| 1.0 - (r_all[m + j] - r_neg[j]) / m as f64).collect();
    let auc = v10.iter().sum::<f64>() / m as f64;
    let var = |v: &[f64]| {
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (v.len() - 1) as f64
    };
    let se = (var(&v10) / m as f64 + var(&v01) / n as f64).sqrt();
    Some((auc, se))
}

/// Two-sided normal quantile for a confidence level (1.96 for 0.95).
pub fn z_for(level: f64) -> f64 {
    Normal::standard().inverse_cdf(0.5 + level / 2.0)
}

/// DeLong 95% interval of the AUROC, clipped to [0, 1].
pub fn auroc_delong_ci95(scores: &[f64], labels: &[u8]) -> [f64; 2] {
    match auroc_delong(scores, labels) {
        Some((auc, se)) => {
            let z = z_for(0.95);
            [(auc - z * se).max(0.0), (auc + z * se).min(1.0)]
        }
        None => [f64::NAN, f64::NAN],
    }
}

/// Average precision (scikit-learn's `average_precision_score`): Σ (Rₖ − Rₖ₋₁)·Pₖ over
/// distinct score thresholds, highest first.
pub fn average_precision(scores: &[f64], labels: &[u8]) -> f64 {
    let n_pos = labels.iter().filter(|&&l| l == 1).count() as f64;
    if n_pos == 0.0 {
        return f64::NAN;
    }
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let (mut tp, mut fp, mut prev_recall, mut ap) = (0.0, 0.0, 0.0, 0.0);
    let mut i = 0;
    while i < idx.len() {
        let s = scores[idx[i]];
        while i < idx.len() && scores[idx[i]] == s {
            if labels[idx[i]] == 1 {
                tp += 1.0
            } else {
                fp += 1.0
            }
            i += 1;
        }
        let recall = tp / n_pos;
        ap += (recall - prev_recall) * tp / (tp + fp);
        prev_recall = recall;
    }
    ap
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auroc_cases() {
        assert_eq!(auroc(&[0.1, 0.2, 0.8, 0.9], &[0, 0, 1, 1]), Some(1.0));
        assert_eq!(auroc(&[0.9, 0.8, 0.2, 0.1], &[0, 0, 1, 1]), Some(0.0));
        assert_eq!(auroc(&[0.5; 4], &[0, 1, 0, 1]), Some(0.5));
        assert_eq!(auroc(&[0.1, 0.6, 0.5, 0.9], &[0, 0, 1, 1]), Some(0.75));
        assert_eq!(auroc(&[0.1, 0.2], &[1, 1]), None);
    }

    #[test]
    fn delong_by_hand() {
        // Positives 0.6, 0.9; negatives 0.1, 0.5, 0.7. ψ: 0.6 beats 0.1, 0.5 (2/3);
        // 0.9 beats all (1). V10 = [2/3, 1]; V01 (fraction of positives above each
        // negative) = [1, 1, 1/2]. AUC = 5/6. var(V10) = 1/18, var(V01) = 1/12;
        // Var = (1/18)/2 + (1/12)/3 = 1/36 + 1/36 = 1/18.
        let (auc, se) = auroc_delong(&[0.6, 0.9, 0.1, 0.5, 0.7], &[1, 1, 0, 0, 0]).expect("delong");
        assert!((auc - 5.0 / 6.0).abs() < 1e-12);
        assert!((se - (1.0f64 / 18.0).sqrt()).abs() < 1e-12, "{se}");
    }

    #[test]
    fn average_precision_by_hand() {
        // Scores .9 (1), .8 (0), .7 (1), .1 (0): P@1 = 1 at R .5; P@3 = 2/3 at R 1.
        let ap = average_precision(&[0.9, 0.8, 0.7, 0.1], &[1, 0, 1, 0]);
        assert!((ap - (0.5 * 1.0 + 0.5 * 2.0 / 3.0)).abs() < 1e-12);
        // A tie of a positive and a negative at the top: one step, precision 1/2.
        let ap = average_precision(&[0.5, 0.5], &[1, 0]);
        assert!((ap - 0.5).abs() < 1e-12);
    }

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
}
