//! `trainer sweep --collect`: every configuration's folds read back (each fold's figures and
//! the out-of-fold scores pooled), compared with the first configuration (the base) by
//! paired tests, and written as `sweep_summary.csv` / `.md` ([`collect`]).
use std::path::{Path, PathBuf};

use serde::Serialize;
use statrs::distribution::{ContinuousCDF, StudentsT};

use metrics::{auroc_delong, paired_delong, z_for};

use yaml_serde::Value;

use super::{done, Plan};
use crate::{Result, TrainError};

/// One configuration's line of the summary.
#[derive(Debug, Clone, Serialize)]
pub struct CellSummary {
    pub index: usize,
    pub label: String,
    pub folds: usize,
    pub mean_val_auroc: f64,
    /// Student-t 95% interval of the mean over folds (clipped to [0, 1]).
    pub mean_val_auroc_ci95: [f64; 2],
    /// The AUROC of every patch's out-of-fold score, with DeLong's interval.
    pub pooled_oof_auroc: f64,
    pub pooled_oof_auroc_ci95: [f64; 2],
    /// Paired DeLong difference of the pooled out-of-fold AUROC against configuration 0.
    pub diff_vs_base: Option<f64>,
    pub diff_vs_base_ci95: Option<[f64; 2]>,
    pub diff_vs_base_p: Option<f64>,
    pub seconds: f64,
    pub peak_rss_mib: Option<f64>,
}

/// Reads one fold's summary figures: (validation AUROC, seconds, peak RSS).
fn fold_figures(dir: &Path) -> Result<(f64, f64, Option<f64>)> {
    let p = dir.join("summary.yaml");
    let v: Value = yaml_serde::from_str(&files::read_regular_to_string(&p)?)
        .map_err(|e| files::Error::parse(&p, "not a run summary", e))?;
    let f = |k: &str| v.get(k).and_then(Value::as_f64);
    let auroc =
        f("onnx_val_auroc").ok_or_else(|| TrainError::from(files::Error::bad_input(&p, "no onnx_val_auroc")))?;
    Ok((auroc, f("seconds").unwrap_or(0.0), f("peak_rss_mib")))
}

