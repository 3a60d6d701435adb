//! `froc`: LUNA16 FROC and CPM from the challenge's own files, computed as the official
//! evaluation script does (rules in the `froc` crate documentation).
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use froc::{FrocFiles, FrocSettings};

/// LUNA16 FROC / CPM with bootstrap intervals, as the challenge's evaluation script computes them.
///
/// Writes froc_summary.yaml, froc_curve.csv, froc_bootstrap.csv,
/// nodules_without_candidate.csv and froc.png into --out.
#[derive(Parser, Debug)]
#[command(name = "froc", version)]
struct Args {
    /// annotations.csv (seriesuid, coordX, coordY, coordZ, diameter_mm).
    #[arg(long)]
    annotations: PathBuf,
    /// annotations_excluded.csv (findings whose candidates are ignored).
    #[arg(long)]
    excluded: Option<PathBuf>,
    /// The evaluated series: one seriesuid per line, no header (as the challenge's file).
    #[arg(long)]
    seriesuids: PathBuf,
    /// Results in the submission format (seriesuid, coordX, coordY, coordZ, probability),
    /// e.g. from `infer --index ... --format luna16`.
    #[arg(long)]
    results: PathBuf,
    /// Output folder.
    #[arg(short, long)]
    out: PathBuf,
    /// Per-scan cap on candidates (the official entry point uses 100); 0 for none.
    #[arg(long, default_value_t = 100)]
    max_candidates: usize,
    /// Bootstrap resamples over scans (0 to skip; at most 100000).
    #[arg(long, default_value_t = 1000)]
    bootstrap: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Level of the bootstrap intervals, in (0, 1).
    #[arg(long, default_value_t = 0.95)]
    confidence: f64,
}

fn main() -> ExitCode {
    models::cli::default_sigpipe();
    let a = Args::parse();
    let files = FrocFiles {
        annotations: a.annotations,
        excluded: a.excluded,
        seriesuids: a.seriesuids,
        results: a.results,
        out: a.out.clone(),
    };
    let s = FrocSettings {
        max_candidates: (a.max_candidates > 0).then_some(a.max_candidates),
        bootstrap: a.bootstrap,
        seed: a.seed,
        confidence: a.confidence,
    };
    match froc::run(&files, &s) {
        Ok(r) => {
            print!("{}", froc::summary(&r));
            println!("wrote {}", a.out.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("froc: error: {e}");
            ExitCode::FAILURE
        }
    }
}
