//! `froc compare`: two or more models scored on the same labelled patches, compared
//! honestly — on the same patches (matched by `patch_file`; sets that differ are refused),
//! with paired tests, never two separate intervals eyeballed.
//!
//! For each model: AUROC with DeLong's interval, AUPRC (average precision), and the
//! sensitivity at a fixed specificity (its threshold chosen on these data). For each model
//! against the first (the reference):
//! * DeLong's paired test of the AUROC difference (difference, 95% interval, p-value);
//! * a series-level paired bootstrap (the same resampled series for both models) of the
//!   differences in AUROC, AUPRC and sensitivity at the fixed specificity: percentile 95%
//!   intervals and two-sided p-values;
//! * McNemar's test at the fixed-specificity operating points (each model at its own
//!   threshold; continuity-corrected χ² and the exact binomial p), and at the calibrated
//!   decisions when every file has a `decision` column (`infer --calibration` output);
//! * with LUNA16's files (`annotations.csv`, `seriesuids.csv`, optionally
//!   `annotations_excluded.csv`) and the patches' world positions in the scores
//!   (`center_x/y/z`, as `infer --index` writes them): each model's CPM and the paired scan
//!   bootstrap of the CPM difference ([`froc::paired_cpm`]: the same resampled scans for
//!   every model, the candidates matched as the challenge's evaluation script matches them).
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde::Serialize;
use statrs::distribution::{Binomial, ChiSquared, ContinuousCDF, DiscreteCDF};

use ::metrics::{auroc, auroc_delong, average_precision, paired_delong, sensitivity_at_specificity, z_for};

use tables::scores::{Columns, ScoreTable};

use crate::froc;
use crate::{input_err, EvalError};

/// What to compare and how.
#[derive(Debug, Clone)]
pub struct CompareSettings {
    /// Scores CSVs, the first the reference.
    pub scores: Vec<PathBuf>,
    /// A name per file (default: the file name without extension).
    pub names: Vec<String>,
    pub columns: Columns,
    /// The fixed specificity, in (0, 1).
    pub specificity: f64,
    /// Series-level bootstrap resamples (0: none).
    pub bootstrap: usize,
    pub seed: u64,
    /// LUNA16's files, for the CPM comparison.
    pub luna16: Option<Luna16Files>,
}

/// LUNA16's ground truth for the CPM comparison.
#[derive(Debug, Clone)]
pub struct Luna16Files {
    pub annotations: PathBuf,
    pub excluded: Option<PathBuf>,
    pub seriesuids: PathBuf,
}

/// The CPM comparison: each model's CPM, the differences against the reference.
#[derive(Debug, Clone, Serialize)]
pub struct CpmComparison {
    #[serde(flatten)]
    pub paired: froc::PairedCpm,
    pub warnings: Vec<String>,
}

/// One model on its own.
#[derive(Debug, Clone, Serialize)]
pub struct ModelStats {
    pub name: String,
    pub path: PathBuf,
    pub auroc: f64,
    pub auroc_delong_ci95: [f64; 2],
    pub auprc: f64,
    pub sensitivity_at_specificity: f64,
    pub threshold_logit: f64,
}

/// McNemar's test on paired decisions: `b` patches only the reference gets right, `c` only
/// the other.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct McNemar {
    pub b: usize,
    pub c: usize,
    pub chi2: f64,
    pub p_chi2: f64,
    pub p_exact: f64,
}

/// A bootstrap difference (other − reference).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct BootDiff {
    pub diff: f64,
    pub ci95: [f64; 2],
    pub p: f64,
}

/// A model against the reference.
#[derive(Debug, Clone, Serialize)]
pub struct PairStats {
    pub name: String,
    pub reference: String,
    pub auroc_diff: f64,
    pub delong_ci95: [f64; 2],
    pub delong_p: f64,
    /// `None` without the bootstrap.
    pub bootstrap_auroc: Option<BootDiff>,
    pub bootstrap_auprc: Option<BootDiff>,
    pub bootstrap_sensitivity: Option<BootDiff>,
    pub mcnemar_at_specificity: McNemar,
    pub mcnemar_at_decision: Option<McNemar>,
}