/// Out-of-fold scores: (patch, seriesuid, label, logit) rows of every fold's `val_scores.csv`.
fn oof_rows(dirs: &[PathBuf]) -> Result<Vec<(String, String, u8, f64)>> {
    let mut out = Vec::new();
    for d in dirs {
        let p = d.join("val_scores.csv");
        let (mut r, h) = tables::csvio::open(&p, true)?;
        let at = |n: &str| {
            h.iter()
                .position(|x| x == n)
                .ok_or_else(|| TrainError::from(files::Error::bad_input(&p, format!("no {n} column"))))
        };
        let (pi, si, li, zi) = (at("patch_file")?, at("seriesuid")?, at("label")?, at("logit")?);
        for (line, rec) in tables::csvio::rows(&mut r) {
            let rec = rec.map_err(|e| TrainError::from(tables::Error::row(&p, line, e)))?;
            let get = |i: usize| rec.get(i).unwrap_or("");
            let z: f64 = get(zi).parse().map_err(|_| {
                TrainError::from(files::Error::bad_input(&p, format!("line {line}: logit {:?}", get(zi))))
            })?;
            out.push((get(pi).to_string(), get(si).to_string(), u8::from(get(li) == "1"), z));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// What [`collect`] wrote.
#[derive(Debug, Clone)]
pub struct Collected {
    pub cells: Vec<CellSummary>,
    pub best: usize,
    pub table: String,
}

/// Builds the summary once every task is done (else an error naming the missing ones).
pub fn collect(plan: &Plan) -> Result<Collected> {
    let missing: Vec<String> = plan
        .tasks()
        .iter()
        .enumerate()
        .filter(|(_, &(c, f))| !done(&plan.task_config(c, f)))
        .map(|(i, &(c, f))| format!("task {i} (cell_{c:02}/fold_{f})"))
        .collect();
    if !missing.is_empty() {
        return Err(TrainError::run_folder(
            &plan.out,
            format!(
                "{} of {} tasks not done: {}",
                missing.len(),
                plan.tasks().len(),
                missing.join(", ")
            ),
        ));
    }
    // sweep_summary.md is the summary's commit point (written last, with the sha256 of every
    // file it summarises): it goes first, so a collect killed half-way leaves no summary
    // that names files of another collect.
    let md = plan.out.join(SUMMARY_MD);
    if md.is_file() {
        std::fs::remove_file(&md).map_err(|e| TrainError::file(format!("{}: cannot remove", md.display()), e))?;
    }
    let k = plan.folds;
    let t = StudentsT::new(0.0, 1.0, (k - 1) as f64).map_or(f64::NAN, |d| d.inverse_cdf(0.975));
    let mut cells = Vec::new();
    let mut base_rows: Option<Vec<(String, String, u8, f64)>> = None;
    for cell in &plan.cells {
        let dirs: Vec<PathBuf> = (1..=k).map(|f| plan.task_config(cell.index, f).out).collect();
        let figs = dirs.iter().map(|d| fold_figures(d)).collect::<Result<Vec<_>>>()?;
        let aurocs: Vec<f64> = figs.iter().map(|f| f.0).collect();
        let mean = aurocs.iter().sum::<f64>() / k as f64;
        let sd = (aurocs.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / (k - 1) as f64).sqrt();
        let half = t * sd / (k as f64).sqrt();
        let rows = oof_rows(&dirs)?;
        let mut oof = csv::Writer::from_writer(Vec::new());
        let csv_err = |e: csv::Error| TrainError::Data(format!("oof_scores.csv: {e}"));
        oof.write_record(["patch_file", "seriesuid", "label", "logit"])
            .map_err(csv_err)?;
        for r in &rows {
            oof.write_record([r.0.as_str(), r.1.as_str(), &r.2.to_string(), &r.3.to_string()])
                .map_err(csv_err)?;
        }
        let oof = oof
            .into_inner()
            .map_err(|e| TrainError::Data(format!("oof_scores.csv: {e}")))?;
        files::write_atomic(&plan.cell_dir(cell.index).join("oof_scores.csv"), &oof)?;
        let y: Vec<u8> = rows.iter().map(|r| r.2).collect();
        let z: Vec<f64> = rows.iter().map(|r| r.3).collect();
        let (pooled, se) = auroc_delong(&z, &y).unwrap_or((f64::NAN, f64::NAN));
        let z95 = z_for(0.95);
        let paired = base_rows.as_ref().and_then(|b| {
            let same = b.len() == rows.len() && b.iter().zip(&rows).all(|(x, r)| x.0 == r.0 && x.2 == r.2);
            let bz: Vec<f64> = b.iter().map(|r| r.3).collect();
            same.then(|| paired_delong(&bz, &z, &y)).flatten()
        });
        cells.push(CellSummary {
            index: cell.index,
            label: cell.label.clone(),
            folds: k,
            mean_val_auroc: mean,
            mean_val_auroc_ci95: [(mean - half).max(0.0), (mean + half).min(1.0)],
            pooled_oof_auroc: pooled,
            pooled_oof_auroc_ci95: [(pooled - z95 * se).max(0.0), (pooled + z95 * se).min(1.0)],
            diff_vs_base: paired.map(|p| p.0),
            diff_vs_base_ci95: paired.map(|p| [p.0 - z95 * p.1, p.0 + z95 * p.1]),
            diff_vs_base_p: paired.map(|p| p.2),
            seconds: figs.iter().map(|f| f.1).sum(),
            peak_rss_mib: figs.iter().filter_map(|f| f.2).reduce(f64::max),
        });
        if base_rows.is_none() {
            base_rows = Some(rows);
        }
    }
    let best = cells
        .iter()
        .max_by(|a, b| a.pooled_oof_auroc.total_cmp(&b.pooled_oof_auroc))
        .map_or(0, |c| c.index);
    let table = table(&cells, best);
    write_summary(plan, &cells, &table)?;
    Ok(Collected { cells, best, table })
}

fn table(cells: &[CellSummary], best: usize) -> String {
    let mut out = String::from(
        "| # | configuration | mean val AUROC over folds [t 95%] | pooled out-of-fold AUROC [DeLong 95%] | Δ vs base (paired DeLong) | time | peak RSS |\n|---|---|---|---|---|---|---|\n",
    );
    for c in cells {
        let diff = match (c.diff_vs_base, c.diff_vs_base_ci95, c.diff_vs_base_p) {
            (Some(d), Some(ci), Some(p)) => format!("{d:+.4} [{:+.4}, {:+.4}] p={p:.3}", ci[0], ci[1]),
            _ if c.index == 0 => "reference".into(),
            _ => "- (other patches)".into(),
        };
        out += &format!(
            "| {}{} | {} | {:.4} [{:.4}, {:.4}] | {:.4} [{:.4}, {:.4}] | {} | {:.1} s | {} |\n",
            c.index,
            if c.index == best { " (best)" } else { "" },
            c.label,
            c.mean_val_auroc,
            c.mean_val_auroc_ci95[0],
            c.mean_val_auroc_ci95[1],
            c.pooled_oof_auroc,
            c.pooled_oof_auroc_ci95[0],
            c.pooled_oof_auroc_ci95[1],
            diff,
            c.seconds,
            c.peak_rss_mib.map_or_else(|| "-".into(), |m| format!("{m:.0} MiB"))
        );
    }
    out
}

/// `sweep_summary.csv`, `sweep_summary.md`, `forest.png`.
fn write_summary(plan: &Plan, cells: &[CellSummary], table: &str) -> Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for c in cells {
        w.serialize(CsvRow::from(c))
            .map_err(TrainError::format("a sweep summary row".to_string()))?;
    }
    let bytes = w
        .into_inner()
        .map_err(|e| TrainError::Data(format!("sweep summary: {e}")))?;
    files::write_atomic(&plan.out.join("sweep_summary.csv"), &bytes)?;
    let n = cells.len() as f64;
    let mut chart = plots::Chart {
        title: "Pooled out-of-fold AUROC [DeLong 95%] per configuration".into(),
        x_label: "AUROC".into(),
        y_label: "configuration (0 = base, top)".into(),
        x_range: (
            cells
                .iter()
                .map(|c| c.pooled_oof_auroc_ci95[0])
                .fold(1.0, f64::min)
                .min(0.5)
                - 0.02,
            cells
                .iter()
                .map(|c| c.pooled_oof_auroc_ci95[1])
                .fold(0.0, f64::max)
                .max(0.5)
                + 0.02,
        ),
        y_range: (-0.5, n - 0.5),
        log_x: false,
        series: vec![],
        bands: vec![],
        annotations: vec![],
    };
    for c in cells {
        let y = n - 1.0 - c.index as f64;
        let color = if c.index == 0 { (120, 120, 120) } else { (31, 119, 180) };
        chart.series.push(plots::Series {
            label: String::new(),
            points: vec![(c.pooled_oof_auroc_ci95[0], y), (c.pooled_oof_auroc_ci95[1], y)],
            color,
            markers: false,
        });
        chart.series.push(plots::Series {
            label: String::new(),
            points: vec![(c.pooled_oof_auroc, y)],
            color,
            markers: true,
        });
        chart
            .annotations
            .push((c.pooled_oof_auroc, y + 0.25, format!("{}: {}", c.index, c.label)));
    }
    plots::line_chart(&chart, &plan.out.join("forest.png"))?;
    // The commit point, last: what it summarises, by digest.
    let mut files: Vec<String> = cells
        .iter()
        .map(|c| format!("cell_{:02}/oof_scores.csv", c.index))
        .collect();
    files.extend(["sweep_summary.csv".to_string(), "forest.png".to_string()]);
    let mut digests = String::new();
    for f in &files {
        digests += &format!("| `{f}` | {} |\n", files::sha256_file(&plan.out.join(f))?);
    }
    files::write_atomic(
        &plan.out.join(SUMMARY_MD),
        format!(
            "# Sweep: {} configurations × {} folds\n\nBest (highest pooled out-of-fold AUROC) marked.\n\n{table}\n\
             ![forest plot](forest.png)\n\n## Files summarised (sha256)\n\nWritten last: a file that differs from its \
             digest here comes from another `--collect`.\n\n| file | sha256 |\n|---|---|\n{digests}",
            cells.len(),
            plan.folds
        )
        .as_bytes(),
    )?;
    Ok(())
}

/// The sweep summary's commit point.
pub const SUMMARY_MD: &str = "sweep_summary.md";

#[derive(Serialize)]
struct CsvRow<'a> {
    index: usize,
    configuration: &'a str,
    folds: usize,
    mean_val_auroc: f64,
    mean_val_auroc_lo: f64,
    mean_val_auroc_hi: f64,
    pooled_oof_auroc: f64,
    pooled_oof_auroc_lo: f64,
    pooled_oof_auroc_hi: f64,
    diff_vs_base: Option<f64>,
    diff_vs_base_lo: Option<f64>,
    diff_vs_base_hi: Option<f64>,
    diff_vs_base_p: Option<f64>,
    seconds: f64,
    peak_rss_mib: Option<f64>,
}

impl<'a> From<&'a CellSummary> for CsvRow<'a> {
    fn from(c: &'a CellSummary) -> Self {
        CsvRow {
            index: c.index,
            configuration: &c.label,
            folds: c.folds,
            mean_val_auroc: c.mean_val_auroc,
            mean_val_auroc_lo: c.mean_val_auroc_ci95[0],
            mean_val_auroc_hi: c.mean_val_auroc_ci95[1],
            pooled_oof_auroc: c.pooled_oof_auroc,
            pooled_oof_auroc_lo: c.pooled_oof_auroc_ci95[0],
            pooled_oof_auroc_hi: c.pooled_oof_auroc_ci95[1],
            diff_vs_base: c.diff_vs_base,
            diff_vs_base_lo: c.diff_vs_base_ci95.map(|x| x[0]),
            diff_vs_base_hi: c.diff_vs_base_ci95.map(|x| x[1]),
            diff_vs_base_p: c.diff_vs_base_p,
            seconds: c.seconds,
            peak_rss_mib: c.peak_rss_mib,
        }
    }
}
