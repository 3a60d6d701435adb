//! Ranking metrics on binary labels, and the scalar functions every stage shares.
//!
//! In the contract crate because three stages need them: the trainer (validation AUROC and
//! AUPRC per epoch, the exported model's DeLong interval), `calibrate` (metrics before and
//! after calibration, operating points) and, through them, every report. Definitions follow
//! the textbook (and scikit-learn where it has the metric): AUROC as Mann–Whitney with
//! mid-ranks, DeLong's variance by the mid-rank algorithm of Sun & Xu (2014), average
//! precision as Σ (Rₖ − Rₖ₋₁)·Pₖ over distinct thresholds ([`sweep`]).
//!
//! Every function terminates on any input, NaN included: a NaN score makes AUROC and
//! average precision undefined (`None` / NaN), never a loop or a number that looks real.
use statrs::distribution::{ContinuousCDF, Normal};

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
        while j + 1 < idx.len() && same(v[idx[j + 1]], v[idx[i]]) {
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
/// negative, ties counting one half. `None` when a class is missing or a score is NaN.
pub fn auroc(scores: &[f64], labels: &[u8]) -> Option<f64> {
    if has_nan(scores) {
        return None;
    }
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

/// DeLong's structural components of the AUROC: `V10` per positive (the share of negatives
/// it outscores, ties one half) and `V01` per negative (the share of positives that outscore
/// it), positives and negatives in their order in `scores`. `None` when a class has fewer
/// than two members or a score is NaN.
pub fn delong_components(scores: &[f64], labels: &[u8]) -> Option<(Vec<f64>, Vec<f64>)> {
    if has_nan(scores) {
        return None;
    }
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
    let v10: Vec<f64> = (0..m).map(|i| (r_all[i] - r_pos[i]) / n as f64).collect();
    let v01: Vec<f64> = (0..n).map(|j| 1.0 - (r_all[m + j] - r_neg[j]) / m as f64).collect();
    Some((v10, v01))
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// Sample covariance.
fn cov(a: &[f64], b: &[f64]) -> f64 {
    let (ma, mb) = (mean(a), mean(b));
    a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum::<f64>() / (a.len() - 1) as f64
}

/// AUROC with DeLong's variance: returns (AUROC, standard error). Needs both classes and at
/// least two of each for the variance.
pub fn auroc_delong(scores: &[f64], labels: &[u8]) -> Option<(f64, f64)> {
    let (v10, v01) = delong_components(scores, labels)?;
    let se = (cov(&v10, &v10) / v10.len() as f64 + cov(&v01, &v01) / v01.len() as f64).sqrt();
    Some((mean(&v10), se))
}

/// DeLong's test of two correlated AUROCs (two models scoring the same patches): the
/// difference `AUROC(b) − AUROC(a)`, its standard error from the paired structural
/// components, and the two-sided p-value of `z = difference / se` (1 when the scores are
/// identical, so that the difference has no variance).
pub fn paired_delong(a: &[f64], b: &[f64], labels: &[u8]) -> Option<(f64, f64, f64)> {
    let (a10, a01) = delong_components(a, labels)?;
    let (b10, b01) = delong_components(b, labels)?;
    let (m, n) = (a10.len() as f64, a01.len() as f64);
    let diff = mean(&b10) - mean(&a10);
    let var = (cov(&a10, &a10) + cov(&b10, &b10) - 2.0 * cov(&a10, &b10)) / m
        + (cov(&a01, &a01) + cov(&b01, &b01) - 2.0 * cov(&a01, &b01)) / n;
    let se = var.max(0.0).sqrt();
    let p = if se > 0.0 {
        2.0 * (1.0 - Normal::standard().cdf((diff / se).abs()))
    } else if diff == 0.0 {
        1.0
    } else {
        0.0
    };
    Some((diff, se, p))
}

/// The highest sensitivity at a threshold whose specificity is at least `spec` (predicted
/// positive: score ≥ threshold), and that threshold: midway between the lowest score called
/// positive and the next lower one, as [`sweep`] places its cuts (+∞ when none keeps the
/// specificity while calling anything positive).
pub fn sensitivity_at_specificity(scores: &[f64], labels: &[u8], spec: f64) -> (f64, f64) {
    let s = sweep(scores, labels);
    if s.n_pos == 0 || s.n_neg == 0 {
        return (f64::NAN, f64::INFINITY);
    }
    let mut best = (0.0, f64::INFINITY);
    for &(t, tp, fp) in &s.cuts {
        if 1.0 - fp as f64 / s.n_neg as f64 >= spec - 1e-12 {
            let sens = tp as f64 / s.n_pos as f64;
            if sens > best.0 {
                best = (sens, t);
            }
        }
    }
    best
}

/// The percentile bootstrap interval at `level` (0.95 for 95%) of one statistic's values over
/// B resamples: the one definition every tool here reports (`calibrate`'s intervals, `calibrate
/// compare`'s paired differences, `froc`'s FROC and CPM bands), LUNA16's evaluation script's.
/// With p = (1 − level)/2 and the values sorted, the interval is [v[⌊p·B⌋], v[⌊(1 − p)·B⌋]],
/// each index at most B − 1; in numpy, `v = np.sort(v); v[min(int(np.floor(p * B)), B - 1)]`
/// and likewise for 1 − p. It is not `np.percentile`'s default, which interpolates between
/// neighbouring values: for B = 1000 at 95% the two differ by at most the gap between the
/// 25th and 26th (975th and 976th) sorted values. `None` without values.
pub fn percentile_interval(values: &[f64], level: f64) -> Option<[f64; 2]> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let b = v.len();
    let p = (1.0 - level) / 2.0;
    let at = |q: f64| ((q * b as f64).floor() as usize).min(b - 1);
    Some([v[at(p)], v[at(1.0 - p)]])
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
/// distinct score thresholds, highest first. NaN when there is no positive or a score is NaN.
pub fn average_precision(scores: &[f64], labels: &[u8]) -> f64 {
    if has_nan(scores) {
        return f64::NAN;
    }
    let s = sweep(scores, labels);
    if s.n_pos == 0 {
        return f64::NAN;
    }
    let n_pos = s.n_pos as f64;
    let (mut prev_recall, mut ap) = (0.0, 0.0);
    for &(_, tp, fp) in &s.cuts {
        let recall = tp as f64 / n_pos;
        ap += (recall - prev_recall) * tp as f64 / (tp + fp) as f64;
        prev_recall = recall;
    }
    ap
}

fn has_nan(v: &[f64]) -> bool {
    v.iter().any(|x| x.is_nan())
}

/// Whether two scores are one tie group: equal, or the very same NaN (so grouping a NaN
/// still moves on).
fn same(a: f64, b: f64) -> bool {
    a == b || a.to_bits() == b.to_bits()
}

/// Confusion counts at every distinct cut, from the highest logit down:
/// (threshold, tp, fp), thresholds placed midway to the next lower score.
pub struct Sweep {
    pub cuts: Vec<(f64, usize, usize)>,
    pub n_pos: usize,
    pub n_neg: usize,
}

pub fn sweep(logits: &[f64], labels: &[u8]) -> Sweep {
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    let n_pos = labels.iter().filter(|&&l| l == 1).count();
    let n_neg = labels.len() - n_pos;
    let (mut tp, mut fp) = (0, 0);
    let mut cuts = Vec::new();
    let mut i = 0;
    while i < idx.len() {
        let t = logits[idx[i]];
        while i < idx.len() && same(logits[idx[i]], t) {
            if labels[idx[i]] == 1 {
                tp += 1
            } else {
                fp += 1
            }
            i += 1;
        }
        cuts.push((t, tp, fp));
    }
    // Midway between each score and the next lower one, so the validation patches keep
    // their side of the threshold after rounding and new patches near it are not biased.
    for i in 0..cuts.len() {
        let lower = cuts.get(i + 1).map_or(cuts[i].0 - 1.0, |c| c.0);
        cuts[i].0 = (cuts[i].0 + lower) / 2.0;
    }
    Sweep { cuts, n_pos, n_neg }
}

/// ROC points (false-positive rate, true-positive rate) from the highest score down, one
/// per distinct score (ties move together), starting at (0, 0). Both classes must be present.
pub fn roc_points(scores: &[f64], labels: &[u8]) -> Vec<(f64, f64)> {
    let s = sweep(scores, labels);
    let mut pts = vec![(0.0, 0.0)];
    pts.extend(
        s.cuts
            .iter()
            .map(|&(_, tp, fp)| (fp as f64 / s.n_neg as f64, tp as f64 / s.n_pos as f64)),
    );
    pts
}

/// Precision–recall points (recall, precision), step-wise as [`average_precision`] sums
/// them: each distinct score adds a step from the previous recall to its own at its precision.
pub fn pr_points(scores: &[f64], labels: &[u8]) -> Vec<(f64, f64)> {
    let s = sweep(scores, labels);
    let mut pts = Vec::new();
    let mut prev_r = 0.0;
    for &(_, tp, fp) in &s.cuts {
        let (r, p) = (tp as f64 / s.n_pos as f64, tp as f64 / (tp + fp) as f64);
        pts.push((prev_r, p));
        pts.push((r, p));
        prev_r = r;
    }
    pts
}

/// The most bootstrap resamples `calibrate` and `froc` take. Every resample's statistics are
/// kept until the percentiles are read (a billion resamples asked for 4.8 GB at once and
/// aborted); beyond 100,000 the Monte Carlo error of a 95% interval's ends is far below the
/// interval's own width.
pub const MAX_BOOTSTRAP: usize = 100_000;

/// `Ok` unless `b` is more than [`MAX_BOOTSTRAP`]; the message names `--bootstrap`.
pub fn check_bootstrap(b: usize) -> Result<(), String> {
    if b > MAX_BOOTSTRAP {
        return Err(format!(
            "--bootstrap {b}: at most {MAX_BOOTSTRAP} resamples (more change a 95% interval by less \
             than its Monte Carlo error, and each one's statistics are held in memory)"
        ));
    }
    Ok(())
}


#[cfg(test)]
mod tests {
    use super::*;

    /// LUNA16's percentile indices ⌊p·B⌋ and ⌊(1 − p)·B⌋, clamped, on values whose sorted
    /// position is their value.
    #[test]
    fn percentile_interval_takes_the_luna16_indices() {
        let shuffled = |b: usize| -> Vec<f64> { (0..b).map(|i| ((i * 7919) % b) as f64).collect() };
        assert_eq!(percentile_interval(&shuffled(1000), 0.95), Some([25.0, 975.0]));
        assert_eq!(percentile_interval(&shuffled(100), 0.95), Some([2.0, 97.0]));
        // p = (1 − 0.9)/2 is 0.0499… in floating point, and 0.0499…·40 floors to 1: the
        // script's arithmetic, kept (numpy gives the same: see the integration test).
        assert_eq!(percentile_interval(&shuffled(40), 0.9), Some([1.0, 38.0]));
        assert_eq!(percentile_interval(&[3.5], 0.95), Some([3.5, 3.5]));
        assert_eq!(percentile_interval(&[], 0.95), None);
    }

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

    /// Every metric terminates on NaN input and says the result is undefined.
    #[test]
    fn nan_scores_terminate_and_are_undefined() {
        let s = [0.3, f64::NAN, 0.9, f64::NAN, -1.0];
        let y = [0, 1, 1, 0, 1];
        assert_eq!(auroc(&s, &y), None);
        assert_eq!(auroc_delong(&s, &y), None);
        assert!(auroc_delong_ci95(&s, &y).iter().all(|v| v.is_nan()));
        assert!(average_precision(&s, &y).is_nan());
        let sw = sweep(&s, &y);
        assert_eq!(sw.cuts.last().map(|c| (c.1, c.2)), Some((3, 2)));
        assert!(average_precision(&[f64::NAN; 3], &[1, 0, 1]).is_nan());
    }
}