/// The comparison.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub patches: usize,
    pub positives: usize,
    pub series: usize,
    pub specificity: f64,
    pub bootstrap: usize,
    pub bootstrap_used: usize,
    pub models: Vec<ModelStats>,
    pub pairs: Vec<PairStats>,
    /// With LUNA16's files.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpm: Option<CpmComparison>,
}

/// McNemar's test from the two models' correctness.
pub fn mcnemar(ref_right: &[bool], other_right: &[bool]) -> McNemar {
    let b = ref_right.iter().zip(other_right).filter(|(r, o)| **r && !**o).count();
    let c = ref_right.iter().zip(other_right).filter(|(r, o)| !**r && **o).count();
    let n = b + c;
    if n == 0 {
        return McNemar {
            b,
            c,
            chi2: 0.0,
            p_chi2: 1.0,
            p_exact: 1.0,
        };
    }
    let d = (b as f64 - c as f64).abs() - 1.0;
    let chi2 = d.max(0.0).powi(2) / n as f64;
    let p_chi2 = ChiSquared::new(1.0).map_or(f64::NAN, |x| 1.0 - x.cdf(chi2));
    let p_exact = Binomial::new(0.5, n as u64).map_or(f64::NAN, |x| (2.0 * x.cdf(b.min(c) as u64)).min(1.0_f64));
    McNemar {
        b,
        c,
        chi2,
        p_chi2,
        p_exact,
    }
}

/// The tables aligned on the reference's patch order; every table must hold the same
/// patches with the same labels and series.
fn align(tables: Vec<ScoreTable>) -> Result<Vec<ScoreTable>, EvalError> {
    let reference = &tables[0];
    if reference.patches.is_empty() || reference.seriesuid.is_empty() {
        return Err(input_err(
            &reference.source,
            "a comparison matches patches by `patch_file` and resamples by `seriesuid`: both columns are needed".into(),
        ));
    }
    let mut out = vec![reference.clone()];
    for t in &tables[1..] {
        if t.patches.is_empty() || t.seriesuid.is_empty() {
            return Err(input_err(&t.source, "no `patch_file` or `seriesuid` column".into()));
        }
        let at: HashMap<&str, usize> = t.patches.iter().enumerate().map(|(i, p)| (p.as_str(), i)).collect();
        let missing: Vec<&String> = reference
            .patches
            .iter()
            .filter(|p| !at.contains_key(p.as_str()))
            .collect();
        let ours: std::collections::HashSet<&str> = reference.patches.iter().map(String::as_str).collect();
        let extra: Vec<&String> = t.patches.iter().filter(|p| !ours.contains(p.as_str())).collect();
        if !missing.is_empty() || !extra.is_empty() {
            return Err(input_err(
                &t.source,
                format!(
                    "not the same patches as {}: {} missing{}, {} not in it{}; models are compared on the same patches only",
                    reference.source.display(),
                    missing.len(),
                    missing.first().map_or_else(String::new, |p| format!(" (first {p:?})")),
                    extra.len(),
                    extra.first().map_or_else(String::new, |p| format!(" (first {p:?})"))
                ),
            ));
        }
        let idx: Vec<usize> = reference.patches.iter().map(|p| at[p.as_str()]).collect();
        for (i, &j) in idx.iter().enumerate() {
            if t.labels[j] != reference.labels[i] || t.seriesuid[j] != reference.seriesuid[i] {
                return Err(input_err(
                    &t.source,
                    format!(
                        "patch {:?}: label {} / series {} here, label {} / series {} in {}",
                        reference.patches[i],
                        t.labels[j],
                        t.seriesuid[j],
                        reference.labels[i],
                        reference.seriesuid[i],
                        reference.source.display()
                    ),
                ));
            }
        }
        let pick = |v: &[f64]| idx.iter().map(|&j| v[j]).collect::<Vec<_>>();
        out.push(ScoreTable {
            source: t.source.clone(),
            lines: idx.iter().map(|&j| t.lines[j]).collect(),
            logits: pick(&t.logits),
            labels: reference.labels.clone(),
            seriesuid: reference.seriesuid.clone(),
            patches: reference.patches.clone(),
            decisions: if t.decisions.is_empty() {
                Vec::new()
            } else {
                idx.iter().map(|&j| t.decisions[j]).collect()
            },
        });
    }
    Ok(out)
}

