//! `infer`: batch-score `.npy` patch folders with an exported ONNX model.
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use infer::{Device, ScorerOptions, Settings};

/// Score every .npy patch in the given folders/files with an ONNX model (ONNX Runtime).
///
/// Preprocessing (cube size, HU window, padding) is read from the model's metadata.
#[derive(Parser, Debug)]
#[command(name = "infer", version)]
struct Args {
    /// Folders of .npy cubes, or single .npy files.
    #[arg(required_unless_present = "index")]
    inputs: Vec<PathBuf>,
    /// Index CSV (or folder with patch_index.csv) listing the patches: patch_file, seriesuid,
    /// center_x, center_y, center_z, optional diam_mm and label. Output rows carry them.
    #[arg(long, conflicts_with = "inputs")]
    index: Option<PathBuf>,
    /// Output format: csv, jsonl, or luna16 (the challenge's submission CSV; needs --index).
    #[arg(long, value_enum, default_value = "csv")]
    format: infer::Format,
    /// The exported model (model.onnx of a training run).
    #[arg(short, long)]
    model: PathBuf,
    /// calibration.yaml for this model: adds calibrated_probability and decision.
    #[arg(short, long)]
    calibration: Option<PathBuf>,
    /// Output file (`-` for stdout).
    #[arg(short, long, default_value = "scores.csv")]
    out: PathBuf,
    /// auto, cpu, cuda or cuda:N. `cuda` fails if the CUDA provider cannot be registered.
    #[arg(long, default_value = "auto")]
    device: Device,
    /// Patches per ONNX Runtime call.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// ONNX Runtime intra-op threads (0 = its default).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Path of libonnxruntime.so (else $ORT_DYLIB_PATH, next to this binary, the project venv).
    #[arg(long)]
    ort_lib: Option<PathBuf>,
    /// Apply --calibration even if it was fitted for another model (prints a warning).
    #[arg(long)]
    force_calibration: bool,
    /// Stop at the first file that cannot be scored.
    #[arg(long)]
    fail_fast: bool,
    /// No summary on stderr.
    #[arg(short, long)]
    quiet: bool,
}

fn main() -> ExitCode {
    let a = Args::parse();
    let quiet = a.quiet;
    let s = Settings {
        model: a.model,
        calibration: a.calibration,
        inputs: a.inputs,
        index: a.index,
        format: a.format,
        out: a.out,
        batch_size: a.batch_size,
        scorer: ScorerOptions {
            device: a.device,
            threads: a.threads,
            ort_lib: a.ort_lib,
        },
        fail_fast: a.fail_fast,
        force_calibration: a.force_calibration,
    };
    match infer::run(&s) {
        Ok(sum) => {
            if !quiet {
                eprintln!(
                    "ONNX Runtime {} ({}) on {} [{}]",
                    sum.ort_version,
                    sum.ort_library.display(),
                    sum.provider,
                    sum.provider_note
                );
                let pos = sum
                    .predicted_positive
                    .map(|p| format!(", {p} predicted positive"))
                    .unwrap_or_default();
                eprintln!(
                    "scored {} patch(es){pos}, {} failed, {:.1} patches/s -> {}",
                    sum.scored,
                    sum.failed,
                    sum.scored as f64 / sum.seconds.max(1e-9),
                    s.out.display()
                );
            }
            if sum.failed > 0 {
                eprintln!(
                    "infer: error: {} file(s) could not be scored (reasons above)",
                    sum.failed
                );
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("infer: error: {e}");
            ExitCode::FAILURE
        }
    }
}
