//! `infer`: batch-score `.npy` patch folders with an exported ONNX model.
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use infer::Settings;

mod bundle_cmd;
mod doctor_cmd;
mod gallery_cmd;
mod import_cmd;
mod merge_cmd;

use bundle_cmd::bundle;
use doctor_cmd::doctor;
use gallery_cmd::{gallery, GalleryArgs};
use import_cmd::{import, ImportArgs};
use merge_cmd::merge;
use scorer::{Device, ScorerOptions};

/// Score every .npy patch in the given folders/files (or an index CSV) with an ONNX model
/// through ONNX Runtime. Preprocessing (cube size, HU window, padding) is read from the
/// model's metadata.
#[derive(Parser, Debug)]
#[command(
    name = "infer",
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Args {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Folders of .npy cubes, or single .npy files.
    #[arg(required_unless_present_any = ["index", "scans"])]
    inputs: Vec<PathBuf>,
    /// Descend into sub-folders (symlinks followed, loops reported).
    #[arg(short, long)]
    recursive: bool,
    /// Index CSV (or folder with patch_index.csv) listing the patches: patch_file, seriesuid,
    /// center_x, center_y, center_z, optional diam_mm and label. Output rows carry them.
    #[arg(long, conflicts_with_all = ["inputs", "scans"])]
    index: Option<PathBuf>,
    /// Score straight from CT scans (MetaImage, DICOM series, NIfTI-1) under this folder, at
    /// the points of --candidates: no patch folder is written. Rows carry seriesuid and
    /// world centre (--format luna16 feeds `froc`).
    #[arg(long, conflicts_with = "inputs", requires = "candidates")]
    scans: Option<PathBuf>,
    /// With --scans: the points to score, world mm: LUNA16's candidates CSV (seriesuid,
    /// coordX, coordY, coordZ[, class]) or a patch index (patch_file, seriesuid, center_x,
    /// center_y, center_z[, diam_mm, label]).
    #[arg(long, requires = "scans")]
    candidates: Option<PathBuf>,
    /// With --scans: read only this format (metaimage, dicom or nifti).
    #[arg(long, requires = "scans")]
    scan_format: Option<scans::Format>,
    /// With --scans: cube edge in mm (default: the model's cube size x --spacing-mm, i.e.
    /// the cube `scans prepare` cuts at that spacing).
    #[arg(long, requires = "scans")]
    size_mm: Option<f64>,
    /// With --scans: voxel size of the cubes in mm, as the model's patches were prepared.
    #[arg(long, requires = "scans", default_value_t = 1.0)]
    spacing_mm: f64,
    /// With --scans: scans read at once (0: one per core, at most 4); each is in memory
    /// (4 bytes per voxel) while it is read and cut.
    #[arg(long, default_value_t = 0)]
    scan_jobs: usize,
    /// With --scans: candidates whose series has no scan under the folder are errors
    /// (error), or left out and counted (skip: scoring one LUNA16 subset with the whole list).
    #[arg(long, value_parser = cli::choice::<infer::from_scans::MissingScans>(), default_value = "error")]
    missing_scans: infer::from_scans::MissingScans,
    /// With --scans: score only the series this fold of a k-fold run held out (RUN/fold_N of
    /// `trainer train --folds K`: its split.csv), with its own model (the default -m), and
    /// write OUT.fold.yaml beside -o for `infer merge --folds`.
    #[arg(long, requires = "scans", value_name = "RUN/fold_N")]
    held_out: Option<PathBuf>,
    /// Benchmarks: with --scans, cut every cube into memory before scoring starts, to time
    /// the model alone on cubes in memory (the ceiling); memory grows with the candidates.
    #[arg(long, hide = true, requires = "scans")]
    preload_cubes: bool,
    /// Benchmarks: print where the time went (in all, pipeline, first batch, model).
    #[arg(long, hide = true)]
    timing: bool,
    /// For a model with tabular features: a CSV of per-series values (seriesuid and the
    /// feature columns the index lacks), as the model was trained with model.features_csv.
    #[arg(long)]
    features_csv: Option<PathBuf>,
    /// The exported model (model.onnx of a training run).
    #[arg(short, long)]
    model: Option<PathBuf>,
    /// calibration.yaml for this model: adds calibrated_probability and decision.
    #[arg(short, long)]
    calibration: Option<PathBuf>,
    /// Apply --calibration even if it was fitted for another model (prints a warning).
    #[arg(long)]
    force_calibration: bool,
    /// Output file (`-` for stdout).
    #[arg(short, long, default_value = "scores.csv")]
    out: PathBuf,
    /// Output format: csv, jsonl, or luna16 (the challenge's submission CSV; needs --index).
    #[arg(long, value_parser = cli::choice::<infer::Format>(), default_value = "csv")]
    format: infer::Format,
    /// File listing the patches that failed (default: OUT.errors.csv).
    #[arg(long)]
    errors: Option<PathBuf>,
    /// Keep an existing output's rows and score only the patches it lacks.
    #[arg(long)]
    resume: bool,
    /// Score only part K of N of the inputs (contiguous, in their sorted order; K from 1),
    /// for a job array; `infer merge` joins the parts. Writes OUT.shard.yaml beside OUT.
    #[arg(long, value_name = "K/N")]
    shard: Option<infer::shard::Shard>,
    /// Test-time augmentation: `flips` averages the logits of the 8 flip combinations.
    #[arg(long, value_parser = cli::choice::<infer::Tta>(), default_value = "none")]
    tta: infer::Tta,
    /// auto, cpu, cuda or cuda:N. `cuda` fails if the CUDA provider cannot be registered.
    #[arg(long, default_value = "auto")]
    device: Device,
    /// Patches per ONNX Runtime call (1 to 4096).
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// ONNX Runtime intra-op threads (0 = its default; no more than max(8, 4 x CPUs)).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Let ONNX Runtime's threads spin while waiting (its own default; off here so the file
    /// decoders get the cores: worth trying on hosts with many cores).
    #[arg(long)]
    spin: bool,
    #[arg(long, help = scorer::ORT_LIB_HELP)]
    ort_lib: Option<PathBuf>,
    /// Stop at the first file that cannot be scored (no output is written).
    #[arg(long)]
    fail_fast: bool,
    /// No progress bar and no summary on stderr.
    #[arg(short, long)]
    quiet: bool,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Pack this binary, its ONNX Runtime, the model (and calibration) into one .tar.gz
    /// that scores on a host with no Rust, no Python and no network.
    Bundle {
        #[arg(short, long)]
        model: PathBuf,
        #[arg(short, long)]
        calibration: Option<PathBuf>,
        /// Include ONNX Runtime's CUDA provider (needs the onnxruntime-gpu build).
        #[arg(long)]
        gpu: bool,
        #[arg(short, long, default_value = "nodule-scorer.tar.gz")]
        out: PathBuf,
        #[arg(long, help = scorer::ORT_LIB_HELP)]
        ort_lib: Option<PathBuf>,
    },
    /// Make any ONNX patch classifier (one float input [N, 1, D, D, D], one output [N, 1] or
    /// [N]) into a model infer, calibrate and bundle take: its output declared a logit or a
    /// probability, preprocessing from the flags or another model (--like). Checked on a test
    /// batch with ONNX Runtime before it is written.
    Import(Box<ImportArgs>),
    /// Join the outputs of `infer --shard K/N` (all N of them, any order) into what one run
    /// would have written; refuses parts of different runs, missing or repeated parts, and
    /// a patch scored twice. With --folds: join the K outputs of `infer --scans ...
    /// --held-out RUN/fold_N` (one per fold of a k-fold run) into the out-of-fold scores of
    /// every candidate.
    Merge {
        /// The shard outputs (each with its .shard.yaml beside it), or with --folds the fold
        /// outputs (each with its .fold.yaml).
        #[arg(required = true)]
        shards: Vec<PathBuf>,
        /// The merged output.
        #[arg(short, long)]
        out: PathBuf,
        /// The parts are the folds of a k-fold run's held-out scoring.
        #[arg(long)]
        folds: bool,
    },
    /// Write a review page of scored patches (one HTML file that opens offline): each
    /// patch's axial, coronal and sagittal mid-slices with its scores; false positives,
    /// false negatives, borderline cases and the highest scores at the operating point; a
    /// table that sorts and filters. From infer's scores (CSV or JSONL), a val_scores.csv,
    /// or a run folder (its validation patches, operating point and charts).
    Gallery(Box<GalleryArgs>),
    /// Print the ONNX Runtime library and version, its providers, the CUDA libraries and
    /// driver found, and (with --model) the model's metadata.
    Doctor {
        #[arg(short, long)]
        model: Option<PathBuf>,
        #[arg(long, help = scorer::ORT_LIB_HELP)]
        ort_lib: Option<PathBuf>,
    },
}