/// (AUROC, AUPRC, sensitivity at the specificity) of one model on the rows `rows`.
fn stats_on(t: &ScoreTable, rows: &[usize], spec: f64) -> Option<[f64; 3]> {
    let s: Vec<f64> = rows.iter().map(|&i| t.logits[i]).collect();
    let y: Vec<u8> = rows.iter().map(|&i| t.labels[i]).collect();
    Some([
        auroc(&s, &y)?,
        average_precision(&s, &y),
        sensitivity_at_specificity(&s, &y, spec).0,
    ])
}

fn boot_diff(point: f64, v: Vec<f64>) -> Option<BootDiff> {
    let ci95 = ::metrics::percentile_interval(&v, 0.95)?;
    let le = v.iter().filter(|&&d| d <= 0.0).count() as f64 / v.len() as f64;
    let ge = v.iter().filter(|&&d| d >= 0.0).count() as f64 / v.len() as f64;
    Some(BootDiff {
        diff: point,
        ci95,
        p: (2.0 * le.min(ge)).min(1.0),
    })
}

/// Compares the models (see the module documentation).
pub fn compare(s: &CompareSettings) -> Result<Comparison, EvalError> {
    check_settings(s)?;
    let tables = s
        .scores
        .iter()
        .map(|p| ScoreTable::read(p, &s.columns))
        .collect::<Result<Vec<_>, _>>()?;
    let tables = align(tables)?;
    let names: Vec<String> = (0..tables.len())
        .map(|i| {
            s.names.get(i).cloned().unwrap_or_else(|| {
                s.scores[i]
                    .file_stem()
                    .map_or_else(|| format!("model {}", i + 1), |n| n.to_string_lossy().into_owned())
            })
        })
        .collect();
    let y = &tables[0].labels;
    let models = tables
        .iter()
        .zip(&names)
        .map(|(t, name)| model_stats(t, name, y, s.specificity))
        .collect::<Result<Vec<_>, _>>()?;
    let (resamples, series) = paired_bootstrap(&tables, s);
    let used: Vec<&Vec<[f64; 3]>> = resamples.iter().flatten().collect();
    let pairs = (1..tables.len())
        .map(|k| pair_stats(&tables, &models, k, &used, s.specificity))
        .collect::<Result<Vec<_>, _>>()?;
    let cpm = match &s.luna16 {
        Some(l) => Some(compare_cpm(s, l, &tables)?),
        None => None,
    };
    Ok(Comparison {
        cpm,
        patches: y.len(),
        positives: y.iter().filter(|&&l| l == 1).count(),
        series,
        specificity: s.specificity,
        bootstrap: s.bootstrap,
        bootstrap_used: used.len(),
        models,
        pairs,
    })
}

/// Every bad setting of a comparison, in one error.
fn check_settings(s: &CompareSettings) -> Result<(), EvalError> {
    let mut bad = Vec::new();
    if s.scores.len() < 2 {
        bad.push("compare needs two or more scores files".to_string());
    }
    if !(s.specificity > 0.0 && s.specificity < 1.0) {
        bad.push(format!("--specificity must be in (0, 1), got {}", s.specificity));
    }
    if let Err(e) = ::metrics::check_bootstrap(s.bootstrap).map_err(EvalError::Usage) {
        bad.push(e.to_string());
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(EvalError::Usage(bad.join("; ")))
    }
}

