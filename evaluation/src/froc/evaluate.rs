//! Matching candidates to findings, the FROC curve, the CPM and the scan bootstrap (rules
//! R3–R13 of the crate documentation).
use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde::Serialize;

use luna16::Finding;

use crate::EvalError;

/// The seven FP/scan rates of the CPM.
pub const RATES: [f64; 7] = [0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0];
/// Points of the bootstrap band grid (the script's `linspace(0.125, 8, 10000)`).
pub const GRID_POINTS: usize = 10_000;

/// Options of an evaluation.
#[derive(Debug, Clone)]
pub struct FrocSettings {
    /// Per-scan cap on candidates (R4); `None` for no cap.
    pub max_candidates: Option<usize>,
    pub bootstrap: usize,
    pub seed: u64,
    pub confidence: f64,
}

impl Default for FrocSettings {
    fn default() -> Self {
        FrocSettings {
            max_candidates: Some(100),
            bootstrap: 1000,
            seed: 0,
            confidence: 0.95,
        }
    }
}

impl FrocSettings {
    /// Checks the settings an evaluation cannot run with.
    pub fn check(&self) -> Result<(), EvalError> {
        if !(0.0 < self.confidence && self.confidence < 1.0) {
            return Err(EvalError::Usage(format!(
                "--confidence must be in (0, 1), got {}",
                self.confidence
            )));
        }
        Ok(())
    }
}

/// One entry of the FROC computation (R6–R8).
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// true positive (a detected nodule) or false positive.
    tp: bool,
    prob: f64,
    scan: usize,
}

/// Per-scan bookkeeping after matching.
#[derive(Debug, Clone, Default)]
struct ScanResult {
    nodules: usize,
}

/// Counts of an evaluation.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Totals {
    pub scans: usize,
    pub nodules: usize,
    pub true_positives: usize,
    pub false_positives: usize,
    pub false_negatives: usize,
    /// Candidates after the per-scan cap.
    pub candidates: usize,
    pub candidates_dropped_by_cap: usize,
    pub irrelevant_candidates: usize,
    pub double_detections: usize,
    pub results_rows: usize,
    pub results_rows_unknown_series: usize,
    pub excluded_findings: usize,
}

/// Sensitivity at one rate, with its bootstrap mean and interval.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RatePoint {
    pub fp_per_scan: f64,
    pub sensitivity: f64,
    pub bootstrap_mean: Option<f64>,
    pub ci_lower: Option<f64>,
    pub ci_upper: Option<f64>,
}

/// The whole evaluation.
#[derive(Debug, Clone, Serialize)]
pub struct FrocReport {
    pub cpm: f64,
    pub cpm_bootstrap_mean: Option<f64>,
    pub cpm_ci: Option<[f64; 2]>,
    pub rates: Vec<RatePoint>,
    pub totals: Totals,
    pub max_candidates_per_scan: Option<usize>,
    pub bootstrap_samples: usize,
    pub bootstrap_seed: u64,
    pub confidence: f64,
    pub warnings: Vec<String>,
    /// Raw curve: (FP/scan, sensitivity, threshold).
    #[serde(skip)]
    pub curve: Vec<(f64, f64, f64)>,
    /// Band on the grid: (FP/scan, mean, lower, upper).
    #[serde(skip)]
    pub band: Vec<(f64, f64, f64, f64)>,
    #[serde(skip)]
    pub missed: Vec<Finding>,
}

fn radius2(diameter: f64) -> f64 {
    let d = if diameter < 0.0 { 10.0 } else { diameter };
    (d / 2.0) * (d / 2.0)
}

/// Matched entries per scan, and the totals (R3–R8).
struct Matched {
    entries: Vec<Entry>,
    scans: Vec<ScanResult>,
    totals: Totals,
    missed: Vec<Finding>,
}

/// Findings per listed scan (file order kept), and how many belong to no listed scan.
fn group<'a>(pos: &HashMap<&str, usize>, n: usize, v: &'a [Finding]) -> (Vec<Vec<&'a Finding>>, usize) {
    let mut g: Vec<Vec<&Finding>> = vec![Vec::new(); n];
    let mut unknown = 0;
    for f in v {
        match pos.get(f.seriesuid.as_str()) {
            Some(&i) => g[i].push(f),
            None => unknown += 1,
        }
    }
    (g, unknown)
}