/// The summary lines on stderr: runtime and provider, calibration, counts and speed.
fn print_summary(sum: &infer::Summary, out: &std::path::Path, timing: bool) {
    let placement = match sum.all_nodes_on_provider {
        Some(true) => "every node on it",
        Some(false) => "some nodes fall back to CPU",
        None => "node placement unknown",
    };
    eprintln!(
        "ONNX Runtime {} ({}) on {} ({placement}) [{}]",
        sum.ort_version,
        sum.ort_library.display(),
        sum.provider,
        sum.provider_note
    );
    if let Some(c) = &sum.calibration {
        eprintln!("calibration: {c}");
    }
    for n in &sum.notes {
        eprintln!("note: {n}");
    }
    let pos = sum
        .predicted_positive
        .map(|p| format!(", {p} predicted positive"))
        .unwrap_or_default();
    let resumed = if sum.resumed + sum.resume_dropped + sum.resume_changed == 0 {
        String::new()
    } else {
        let mut parts = vec![format!("{} kept from the earlier output", sum.resumed)];
        if sum.resume_changed > 0 {
            parts.push(format!(
                "{} scored again: their files changed since",
                sum.resume_changed
            ));
        }
        if sum.resume_dropped > 0 {
            parts.push(format!(
                "{} dropped from it: no longer among the inputs",
                sum.resume_dropped
            ));
        }
        format!(" ({})", parts.join(", "))
    };
    let rss = sum
        .peak_rss_kib
        .map(|k| format!(", peak RSS {:.0} MiB", k as f64 / 1024.0))
        .unwrap_or_default();
    let busy = if sum.pipeline_seconds > 0.0 {
        format!(
            ", model busy {:.0}% of the scoring time",
            100.0 * sum.model_seconds / sum.pipeline_seconds
        )
    } else {
        String::new()
    };
    if timing {
        eprintln!(
            "timing: {:.3} s in all; pipeline {:.3} s (first batch after {:.3} s), model {:.3} s",
            sum.seconds, sum.pipeline_seconds, sum.first_batch_seconds, sum.model_seconds
        );
    }
    eprintln!(
        "scored {} patch(es){resumed}{pos}, {} failed, {:.1} patches/s{rss}{busy} -> {}",
        sum.scored,
        sum.failed,
        sum.scored as f64 / sum.seconds.max(1e-9),
        out.display()
    );
}