/// One model's figures: AUROC with DeLong's interval, average precision, the sensitivity
/// at the fixed specificity and its threshold.
fn model_stats(t: &ScoreTable, name: &str, y: &[u8], specificity: f64) -> Result<ModelStats, EvalError> {
    let z95 = z_for(0.95);
    let (auc, se) = auroc_delong(&t.logits, y)
        .ok_or_else(|| input_err(&t.source, "an AUROC needs at least two patches of each class".into()))?;
    let (sens, thr) = sensitivity_at_specificity(&t.logits, y, specificity);
    Ok(ModelStats {
        name: name.to_string(),
        path: t.source.clone(),
        auroc: auc,
        auroc_delong_ci95: [(auc - z95 * se).max(0.0), (auc + z95 * se).min(1.0)],
        auprc: average_precision(&t.logits, y),
        sensitivity_at_specificity: sens,
        threshold_logit: thr,
    })
}

/// The series-level paired bootstrap: the same resampled series for every model; each
/// resample's (AUROC, AP, sensitivity) per model (`None` where a resample lacks a class).
/// Also the number of series.
fn paired_bootstrap(tables: &[ScoreTable], s: &CompareSettings) -> (Vec<Option<Vec<[f64; 3]>>>, usize) {
    let mut by_series: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, u) in tables[0].seriesuid.iter().enumerate() {
        by_series.entry(u.as_str()).or_default().push(i);
    }
    let groups: Vec<&Vec<usize>> = by_series.values().collect();
    let resamples = (0..s.bootstrap)
        .into_par_iter()
        .map(|r| {
            let mut rng = StdRng::seed_from_u64(s.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(r as u64));
            let rows: Vec<usize> = (0..groups.len())
                .flat_map(|_| groups[rng.random_range(0..groups.len())].iter().copied())
                .collect();
            tables.iter().map(|t| stats_on(t, &rows, s.specificity)).collect()
        })
        .collect();
    (resamples, groups.len())
}

/// Model `k` against the reference (model 0): paired DeLong, the bootstrap differences, and
/// McNemar's tests at the fixed specificity and at the models' own decisions.
fn pair_stats(
    tables: &[ScoreTable],
    models: &[ModelStats],
    k: usize,
    used: &[&Vec<[f64; 3]>],
    specificity: f64,
) -> Result<PairStats, EvalError> {
    let (r, t) = (&tables[0], &tables[k]);
    let y = &r.labels;
    let z95 = z_for(0.95);
    let (diff, se, p) = paired_delong(&r.logits, &t.logits, y)
        .ok_or_else(|| input_err(&t.source, "the paired DeLong test needs two patches of each class".into()))?;
    let all: Vec<usize> = (0..y.len()).collect();
    let ref_point = stats_on(r, &all, specificity).unwrap_or([f64::NAN; 3]);
    let other_point = stats_on(t, &all, specificity).unwrap_or([f64::NAN; 3]);
    let boot = |m: usize| {
        boot_diff(
            other_point[m] - ref_point[m],
            used.iter()
                .map(|b| b[k][m] - b[0][m])
                .filter(|d| d.is_finite())
                .collect(),
        )
    };
    let right = |t: &ScoreTable, thr: f64| -> Vec<bool> {
        t.logits.iter().zip(y).map(|(&z, &l)| (z >= thr) == (l == 1)).collect()
    };
    let decisions = (!r.decisions.is_empty() && !t.decisions.is_empty()).then(|| {
        let ok = |d: &[u8]| d.iter().zip(y).map(|(a, b)| a == b).collect::<Vec<_>>();
        mcnemar(&ok(&r.decisions), &ok(&t.decisions))
    });
    Ok(PairStats {
        name: models[k].name.clone(),
        reference: models[0].name.clone(),
        auroc_diff: diff,
        delong_ci95: [diff - z95 * se, diff + z95 * se],
        delong_p: p,
        bootstrap_auroc: boot(0),
        bootstrap_auprc: boot(1),
        bootstrap_sensitivity: boot(2),
        mcnemar_at_specificity: mcnemar(
            &right(r, models[0].threshold_logit),
            &right(t, models[k].threshold_logit),
        ),
        mcnemar_at_decision: decisions,
    })
}

