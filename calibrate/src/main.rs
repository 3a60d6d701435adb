//! `calibrate`: fit temperature/Platt scaling and operating points on validation scores.
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use calibrate::{Columns, Method, Settings};

/// Fit calibration and operating thresholds on validation scores; writes calibration.yaml.
///
/// Either give a training run folder (reads its val_scores.csv and model.onnx, writes
/// calibration.yaml into it) or --scores and --model explicitly.
#[derive(Parser, Debug)]
#[command(name = "calibrate", version)]
struct Args {
    /// Training run folder (holds val_scores.csv and model.onnx).
    run: Option<PathBuf>,
    /// Scores CSV (default: RUN/val_scores.csv).
    #[arg(long)]
    scores: Option<PathBuf>,
    /// The ONNX model these scores come from (default: RUN/model.onnx).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Output file (default: RUN/calibration.yaml, or calibration.yaml beside --scores).
    #[arg(short, long)]
    out: Option<PathBuf>,
    /// Column holding the raw logit.
    #[arg(long, default_value = "logit")]
    logit_col: String,
    /// Column holding a probability instead of a logit.
    #[arg(long)]
    prob_col: Option<String>,
    /// Column holding the 0/1 label.
    #[arg(long, default_value = "label")]
    label_col: String,
    /// Column holding the series id.
    #[arg(long, default_value = "seriesuid")]
    series_col: String,
    /// Calibration infer applies (default: the lower cross-validated NLL, folds grouped by series).
    #[arg(long, value_enum)]
    method: Option<Method>,
    /// Use Platt's smoothed targets.
    #[arg(long)]
    platt_smoothing: bool,
    /// Sensitivity the fixed-sensitivity operating point must keep.
    #[arg(long, default_value_t = 0.95)]
    min_sensitivity: f64,
    /// Operating point infer uses for its decision column.
    #[arg(long, default_value = "youden_j")]
    operating_point: String,
}

fn settings(a: Args) -> anyhow::Result<Settings> {
    let base = match (&a.run, &a.scores) {
        (Some(run), _) => Settings::for_run(run),
        (None, Some(scores)) => {
            let dir = scores.parent().map(PathBuf::from).unwrap_or_default();
            let mut s = Settings::for_run(&dir);
            s.scores = scores.clone();
            s
        }
        (None, None) => anyhow::bail!("give a training run folder, or --scores and --model"),
    };
    let operating_point = if a.operating_point == "sensitivity" {
        format!("sensitivity_{}", a.min_sensitivity)
    } else {
        a.operating_point
    };
    Ok(Settings {
        scores: a.scores.unwrap_or(base.scores),
        model: a.model.unwrap_or(base.model),
        out: a.out.unwrap_or(base.out),
        columns: Columns {
            logit: a.logit_col,
            probability: a.prob_col,
            label: a.label_col,
            seriesuid: a.series_col,
        },
        method: a.method,
        platt_smoothing: a.platt_smoothing,
        min_sensitivity: a.min_sensitivity,
        operating_point,
    })
}

fn main() -> ExitCode {
    let run = || -> anyhow::Result<()> {
        let s = settings(Args::parse())?;
        let cal = calibrate::run(&s)?;
        print!("{}", calibrate::summary(&cal));
        println!("wrote {}", s.out.display());
        Ok(())
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("calibrate: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