fn match_all(
    uids: &[String],
    annotations: &[Finding],
    excluded: &[Finding],
    results: &[Finding],
    cap: Option<usize>,
) -> Matched {
    let pos: HashMap<&str, usize> = uids.iter().enumerate().map(|(i, u)| (u.as_str(), i)).collect();
    let (ann, _) = group(&pos, uids.len(), annotations);
    let (exc, _) = group(&pos, uids.len(), excluded);
    let (res, unknown) = group(&pos, uids.len(), results);
    let mut t = Totals {
        scans: uids.len(),
        results_rows: results.len(),
        results_rows_unknown_series: unknown,
        excluded_findings: exc.iter().map(Vec::len).sum(),
        ..Default::default()
    };
    let mut entries = Vec::new();
    let mut scans = vec![ScanResult::default(); uids.len()];
    let mut missed = Vec::new();
    for (s, cands) in res.iter().enumerate() {
        // R4: the cap.
        let cands: Vec<&Finding> = match cap {
            Some(n) if cands.len() > n => {
                let mut probs: Vec<f64> = cands.iter().map(|c| c.value).collect();
                probs.sort_by(|a, b| b.total_cmp(a));
                let thr = probs[n];
                let kept: Vec<&Finding> = cands.iter().copied().filter(|c| c.value > thr).collect();
                t.candidates_dropped_by_cap += cands.len() - kept.len();
                kept
            }
            _ => cands.clone(),
        };
        t.candidates += cands.len();
        let mut in_pool = vec![true; cands.len()];
        // R5–R6: included nodules.
        for n in &ann[s] {
            let r2 = radius2(n.value);
            let mut best: Option<f64> = None;
            let mut matches = 0;
            for (ci, c) in cands.iter().enumerate() {
                if n.dist2(c) < r2 {
                    matches += 1;
                    best = Some(best.map_or(c.value, |b: f64| b.max(c.value)));
                    in_pool[ci] = false;
                }
            }
            scans[s].nodules += 1;
            t.nodules += 1;
            match best {
                Some(p) => {
                    t.true_positives += 1;
                    t.double_detections += matches - 1;
                    entries.push(Entry {
                        tp: true,
                        prob: p,
                        scan: s,
                    });
                }
                None => {
                    t.false_negatives += 1;
                    missed.push((*n).clone());
                }
            }
        }
        // R7: excluded findings.
        for e in &exc[s] {
            let r2 = radius2(e.value);
            for (ci, c) in cands.iter().enumerate() {
                if in_pool[ci] && e.dist2(c) < r2 {
                    in_pool[ci] = false;
                    t.irrelevant_candidates += 1;
                }
            }
        }
        // R8: the rest are false positives.
        for (ci, c) in cands.iter().enumerate() {
            if in_pool[ci] {
                t.false_positives += 1;
                entries.push(Entry {
                    tp: false,
                    prob: c.value,
                    scan: s,
                });
            }
        }
    }
    Matched {
        entries,
        scans,
        totals: t,
        missed,
    }
}

impl Matched {
    /// Included nodules in a resample (R12: recounted over the drawn scans).
    fn nodules_in(&self, w: &[u32]) -> f64 {
        self.scans
            .iter()
            .zip(w)
            .map(|(sc, &k)| sc.nodules as f64 * f64::from(k))
            .sum()
    }
}