fn main() -> ExitCode {
    cli::default_sigpipe();
    let a = Args::parse();
    if let Some(Cmd::Bundle {
        model,
        calibration,
        gpu,
        out,
        ort_lib,
    }) = &a.cmd
    {
        return bundle(&infer::bundle::BundleSettings {
            model: model.clone(),
            calibration: calibration.clone(),
            out: out.clone(),
            gpu: *gpu,
            ort_lib: ort_lib.clone(),
        });
    }
    // Started from a bundle: check it, and default to its model and calibration.
    let bundle = match infer::bundle::verify_self() {
        Ok(b) => b,
        Err(e) => {
            return cli::fail("infer", &e);
        }
    };
    match &a.cmd {
        Some(Cmd::Import(args)) => import(args),
        Some(Cmd::Merge { shards, out, folds }) => merge(shards, out, *folds),
        Some(Cmd::Doctor { model, ort_lib }) => doctor(model.clone(), ort_lib.as_deref(), &bundle),
        Some(Cmd::Gallery(args)) => gallery(args),
        Some(Cmd::Bundle { .. }) | None => score(a, bundle.as_ref()),
    }
}

/// The settings of a scoring run from its flags (the model resolved by the caller).
fn settings(a: Args, model: PathBuf) -> Settings {
    Settings {
        model,
        calibration: a.calibration,
        inputs: a.inputs,
        recursive: a.recursive,
        index: a.index,
        features_csv: a.features_csv,
        out: a.out,
        format: a.format,
        errors: a.errors,
        resume: a.resume,
        shard: a.shard,
        tta: a.tta,
        batch_size: a.batch_size,
        scorer: ScorerOptions {
            device: a.device,
            threads: a.threads,
            ort_lib: a.ort_lib,
            spin: a.spin,
        },
        fail_fast: a.fail_fast,
        force_calibration: a.force_calibration,
        progress: !a.quiet && std::io::stderr().is_terminal(),
        scans: a.scans,
        candidates: a.candidates,
        scan_format: a.scan_format,
        size_mm: a.size_mm,
        spacing_mm: a.spacing_mm,
        scan_jobs: a.scan_jobs,
        missing_scans: a.missing_scans,
        preload: a.preload_cubes,
        held_out: a.held_out,
    }
}

/// `infer` itself: scores the inputs (the model and calibration defaulting to a bundle's,
/// or to the held-out fold's model).
fn score(mut a: Args, bundle: Option<&(PathBuf, infer::bundle::BundleInfo)>) -> ExitCode {
    if let Some((dir, info)) = bundle {
        if a.model.is_none() {
            a.model = Some(dir.join(&info.model));
            if a.calibration.is_none() {
                a.calibration = info.calibration.as_ref().map(|c| dir.join(c));
            }
        }
    }
    if a.model.is_none() {
        a.model = a.held_out.as_ref().map(|r| r.join("model.onnx"));
    }
    let Some(model) = a.model.clone() else {
        eprintln!("infer: error: --model is required");
        return ExitCode::FAILURE;
    };
    let (quiet, timing) = (a.quiet, a.timing);
    let s = settings(a, model);
    match infer::run(&s) {
        Ok(sum) => {
            if !quiet {
                print_summary(&sum, &s.out, timing);
            }
            if sum.failed > 0 {
                let list = sum
                    .errors_file
                    .map(|p| format!(", listed in {}", p.display()))
                    .unwrap_or_default();
                eprintln!(
                    "infer: error: {} input(s) could not be scored (reasons above{list})",
                    sum.failed
                );
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => cli::fail("infer", &e),
    }
}