/// The models' candidates (each patch at its world position with its score) against
/// LUNA16's annotations: CPMs and the paired scan bootstrap.
fn compare_cpm(s: &CompareSettings, l: &Luna16Files, tables: &[ScoreTable]) -> Result<CpmComparison, EvalError> {
    let truth = froc::read_truth(&l.annotations, l.excluded.as_deref(), &l.seriesuids)?;
    let score = s.columns.probability.as_deref().unwrap_or(&s.columns.logit);
    let mut candidates = Vec::new();
    for t in tables {
        let c = luna16::read_findings_from(
            &t.source,
            [&s.columns.seriesuid, "center_x", "center_y", "center_z", score],
        )
        .map_err(|e| match e {
            tables::Error::BadCsv { path, msg } => EvalError::from(files::Error::bad_input(
                &path,
                format!("{msg}; the CPM needs each patch's world position (infer --index writes it)"),
            )),
            other => EvalError::from(other),
        })?;
        candidates.push(c);
    }
    let mut warnings = truth.warnings;
    // Matched by patch_file already; the positions must agree too.
    let key = |v: &[luna16::Finding]| {
        let mut k: Vec<(String, u64, u64, u64)> = v
            .iter()
            .map(|f| (f.seriesuid.clone(), f.x.to_bits(), f.y.to_bits(), f.z.to_bits()))
            .collect();
        k.sort_unstable();
        k
    };
    let reference = key(&candidates[0]);
    for (t, c) in tables.iter().zip(&candidates).skip(1) {
        if key(c) != reference {
            return Err(input_err(
                &t.source,
                format!(
                    "the patches' world positions (center_x/y/z) differ from those in {}: not the same candidates",
                    tables[0].source.display()
                ),
            ));
        }
    }
    let settings = froc::FrocSettings {
        bootstrap: s.bootstrap,
        seed: s.seed,
        ..Default::default()
    };
    // Exact repeats (series, position and score) counted once, as froc counts a results file.
    let candidates: Vec<Vec<luna16::Finding>> = candidates
        .into_iter()
        .zip(tables)
        .map(|(c, t)| froc::dedupe(c, &t.source, "candidate", &mut warnings))
        .collect();
    let refs: Vec<&[luna16::Finding]> = candidates.iter().map(Vec::as_slice).collect();
    let paired =
        froc::paired_cpm(&truth.uids, &truth.annotations, &truth.excluded, &refs, &settings)?;
    if l.excluded.is_none() {
        warnings.push("no annotations_excluded.csv given: no candidate is ignored as irrelevant".into());
    }
    Ok(CpmComparison { paired, warnings })
}

fn ci(c: [f64; 2]) -> String {
    format!("[{:.4}, {:.4}]", c[0], c[1])
}

fn boot_text(b: &Option<BootDiff>) -> String {
    b.map_or_else(|| "-".into(), |b| format!("{:+.4} {} p={:.4}", b.diff, ci(b.ci95), b.p))
}

