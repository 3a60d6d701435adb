//! `calibrate`: fit calibrations and operating points on labelled scores; write
//! calibration.yaml, a report with plots and model.calibrated.onnx.
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use calibrate::{Method, Settings};

/// Calibrate a model's scores: temperature, Platt and isotonic; operating points with
/// intervals; metrics before and after.
///
/// Inputs: a training run folder (its val_scores.csv and model.onnx); or --scores CSV with
/// --model; or --patches (a labelled patch index) with --model, scored through ONNX Runtime
/// (site recalibration, no libtorch). Writes calibration.yaml, calibration_report.md,
/// calibration_plots/ and model.calibrated.onnx beside --out.
#[derive(Parser, Debug)]
#[command(name = "calibrate", version)]
struct Args {
    /// Training run folder (holds val_scores.csv and model.onnx).
    run: Option<PathBuf>,
    /// Scores CSV (default: RUN/val_scores.csv).
    #[arg(long, conflicts_with = "patches")]
    scores: Option<PathBuf>,
    /// Labelled patch index CSV (or folder with patch_index.csv) to score with --model.
    #[arg(long)]
    patches: Option<PathBuf>,
    /// With --patches, for a model with tabular features: per-series values (seriesuid and
    /// the feature columns the index lacks).
    #[arg(long, requires = "patches")]
    features_csv: Option<PathBuf>,
    /// The ONNX model the scores come from (default: RUN/model.onnx).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Output calibration file (default: RUN/calibration.yaml, or beside --scores / --model).
    #[arg(short, long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    columns: cli::ScoreColumnFlags,
    /// auto (lowest cross-validated NLL), temperature, platt or isotonic.
    #[arg(long, default_value = "auto")]
    method: String,
    /// Use Platt's smoothed targets.
    #[arg(long)]
    platt_smoothing: bool,
    /// Sensitivity the fixed-sensitivity operating point must keep, in (0, 1].
    #[arg(long, default_value_t = 0.95)]
    min_sensitivity: f64,
    /// Specificity the fixed-specificity operating point must keep, in (0, 1].
    #[arg(long, default_value_t = 0.95)]
    min_specificity: f64,
    /// Operating point for infer's decision: youden_j, max_f1, sensitivity or specificity.
    #[arg(long, default_value = "youden_j")]
    operating_point: String,
    /// Cross-validation folds for --method auto (grouped by series; 2 to 100).
    #[arg(long, default_value_t = 5)]
    folds: usize,
    /// Series-level bootstrap resamples (0 to skip; at most 100000).
    #[arg(long, default_value_t = 1000)]
    bootstrap: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Skip the Markdown report and plots.
    #[arg(long)]
    no_report: bool,
    /// Skip model.calibrated.onnx.
    #[arg(long)]
    no_bake: bool,
    /// Device for --patches scoring: auto, cpu, cuda, cuda:N.
    #[arg(long, default_value = "auto")]
    device: scorer::Device,
    #[arg(long, help = scorer::ORT_LIB_HELP)]
    ort_lib: Option<PathBuf>,
}

/// `calibrate compare …` (with whatever flags it had) was the comparison of models before it
/// joined the evaluation step: say where it went rather than read `compare` as a run folder.
fn moved_compare() -> anyhow::Result<()> {
    let first = std::env::args_os().nth(1);
    if first.as_deref() == Some(std::ffi::OsStr::new("compare")) && !std::path::Path::new("compare").exists() {
        anyhow::bail!("`calibrate compare` is now `froc compare` (same flags and outputs; comparing models is evaluation)");
    }
    Ok(())
}

fn settings(a: Args) -> anyhow::Result<Settings> {
    let base = match (&a.run, &a.scores, &a.patches, &a.model) {
        (Some(run), _, _, _) => Settings::for_run(run),
        (None, Some(scores), _, _) => {
            let dir = scores.parent().map(PathBuf::from).unwrap_or_default();
            Settings {
                scores: scores.clone(),
                ..Settings::for_run(&dir)
            }
        }
        (None, None, Some(_), Some(model)) => {
            let dir = model.parent().map(PathBuf::from).unwrap_or_default();
            Settings::for_run(&dir)
        }
        _ => anyhow::bail!("give a training run folder, --scores with --model, or --patches with --model"),
    };
    let method = match a.method.as_str() {
        "auto" => None,
        m => Some(m.parse::<Method>().map_err(anyhow::Error::msg)?),
    };
    let operating_point = match a.operating_point.as_str() {
        "sensitivity" => format!("sensitivity_{}", a.min_sensitivity),
        "specificity" => format!("specificity_{}", a.min_specificity),
        other => other.to_string(),
    };
    Ok(Settings {
        scores: a.scores.unwrap_or(base.scores),
        patches: a.patches,
        features_csv: a.features_csv,
        scorer: scorer::ScorerOptions {
            device: a.device,
            threads: 0,
            ort_lib: a.ort_lib,
            spin: false,
        },
        model: a.model.unwrap_or(base.model),
        out: a.out.unwrap_or(base.out),
        columns: a.columns.into(),
        method,
        platt_smoothing: a.platt_smoothing,
        min_sensitivity: a.min_sensitivity,
        min_specificity: a.min_specificity,
        operating_point,
        folds: a.folds,
        bootstrap: a.bootstrap,
        seed: a.seed,
        report: !a.no_report,
        bake: !a.no_bake,
    })
}

/// What a calibration wrote, as the files are: `calibration.yaml` and, unless turned off,
/// the report with its plots and the calibrated model beside it.
fn written(s: &calibrate::Settings) -> String {
    let mut also = Vec::new();
    if s.report {
        also.push(format!("{}, {}/", calibrate::report::REPORT_FILE, calibrate::report::PLOTS_DIR));
    }
    if s.bake {
        also.push(calibrate::write::BAKED_FILE.to_string());
    }
    if also.is_empty() {
        s.out.display().to_string()
    } else {
        format!("{} (and {} beside it)", s.out.display(), also.join(", "))
    }
}

fn main() -> ExitCode {
    cli::default_sigpipe();
    let run = || -> anyhow::Result<()> {
        moved_compare()?;
        let s = settings(Args::parse())?;
        let cal = calibrate::run(&s)?;
        print!("{}", calibrate::summary(&cal));
        println!("wrote {}", written(&s));
        // A tracked run (its folder holds mlflow.yaml): the calibration joins its MLflow run.
        if s.out.file_name().is_some_and(|n| n == "calibration.yaml") {
            if let Some(line) = s.out.parent().and_then(tracking::after_calibration) {
                eprintln!("{line}");
            }
        }
        Ok(())
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => cli::fail("calibrate", e.as_ref()),
    }
}