/// R12: resample `k` of a bootstrap seeded by `seed`: how many times each of `n` scans is
/// drawn (`n` draws with replacement).
fn resample(seed: u64, k: usize, n: usize) -> Vec<u32> {
    let mut rng = StdRng::seed_from_u64(seed.wrapping_add(k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut w = vec![0u32; n];
    for _ in 0..n {
        w[rng.random_range(0..n)] += 1;
    }
    w
}

/// CPM of a curve (R11).
fn cpm_of(c: &[(f64, f64, f64)]) -> f64 {
    RATES.iter().map(|&r| interp(r, c)).sum::<f64>() / RATES.len() as f64
}

/// The CPM of one model in a paired comparison.
#[derive(Debug, Clone, Serialize)]
pub struct CpmOf {
    pub cpm: f64,
    /// Percentile interval over the resamples (R13), as `froc` gives it for this model alone.
    pub ci: Option<[f64; 2]>,
    pub true_positives: usize,
    pub false_positives: usize,
}

/// A model's CPM against the reference's on the same resampled scans.
#[derive(Debug, Clone, Serialize)]
pub struct CpmDiff {
    /// other − reference.
    pub diff: f64,
    /// Percentile interval of the paired differences (R13's indices).
    pub ci: [f64; 2],
    /// Two-sided: twice the smaller share of resampled differences on either side of 0.
    pub p: f64,
}

/// A paired scan bootstrap of the CPM of several candidate sets (the first the
/// reference) against the same annotations: each resample draws the scans once (R12) and
/// every model's curve is computed on that draw, so the spread of the difference is that of
/// the difference, not of two independent intervals. With the same seed, each model's own
/// interval is the one `froc` reports for it alone.
#[derive(Debug, Clone, Serialize)]
pub struct PairedCpm {
    pub models: Vec<CpmOf>,
    /// Against the first model, for the second onwards; empty without resamples.
    pub diffs: Vec<CpmDiff>,
    pub bootstrap_samples: usize,
    pub bootstrap_seed: u64,
    pub confidence: f64,
    pub scans: usize,
    pub nodules: usize,
}

/// See [`PairedCpm`].
pub fn paired_cpm(
    uids: &[String],
    annotations: &[Finding],
    excluded: &[Finding],
    results: &[&[Finding]],
    s: &FrocSettings,
) -> Result<PairedCpm, EvalError> {
    s.check()?;
    let matched: Vec<Matched> = results
        .iter()
        .map(|r| match_all(uids, annotations, excluded, r, s.max_candidates))
        .collect();
    let Some(first) = matched.first() else {
        return Err(EvalError::Usage("a paired CPM needs candidate sets to compare".into()));
    };
    if first.totals.nodules == 0 {
        return Err(EvalError::Undefined(
            "the listed scans hold no annotated nodules: the FROC is undefined".into(),
        ));
    }
    let sorted: Vec<Vec<Entry>> = matched
        .iter()
        .map(|m| {
            let mut e = m.entries.clone();
            e.sort_by(|a, b| b.prob.total_cmp(&a.prob));
            e
        })
        .collect();
    let n = uids.len();
    let ones = vec![1u32; n];
    let points: Vec<f64> = sorted
        .iter()
        .map(|e| cpm_of(&curve(e, &ones, n, first.totals.nodules as f64)))
        .collect();
    let b = s.bootstrap;
    // Per resample, every model's CPM (the nodule count is the annotations', the same for all).
    let boots: Vec<Vec<f64>> = (0..b)
        .into_par_iter()
        .map(|k| {
            let w = resample(s.seed, k, n);
            let nodules = first.nodules_in(&w);
            sorted.iter().map(|e| cpm_of(&curve(e, &w, n, nodules))).collect()
        })
        .collect();
    let interval = |v: Vec<f64>| metrics::percentile_interval(&v, s.confidence).unwrap_or([f64::NAN; 2]);
    let models = matched
        .iter()
        .enumerate()
        .map(|(i, m)| CpmOf {
            cpm: points[i],
            ci: (b > 0).then(|| interval(boots.iter().map(|r| r[i]).collect())),
            true_positives: m.totals.true_positives,
            false_positives: m.totals.false_positives,
        })
        .collect();
    let diffs = if b == 0 {
        Vec::new()
    } else {
        (1..results.len())
            .map(|i| {
                let d: Vec<f64> = boots.iter().map(|r| r[i] - r[0]).collect();
                let share = |f: &dyn Fn(f64) -> bool| d.iter().filter(|&&x| f(x)).count() as f64 / b as f64;
                CpmDiff {
                    diff: points[i] - points[0],
                    p: (2.0 * share(&|x| x <= 0.0).min(share(&|x| x >= 0.0))).min(1.0),
                    ci: interval(d),
                }
            })
            .collect()
    };
    Ok(PairedCpm {
        models,
        diffs,
        bootstrap_samples: b,
        bootstrap_seed: s.seed,
        confidence: s.confidence,
        scans: n,
        nodules: first.totals.nodules,
    })
}

/// R9: the FROC curve from entries sorted by probability descending, with per-scan
/// weights (multiplicities in a bootstrap resample; 1 otherwise). Returns
/// (x, y, threshold) points starting at (0, 0).
fn curve(sorted: &[Entry], weight: &[u32], n_scans: usize, n_nodules: f64) -> Vec<(f64, f64, f64)> {
    let (mut n_tp, mut n_fp) = (0u64, 0u64);
    for e in sorted {
        let w = u64::from(weight[e.scan]);
        if e.tp {
            n_tp += w
        } else {
            n_fp += w
        }
    }
    let mut pts = Vec::with_capacity(sorted.len() + 1);
    pts.push((0.0, 0.0, f64::INFINITY));
    let (mut tp, mut fp) = (0u64, 0u64);
    let mut i = 0;
    while i < sorted.len() {
        let p = sorted[i].prob;
        while i < sorted.len() && sorted[i].prob == p {
            let w = u64::from(weight[sorted[i].scan]);
            if sorted[i].tp {
                tp += w
            } else {
                fp += w
            }
            i += 1;
        }
        let x = if n_fp == 0 {
            0.0
        } else {
            (fp as f64 / n_fp as f64) * n_fp as f64 / n_scans as f64
        };
        let y = if n_tp == 0 || n_nodules == 0.0 {
            0.0
        } else {
            (tp as f64 / n_tp as f64) * n_tp as f64 / n_nodules
        };
        pts.push((x, y, p));
    }
    pts
}

/// R10: `np.interp(r, xs, ys)` for non-decreasing `xs`.
pub fn interp(r: f64, pts: &[(f64, f64, f64)]) -> f64 {
    let n = pts.len();
    if n == 0 {
        return f64::NAN;
    }
    if r < pts[0].0 {
        return pts[0].1;
    }
    // Last index with x <= r.
    let j = pts.partition_point(|p| p.0 <= r) - 1;
    if j == n - 1 {
        return pts[n - 1].1;
    }
    let (x0, y0, _) = pts[j];
    let (x1, y1, _) = pts[j + 1];
    let slope = (y1 - y0) / (x1 - x0);
    slope * (r - x0) + y0
}

/// Evaluates `results` against the annotations for the listed scans.
pub fn evaluate(
    uids: &[String],
    annotations: &[Finding],
    excluded: &[Finding],
    results: &[Finding],
    s: &FrocSettings,
) -> Result<FrocReport, EvalError> {
    s.check()?;
    let m = match_all(uids, annotations, excluded, results, s.max_candidates);
    let mut warnings = Vec::new();
    if m.totals.results_rows_unknown_series > 0 {
        warnings.push(format!(
            "{} result row(s) belong to series not in the list and were ignored (as the official script does)",
            m.totals.results_rows_unknown_series
        ));
    }
    if m.totals.nodules == 0 {
        return Err(EvalError::Undefined(
            "the listed scans hold no annotated nodules: the FROC is undefined".into(),
        ));
    }
    let mut sorted = m.entries.clone();
    sorted.sort_by(|a, b| b.prob.total_cmp(&a.prob));
    let ones = vec![1u32; uids.len()];
    let raw = curve(&sorted, &ones, uids.len(), m.totals.nodules as f64);
    let sens: Vec<f64> = RATES.iter().map(|&r| interp(r, &raw)).collect();
    let cpm = cpm_of(&raw);

    // R12–R13: bootstrap over scans.
    let b = s.bootstrap;
    let grid: Vec<f64> = (0..GRID_POINTS)
        .map(|i| 0.125 + (8.0 - 0.125) * i as f64 / (GRID_POINTS - 1) as f64)
        .collect();
    let (mut rate_stats, mut band, mut cpm_stats) = (Vec::new(), Vec::new(), None);
    if b > 0 {
        let resamples: Vec<(Vec<f64>, Vec<f32>)> = (0..b)
            .into_par_iter()
            .map(|k| {
                let w = resample(s.seed, k, uids.len());
                let c = curve(&sorted, &w, uids.len(), m.nodules_in(&w));
                let at_rates: Vec<f64> = RATES.iter().map(|&r| interp(r, &c)).collect();
                let on_grid: Vec<f32> = grid.iter().map(|&g| interp(g, &c) as f32).collect();
                (at_rates, on_grid)
            })
            .collect();
        let stats = |v: Vec<f64>| {
            let [lo, hi] = metrics::percentile_interval(&v, s.confidence).unwrap_or([f64::NAN; 2]);
            (v.iter().sum::<f64>() / v.len() as f64, lo, hi)
        };
        for ri in 0..RATES.len() {
            rate_stats.push(stats(resamples.iter().map(|r| r.0[ri]).collect()));
        }
        cpm_stats = Some(stats(
            resamples
                .iter()
                .map(|r| r.0.iter().sum::<f64>() / RATES.len() as f64)
                .collect(),
        ));
        band = (0..GRID_POINTS)
            .into_par_iter()
            .map(|gi| {
                let (mean, lo, hi) = stats(resamples.iter().map(|r| f64::from(r.1[gi])).collect());
                (grid[gi], mean, lo, hi)
            })
            .collect();
    }
    let rates = RATES
        .iter()
        .enumerate()
        .map(|(i, &r)| RatePoint {
            fp_per_scan: r,
            sensitivity: sens[i],
            bootstrap_mean: rate_stats.get(i).map(|s| s.0),
            ci_lower: rate_stats.get(i).map(|s| s.1),
            ci_upper: rate_stats.get(i).map(|s| s.2),
        })
        .collect();
    Ok(FrocReport {
        cpm,
        cpm_bootstrap_mean: cpm_stats.map(|s| s.0),
        cpm_ci: cpm_stats.map(|s| [s.1, s.2]),
        rates,
        totals: m.totals,
        max_candidates_per_scan: s.max_candidates,
        bootstrap_samples: b,
        bootstrap_seed: s.seed,
        confidence: s.confidence,
        warnings,
        curve: raw,
        band,
        missed: m.missed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(uid: &str, x: f64, v: f64) -> Finding {
        Finding {
            seriesuid: uid.into(),
            x,
            y: 0.0,
            z: 0.0,
            value: v,
        }
    }

    fn uids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("s{i}")).collect()
    }

    fn no_boot() -> FrocSettings {
        FrocSettings {
            bootstrap: 0,
            ..Default::default()
        }
    }

    #[test]
    fn radius_boundary_is_not_a_hit() {
        // Nodule of 10 mm at x = 0: a candidate at exactly 5 mm misses, at 4.999 hits.
        let ann = [f("s0", 0.0, 10.0)];
        let r = evaluate(&uids(1), &ann, &[], &[f("s0", 5.0, 0.9)], &no_boot()).expect("eval");
        assert_eq!(
            (
                r.totals.true_positives,
                r.totals.false_positives,
                r.totals.false_negatives
            ),
            (0, 1, 1)
        );
        let r = evaluate(&uids(1), &ann, &[], &[f("s0", 4.999, 0.9)], &no_boot()).expect("eval");
        assert_eq!((r.totals.true_positives, r.totals.false_positives), (1, 0));
    }

    #[test]
    fn two_candidates_on_one_nodule_count_once_with_the_max() {
        let ann = [f("s0", 0.0, 10.0)];
        let res = [f("s0", 1.0, 0.3), f("s0", -1.0, 0.8), f("s0", 50.0, 0.5)];
        let r = evaluate(&uids(1), &ann, &[], &res, &no_boot()).expect("eval");
        assert_eq!(
            (
                r.totals.true_positives,
                r.totals.false_positives,
                r.totals.double_detections
            ),
            (1, 1, 1)
        );
        // Curve: p ≥ 0.8 → TP (x 0, y 1); p ≥ 0.5 → FP (x 1, y 1).
        assert_eq!(
            r.curve,
            vec![(0.0, 0.0, f64::INFINITY), (0.0, 1.0, 0.8), (1.0, 1.0, 0.5)]
        );
        assert!(r.rates.iter().all(|p| p.sensitivity == 1.0));
    }

    #[test]
    fn one_candidate_can_hit_two_nodules() {
        let ann = [f("s0", 0.0, 10.0), f("s0", 2.0, 10.0)];
        let r = evaluate(&uids(1), &ann, &[], &[f("s0", 1.0, 0.7)], &no_boot()).expect("eval");
        assert_eq!((r.totals.true_positives, r.totals.false_positives), (2, 0));
    }

    #[test]
    fn excluded_findings_ignore_candidates_and_minus_one_means_10_mm() {
        let ann = [f("s0", 0.0, 6.0)];
        // Excluded finding without a size (−1 → 10 mm, r = 5) at x = 100.
        let exc = [f("s0", 100.0, -1.0)];
        let res = [
            f("s0", 0.0, 0.9),
            f("s0", 104.9, 0.95),
            f("s0", 105.0, 0.4),
            f("s0", 1.0, 0.2),
        ];
        let r = evaluate(&uids(1), &ann, &exc, &res, &no_boot()).expect("eval");
        let t = &r.totals;
        // 104.9 is within 5 mm of the excluded finding: ignored; 105.0 is on the boundary: FP.
        assert_eq!(
            (
                t.true_positives,
                t.false_positives,
                t.irrelevant_candidates,
                t.double_detections
            ),
            (1, 1, 1, 1)
        );
        // A candidate on both a nodule and an excluded finding is a TP.
        let exc = [f("s0", 0.5, 10.0)];
        let r = evaluate(&uids(1), &ann, &exc, &[f("s0", 0.0, 0.9)], &no_boot()).expect("eval");
        assert_eq!((r.totals.true_positives, r.totals.irrelevant_candidates), (1, 0));
    }

    #[test]
    fn scan_without_nodules_counts_in_the_divisor_and_missed_nodules_cap_sensitivity() {
        // Two scans: s0 has 2 nodules (one found with p .9, one missed), s1 has none and
        // 4 false positives with p .8, .6, .4, .2.
        let ann = [f("s0", 0.0, 10.0), f("s0", 100.0, 10.0)];
        let res = [
            f("s0", 0.0, 0.9),
            f("s1", 0.0, 0.8),
            f("s1", 10.0, 0.6),
            f("s1", 20.0, 0.4),
            f("s1", 30.0, 0.2),
        ];
        let r = evaluate(&uids(2), &ann, &[], &res, &no_boot()).expect("eval");
        assert_eq!(r.totals.false_negatives, 1);
        assert_eq!(r.missed.len(), 1);
        // x = FPs / 2 scans: 0.5, 1, 1.5, 2; y = 1/2 throughout (the missed nodule caps it).
        let xs: Vec<f64> = r.curve.iter().map(|p| p.0).collect();
        assert_eq!(xs, vec![0.0, 0.0, 0.5, 1.0, 1.5, 2.0]);
        // Before the first FP the curve is at y = 0.5 from x = 0; interp at 0.125 = 0.5.
        assert_eq!(r.rates[0].sensitivity, 0.5);
        assert_eq!(r.cpm, 0.5);
    }

    #[test]
    fn curve_interpolates_linearly_and_holds_its_end() {
        // One scan, 2 nodules: TP p .9, FP .8, TP .7, FP .6 → points (0,.5) (1,.5) (1,1) (2,1).
        let ann = [f("s0", 0.0, 10.0), f("s0", 100.0, 10.0)];
        let res = [
            f("s0", 0.0, 0.9),
            f("s0", 50.0, 0.8),
            f("s0", 100.0, 0.7),
            f("s0", 200.0, 0.6),
        ];
        let r = evaluate(&uids(1), &ann, &[], &res, &no_boot()).expect("eval");
        let s: Vec<f64> = r.rates.iter().map(|p| p.sensitivity).collect();
        // At x = 1 two points share the x: np.interp takes the last (y = 1).
        assert_eq!(s, vec![0.5, 0.5, 0.5, 1.0, 1.0, 1.0, 1.0]);
        assert!((r.cpm - 4.0 / 7.0 - 3.0 * 0.5 / 7.0).abs() < 1e-12);
        // Linear between points: a curve (0,0)→(2,1) at 0.5 is 0.25.
        let pts = [(0.0, 0.0, 1.0), (2.0, 1.0, 0.5)];
        assert_eq!(interp(0.5, &pts), 0.25);
        assert_eq!(interp(9.0, &pts), 1.0);
    }

    #[test]
    fn cap_drops_every_tie_at_the_cut() {
        // Cap 2: probabilities .9 .5 .5 .1 → the 3rd highest is .5, keep only p > .5.
        let res = [
            f("s0", 10.0, 0.9),
            f("s0", 20.0, 0.5),
            f("s0", 30.0, 0.5),
            f("s0", 40.0, 0.1),
        ];
        let ann = [f("s0", 20.0, 4.0)];
        let s = FrocSettings {
            max_candidates: Some(2),
            bootstrap: 0,
            ..Default::default()
        };
        let r = evaluate(&uids(1), &ann, &[], &res, &s).expect("eval");
        assert_eq!((r.totals.candidates, r.totals.candidates_dropped_by_cap), (1, 3));
        assert_eq!((r.totals.true_positives, r.totals.false_negatives), (0, 1));
        // Without the cap the nodule is found.
        let s = FrocSettings {
            max_candidates: None,
            bootstrap: 0,
            ..Default::default()
        };
        let r = evaluate(&uids(1), &ann, &[], &res, &s).expect("eval");
        assert_eq!(r.totals.true_positives, 1);
    }

    #[test]
    fn ties_in_probability_form_one_step() {
        // TP and FP with the same probability: one point (x 1, y 1), reached diagonally.
        let ann = [f("s0", 0.0, 10.0)];
        let res = [f("s0", 0.0, 0.5), f("s0", 50.0, 0.5)];
        let r = evaluate(&uids(1), &ann, &[], &res, &no_boot()).expect("eval");
        assert_eq!(r.curve.len(), 2);
        assert_eq!(r.curve[1], (1.0, 1.0, 0.5));
        // Diagonal from (0,0): at 0.125 FP/scan sensitivity is 0.125, at 0.5 it is 0.5.
        assert_eq!(r.rates[0].sensitivity, 0.125);
        assert_eq!(r.rates[2].sensitivity, 0.5);
    }

    #[test]
    fn bootstrap_is_seeded_and_brackets_the_estimate() {
        let mut ann = Vec::new();
        let mut res = Vec::new();
        for s in 0..40 {
            let uid = format!("s{s}");
            ann.push(f(&uid, 0.0, 10.0));
            res.push(f(&uid, 0.0, 0.3 + 0.6 * ((s * 7) % 10) as f64 / 10.0));
            for k in 0..5 {
                res.push(f(&uid, 100.0 + 20.0 * k as f64, ((s * 13 + k * 3) % 17) as f64 / 17.0));
            }
        }
        let s = FrocSettings {
            bootstrap: 200,
            seed: 4,
            ..Default::default()
        };
        let a = evaluate(&uids(40), &ann, &[], &res, &s).expect("eval");
        let b = evaluate(&uids(40), &ann, &[], &res, &s).expect("eval");
        assert_eq!(a.cpm_ci, b.cpm_ci);
        let [lo, hi] = a.cpm_ci.expect("ci");
        assert!(lo <= a.cpm && a.cpm <= hi && lo < hi, "{lo} {} {hi}", a.cpm);
        assert_eq!(a.band.len(), GRID_POINTS);
        // Percentile bounds are ordered and every value is a sensitivity (the mean of a
        // skewed column can fall outside its percentile interval, so it is not compared).
        assert!(a
            .band
            .iter()
            .all(|(_, m, l, h)| l <= h && [m, l, h].iter().all(|v| (0.0..=1.0).contains(*v))));
    }

    #[test]
    fn no_nodules_is_an_error_and_unknown_series_are_counted() {
        let e = evaluate(&uids(1), &[], &[], &[f("s0", 0.0, 0.5)], &no_boot()).expect_err("no nodules");
        assert!(e.to_string().contains("no annotated nodules"));
        let r = evaluate(
            &uids(1),
            &[f("s0", 0.0, 10.0)],
            &[],
            &[f("s0", 0.0, 0.5), f("zz", 0.0, 0.5)],
            &no_boot(),
        )
        .expect("eval");
        assert_eq!(r.totals.results_rows_unknown_series, 1);
        assert!(r.warnings[0].contains("not in the list"));
    }

    /// 40 scans with a nodule each, candidates of `detect(s)` probability on the nodule and
    /// five false positives per scan.
    fn scans40(detect: impl Fn(usize) -> f64) -> (Vec<Finding>, Vec<Finding>) {
        let (mut ann, mut res) = (Vec::new(), Vec::new());
        for s in 0..40 {
            let uid = format!("s{s}");
            ann.push(f(&uid, 0.0, 10.0));
            res.push(f(&uid, 0.0, detect(s)));
            for k in 0..5 {
                res.push(f(&uid, 100.0 + 20.0 * k as f64, ((s * 13 + k * 3) % 17) as f64 / 17.0));
            }
        }
        (ann, res)
    }

    /// A model against itself: no difference, in every resample. Each model's own CPM and
    /// interval are the ones `evaluate` gives it alone with the same seed (the same draws).
    #[test]
    fn paired_cpm_of_a_model_with_itself_is_zero_and_matches_evaluate() {
        let (ann, res) = scans40(|s| 0.3 + 0.6 * ((s * 7) % 10) as f64 / 10.0);
        let s = FrocSettings {
            bootstrap: 300,
            seed: 9,
            ..Default::default()
        };
        let alone = evaluate(&uids(40), &ann, &[], &res, &s).expect("eval");
        let p = paired_cpm(&uids(40), &ann, &[], &[&res, &res], &s).expect("paired");
        assert_eq!(p.models[0].cpm, alone.cpm);
        assert_eq!(p.models[0].ci, alone.cpm_ci);
        assert_eq!((p.diffs[0].diff, p.diffs[0].ci, p.diffs[0].p), (0.0, [0.0, 0.0], 1.0));
    }

    /// A model that finds every nodule against one that finds three in four, the rest ranked
    /// below the false positives: a positive difference whose paired interval excludes 0.
    #[test]
    fn paired_cpm_finds_a_real_difference() {
        let (ann, a) = scans40(|s| if s % 4 == 0 { 0.001 } else { 0.95 });
        let (_, b) = scans40(|_| 0.95);
        let s = FrocSettings {
            bootstrap: 500,
            seed: 1,
            ..Default::default()
        };
        let p = paired_cpm(&uids(40), &ann, &[], &[&a, &b], &s).expect("paired");
        let (ea, eb) = (
            evaluate(&uids(40), &ann, &[], &a, &s).expect("a"),
            evaluate(&uids(40), &ann, &[], &b, &s).expect("b"),
        );
        let d = &p.diffs[0];
        assert!((d.diff - (eb.cpm - ea.cpm)).abs() < 1e-12, "{d:?}");
        assert!(d.diff > 0.1 && d.ci[0] > 0.0 && d.p < 0.01, "{d:?}");
        // Swapped, the difference changes sign, as does its interval.
        let q = paired_cpm(&uids(40), &ann, &[], &[&b, &a], &s).expect("swapped");
        assert!((q.diffs[0].diff + d.diff).abs() < 1e-12);
        assert!((q.diffs[0].ci[0] + d.ci[1]).abs() < 1e-12 && (q.diffs[0].ci[1] + d.ci[0]).abs() < 1e-12);
    }
}
