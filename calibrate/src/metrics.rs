//! Discrimination and calibration metrics on binary labels.
//!
//! All functions take probabilities or logits plus 0/1 labels of the same length; the
//! callers check lengths and that both classes are present.

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

/// `log(1 + exp(z))` without overflow.
#[inline]
pub fn softplus(z: f64) -> f64 {
    if z > 0.0 {
        z + (-z).exp().ln_1p()
    } else {
        z.exp().ln_1p()
    }
}

/// Inverse of [`sigmoid`], clamped away from 0 and 1.
pub fn logit(p: f64) -> f64 {
    let p = p.clamp(1e-15, 1.0 - 1e-15);
    (p / (1.0 - p)).ln()
}

/// Area under the ROC curve: the probability that a random positive scores above a random
/// negative, ties counting one half (Mann–Whitney U with mid-ranks). `None` when a class
/// is missing.
pub fn auroc(scores: &[f64], labels: &[u8]) -> Option<f64> {
    let n_pos = labels.iter().filter(|&&l| l == 1).count();
    let n_neg = labels.len() - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return None;
    }
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let mut rank_sum_pos = 0.0;
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        let mid_rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            if labels[k] == 1 {
                rank_sum_pos += mid_rank;
            }
        }
        i = j + 1;
    }
    let u = rank_sum_pos - (n_pos * (n_pos + 1)) as f64 / 2.0;
    Some(u / (n_pos as f64 * n_neg as f64))
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

/// Expected calibration error with `bins` equal-width probability bins: the
/// count-weighted mean of |mean predicted − observed rate| per bin.
pub fn ece(probs: &[f64], labels: &[u8], bins: usize) -> f64 {
    let mut count = vec![0usize; bins];
    let mut sum_p = vec![0.0; bins];
    let mut sum_y = vec![0.0; bins];
    for (&p, &y) in probs.iter().zip(labels) {
        let b = ((p * bins as f64) as usize).min(bins - 1);
        count[b] += 1;
        sum_p[b] += p;
        sum_y[b] += f64::from(y);
    }
    let n = probs.len() as f64;
    (0..bins)
        .filter(|&b| count[b] > 0)
        .map(|b| (sum_p[b] - sum_y[b]).abs() / n)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auroc_cases() {
        assert_eq!(auroc(&[0.1, 0.2, 0.8, 0.9], &[0, 0, 1, 1]), Some(1.0));
        assert_eq!(auroc(&[0.9, 0.8, 0.2, 0.1], &[0, 0, 1, 1]), Some(0.0));
        // All tied: 0.5.
        assert_eq!(auroc(&[0.5; 4], &[0, 1, 0, 1]), Some(0.5));
        // One inversion out of 4 pairs.
        assert_eq!(auroc(&[0.1, 0.6, 0.5, 0.9], &[0, 0, 1, 1]), Some(0.75));
        assert_eq!(auroc(&[0.1, 0.2], &[1, 1]), None);
    }

    #[test]
    fn nll_matches_direct_formula() {
        let z = [-3.0, 0.5, 2.0];
        let y = [0u8, 1, 1];
        let direct: f64 = -(1.0 - sigmoid(-3.0)).ln() - sigmoid(0.5).ln() - sigmoid(2.0).ln();
        assert!((nll_from_logits(&z, &y) - direct / 3.0).abs() < 1e-12);
        // Extreme logits do not overflow.
        assert!(nll_from_logits(&[800.0, -800.0], &[1, 0]).abs() < 1e-12);
        assert!((nll_from_logits(&[-800.0], &[1]) - 800.0).abs() < 1e-9);
    }

    #[test]
    fn ece_perfect_and_off() {
        // Bin [0.2, 0.267): predicted 0.25, observed 1/4.
        let p = [0.25; 4];
        assert!(ece(&p, &[1, 0, 0, 0], 15).abs() < 1e-12);
        assert!((ece(&p, &[1, 1, 0, 0], 15) - 0.25).abs() < 1e-12);
        assert!((brier(&[1.0, 0.0], &[1, 0])).abs() < 1e-12);
    }
}