/// The comparison as text (also the Markdown report's body).
pub fn table(c: &Comparison) -> String {
    let mut out = format!(
        "{} patches ({} positive) from {} series; fixed specificity {}; series bootstrap {} resamples ({} usable)\n\n",
        c.patches, c.positives, c.series, c.specificity, c.bootstrap, c.bootstrap_used
    );
    out += &format!(
        "| model | AUROC [DeLong 95%] | AUPRC | sensitivity at specificity {} |\n|---|---|---|---|\n",
        c.specificity
    );
    for m in &c.models {
        out += &format!(
            "| {} | {:.4} {} | {:.4} | {:.4} |\n",
            m.name,
            m.auroc,
            ci(m.auroc_delong_ci95),
            m.auprc,
            m.sensitivity_at_specificity
        );
    }
    out += "\n| vs reference | ΔAUROC (DeLong) | ΔAUROC (bootstrap) | ΔAUPRC (bootstrap) | Δsensitivity (bootstrap) | McNemar at specificity | McNemar at decision |\n|---|---|---|---|---|---|---|\n";
    let mc = |m: &McNemar| {
        format!(
            "b={} c={} χ²={:.3} p={:.4} exact p={:.4}",
            m.b, m.c, m.chi2, m.p_chi2, m.p_exact
        )
    };
    for p in &c.pairs {
        out += &format!(
            "| {} − {} | {:+.4} {} p={:.4} | {} | {} | {} | {} | {} |\n",
            p.name,
            p.reference,
            p.auroc_diff,
            ci(p.delong_ci95),
            p.delong_p,
            boot_text(&p.bootstrap_auroc),
            boot_text(&p.bootstrap_auprc),
            boot_text(&p.bootstrap_sensitivity),
            mc(&p.mcnemar_at_specificity),
            p.mcnemar_at_decision.as_ref().map_or_else(|| "-".into(), mc)
        );
    }
    if let Some(cp) = &c.cpm {
        let names: Vec<&str> = c.models.iter().map(|m| m.name.as_str()).collect();
        let p = &cp.paired;
        out += &format!(
            "\nLUNA16 CPM on {} scans ({} nodules); paired scan bootstrap {} resamples, {}% intervals\n\n\
             | model | CPM [interval] | TP | FP |\n|---|---|---|---|\n",
            p.scans,
            p.nodules,
            p.bootstrap_samples,
            p.confidence * 100.0
        );
        for (m, s) in names.iter().zip(&p.models) {
            let iv = s.ci.map_or_else(String::new, |x| format!(" {}", ci(x)));
            out += &format!(
                "| {m} | {:.4}{iv} | {} | {} |\n",
                s.cpm, s.true_positives, s.false_positives
            );
        }
        if !p.diffs.is_empty() {
            out += "\n| vs reference | ΔCPM (paired bootstrap) |\n|---|---|\n";
        }
        for (k, d) in p.diffs.iter().enumerate() {
            out += &format!(
                "| {} − {} | {:+.4} {} p={:.4} |\n",
                names[k + 1],
                names[0],
                d.diff,
                ci(d.ci),
                d.p
            );
        }
        for w in &cp.warnings {
            out += &format!("\nwarning: {w}\n");
        }
    }
    out
}

/// Writes `comparison.yaml`, `comparison.md` and `roc.png` (every model's ROC) into `dir`.
pub fn write(c: &Comparison, tables_dir: &Path, scores: &[PathBuf], columns: &Columns) -> Result<(), EvalError> {
    let dir = tables_dir;
    let mut io = files::RunIo::new();
    io.inputs("scores", scores.iter().map(PathBuf::as_path));
    io.outputs_in("comparison", dir, &["comparison.yaml", "comparison.md", "roc.png"])?;
    std::fs::create_dir_all(dir).map_err(|e| files::Error::io(dir, e))?;
    let _lock = files::Lock::within(dir, &format!("output folder {}", dir.display()))?;
    let yaml = yaml_serde::to_string(c).map_err(|e| EvalError::Output {
        path: dir.join("comparison.yaml"),
        source: Box::new(e),
    })?;
    let colors = [
        (31, 119, 180),
        (214, 39, 40),
        (44, 160, 44),
        (148, 103, 189),
        (255, 127, 14),
    ];
    let mut chart = plots::Chart::unit("ROC on the same patches", "1 − specificity", "sensitivity");
    for (i, (m, p)) in c.models.iter().zip(scores).enumerate() {
        let t = ScoreTable::read(p, columns)?;
        chart.series.push(plots::Series::line(
            &format!("{} (AUROC {:.3})", m.name, m.auroc),
            ::metrics::roc_points(&t.logits, &t.labels),
            colors[i % colors.len()],
        ));
    }
    let roc = dir.join("roc.png");
    plots::line_chart(&chart, &roc).map_err(|e| EvalError::Output {
        path: roc.clone(),
        source: Box::new(e),
    })?;
    files::write_atomic(
        &dir.join("comparison.md"),
        format!("# Model comparison\n\n{}\n![ROC](roc.png)\n", table(c)).as_bytes(),
    )?;
    files::write_atomic(&dir.join("comparison.yaml"), yaml.as_bytes())?;
    Ok(())
}
