//! The end of a run: the best checkpoint exported to ONNX, checked against libtorch through
//! ONNX Runtime (only then does it become `model.onnx`), the validation scores of the
//! exported model, and `summary.yaml`.
use std::time::Instant;

use crate::{Result, TrainError};
use serde::Serialize;
use tch::nn;
use tch::Device;

use files::TEMP_PREFIX;

use crate::config::TrainConfig;
use crate::export;
use crate::net::Net;
use crate::train::epochs::Training;
use crate::train::folder::RunFolder;
use crate::train::inputs::Data;
use crate::train::{write_csv, yaml, RunOptions, RunSummary};

/// Where the run came from, for `summary.yaml` and the model's metadata.
fn provenance(
    cfg: &TrainConfig,
    init: Option<(&'static str, String)>,
    index: &std::path::Path,
    dir: &std::path::Path,
    device: Device,
    amp: bool,
) -> Result<std::collections::BTreeMap<String, String>> {
    Ok([
        ("tool.version", models::TOOL_VERSION.to_string()),
        ("tool.git_commit", env!("NODULE_GIT_COMMIT").to_string()),
        ("training.libtorch_version", crate::libtorch_version()),
        ("training.cuda_available", tch::Cuda::is_available().to_string()),
        ("training.device", crate::device_name(device)),
        (
            "training.precision",
            (if amp { "fp16-mixed" } else { "fp32" }).to_string(),
        ),
        ("training.cuda_libraries", crate::cuda::loaded_cuda_libraries()),
        ("training.config_sha256", cfg.sha256()?),
        ("training.index_sha256", files::sha256_file(index)?),
        (
            "training.split_sha256",
            files::sha256_file(&dir.join("split.csv"))?,
        ),
    ]
    .into_iter()
    .chain(init)
    .map(|(k, v)| (k.to_string(), v))
    .collect())
}

/// `training.init`: the initial weights' file and sha256, when the run started from some.
fn init_provenance(cfg: &TrainConfig, found: &crate::train::inputs::Found) -> Option<(&'static str, String)> {
    let (p, sha) = (cfg.train.init.as_ref()?, found.init_sha256.as_ref()?);
    Some((
        "training.init",
        format!(
            "{} sha256:{sha}{}",
            p.file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
            if cfg.train.reinit_head {
                " (head initialised afresh)"
            } else {
                ""
            }
        ),
    ))
}

/// Exports the best checkpoint under a temporary name, checks libtorch against ONNX Runtime
/// on the validation patches, and only then makes it `model.onnx` (a failed one is kept as
/// `model.parity-failed.onnx`). Returns the parity figures and ONNX Runtime's logits.
#[allow(clippy::too_many_arguments)]
fn export_checked(
    cfg: &TrainConfig,
    opts: &RunOptions,
    spec: &models::spec::ArchSpec,
    (best_net, best_vs): (&Net, &nn::VarStore),
    md: &std::collections::BTreeMap<String, String>,
    val: &crate::data::Cubes,
    folder: &RunFolder,
    device: Device,
) -> Result<(export::Parity, Vec<f32>)> {
    let dir = &folder.dir;
    let pre = &cfg.preprocess;
    let log = |s: String| {
        if !opts.quiet {
            eprintln!("{s}");
        }
    };
    // Written under a temporary name; it becomes model.onnx only once parity holds.
    let onnx_path = dir.join("model.onnx");
    let unchecked = dir.join(format!("{TEMP_PREFIX}{}.model-unchecked.onnx", std::process::id()));
    export::export_onnx(spec, best_vs, pre, md, &unchecked)?;
    let (parity, ort_logits) = export::parity(
        spec,
        best_net,
        best_vs,
        &unchecked,
        val.len(),
        &|r: std::ops::Range<usize>| {
            let idx: Vec<usize> = r.collect();
            Ok((val.gather(&idx)?, val.gather_features(&idx)))
        },
        val.cube,
        cfg.train.batch_size,
        opts.ort_lib.as_deref(),
        device,
    )?;
    yaml(&dir.join("parity.yaml"), &parity)?;
    log(format!(
        "export: {} (max |Δlogit| libtorch vs ONNX Runtime {} = {:.2e} over {} patches; \
         over max(1, largest |logit|): {:.2e}, tolerance {:.0e})",
        onnx_path.display(),
        parity.onnxruntime_version,
        parity.max_abs_diff_logit,
        parity.patches,
        parity.max_scaled_diff_logit,
        parity.tolerance
    ));
    if let Some(d) = parity.device_max_abs_diff_logit {
        log(format!(
            "export: the same weights on {} (fp32) vs ONNX Runtime: max |Δlogit| {d:.2e}",
            parity.device
        ));
    }
    if !parity.passed {
        let failed = dir.join("model.parity-failed.onnx");
        std::fs::rename(&unchecked, &failed)
            .map_err(|e| TrainError::file(format!("{}: cannot keep the failed export", failed.display()), e))?;
        return Err(TrainError::Export(format!(
            "{}: export parity failed: max |Δlogit| / max(1, largest |logit|) {:.3e} > {:.0e} (max |Δlogit| {:.3e}; \
             see parity.yaml); the file must not be used",
            failed.display(),
            parity.max_scaled_diff_logit,
            parity.tolerance,
            parity.max_abs_diff_logit
        )));
    }
    std::fs::rename(&unchecked, &onnx_path).map_err(|e| {
        TrainError::file(
            format!("{}: cannot move the checked model into place", onnx_path.display()),
            e,
        )
    })?;
    Ok((parity, ort_logits))
}

/// `val_scores.csv`: each validation patch with its label and the exported model's logit
/// (what `calibrate RUN` fits on).
fn write_val_scores(path: &std::path::Path, val: &crate::data::Cubes, ort_logits: &[f32]) -> Result<()> {
#[derive(Serialize)]
struct ValScore<'a> {
    patch_file: &'a str,
    seriesuid: &'a str,
    label: u8,
    logit: f32,
}
let vs_rows: Vec<ValScore> = val
    .rows
    .iter()
    .zip(ort_logits)
    .map(|(r, &logit)| ValScore {
        patch_file: &r.patch_file,
        seriesuid: &r.seriesuid,
        label: r.label,
        logit,
    })
    .collect();
write_csv(path, &vs_rows)
}

