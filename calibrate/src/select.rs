//! Choosing the calibration method: each method's held-out NLL in a k-fold
//! cross-validation grouped by series (patches of one scan never split between fitting and
//! evaluation). Platt contains temperature scaling, so an in-sample comparison would always
//! pick it.
use std::collections::BTreeMap;

use models::calibration::{Method, MethodSelection};

use crate::{metrics, CalError, Fitted, ScoreTable};

/// Held-out NLL of every method, `k` folds grouped by series (patches of one scan never
/// split between fitting and evaluation). Errors when the data cannot support it.
pub fn cross_validate(t: &ScoreTable, smoothing: bool, k: usize) -> Result<MethodSelection, CalError> {
    let (groups, n_groups, unit) = t.groups();
    if n_groups < k {
        return Err(CalError::Fit(format!(
            "--method auto needs {k}-fold cross-validation grouped by {unit}, but there are only {n_groups} group(s); \
             give more data or choose a method with --method"
        )));
    }
    // A deterministic shuffle: order groups by the hash of their index, deal round-robin.
    let mut order: Vec<usize> = (0..n_groups).collect();
    order.sort_by_cached_key(|g| files::sha256_bytes(g.to_string().as_bytes()));
    let mut fold_of = vec![0; n_groups];
    for (i, &g) in order.iter().enumerate() {
        fold_of[g] = i % k;
    }
    // Folds are independent: fit and evaluate them in parallel.
    use rayon::prelude::*;
    let per_fold: Vec<Option<(Vec<f64>, usize)>> = (0..k)
        .into_par_iter()
        .map(|fold| {
            let (mut zf, mut yf, mut ze, mut ye) = (vec![], vec![], vec![], vec![]);
            for (i, &g) in groups.iter().enumerate() {
                if fold_of[g] == fold {
                    ze.push(t.logits[i]);
                    ye.push(t.labels[i]);
                } else {
                    zf.push(t.logits[i]);
                    yf.push(t.labels[i]);
                }
            }
            if !(yf.contains(&0) && yf.contains(&1)) {
                return None;
            }
            let f = Fitted::fit(&zf, &yf, smoothing).ok()?;
            let nll = Method::ALL
                .iter()
                .map(|&m| {
                    let p: Vec<f64> = ze.iter().map(|&z| f.probability(m, z)).collect();
                    metrics::nll_from_probs(&p, &ye) * ze.len() as f64
                })
                .collect();
            Some((nll, ze.len()))
        })
        .collect();
    let mut sums: BTreeMap<String, f64> = BTreeMap::new();
    let (mut n_eval, mut used) = (0usize, 0usize);
    for (nll, n) in per_fold.into_iter().flatten() {
        for (m, v) in Method::ALL.iter().zip(nll) {
            *sums.entry(m.name().to_string()).or_default() += v;
        }
        n_eval += n;
        used += 1;
    }
    if used == 0 {
        return Err(CalError::Fit(format!(
            "--method auto: no cross-validation fold (grouped by {unit}) had both classes to fit on; choose a method with --method"
        )));
    }
    Ok(MethodSelection {
        criterion: format!("mean held-out NLL, {k}-fold cross-validation grouped by {unit}"),
        folds_used: used,
        cv_nll: sums.into_iter().map(|(k, v)| (k, v / n_eval as f64)).collect(),
        chosen_by: "auto".into(),
    })
}
