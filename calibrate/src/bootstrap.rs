//! Series-level bootstrap: resample `seriesuid`s with replacement (patches of a scan move
//! together), recompute each method's AUROC and each operating point's sensitivity and
//! specificity at its fixed threshold, and take the 2.5th and 97.5th percentiles.
//! Each resample is O(N): the scores are sorted once and the resample only changes weights.
use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use models::calibration::{CalibrationFile, Method, PointBootstrap};

use crate::ScoreTable;

/// Weighted Mann–Whitney AUROC over items pre-sorted by score (ascending).
fn weighted_auroc(order: &[usize], scores: &[f64], labels: &[u8], w: &[f64]) -> Option<f64> {
    let (mut neg_below, mut sum, mut p_tot, mut n_tot) = (0.0, 0.0, 0.0, 0.0);
    let mut i = 0;
    while i < order.len() {
        let s = scores[order[i]];
        let (mut pb, mut nb) = (0.0, 0.0);
        while i < order.len() && scores[order[i]] == s {
            let k = order[i];
            if labels[k] == 1 {
                pb += w[k]
            } else {
                nb += w[k]
            }
            i += 1;
        }
        sum += pb * (neg_below + 0.5 * nb);
        neg_below += nb;
        p_tot += pb;
        n_tot += nb;
    }
    (p_tot > 0.0 && n_tot > 0.0).then(|| sum / (p_tot * n_tot))
}

/// The 95% percentile interval (the one definition: [`::metrics::percentile_interval`]).
fn percentile_ci(v: Vec<f64>) -> Option<[f64; 2]> {
    ::metrics::percentile_interval(&v, 0.95)
}

/// Fills `auroc_bootstrap_ci95` of every metrics entry and `bootstrap` of every operating
/// point. `log_odds` holds each method's calibrated log-odds (its ranking).
pub fn apply(cal: &mut CalibrationFile, t: &ScoreTable, log_odds: &BTreeMap<Method, Vec<f64>>, b: usize, seed: u64) {
    let (groups, n_groups, _) = t.groups();
    let y = &t.labels;
    let mut keyed: Vec<(String, &Vec<f64>)> = vec![("uncalibrated".into(), &t.logits)];
    keyed.extend(log_odds.iter().map(|(m, p)| (m.name().to_string(), p)));
    let orders: Vec<Vec<usize>> = keyed
        .iter()
        .map(|(_, s)| {
            let mut o: Vec<usize> = (0..s.len()).collect();
            o.sort_by(|&a, &b| s[a].total_cmp(&s[b]));
            o
        })
        .collect();
    let thresholds: Vec<f64> = cal.operating_points.iter().map(|p| p.threshold_logit).collect();
    // Per resample: AUROC per key, (sens, spec) per point; None when a class is missing.
    type Draw = (Vec<f64>, Vec<(f64, f64)>);
    let draws: Vec<Option<Draw>> = (0..b)
        .into_par_iter()
        .map(|k| {
            let mut rng = StdRng::seed_from_u64(seed ^ (k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut gw = vec![0.0; n_groups];
            for _ in 0..n_groups {
                gw[rng.random_range(0..n_groups)] += 1.0;
            }
            let w: Vec<f64> = groups.iter().map(|&g| gw[g]).collect();
            let aurocs: Option<Vec<f64>> = keyed
                .iter()
                .zip(&orders)
                .map(|((_, s), o)| weighted_auroc(o, s, y, &w))
                .collect();
            let aurocs = aurocs?;
            let points = thresholds
                .iter()
                .map(|&thr| {
                    let (mut tp, mut p, mut tn, mut n) = (0.0, 0.0, 0.0, 0.0);
                    for i in 0..y.len() {
                        let called = t.logits[i] >= thr;
                        if y[i] == 1 {
                            p += w[i];
                            tp += if called { w[i] } else { 0.0 };
                        } else {
                            n += w[i];
                            tn += if called { 0.0 } else { w[i] };
                        }
                    }
                    (tp / p, tn / n)
                })
                .collect();
            Some((aurocs, points))
        })
        .collect();
    let ok: Vec<&Draw> = draws.iter().flatten().collect();
    for (ki, (key, _)) in keyed.iter().enumerate() {
        if let Some(m) = cal.metrics.get_mut(key) {
            m.auroc_bootstrap_ci95 = percentile_ci(ok.iter().map(|d| d.0[ki]).collect());
        }
    }
    for (pi, point) in cal.operating_points.iter_mut().enumerate() {
        let sens = percentile_ci(ok.iter().map(|d| d.1[pi].0).collect());
        let spec = percentile_ci(ok.iter().map(|d| d.1[pi].1).collect());
        if let (Some(sensitivity_ci95), Some(specificity_ci95)) = (sens, spec) {
            point.bootstrap = Some(PointBootstrap {
                sensitivity_ci95,
                specificity_ci95,
            });
        }
    }
    let skipped = b - ok.len();
    if skipped > 0 {
        cal.warnings.push(format!(
            "{skipped} of {b} bootstrap resamples lacked a class and were skipped"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_auroc_with_unit_weights_is_auroc() {
        let s: [f64; 5] = [0.1, 0.6, 0.5, 0.9, 0.5];
        let y = [0, 0, 1, 1, 0];
        let mut o: Vec<usize> = (0..5).collect();
        o.sort_by(|&a, &b| s[a].total_cmp(&s[b]));
        let a = weighted_auroc(&o, &s, &y, &[1.0; 5]).expect("auc");
        assert!((a - crate::metrics::auroc(&s, &y).expect("auc")).abs() < 1e-12);
        // Doubling every weight changes nothing; dropping a class gives None.
        assert_eq!(weighted_auroc(&o, &s, &y, &[2.0; 5]), Some(a));
        assert_eq!(weighted_auroc(&o, &s, &y, &[1.0, 1.0, 0.0, 0.0, 1.0]), None);
    }

    #[test]
    fn intervals_bracket_and_are_seeded() {
        let t = crate::tests::table(0.8, -0.5);
        let s = crate::Settings {
            bootstrap: 200,
            seed: 3,
            ..crate::Settings::for_run(std::path::Path::new("r"))
        };
        let m = crate::ModelRef {
            path: "m".into(),
            sha256: "ab".repeat(32),
        };
        let a = crate::calibrate(&t, &s, m.clone()).expect("cal");
        let b = crate::calibrate(&t, &s, m).expect("cal");
        assert_eq!(a, b);
        let u = &a.metrics["uncalibrated"];
        let [lo, hi] = u.auroc_bootstrap_ci95.expect("ci");
        assert!(lo < u.auroc && u.auroc < hi, "{lo} {} {hi}", u.auroc);
        // The series bootstrap and DeLong agree roughly on the width here (independent rows).
        let (wb, wd) = (hi - lo, u.auroc_delong_ci95[1] - u.auroc_delong_ci95[0]);
        assert!(wb > 0.5 * wd && wb < 2.5 * wd, "bootstrap {wb} vs DeLong {wd}");
        for p in &a.operating_points {
            let bs = p.bootstrap.as_ref().expect("point bootstrap");
            let sens = p.sensitivity.value.expect("sens");
            assert!(
                bs.sensitivity_ci95[0] <= sens && sens <= bs.sensitivity_ci95[1],
                "{}",
                p.name
            );
        }
    }
}
