//! `froc`: LUNA16 FROC and CPM from the challenge's own files, computed as the official
//! evaluation script does (rules in `evaluation::froc`); `froc compare`: models compared on
//! the same patches.
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use evaluation::froc::{FrocFiles, FrocSettings};

mod compare_cmd;

/// LUNA16 FROC / CPM with bootstrap intervals, as the challenge's evaluation script computes
/// them; `froc compare`: two or more models compared on the same patches.
///
/// Writes froc_summary.yaml, froc_curve.csv, froc_bootstrap.csv,
/// nodules_without_candidate.csv and froc.png into --out.
#[derive(Parser, Debug)]
#[command(name = "froc", version, args_conflicts_with_subcommands = true, arg_required_else_help = true)]
struct Args {
    #[command(subcommand)]
    cmd: Option<compare_cmd::Cmd>,
    #[command(flatten)]
    froc: Option<FrocArgs>,
}

/// The FROC's own arguments.
#[derive(clap::Args, Debug)]
struct FrocArgs {
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
    /// The model the results came from: when it was trained with MLflow tracking (its
    /// metadata names the run), the FROC's metrics and files are added to that run.
    #[arg(long)]
    model: Option<PathBuf>,
    /// The MLflow server of that run (else MLFLOW_TRACKING_URI, else the model's).
    #[arg(long, requires = "model")]
    mlflow: Option<String>,
}

/// Adds the evaluation to the MLflow run that made the model; one line saying what
/// happened (never an error: the FROC is written either way).
fn to_mlflow(
    model: &std::path::Path,
    tracked: Option<(String, String, String)>,
    flag: Option<&str>,
    out: &std::path::Path,
    r: &evaluation::froc::FrocReport,
) -> String {
    let Some((key, uri, experiment)) = tracked else {
        return format!(
            "MLflow: {} was trained without tracking (no training.mlflow_run_key): nothing sent",
            model.display()
        );
    };
    // The flag or MLFLOW_TRACKING_URI, else the server the model names; the experiment is
    // the model's (where its run is).
    let s = match tracking::Settings::from_env(flag).and_then(|s| match s {
        Some(s) => Ok(Some(s)),
        None => tracking::Settings::from_env(Some(&uri)),
    }) {
        Ok(Some(s)) => tracking::Settings { experiment, ..s },
        Ok(None) => return "MLflow: nothing sent: the model names no tracking server".into(),
        Err(e) => return format!("MLflow: nothing sent: {e}"),
    };
    let e = tracking::Evaluation {
        key,
        metrics: evaluation::froc::mlflow_metrics(r),
        artifact_dir: "froc".into(),
        files: evaluation::froc::FILES.iter().map(|f| (*f).to_string()).collect(),
    };
    tracking::add_evaluation(out, &s, e)
}

fn main() -> ExitCode {
    cli::default_sigpipe();
    match Args::parse() {
        Args { cmd: Some(c), .. } => compare_cmd::run(c),
        Args { froc: Some(a), .. } => froc(a),
        Args { .. } => ExitCode::from(2),
    }
}

/// `froc --annotations … --seriesuids … --results … -o DIR`.
fn froc(a: FrocArgs) -> ExitCode {
    let files = FrocFiles {
        annotations: a.annotations,
        excluded: a.excluded,
        seriesuids: a.seriesuids,
        results: a.results,
        out: a.out.clone(),
        model: a.model.clone(),
    };
    let tracked = match a.model.as_deref().map(evaluation::froc::tracked_model).transpose() {
        Ok(t) => t.flatten(),
        Err(e) => return cli::fail("froc", &e),
    };
    let s = FrocSettings {
        max_candidates: (a.max_candidates > 0).then_some(a.max_candidates),
        bootstrap: a.bootstrap,
        seed: a.seed,
        confidence: a.confidence,
    };
    match evaluation::froc::run(&files, &s) {
        Ok(r) => {
            print!("{}", evaluation::froc::summary(&r));
            println!("wrote {}", a.out.display());
            if let Some(m) = &a.model {
                eprintln!("{}", to_mlflow(m, tracked, a.mlflow.as_deref(), &a.out, &r));
            }
            ExitCode::SUCCESS
        }
        Err(e) => cli::fail("froc", &e),
    }
}