/// Frees the training state, exports the best checkpoint, checks parity, writes the
/// validation scores and the summary.
pub fn finish(
    cfg: &TrainConfig,
    opts: &RunOptions,
    data: Data,
    folder: &RunFolder,
    tr: Training,
    t0: Instant,
) -> Result<RunSummary> {
    let (best_epoch, best_auroc, _) = tr
        .best
        .ok_or_else(|| TrainError::Internal("no epoch finished".into()))?;
    // Training is over: free its state before the export makes copies of its own. The
    // weights, their gradients and the two AdamW moments are four copies of the model
    // (530 MB for r3d_18), and the training patches may be cached; kept, they would set the
    // run's peak memory during the export and parity check rather than during training.
    let stopped_early = tr.stopped_early;
    drop(tr);
    let Data {
        found,
        train,
        val,
        n_pos,
        pos_weight,
        val_series,
        feature_stats,
    } = data;
    let train_patches = train.len();
    drop(train);
    let init = init_provenance(cfg, &found);
    let (spec, index, device, amp) = (found.spec, found.index, found.device, found.amp);
    let dir = &folder.dir;
    let pre = &cfg.preprocess;
    let best_path = dir.join("best.safetensors");
    let val_labels: Vec<u8> = val.labels.iter().map(|&l| l as u8).collect();
    // Export the best checkpoint, not the last epoch.
    let mut best_vs = nn::VarStore::new(Device::Cpu);
    let best_net = Net::new(&best_vs.root(), &spec)?;
    best_vs.load(&best_path).map_err(TrainError::tch(format!(
        "{}: cannot reload the best checkpoint",
        best_path.display()
    )))?;
    let provenance = provenance(cfg, init, &index.path, dir, device, amp)?;
    let mut extra: Vec<(&str, String)> = provenance.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    extra.push(("training.best_epoch", best_epoch.to_string()));
    if let (Some(k), Some(m)) = (&opts.mlflow_key, &opts.mlflow) {
        // Where the run is tracked: `froc --model` adds its evaluation there.
        extra.push(("training.mlflow_run_key", k.clone()));
        extra.push(("training.mlflow_tracking_uri", m.uri.to_string()));
        extra.push(("training.mlflow_experiment", m.experiment.clone()));
    }
    extra.push(("training.val_auroc", format!("{best_auroc:.6}")));
    let mut md = export::metadata(&spec, pre, &extra)?;
    if let Some(s) = &feature_stats {
        md.extend(s.to_metadata());
    }
    let (parity, ort_logits) = export_checked(cfg, opts, &spec, (&best_net, &best_vs), &md, &val, folder, device)?;
    write_val_scores(&dir.join("val_scores.csv"), &val, &ort_logits)?;
    let ort_scores: Vec<f64> = ort_logits.iter().map(|&v| f64::from(v)).collect();
    let summary = RunSummary {
        run_dir: dir.clone(),
        device: crate::device_name(device),
        arch: spec.name.clone(),
        train_patches,
        train_positives: n_pos,
        val_patches: val.len(),
        val_positives: val_labels.iter().filter(|&&l| l == 1).count(),
        val_series,
        pos_weight,
        best_epoch,
        best_val_auroc: best_auroc,
        onnx_val_auroc: metrics::auroc(&ort_scores, &val_labels).unwrap_or(f64::NAN),
        onnx_val_auroc_delong_ci95: metrics::auroc_delong_ci95(&ort_scores, &val_labels),
        stopped_early_at_epoch: stopped_early,
        provenance: provenance.clone(),
        parity_max_abs_diff_logit: parity.max_abs_diff_logit,
        parity_max_scaled_diff_logit: parity.max_scaled_diff_logit,
        seconds: t0.elapsed().as_secs_f64(),
        peak_rss_mib: host::peak_rss_kib().map(|k| k as f64 / 1024.0),
        outputs: ["model.onnx", "parity.yaml", "val_scores.csv"]
            .iter()
            .map(|n| Ok((n.to_string(), files::sha256_file(&dir.join(n))?)))
            .collect::<Result<_>>()?,
    };
    // The commit point, written last.
    yaml(&dir.join(models::runfolder::SUMMARY_FILE), &summary)?;
    Ok(summary)
}
